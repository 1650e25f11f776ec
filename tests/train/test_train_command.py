"""`crystalframes train` usage mistakes: one clear line, exit code 2, no traceback, and no run
folder left behind by a run that could not start."""

import importlib.util
import sys

import pytest
import yaml

from tiny import cli, set_args, tiny_sets


@pytest.mark.parametrize(
    "setting, needle",
    [("trainer.epoch=1", "unknown setting trainer.epoch; did you mean trainer.epochs?"),
     ("trainer.batch_size=0", "trainer.batch_size: Input should be greater than or equal to 1"),
     ("model.options.hiden=64", "model.options.hiden (did you mean hidden?)"),
     ("model.spec=ecomformer:nonsense", "unknown frame 'nonsense'")],
)
def test_bad_settings_stop_before_any_run_folder(run, tiny_data, tmp_path, setting, needle):
    out = tmp_path / "run"
    code, _, err = run("train", *set_args(tiny_sets(tiny_data, 1)), "--set", setting, "--output", out)
    assert code == 2 and needle in err and "Traceback" not in err, err
    assert not out.exists()


def test_unknown_model_option_lists_the_known_ones(run, tiny_data, tmp_path):
    code, _, err = run("train", *set_args(tiny_sets(tiny_data, 1)), "--set", "model.options.hiden=64", "--output", tmp_path / "r")
    assert code == 2 and "known options:" in err and "rbf_bins" in err


def test_tensorboard_without_the_package_stops_before_any_run_folder(run, tiny_data, tmp_path, monkeypatch):
    """The dev environment may have tensorboard: simulate its absence."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.split(".")[0] in ("tensorboard", "tensorboardX") else real(name, *a))
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    out = tmp_path / "run"
    code, _, err = run("train", *set_args(tiny_sets(tiny_data, 1)), "--set", "trainer.tensorboard=true", "--output", out)
    assert code == 2 and "tensorboard" in err and "pip install tensorboard" in err and "Traceback" not in err, err
    assert not out.exists()


def test_print_config_shows_the_resolved_config_without_training(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run("train", "--print-config", "--set", "trainer.batch_size=7")
    assert code == 0, err
    cfg = yaml.safe_load(out)
    # the cpu preset's published training settings are filled in; --set wins over them
    assert cfg["trainer"]["epochs"] == 18 and cfg["optim"]["scheduler"] == "onecycle" and cfg["trainer"]["batch_size"] == 7
    assert cfg["model"]["spec"] == "ecomformer:spframe_quaternion@cpu"
    assert not (tmp_path / "runs").exists()


def test_resume_without_output_is_a_usage_error(tmp_path):
    proc = cli(tmp_path, "train", "--resume")
    assert proc.returncode == 2 and "--output" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_resume_and_overwrite_together_is_a_usage_error(run, tmp_path):
    code, _, err = run("train", "--resume", "--overwrite", "--output", tmp_path / "r")
    assert code == 2 and "not both" in err and "Traceback" not in err


def test_piped_training_prints_progress_lines(tiny_data, tmp_path):
    """stdout is a pipe here (as in a SLURM log): one line per epoch with loss, val MAE, time and ETA."""
    proc = cli(tmp_path, "train", *set_args(tiny_sets(tiny_data, 2)), "--output", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [l for l in proc.stdout.splitlines() if l.startswith("epoch ")]
    assert len(lines) == 2, proc.stdout
    assert lines[0].startswith("epoch 1/2  step 3/6  train_loss ") and "val_mae " in lines[0] and "eV/atom" in lines[0]
    assert "elapsed " in lines[0] and "eta " in lines[0] and lines[1].startswith("epoch 2/2  step 6/6")


def test_progress_lines_within_a_long_epoch(run, tiny_data, tmp_path):
    code, out, err = run("train", *set_args(tiny_sets(tiny_data, 1, "trainer.progress_seconds=1e-9")), "--output", tmp_path / "r")
    assert code == 0, err
    lines = [l for l in out.splitlines() if l.startswith("epoch 1/1")]
    # a line after each of the 3 steps, and the epoch's line with its validation MAE
    assert len(lines) == 4 and "val_mae" in lines[-1] and "val_mae" not in lines[0], out


def test_one_logger_option_and_the_old_tensorboard_key(run, tiny_data, tmp_path, monkeypatch):
    """trainer.logger = csv | tensorboard | wandb; trainer.tensorboard=true still means
    tensorboard; a logger whose package is missing stops before any run folder."""
    import importlib.util
    import sys

    from crystalframes.train.config import load_config

    assert load_config(None, ["trainer.tensorboard=true"]).trainer.logger == "tensorboard"
    assert load_config(None, ["trainer.tensorboard=false"]).trainer.logger == "csv"
    assert load_config(None, ["trainer.logger=wandb"]).trainer.logger == "wandb"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.split(".")[0] == "wandb" else real(name, *a))
    monkeypatch.setitem(sys.modules, "wandb", None)
    out = tmp_path / "run"
    code, _, err = run("train", *set_args(tiny_sets(tiny_data, 1)), "--set", "trainer.logger=wandb", "--output", out)
    assert code == 2 and "pip install wandb" in err and not out.exists(), err
    code, _, err = run("train", "--set", "trainer.loger=csv", "--output", out)
    assert code == 2 and "did you mean trainer.logger" in err
