"""Helpers for tiny trainings: 30 + 10 real crystals of the embedded MP demo, a 16-wide
eComFormer without frames, 3 steps per epoch (about a second per epoch)."""

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

TINY = ["model.spec=ecomformer:none@cpu_small", "model.options={hidden: 16, scalars: 8, vectors: 2, rbf_bins: 16}",
        "trainer.batch_size=10", "trainer.threads=1", "trainer.deterministic=true", "trainer.checkpoint_every_n_steps=100",
        "optim.scheduler=constant"]


def tiny_sets(data, epochs=1, *extra):
    return [*TINY, f"data.source={data}", f"trainer.epochs={epochs}", *extra]


def tiny_config(data, epochs=1, *extra):
    from crystalframes.train.config import load_config

    return load_config(None, tiny_sets(data, epochs, *extra))


def cli_env(tmp_path, **extra):
    return dict(os.environ, PYTHONPATH=str(SRC), CRYSTALFRAMES_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1", **extra)


def cli(tmp_path, *args, timeout=300, **env):
    """``crystalframes *args`` in a fresh interpreter (stdout a pipe, as under SLURM)."""
    return subprocess.run([sys.executable, "-m", "crystalframes", *args], capture_output=True, text=True,
                          env=cli_env(tmp_path, **env), timeout=timeout)


def set_args(sets):
    return [a for s in sets for a in ("--set", s)]
