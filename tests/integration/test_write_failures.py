"""Write failures and outputs that are not regular files, end to end (issue 24): a full disk, a
read-only folder, an output name that is a file, and a named pipe, symlink or device as the
output of ``train``, ``eval``, ``data graph --json`` and ``symmetry --plot``.

Each case checks the exit code, one ``error:`` line naming the path and the errno symbol, no
traceback, and that the user's own files are unchanged. Full and read-only disks are small tmpfs
mounts inside the test's temporary folder (root only; the tests skip with the reason otherwise).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
TINY = ["--set", "model.spec=ecomformer:none@cpu_small", "--set", "model.options={hidden: 16, scalars: 8, vectors: 2, rbf_bins: 16}",
        "--set", "trainer.batch_size=20", "--set", "trainer.threads=1", "--set", "trainer.deterministic=true",
        "--set", "trainer.checkpoint_every_n_steps=2", "--set", "optim.scheduler=onecycle"]
PAGE = 4096  # tmpfs counts whole pages


@pytest.fixture(scope="module")
def subset(demo_subset):
    """60 train + 20 val records of the embedded MP demo: 3 steps an epoch, a checkpoint at step 2."""
    return demo_subset(60, 20)


def cli(*args, tmp_path, stdout=None, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(SRC), CRYSTALFRAMES_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "crystalframes", *args], stdout=stdout or subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, text=True, env=env, timeout=timeout)


def train_args(subset, out, epochs=1):
    return ["train", *TINY, "--set", f"data.source={subset}", "--set", f"trainer.epochs={epochs}", "--output", str(out)]


def one_error_line(proc, *needles) -> str:
    """The single ``error:`` line of a failed command, checked to hold every needle."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert str(needle) in errors[0], errors[0]
    return errors[0]


@contextmanager
def tmpfs(path: Path, size: int, read_only: bool = False, files: dict | None = None):
    """A tmpfs of ``size`` bytes at ``path`` holding ``files`` (name -> bytes), read-only if asked."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        for name, data in (files or {}).items():
            (path / name).write_bytes(data)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path, leave: int = 0) -> None:
    """Fill ``folder``'s file system up to ``leave`` bytes (a whole number of pages)."""
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    (folder / "filler").write_bytes(b"\0" * (free - leave))
    assert os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize == leave


USER = {"notes.txt": b"the user's own file\n"}


def assert_user_files(folder: Path) -> None:
    for name, data in USER.items():
        assert (folder / name).read_bytes() == data


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """An untrained tiny model of the demo's target, for eval (the numbers do not matter)."""
    import torch

    from crystalframes.api import save_model_file
    from crystalframes.data.normalise import TargetNormaliser
    from crystalframes.models import build_model

    torch.manual_seed(0)
    options = {"hidden": 16, "scalars": 8, "vectors": 2, "rbf_bins": 16}
    model = build_model("ecomformer:none@cpu_small", num_targets=1, **options)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model_file(path, model, "ecomformer:none@cpu_small", {"num_targets": 1, **options}, TargetNormaliser(0.0, 1.0),
                    ["mp2018_e_form"], ["eV/atom"])
    return path


# --- train ------------------------------------------------------------------------------------


def test_train_full_disk_before_any_checkpoint(subset, tmp_path):
    """The run folder is the user's folder (holding their notes): they stay, whatever fails."""
    with tmpfs(tmp_path / "disk", 64 * 1024, files=USER) as disk:
        proc = cli(*train_args(subset, disk), tmp_path=tmp_path)
        assert proc.returncode == 2, proc.stderr[-3000:]
        one_error_line(proc, disk / "checkpoints" / "last.ckpt", "(ENOSPC)", "no checkpoint was saved yet", "--overwrite")
        assert_user_files(disk)
        assert not list((disk / "checkpoints").iterdir()), "a half-written checkpoint was left behind"


def test_train_full_disk_keeps_the_last_checkpoint_and_resumes(subset, tmp_path):
    """Room for two checkpoints: the third save fails, last.ckpt of step 2 stays whole, and
    the run continues with --resume once there is space."""
    reference = tmp_path / "reference"
    assert cli(*train_args(subset, reference), tmp_path=tmp_path).returncode == 0
    ckpt = (reference / "checkpoints" / "last.ckpt").stat().st_size
    size = -(-(2 * ckpt + 16 * PAGE) // PAGE) * PAGE
    with tmpfs(tmp_path / "disk", size, files=USER) as disk:
        run = disk / "run"
        proc = cli(*train_args(subset, run), tmp_path=tmp_path)
        assert proc.returncode == 2, proc.stderr[-3000:]
        one_error_line(proc, "(ENOSPC)", f"{run / 'checkpoints' / 'last.ckpt'} (step 2) is intact", f"--output {run} --resume")
        import torch

        assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2
        assert not [p for p in (run / "checkpoints").iterdir() if p.suffix == ".part"]
        assert_user_files(disk)
        subprocess.run(["mount", "-o", f"remount,size={4 * size}", str(disk)], check=True)
        resumed = cli("train", "--output", str(run), "--resume", tmp_path=tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert json.loads((run / "metrics.json").read_text())["global_step"] == 3
        assert_user_files(disk)


def test_train_full_disk_at_the_final_files(subset, tmp_path):
    """Training finished but model.pt does not fit: the message says so and --resume writes
    the final files from the intact checkpoints."""
    with tmpfs(tmp_path / "disk", 4 * 1024 * 1024, files=USER) as disk:
        run = disk / "run"
        assert cli(*train_args(subset, run), tmp_path=tmp_path).returncode == 0
        for name in ("model.pt", "metrics.json", "model_card.md", "parity.png", "learning_curve.png", "predictions_val.csv", "predictions_test.csv"):
            (run / name).unlink()
        fill(disk, leave=2 * PAGE)  # room for config.yaml, not for the model
        proc = cli("train", "--output", str(run), "--resume", tmp_path=tmp_path)
        assert proc.returncode == 2, proc.stderr[-3000:]
        one_error_line(proc, run / "model.pt", "cannot write the model", "(ENOSPC)", "training finished", "--resume")
        assert not (run / "model.pt").exists()
        assert_user_files(disk)
        (disk / "filler").unlink()
        resumed = cli("train", "--output", str(run), "--resume", tmp_path=tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert (run / "model.pt").exists() and (run / "metrics.json").exists()


@pytest.mark.parametrize("inside", [True, False], ids=["new-folder", "the-mount-itself"])
def test_train_read_only_folder(subset, tmp_path, inside):
    with tmpfs(tmp_path / "disk", 64 * 1024, read_only=True, files=USER) as disk:
        out = disk / "run" if inside else disk
        proc = cli(*train_args(subset, out), tmp_path=tmp_path)
        assert proc.returncode == 2, proc.stderr[-3000:]
        one_error_line(proc, out, "(EROFS)", "nothing was written")
        assert_user_files(disk)


@pytest.mark.parametrize("under", [False, True], ids=["EEXIST", "ENOTDIR"])
def test_train_output_is_a_file(subset, tmp_path, under):
    existing = tmp_path / "existing.txt"
    existing.write_text("keep me\n")
    out = existing / "run" if under else existing
    proc = cli(*train_args(subset, out), tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    one_error_line(proc, out, "(ENOTDIR)" if under else "(EEXIST)", "cannot create the run folder")
    assert existing.read_text() == "keep me\n"


# --- eval -------------------------------------------------------------------------------------


def eval_args(model_file, subset, out):
    return ["eval", str(model_file), str(subset), "--split", "val", "-o", str(out)]


def test_eval_full_disk(model_file, subset, tmp_path):
    with tmpfs(tmp_path / "disk", 64 * 1024, files=USER) as disk:
        fill(disk)
        proc = cli(*eval_args(model_file, subset, disk / "ev"), tmp_path=tmp_path)
        assert proc.returncode == 2, proc.stderr[-3000:]
        one_error_line(proc, disk / "ev" / "metrics.json", "(ENOSPC)", "nothing was written")
        assert json.loads(proc.stdout)["n"] == 20  # the metrics are not lost
        assert_user_files(disk)


def test_eval_full_disk_after_the_metrics(model_file, subset, tmp_path):
    with tmpfs(tmp_path / "disk", 64 * 1024, files=USER) as disk:
        (disk / "ev").mkdir()
        fill(disk, leave=PAGE)  # metrics.json fits in one page, the predictions need another
        proc = cli(*eval_args(model_file, subset, disk / "ev"), tmp_path=tmp_path)
        assert proc.returncode == 2, proc.stderr[-3000:]
        one_error_line(proc, disk / "ev" / "predictions.csv", "(ENOSPC)", f"{disk / 'ev' / 'metrics.json'} written")
        assert json.loads((disk / "ev" / "metrics.json").read_text())["n"] == 20
        assert_user_files(disk)


def test_eval_read_only_folder(model_file, subset, tmp_path):
    with tmpfs(tmp_path / "disk", 64 * 1024, read_only=True, files=USER) as disk:
        proc = cli(*eval_args(model_file, subset, disk / "ev"), tmp_path=tmp_path)
        assert proc.returncode == 2, proc.stderr[-3000:]
        one_error_line(proc, disk / "ev", "(EROFS)", "nothing was written")
        assert_user_files(disk)


def test_eval_output_under_a_file(model_file, subset, tmp_path):
    existing = tmp_path / "existing.txt"
    existing.write_text("keep me\n")
    proc = cli(*eval_args(model_file, subset, existing / "ev"), tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    one_error_line(proc, existing / "ev", "(ENOTDIR)")
    assert existing.read_text() == "keep me\n"


def test_eval_outputs_that_are_a_symlink_and_a_device(model_file, subset, tmp_path):
    """metrics.json a symlink to the user's file elsewhere: the target is replaced, the link
    stays a link; predictions.csv a character device: written into, still a device."""
    out = tmp_path / "ev"
    out.mkdir()
    kept = tmp_path / "elsewhere" / "metrics.json"
    kept.parent.mkdir()
    kept.write_text("old\n")
    (out / "metrics.json").symlink_to(kept)
    os.mknod(out / "predictions.csv", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    proc = cli(*eval_args(model_file, subset, out), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "metrics.json").is_symlink() and json.loads(kept.read_text())["n"] == 20
    assert stat.S_ISCHR(os.lstat(out / "predictions.csv").st_mode)


def test_eval_output_a_named_pipe_without_reader_is_refused_not_a_hang(model_file, subset, tmp_path):
    out = tmp_path / "ev"
    out.mkdir()
    os.mkfifo(out / "metrics.json")
    proc = cli(*eval_args(model_file, subset, out), tmp_path=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    one_error_line(proc, out / "metrics.json", "named pipe")
    assert stat.S_ISFIFO(os.lstat(out / "metrics.json").st_mode)


def test_eval_output_a_named_pipe_with_a_reader_gets_the_metrics(model_file, subset, tmp_path):
    out = tmp_path / "ev"
    out.mkdir()
    fifo = out / "metrics.json"
    os.mkfifo(fifo)
    received = []

    def read():
        with open(fifo) as fh:  # blocks until eval opens the pipe for writing
            received.append(fh.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    proc = cli(*eval_args(model_file, subset, out), tmp_path=tmp_path, timeout=300)
    reader.join(30)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(received[0])["n"] == 20 and stat.S_ISFIFO(os.lstat(fifo).st_mode)


# --- data graph --json, symmetry --plot -------------------------------------------------------


def test_data_graph_json_to_a_full_disk(subset, tmp_path):
    record = tmp_path / "one.json"
    record.write_text(subset.read_text().splitlines()[0])
    with tmpfs(tmp_path / "disk", 64 * 1024, files=USER) as disk:
        fill(disk)
        with open(disk / "graph.json", "w") as out:
            proc = cli("data", "graph", str(record), "--json", tmp_path=tmp_path, stdout=out)
        assert proc.returncode == 2, proc.stderr[-3000:]
        one_error_line(proc, "standard output", "(ENOSPC)")
        assert_user_files(disk)


@pytest.mark.parametrize("read_only", [False, True], ids=["ENOSPC", "EROFS"])
def test_symmetry_plot_write_failure(tmp_path, read_only):
    shutil.copy(Path(__file__).resolve().parents[1] / "hostile" / "files" / "good_nacl.cif", tmp_path / "NaCl.cif")
    with tmpfs(tmp_path / "disk", 64 * 1024, read_only=read_only, files=USER) as disk:
        if not read_only:
            fill(disk)
        proc = cli("symmetry", str(tmp_path / "NaCl.cif"), "--plot", str(disk / "frames.png"), tmp_path=tmp_path)
        assert proc.returncode == 2, proc.stderr[-3000:]
        one_error_line(proc, disk / "frames.png", "cannot write the plot", "(EROFS)" if read_only else "(ENOSPC)")
        assert_user_files(disk)


# --- bench accuracy ---------------------------------------------------------------------------


def bench_args(subset, out):
    return ["bench", "accuracy", "ecomformer:none@cpu_small", *TINY[2:], "--set", f"data.source={subset}", "--set", "trainer.epochs=1",
            "-o", str(out)]


def test_bench_accuracy_table_on_a_full_disk(subset, tmp_path):
    """The grid finished but accuracy.md does not fit: the runs and results are said to be
    complete, and rerunning the command (nothing is retrained) writes the table."""
    with tmpfs(tmp_path / "disk", 4 * 1024 * 1024, files=USER) as disk:
        out = disk / "bench"
        assert cli(*bench_args(subset, out), tmp_path=tmp_path).returncode == 0
        (out / "accuracy.md").unlink()
        fill(disk)
        proc = cli(*bench_args(subset, out), tmp_path=tmp_path)
        assert proc.returncode == 2, proc.stderr[-3000:]
        one_error_line(proc, out / "accuracy.md", "(ENOSPC)", f"the runs and {out / 'results.json'} are complete")
        assert_user_files(disk)
        (disk / "filler").unlink()
        assert cli(*bench_args(subset, out), tmp_path=tmp_path).returncode == 0 and (out / "accuracy.md").exists()


def test_an_os_error_no_command_words_is_still_one_line(subset, tmp_path):
    """bench accuracy into a read-only folder fails in the grid's bookkeeping, which does not
    word its errors: the CLI's safety net prints the path and errno symbol, exit 2."""
    with tmpfs(tmp_path / "disk", 64 * 1024, read_only=True, files=USER) as disk:
        proc = cli(*bench_args(subset, disk / "bench"), tmp_path=tmp_path)
        assert proc.returncode == 2, proc.stderr[-3000:]
        one_error_line(proc, disk / "bench", "(EROFS)")
        assert_user_files(disk)
