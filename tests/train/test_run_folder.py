"""A run folder keeps users' work: no silent overwrite, one training at a time, resumes that
refuse what cannot change and never lose the log, checkpoints that cannot run code."""

import fcntl
import os
import shutil

import pytest
import torch
import yaml

from crystalframes.io.errors import UserError
from crystalframes.train.run import train
from tiny import tiny_config


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_finished_run_without_last_checkpoint_is_not_overwritten(done_run, tiny_data):
    """A short run may not have a `last` checkpoint: the guard must not depend on it."""
    shutil.rmtree(done_run / "checkpoints")
    before = snapshot(done_run)
    with pytest.raises(UserError, match="already holds a run .*--resume.*--overwrite"):
        train(tiny_config(tiny_data, 1), done_run)
    assert snapshot(done_run) == before


@pytest.mark.parametrize("marker", ["config.yaml", "logs", "checkpoints"])
def test_a_started_run_is_not_overwritten(tiny_data, tmp_path, marker):
    folder = tmp_path / "started"
    folder.mkdir()
    (folder / marker).mkdir() if marker != "config.yaml" else (folder / marker).write_text("trainer: {}\n")
    with pytest.raises(UserError, match="already holds a run"):
        train(tiny_config(tiny_data, 1), folder)
    assert not (folder / "model.pt").exists()


def test_overwrite_replaces_the_run_and_nothing_else(done_run, tiny_data):
    (done_run / "logs" / "stale.txt").write_text("from the old run")
    (done_run / "notes.txt").write_text("the user's own file")
    (done_run / "hpc_ckpt_1.ckpt").write_text("a SLURM requeue snapshot of the old run")
    old_model = (done_run / "model.pt").read_bytes()
    result = train(tiny_config(tiny_data, 1, "trainer.seed=1"), done_run, overwrite=True)
    assert result.metrics["epochs_completed"] == 1
    assert (done_run / "model.pt").read_bytes() != old_model and not (done_run / "logs" / "stale.txt").exists()
    assert (done_run / "notes.txt").read_text() == "the user's own file"
    assert not (done_run / "hpc_ckpt_1.ckpt").exists()
    assert yaml.safe_load((done_run / "config.yaml").read_text())["trainer"]["seed"] == 1


def test_a_second_training_into_a_locked_folder_stops(tiny_data, tmp_path):
    folder = tmp_path / "busy"
    folder.mkdir()
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a training in progress holds it
        with pytest.raises(UserError, match=f"another training is writing to {folder}"):
            train(tiny_config(tiny_data, 1), folder)
    finally:
        os.close(fd)
    assert sorted(p.name for p in folder.iterdir()) == [".lock"]


def test_a_run_that_cannot_start_leaves_no_folder(tmp_path):
    folder = tmp_path / "never"
    with pytest.raises(UserError):
        train(tiny_config(tmp_path / "missing.jsonl", 1), folder)
    assert not folder.exists()


def test_every_epoch_end_writes_last_checkpoint(done_run):
    """checkpoint_every_n_steps=100 > the 3 steps of the run: `last` comes from the epoch end."""
    ckpt = torch.load(done_run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 3 and ckpt["crystalframes_config"]["trainer"]["epochs"] == 1


def test_resume_extends_a_length_independent_schedule_exactly(done_run, tiny_data, tmp_path):
    """1 epoch, then --resume with trainer.epochs=2 (constant lr): the same weights, metrics and
    log as an uninterrupted 2-epoch run, the first epoch's log rows kept."""
    ref = train(tiny_config(tiny_data, 2), tmp_path / "ref")
    first_rows = (done_run / "logs" / "metrics.csv").read_text().splitlines()
    resumed = train(tiny_config(tiny_data, 2), done_run, resume=True)
    assert (resumed.metrics["epochs_completed"], resumed.metrics["global_step"]) == (2, 6)
    assert resumed.metrics["val"] == ref.metrics["val"]
    log = (done_run / "logs" / "metrics.csv").read_text()
    assert log == (tmp_path / "ref" / "logs" / "metrics.csv").read_text()
    assert log.splitlines()[: len(first_rows)] == first_rows
    assert yaml.safe_load((done_run / "config.yaml").read_text())["trainer"]["epochs"] == 2


def test_resume_drops_only_the_log_rows_after_its_checkpoint(done_run, tiny_data, tmp_path):
    """A run killed after more rows were logged than its checkpoint covers: the resumed run
    logs those steps again, once."""
    early = tmp_path / "epoch1.ckpt"
    shutil.copy(done_run / "checkpoints" / "last.ckpt", early)
    train(tiny_config(tiny_data, 2), done_run, resume=True)  # the log now holds epoch 2's rows
    shutil.copy(early, done_run / "checkpoints" / "last.ckpt")  # as if killed before epoch 2's checkpoint
    train(tiny_config(tiny_data, 2), done_run, resume=True)
    ref = train(tiny_config(tiny_data, 2), tmp_path / "ref")
    assert ref.metrics["val"]["mae"] > 0
    assert (done_run / "logs" / "metrics.csv").read_text() == (tmp_path / "ref" / "logs" / "metrics.csv").read_text()


def test_resume_refuses_a_longer_length_dependent_schedule(tiny_data, tmp_path):
    folder = tmp_path / "onecycle"
    train(tiny_config(tiny_data, 1, "optim.scheduler=onecycle"), folder)
    with pytest.raises(UserError, match="onecycle learning-rate schedule is laid out over the run's total length"):
        train(tiny_config(tiny_data, 2, "optim.scheduler=onecycle"), folder, resume=True)


@pytest.mark.parametrize("setting", ["model.spec=ecomformer:spframe_quaternion@cpu_small", "trainer.batch_size=5",
                                     "optim.lr=0.1", "trainer.seed=3", "data.target=mp2018_gap_pbe"])
def test_resume_refuses_settings_that_cannot_change(done_run, tiny_data, setting):
    before = snapshot(done_run)
    with pytest.raises(UserError, match=f"cannot change {setting.split('=')[0]}"):
        train(tiny_config(tiny_data, 1, setting), done_run, resume=True)
    assert snapshot(done_run) == before


def test_resume_cli_refuses_a_new_spec(run, done_run):
    code, _, err = run("train", "--resume", "--output", done_run, "--set", "model.spec=crystalformer:max@cpu_small")
    assert code == 2 and "cannot change model.spec" in err and "Traceback" not in err


def corrupt_config_missing(folder):
    (folder / "config.yaml").unlink()


def corrupt_config_invalid(folder):
    (folder / "config.yaml").write_text("trainer: [unclosed\n")


def corrupt_config_spec(folder):
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    cfg["model"]["options"]["hidden"] = 32
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))


def corrupt_config_frame(folder):
    """Same weights' shapes, another model: only the config stored in the checkpoint tells."""
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    cfg["model"]["spec"] = "ecomformer:spframe_quaternion@cpu_small"
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))


def corrupt_checkpoint_truncated(folder):
    path = folder / "checkpoints" / "last.ckpt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "corrupt, needle",
    [(corrupt_config_missing, "config.yaml is missing"), (corrupt_config_invalid, "not valid YAML"),
     (corrupt_config_spec, "was it edited"), (corrupt_config_frame, "was it edited"),
     (corrupt_checkpoint_truncated, "not a readable checkpoint")],
)
def test_failed_resumes_are_clean_and_keep_the_log(done_run, corrupt, needle):
    corrupt(done_run)
    before = snapshot(done_run)
    with pytest.raises(UserError, match=needle):
        train(None, done_run, resume=True)
    assert snapshot(done_run) == before and "logs/metrics.csv" in before


class Payload:
    """Unpickling this would create ``path`` (any code could run instead)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_malicious_checkpoint_is_refused_and_never_runs(done_run, tmp_path):
    marker = tmp_path / "pwned"
    ckpt = torch.load(done_run / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["payload"] = Payload(marker)
    torch.save(ckpt, done_run / "checkpoints" / "last.ckpt")
    with pytest.raises(UserError, match="refused to load this checkpoint"):
        train(None, done_run, resume=True)
    assert not marker.exists()
    # and the same file through the command line
    from crystalframes.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", "--resume", "--output", str(done_run)])
    assert exit_.value.code == 2 and not marker.exists()
