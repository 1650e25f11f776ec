"""Fixtures of the training tests (helpers in tiny.py)."""

import pytest

from tiny import tiny_config


@pytest.fixture(scope="session")
def tiny_data(demo_subset):
    """30 train + 10 val records (JSONL) of the embedded MP demo."""
    return demo_subset(30, 10)


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
