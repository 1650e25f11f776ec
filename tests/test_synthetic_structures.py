"""benchmarks/synthetic_structures.py: the synthetic scale data set of issue 26 reads back as a
data set, is reproducible from its seed, and every structure is a valid crystal."""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from crystalframes.data import load_dataset
from crystalframes.io.crystal import MIN_INTERATOMIC_DISTANCE, min_interatomic_distance

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "synthetic_structures.py"
N = 300


@pytest.fixture(scope="module")
def synthetic():
    spec = importlib.util.spec_from_file_location("synthetic_structures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def written(synthetic, tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    paths = {}
    for name, seed in (("a.jsonl.gz", 7), ("b.jsonl", 7), ("c.jsonl", 8)):
        synthetic.write_synthetic(N, folder / name, seed=seed)
        paths[name] = folder / name
    return paths


def _lines(path: Path) -> list[bytes]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        return fh.read().splitlines()


def test_readable_by_load_dataset(written, synthetic):
    result = load_dataset(written["a.jsonl.gz"], target=synthetic.TARGET_NAME)
    assert len(result.crystals) == N and not result.errors
    assert {c.split for c in result.crystals} == {"train", "val", "test"}
    assert all(np.isfinite(c.target(synthetic.TARGET_NAME)) for c in result.crystals)


def test_deterministic_for_a_seed(written):
    a, b, c = (_lines(written[name]) for name in ("a.jsonl.gz", "b.jsonl", "c.jsonl"))
    assert a == b  # same seed: same records, gzip or not
    assert a != c


def test_prefix_of_a_longer_file(written, synthetic, tmp_path):
    synthetic.write_synthetic(N // 3, tmp_path / "short.jsonl", seed=7)
    assert _lines(tmp_path / "short.jsonl") == _lines(written["b.jsonl"])[: N // 3]


def test_structures_valid_ids_unique_and_labelled_synthetic(written, synthetic):
    records = [json.loads(line) for line in _lines(written["b.jsonl"])]
    ids = [r["id"] for r in records]
    assert len(set(ids)) == N and all(i.startswith("synthetic-") for i in ids)
    substituted = 0
    for r in records:
        assert r["db"] == "synthetic" and r["synthetic"] is True and "not real data" in r["source"]
        assert list(r["targets"]) == [synthetic.TARGET_NAME] and "synthetic" in synthetic.TARGET_NAME
        lattice, frac = np.array(r["lattice"]), np.array(r["frac_coords"])
        assert np.linalg.det(lattice) > 0
        # an independent check of the construction's distance bound, on the written (rounded) numbers
        assert min_interatomic_distance(lattice, frac, MIN_INTERATOMIC_DISTANCE) >= MIN_INTERATOMIC_DISTANCE
        substituted += "->" in r["source"]
    assert 0.2 * N < substituted < 0.8 * N  # substitution happens, with probability ~0.5


def test_derived_from_a_parent_by_small_changes(written, synthetic):
    parents = {p.id: p for p in synthetic.load_parents()}
    for r in (json.loads(line) for line in _lines(written["b.jsonl"])[:50]):
        parent = parents[r["source"].split("strained/perturbed ")[1].split(",")[0]]
        lattice = np.array(r["lattice"])
        strain = np.linalg.solve(parent.lattice, lattice) - np.eye(3)
        assert np.linalg.norm(strain) <= synthetic.MAX_STRAIN + 1e-5
        assert np.allclose(strain, strain.T, atol=1e-5)
        # displacement of each atom (minimum image), in A, within the largest bound
        delta = np.array(r["frac_coords"]) - parent.frac
        delta -= np.round(delta)
        moved = np.linalg.norm(delta @ lattice, axis=1)
        assert moved.max() <= synthetic.DISPLACEMENT_RANGE[1] + 1e-4
        assert len(r["species"]) == len(parent.species)
        changed = [(a, b) for a, b in zip(parent.species, r["species"]) if a != b]
        assert all(b in synthetic.SUBSTITUTES[a] for a, b in changed)
