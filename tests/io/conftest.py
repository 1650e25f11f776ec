"""Fixtures for the io tests: the real data in ../shared/data and small hand-made structures."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest


MP_SAMPLE = "mp_2018_sample.jsonl.gz"
JARVIS_SAMPLE = "jarvis_dft_3d_sample.jsonl.gz"


def load_raw_records(path: Path, n: int | None = None) -> list[dict]:
    """The first ``n`` raw JSON records of a ``.jsonl.gz`` sample."""
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            out.append(json.loads(line))
            if n is not None and len(out) >= n:
                break
    return out


@pytest.fixture(scope="session")
def mp_records(shared_data) -> list[dict]:
    return load_raw_records(shared_data / MP_SAMPLE, 40)


@pytest.fixture(scope="session")
def jarvis_records(shared_data) -> list[dict]:
    return load_raw_records(shared_data / JARVIS_SAMPLE, 40)


def nacl_record(**changes) -> dict:
    """A valid rock-salt NaCl record in the project's JSONL format (hand-made, 8 atoms)."""
    a = 5.64
    rec = {
        "id": "nacl",
        "db": "test",
        "source": "hand-made",
        "split": "train",
        "targets": {"e_form": -2.1, "gap": 5.0},
        "lattice": [[a, 0.0, 0.0], [0.0, a, 0.0], [0.0, 0.0, a]],
        "species": ["Na"] * 4 + ["Cl"] * 4,
        "frac_coords": [
            [0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0],
            [0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5],
        ],
    }
    rec.update(changes)
    return rec


@pytest.fixture
def make_record():
    """Factory: ``make_record(**changes)`` -> a valid NaCl JSONL record with ``changes`` applied."""
    return nacl_record
