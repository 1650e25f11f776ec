"""Fixtures of the training tests (helpers in tiny.py)."""

import gzip

import pytest

from tiny import tiny_config


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """30 train + 10 val records (JSONL) of the embedded MP demo."""
    from importlib.resources import files

    lines = gzip.open(files("crystalframes.data") / "embedded" / "mp_2018_demo.jsonl.gz", "rt").read().splitlines()
    train = [l for l in lines if '"split":"train"' in l and "mp2018_e_form" in l][:30]
    val = [l for l in lines if '"split":"val"' in l and "mp2018_e_form" in l][:10]
    path = tmp_path_factory.mktemp("data") / "tiny.jsonl"
    path.write_text("\n".join(train + val) + "\n")
    return path


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CRYSTALFRAMES_CACHE_DIR", str(tmp_path / "cache"))




@pytest.fixture
def done_run(tiny_data, tmp_path):
    """A finished 1-epoch tiny run (constant schedule, its only `last` checkpoint at the epoch end)."""
    from crystalframes.train.run import train

    folder = tmp_path / "done"
    train(tiny_config(tiny_data, 1), folder)
    return folder
