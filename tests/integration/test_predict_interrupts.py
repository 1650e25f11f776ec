"""`crystalframes predict` interrupted, failing to write, given odd output targets and huge batches:
an interruption keeps the finished batches and the same command continues to the CSV an
uninterrupted run writes; every failed write is one line naming the path, the reason and what
was written; FIFOs, symlinks and devices stay what they are; batches obey the atom budget;
progress shows in a pipe.

The model is a freshly initialised small eComFormer saved as a band-gap model (a target that
cannot be negative), so its raw outputs around 0 exercise the clipped and raw columns."""

from __future__ import annotations

import csv
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
TARGET = "mp2018_gap_pbe"
N_STRUCTURES = 600  # with --batch-size 1: a run of many seconds, interrupted once its partial file shows


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    import torch

    from crystalframes.api import save_model_file
    from crystalframes.data.normalise import TargetNormaliser
    from crystalframes.models import build_model

    torch.manual_seed(0)
    options = {"hidden": 16, "scalars": 8, "vectors": 2, "rbf_bins": 16}
    model = build_model("ecomformer:none@cpu_small", **options)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    return save_model_file(path, model, model.spec, options, TargetNormaliser(0.0, 1.0), [TARGET], ["eV"])


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """A JSONL of N_STRUCTURES demo crystals (the embedded MP demo's first ones)."""
    import gzip
    from importlib.resources import files

    lines = gzip.open(files("crystalframes.data") / "embedded" / "mp_2018_demo.jsonl.gz", "rt").read().splitlines()
    path = tmp_path_factory.mktemp("inputs") / "many.jsonl"
    path.write_text("\n".join(lines[:N_STRUCTURES]) + "\n")
    return path


@pytest.fixture(scope="module")
def few(many, tmp_path_factory):
    path = tmp_path_factory.mktemp("inputs") / "few.jsonl"
    path.write_text("\n".join(many.read_text().splitlines()[:12]) + "\n")
    return path


def env(**extra):
    return dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", **extra)


def cli(*args, cwd, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "crystalframes", *map(str, args)], capture_output=True, text=True,
                          env=env(), cwd=cwd, timeout=timeout, stdin=subprocess.DEVNULL, **kw)


def one_line(stderr: str, *words):
    """The one error line: no traceback, naming each of ``words``."""
    assert "Traceback" not in stderr, stderr
    (line,) = [x for x in stderr.splitlines() if x.startswith("error:")]
    for w in words:
        assert w in line, line
    return line


@pytest.fixture(scope="module")
def reference(model_file, many, tmp_path_factory):
    """The CSV of an uninterrupted run."""
    folder = tmp_path_factory.mktemp("reference")
    proc = cli("predict", model_file, many, "-o", "ref.csv", "--batch-size", "1", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    return (folder / "ref.csv").read_bytes()


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_interrupted_predict_keeps_its_work_and_the_same_command_continues(model_file, many, reference, tmp_path, sig, code):
    (tmp_path / "out.csv").write_text("old predictions\n")
    argv = ["predict", model_file, many, "-o", "out.csv", "--batch-size", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "crystalframes", *map(str, argv)], cwd=tmp_path, env=env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial = tmp_path / "out.csv.partial"
    deadline = time.monotonic() + 120
    while not (partial.exists() and partial.read_bytes().count(b"\n") > 20) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"finished or died before it was interrupted: {proc.communicate()}"
    assert partial.exists(), "no partial file after 2 minutes"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err, err
    (line,) = [x for x in err.splitlines() if "interrupted" in x]
    assert f"interrupted by {sig.name}" in line and f"of {N_STRUCTURES} structure(s)" in line, line
    assert str(partial.name) in line and "continue with: crystalframes predict" in line and "out.csv left as it was" in line, line
    assert (tmp_path / "out.csv").read_text() == "old predictions\n"
    # the same command, run again, continues from the partial file and writes what an uninterrupted run writes
    again = cli(*argv, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "continuing from" in again.stderr and "already done" in again.stderr, again.stderr
    assert (tmp_path / "out.csv").read_bytes() == reference
    assert not partial.exists()


def test_a_foreign_partial_file_is_never_continued(model_file, many, few, tmp_path):
    """A partial file of another command (other inputs) is refused by name, and --restart discards it."""
    partial = tmp_path / "out.csv.partial"
    proc = subprocess.Popen([sys.executable, "-m", "crystalframes", "predict", str(model_file), str(many), "-o", "out.csv",
                             "--batch-size", "1"], cwd=tmp_path, env=env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300  # a loaded 2-core machine took over 120 s to the first rows once
    while not (partial.exists() and partial.read_bytes().count(b"\n") > 2) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert partial.exists(), (proc.returncode, err[-2000:])
    other = cli("predict", model_file, few, "-o", "out.csv", "--batch-size", "1", cwd=tmp_path)
    assert other.returncode == 2
    one_line(other.stderr, "out.csv.partial", "different predict command", "the inputs", "--restart")
    assert partial.exists() and not (tmp_path / "out.csv").exists()
    restarted = cli("predict", model_file, few, "-o", "out.csv", "--batch-size", "1", "--restart", cwd=tmp_path)
    assert restarted.returncode == 0, restarted.stderr
    assert "discarded" in restarted.stderr
    assert len(list(csv.DictReader(open(tmp_path / "out.csv")))) == 12 and not partial.exists()


def test_nonnegative_target_is_clipped_with_its_raw_value_kept(model_file, few, tmp_path):
    proc = cli("predict", model_file, few, "-o", "out.csv", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(open(tmp_path / "out.csv")))
    raw = [float(r[f"{TARGET} raw (eV)"]) for r in rows]
    clipped = [float(r[f"{TARGET} (eV)"]) for r in rows]
    assert any(x < 0 for x in raw), "the untrained model should give some negative gaps"
    assert clipped == [max(0.0, x) for x in raw]


# ---------------------------------------------------------------- failed writes

@pytest.fixture
def mount(tmp_path):
    """``mount(options) -> folder``: a 64 kB tmpfs inside tmp_path (unmounted afterwards)."""
    mounted = []

    def make(options: str, fill: bool = False) -> Path:
        folder = tmp_path / f"mnt{len(mounted)}"
        folder.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"{options},size=64k", "tmpfs", str(folder)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(folder)
        if fill:  # fill it to the last byte
            fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
            try:
                while os.write(fd, b"x" * 512):
                    pass
            except OSError:
                pass
            finally:
                os.close(fd)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_full_disk_for_the_csv(model_file, few, tmp_path, mount):
    full = mount("rw", fill=True)
    proc = cli("predict", model_file, few, "-o", full / "out.csv", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    one_line(proc.stderr, f"{full / 'out.csv'}: cannot write the predictions", "no space left", "ENOSPC", "nothing written")
    assert not (full / "out.csv").exists()


def test_full_disk_for_the_embeddings_says_the_csv_was_written(model_file, few, tmp_path, mount):
    full = mount("rw", fill=True)
    proc = cli("predict", model_file, few, "-o", "out.csv", "--embeddings", full / "emb.npz", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    one_line(proc.stderr, f"{full / 'emb.npz'}: cannot write the embeddings", "ENOSPC", "the predictions were written to out.csv")
    assert len(list(csv.DictReader(open(tmp_path / "out.csv")))) == 12
    # the finished batches are kept, so the same command (with room) writes the embeddings without predicting again
    assert (tmp_path / "out.csv.partial").exists()
    again = cli("predict", model_file, few, "-o", "out.csv", "--embeddings", "emb.npz", cwd=tmp_path)
    assert again.returncode == 0 and "continuing from" in again.stderr, again.stderr
    assert (tmp_path / "emb.npz").exists() and not (tmp_path / "out.csv.partial").exists()


@pytest.mark.parametrize("which", ["csv", "embeddings"])
def test_read_only_folder(model_file, few, tmp_path, mount, which):
    ro = mount("ro")
    if which == "csv":
        proc = cli("predict", model_file, few, "-o", ro / "out.csv", cwd=tmp_path)
        one_line(proc.stderr, f"{ro / 'out.csv'}: cannot write the predictions", "read-only", "EROFS")
    else:
        proc = cli("predict", model_file, few, "-o", "out.csv", "--embeddings", ro / "emb.npz", cwd=tmp_path)
        one_line(proc.stderr, f"{ro / 'emb.npz'}: cannot write the embeddings", "EROFS", "the predictions were written to out.csv")
        assert (tmp_path / "out.csv").exists()
    assert proc.returncode == 2


# ---------------------------------------------------------------- FIFO, symlink, device

def _read_fifo(path: Path, into: list):
    with open(path, "rb") as fh:
        into.append(fh.read())


@pytest.mark.parametrize("which", ["csv", "embeddings"])
def test_fifo_target_receives_the_output(model_file, few, tmp_path, which):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list = []
    reader = threading.Thread(target=_read_fifo, args=(fifo, got), daemon=True)
    reader.start()
    time.sleep(0.2)
    args = ["-o", fifo] if which == "csv" else ["-o", "out.csv", "--embeddings", fifo]
    proc = cli("predict", model_file, few, *args, cwd=tmp_path)
    reader.join(30)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert got and (got[0].startswith(b"id,source") if which == "csv" else got[0].startswith(b"PK"))
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("which", ["csv", "embeddings"])
def test_symlink_target_is_replaced_and_the_link_stays(model_file, few, tmp_path, which):
    real = tmp_path / "real"
    real.write_text("old\n")
    link = tmp_path / "link"
    link.symlink_to(real)
    args = ["-o", link] if which == "csv" else ["-o", "out.csv", "--embeddings", link]
    proc = cli("predict", model_file, few, *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_bytes().startswith(b"id,source" if which == "csv" else b"PK")


@pytest.mark.parametrize("which", ["csv", "embeddings"])
def test_character_device_stays_a_device(model_file, few, tmp_path, which):
    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except OSError as exc:
        pytest.skip(f"cannot make a device node here: {exc}")
    args = ["-o", node] if which == "csv" else ["-o", "out.csv", "--embeddings", node]
    proc = cli("predict", model_file, few, *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISCHR(os.lstat(node).st_mode)
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".cf-*"))


# ---------------------------------------------------------------- batches and progress

def test_huge_batch_size_is_capped_by_the_atom_budget(model_file, few, tmp_path):
    proc = cli("predict", model_file, few, "-o", "out.csv", "--batch-size", "100000", "--batch-atoms", "40", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (warning,) = [x for x in proc.stderr.splitlines() if x.startswith("warning:")]
    assert "--batch-size 100000 capped" in warning and "40 atoms" in warning, warning


def test_batches_obey_the_atom_budget():
    from crystalframes.predict_run import plan_batches

    atoms = [10, 10, 30, 50, 5, 5, 5]
    batches = plan_batches(atoms, 2, 40)
    assert batches == [(0, 2), (2, 3), (3, 4), (4, 6), (6, 7)]
    assert all(sum(atoms[a:b]) <= 40 or b - a == 1 for a, b in batches)


def test_progress_lines_when_piped(model_file, many, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "crystalframes", "predict", str(model_file), str(many), "-o", "out.csv",
                           "--batch-size", "4"], cwd=tmp_path, env=env(CRYSTALFRAMES_PROGRESS_SECONDS="0.2"),
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.endswith("structures/s") and f"of {N_STRUCTURES} structure(s)," in x]
    assert lines, proc.stderr
    assert "structures/s)" in proc.stderr.splitlines()[-1], proc.stderr  # the summary line


@pytest.mark.parametrize("kind", ["file", "fifo"])
def test_a_file_of_the_users_named_like_the_partial_file_is_never_touched(model_file, few, tmp_path, kind):
    """Even with --restart: only a file that is a predict partial file is continued or discarded."""
    theirs = tmp_path / "out.csv.partial"
    if kind == "file":
        theirs.write_text("my notes\n")
    else:
        os.mkfifo(theirs)  # reading it would hang
    for extra in ([], ["--restart"]):
        proc = cli("predict", model_file, few, "-o", "out.csv", *extra, cwd=tmp_path, timeout=120)
        assert proc.returncode == 2, proc.stderr
        one_line(proc.stderr, "out.csv.partial: is not a crystalframes predict partial file")
    assert (theirs.read_text() == "my notes\n") if kind == "file" else stat.S_ISFIFO(os.lstat(theirs).st_mode)
    assert not (tmp_path / "out.csv").exists()
