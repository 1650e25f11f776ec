"""Shared fixtures. Tests needing ../shared/data skip with a reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

SHARED_DATA_ENV = "CRYSTALFRAMES_SHARED_DATA"


def shared_data_dir() -> Path | None:
    env = os.environ.get(SHARED_DATA_ENV)
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return path if (path / "jarvis_dft_3d_sample.jsonl.gz").exists() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip(f"../shared/data not found (set {SHARED_DATA_ENV} to its folder to run this test)")
    return path


@pytest.fixture(scope="session")
def jarvis_sample(shared_data):
    from crystalframes.io import read_dataset

    return read_dataset(shared_data / "jarvis_dft_3d_sample.jsonl.gz").crystals


@pytest.fixture(scope="session")
def mp_sample(shared_data):
    from crystalframes.io import read_dataset

    return read_dataset(shared_data / "mp_2018_sample.jsonl.gz").crystals


@pytest.fixture
def nacl():
    """Rock salt, conventional 8-atom cell, a = 5.64 A."""
    a = 5.64
    from crystalframes.io import Crystal

    fcc = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    return Crystal("NaCl", np.eye(3) * a, [11] * 4 + [17] * 4, np.concatenate([fcc, fcc + [0.5, 0, 0]]))


@pytest.fixture
def nacl_and_skewed(nacl):
    """Rock salt and a 3-atom triclinic cell of three elements: a symmetric and a generic crystal."""
    from crystalframes.io import Crystal

    skewed = Crystal("skewed", [[4.0, 0, 0], [1.1, 3.7, 0], [0.4, 0.3, 4.5]], [8, 14, 26],
                     [[0.1, 0.2, 0.3], [0.6, 0.55, 0.9], [0.3, 0.8, 0.1]])
    return [nacl, skewed]


@pytest.fixture
def run(capsys):
    """``run(*args) -> (exit_code, stdout, stderr)`` of ``crystalframes *args``, in-process, as a
    user would type it (subprocess tests use ``python -m crystalframes`` instead)."""
    from crystalframes.cli import main

    def _run(*args):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        out = capsys.readouterr()
        return code, out.out, out.err

    return _run


@pytest.fixture(scope="session")
def demo_subset(tmp_path_factory):
    """``make(n_train, n_val) -> Path``: a JSONL of the first ``n_train`` train and ``n_val`` val
    records of the embedded MP demo that hold the formation energy (real crystals, small runs)."""
    import gzip
    from importlib.resources import files

    lines = gzip.open(files("crystalframes.data") / "embedded" / "mp_2018_demo.jsonl.gz", "rt").read().splitlines()

    def make(n_train: int, n_val: int) -> Path:
        train = [line for line in lines if '"split":"train"' in line and "mp2018_e_form" in line][:n_train]
        val = [line for line in lines if '"split":"val"' in line and "mp2018_e_form" in line][:n_val]
        path = tmp_path_factory.mktemp("data") / f"demo_{n_train}_{n_val}.jsonl"
        path.write_text("\n".join(train + val) + "\n")
        return path

    return make


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module: small tensors and reductions that must not depend on how
    many cores the test worker shares (a second thread only slows them on a shared machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
