"""`crystalframes train` stopped by a signal: SIGTERM (SLURM, Kubernetes, `timeout`), SIGINT
(Ctrl+C) and SLURM's pre-emption signal exit non-zero with one line naming where the run stopped
and the command that continues it; the continued run ends exactly where an uninterrupted one does.
Also: the progress bar on a terminal counts epochs 1..N."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
TINY = ["--set", "model.spec=ecomformer:none@cpu_small", "--set", "model.options={hidden: 16, scalars: 8, vectors: 2, rbf_bins: 16}",
        "--set", "trainer.batch_size=20", "--set", "trainer.threads=1", "--set", "trainer.deterministic=true",
        "--set", "trainer.checkpoint_every_n_steps=2", "--set", "optim.scheduler=onecycle"]
EPOCHS = 10  # 108 training records / batch 20: 6 steps an epoch, 60 in all
MESSAGE = re.compile(r"train: interrupted by (SIG\w+) at epoch (\d+) step (\d+); last checkpoint: (\S+); (.*)")


@pytest.fixture(scope="module")
def subset(demo_subset):
    return demo_subset(120, 40)


def env(tmp_path, **extra):
    return dict(os.environ, PYTHONPATH=str(SRC), CRYSTALFRAMES_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1", **extra)


def train_args(subset, out, epochs=EPOCHS):
    return ["train", *TINY, "--set", f"data.source={subset}", "--set", f"trainer.epochs={epochs}", "--output", str(out)]


def checkpoint_step(path: Path) -> int:
    import torch

    return torch.load(path, weights_only=False, map_location="cpu")["global_step"]


def interrupt(args, out, signum, tmp_path, after_step, **extra_env):
    """Start ``crystalframes train``, send ``signum`` once ``last.ckpt`` has reached
    ``after_step``, and return the finished process with its stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "crystalframes", *args], env=env(tmp_path, **extra_env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if checkpoint_step(last) >= after_step:
                break
        except Exception:  # not there yet, or being replaced
            pass
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before the signal could be sent"
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=300)
    return proc.returncode, stderr


def check_message(stderr, out, signame):
    """One line on stderr, no traceback; the checkpoint it names is at the step it names."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    m = MESSAGE.fullmatch(lines[0])
    assert m, lines[0]
    assert m.group(1) == signame and Path(m.group(4)) == out / "checkpoints" / "last.ckpt"
    step = int(m.group(3))
    assert 0 < step < EPOCHS * 6 and int(m.group(2)) == -(-step // 6)  # 1-based epoch of that step
    assert checkpoint_step(out / "checkpoints" / "last.ckpt") == step  # saved where it stopped: nothing lost
    assert not (out / "model.pt").exists() and not (out / "metrics.json").exists()
    return step, m.group(5)


@pytest.fixture(scope="module")
def reference(subset, tmp_path_factory):
    """The metrics of the same run, uninterrupted."""
    tmp = tmp_path_factory.mktemp("reference")
    proc = subprocess.run([sys.executable, "-m", "crystalframes", *train_args(subset, tmp / "run")], capture_output=True,
                          text=True, env=env(tmp), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp / "run" / "metrics.json").read_text())


def fake_slurm(tmp_path, scontrol_body):
    """SLURM's environment for one task, and an `scontrol` on PATH that logs its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/scontrol.log"\n{scontrol_body}\n')
    scontrol.chmod(0o755)
    return dict(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", SLURM_NTASKS="1", SLURM_JOB_NAME="train", SLURM_JOB_ID="4242",
                SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0")


def test_sigterm_sigint_and_slurm_preemption_stop_cleanly_and_the_run_ends_as_if_uninterrupted(subset, reference, tmp_path):
    """One run stopped three times (one training each, to keep the test short): SIGTERM exits
    143, SIGINT 130, SLURM's SIGUSR1 (with a requeue that works) 138; each time one line names the
    step `last.ckpt` was saved at and the command that continues; the last --resume ends with the
    very metrics of the uninterrupted run."""
    out = tmp_path / "run"
    resume = ["train", "--output", str(out), "--resume"]
    rc, stderr = interrupt(train_args(subset, out), out, signal.SIGTERM, tmp_path, 8)
    assert rc == 143, stderr[-3000:]
    step, rest = check_message(stderr, out, "SIGTERM")
    assert rest == f"continue with crystalframes train --output {out} --resume"

    rc, stderr = interrupt(resume, out, signal.SIGINT, tmp_path, step + 9)
    assert rc == 130, stderr[-3000:]
    step, rest = check_message(stderr, out, "SIGINT")
    assert rest == f"continue with crystalframes train --output {out} --resume"

    # SLURM answers `scontrol requeue` with SIGTERM to the job: the fake does the same to its caller
    slurm = fake_slurm(tmp_path, "kill -TERM $PPID")
    rc, stderr = interrupt(resume, out, signal.SIGUSR1, tmp_path, step + 9, **slurm)
    assert rc == 128 + signal.SIGUSR1, stderr[-3000:]
    step, rest = check_message(stderr, out, "SIGUSR1")
    assert rest == f"SLURM requeued the job: its script continues with crystalframes train --output {out} --resume"
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"

    proc = subprocess.run([sys.executable, "-m", "crystalframes", *resume], capture_output=True, text=True, env=env(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert (m["epochs_completed"], m["global_step"]) == (reference["epochs_completed"], reference["global_step"]) == (EPOCHS, 60)
    assert m["val"]["mae"] == reference["val"]["mae"]


def test_slurm_preemption_whose_requeue_fails_says_to_resubmit(subset, tmp_path):
    slurm = fake_slurm(tmp_path, "echo 'scontrol: error: Invalid job id specified' >&2; exit 1")
    out = tmp_path / "run"
    rc, stderr = interrupt(train_args(subset, out), out, signal.SIGUSR1, tmp_path, 8, **slurm)
    assert rc == 128 + signal.SIGUSR1, stderr[-3000:]
    # scontrol's own complaint, then our line
    assert stderr.startswith("scontrol: error: Invalid job id specified\n"), stderr[-3000:]
    _, rest = check_message(stderr.split("\n", 1)[1], out, "SIGUSR1")
    assert rest == f"requeue failed: resubmit with crystalframes train --output {out} --resume"


def test_sigterm_during_validation_lets_the_epoch_finish(subset, tmp_path):
    """Lightning stops a validation part-way on SIGTERM, losing the epoch's result and its
    checkpoint; the run instead finishes the validation, saves the epoch-end `last` and stops.
    The signal is sent from inside the run, at the first validation batch of epoch 2."""
    out = tmp_path / "run"
    code = ("import os, signal, sys\n"
            "from crystalframes.train import module\n"
            "step = module.PropertyModule.validation_step\n"
            "def signalling(self, batch, batch_idx, *args, **kwargs):\n"
            "    if self.trainer.current_epoch == 1 and batch_idx == 0 and not self.trainer.sanity_checking:\n"
            "        os.kill(os.getpid(), signal.SIGTERM)\n"
            "    return step(self, batch, batch_idx, *args, **kwargs)\n"
            "module.PropertyModule.validation_step = signalling\n"
            "from crystalframes.cli import main\n"
            "main(sys.argv[1:])\n")
    proc = subprocess.run([sys.executable, "-c", code, *train_args(subset, out, epochs=3)], capture_output=True, text=True,
                          env=env(tmp_path), timeout=600)
    assert proc.returncode == 143, proc.stderr[-3000:]
    step, _ = check_message(proc.stderr, out, "SIGTERM")
    assert step == 12  # the end of epoch 2 (6 steps an epoch), not the step checkpoint before it
    logged = (out / "logs" / "metrics.csv").read_text().splitlines()
    header = logged[0].split(",")
    epochs_validated = {row.split(",")[header.index("epoch")] for row in logged[1:] if row.split(",")[header.index("val_mae")]}
    assert epochs_validated == {"0", "1"}


def test_progress_bar_on_a_terminal_counts_epochs_from_one(subset, tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a terminal 120 columns wide
    try:
        proc = subprocess.Popen([sys.executable, "-m", "crystalframes", *train_args(subset, tmp_path / "run", epochs=2)],
                                env=env(tmp_path), stdout=follower, stderr=follower)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=300) == 0
    finally:
        os.close(leader)
    shown = set(re.findall(r"Epoch (\d+(?:/\d+)?)", b"".join(chunks).decode(errors="replace")))
    assert shown == {"1/2", "2/2"}, shown
