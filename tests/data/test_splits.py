"""Train/val/test splits: the benchmark random convention, official id lists, record labels."""

from __future__ import annotations

import gzip
import json
import random

import numpy as np
import pytest

from crystalframes.data import (
    MEGNET_SPLIT_SIZES,
    drop_missing_target,
    load_benchmark_split,
    make_split,
    random_split,
    split_by_field,
    split_by_ids,
)
from crystalframes.io import Crystal
from crystalframes.io.errors import DatasetError

FE = "formation_energy_peratom"


def reference_split(n, n_train, n_val, n_test, seed=123):
    """The published procedure, literally: the global ``random`` module."""
    state = random.getstate()
    try:
        ids = list(range(n))
        random.seed(seed)
        random.shuffle(ids)
    finally:
        random.setstate(state)
    return ids[:n_train], ids[-(n_val + n_test) : -n_test], ids[-n_test:]


def toy_crystals(n, split=None):
    return [
        Crystal(f"c{i}", np.eye(3) * 3.0, [1], [[0.0, 0.0, 0.0]], targets={"t": float(i)}, split=split)
        for i in range(n)
    ]


@pytest.mark.parametrize("n", [10, 11, 99, 1325, 5915, 55713])
def test_random_split_sizes_disjoint_and_deterministic(n):
    train, val, test = random_split(n)
    assert (len(train), len(val), len(test)) == (int((1 - 0.1 - 0.1) * n), int(0.1 * n), int(0.1 * n))
    union = set(train) | set(val) | set(test)
    assert len(union) == len(train) + len(val) + len(test)  # disjoint
    assert union <= set(range(n))
    assert random_split(n) == (train, val, test)
    assert random_split(n, seed=7) != (train, val, test)


@pytest.mark.parametrize("n, kw", [(10, {}), (1325, {}), (5915, {"seed": 42}), (1000, {"val_ratio": 0.2, "test_ratio": 0.15})])
def test_random_split_equals_the_global_random_procedure(n, kw):
    seed = kw.get("seed", 123)
    val_ratio, test_ratio = kw.get("val_ratio", 0.1), kw.get("test_ratio", 0.1)
    counts = int((1 - val_ratio - test_ratio) * n), int(val_ratio * n), int(test_ratio * n)
    assert random_split(n, **kw) == reference_split(n, *counts, seed=seed)


def test_random_split_leaves_global_random_state_alone():
    random.seed(999)
    expected = random.random()
    random.seed(999)
    random_split(500)
    assert random.random() == expected


def test_train_ratio_default_keeps_float_arithmetic():
    # 1 - 0.1 - 0.2 is 0.7 but 0.7 * 90 is 62.99999999999999: int() of the float product (62), not
    # the exact 63, is what the convention uses; likewise 1 - 0.05 - 0.05 = 0.8999999999999999.
    assert len(random_split(90, val_ratio=0.1, test_ratio=0.2)[0]) == 62
    assert len(random_split(30, val_ratio=0.05, test_ratio=0.05)[0]) == 26
    assert len(random_split(90, train_ratio=0.7, val_ratio=0.1, test_ratio=0.2)[0]) == 62


def test_megnet_preset_sizes():
    train, val, test = random_split(69239, **MEGNET_SPLIT_SIZES)
    assert (len(train), len(val), len(test)) == (60000, 5000, 4239)
    assert sorted(train + val + test) == list(range(69239))
    assert (train, val, test) == reference_split(69239, 60000, 5000, 4239)


def test_explicit_counts_and_edge_cases():
    train, val, test = random_split(20, n_train=5, n_val=3, n_test=2)
    assert (len(train), len(val), len(test)) == (5, 3, 2)
    train, val, test = random_split(20, n_train=15, n_val=5, n_test=0)
    assert (len(train), len(val), test) == (15, 5, [])
    assert sorted(train + val) == list(range(20))
    assert random_split(0) == ([], [], [])
    with pytest.raises(ValueError, match="exceed the 20 records"):
        random_split(20, n_train=15, n_val=5, n_test=1)
    with pytest.raises(ValueError, match="train_ratio must be within"):
        random_split(20, val_ratio=0.7, test_ratio=0.5)


def test_make_split_random_drops_missing_target_first(jarvis_sample):
    with_target = drop_missing_target(jarvis_sample, FE)
    assert len(with_target) == 1141
    parts = make_split(jarvis_sample, "random", target=FE)
    train, val, test = random_split(1141)
    assert [c.id for c in parts["train"]] == [with_target[i].id for i in train]
    assert [c.id for c in parts["val"]] == [with_target[i].id for i in val]
    assert [c.id for c in parts["test"]] == [with_target[i].id for i in test]
    assert (len(parts["train"]), len(parts["val"]), len(parts["test"])) == (912, 114, 114)


def test_make_split_random_preset_and_bad_keywords():
    crystals = toy_crystals(100)
    parts = make_split(crystals, "random", n_train=50, n_val=25, n_test=25, seed=1)
    assert sorted(c.id for part in parts.values() for c in part) == sorted(c.id for c in crystals)
    with pytest.raises(ValueError, match="exceed the 100 records"):
        make_split(crystals, "random", preset="megnet")
    with pytest.raises(TypeError, match="does not take key"):
        make_split(crystals, "random", key="megnet_e_form")
    with pytest.raises(ValueError, match="unknown split method 'kfold'"):
        make_split(crystals, "kfold")


def test_sample_split_labels_match_the_official_lists(shared_data, jarvis_sample_records):
    """Precondition of the next test, checked on the raw files."""
    with gzip.open(shared_data / "benchmark_splits.json.gz", "rt") as fh:
        lists = json.load(fh)[f"dft_3d_{FE}"]
    where = {i: label for label, ids in lists.items() for i in ids}
    labelled = [r for r in jarvis_sample_records if r["split"] is not None]
    assert len(labelled) == 905 + 121 + 115
    assert all(where.get(r["id"]) == r["split"] for r in labelled)


def test_split_by_official_ids(shared_data, jarvis_sample):
    lists = load_benchmark_split(f"dft_3d_{FE}", shared_data / "benchmark_splits.json.gz")
    assert {k: len(v) for k, v in lists.items()} == {"train": 44569, "val": 5572, "test": 5572}
    parts = split_by_ids(jarvis_sample, lists)
    assert {k: len(v) for k, v in parts.items()} == {"train": 905, "val": 121, "test": 115}
    for label, crystals in parts.items():
        assert all(c.split == label for c in crystals)
        assert set(c.id for c in crystals) <= set(lists[label])
    # the same through make_split, the file named by the environment variable
    again = make_split(jarvis_sample, "ids", key=f"dft_3d_{FE}", path=shared_data / "benchmark_splits.json.gz")
    assert {k: [c.id for c in v] for k, v in again.items()} == {k: [c.id for c in v] for k, v in parts.items()}


def test_benchmark_split_from_env_var(shared_data, monkeypatch, mp_sample):
    monkeypatch.setenv("CRYSTALFRAMES_SPLITS_FILE", str(shared_data / "benchmark_splits.json.gz"))
    parts = make_split(mp_sample, "ids", key="megnet_e_form", target="mp2018_e_form")
    assert {k: len(v) for k, v in parts.items()} == {"train": 5481, "val": 434, "test": 0}
    with pytest.raises(DatasetError, match="no split 'megnet_bulk'; available: dft_3d_bulk_modulus_kv"):
        load_benchmark_split("megnet_bulk")
    monkeypatch.delenv("CRYSTALFRAMES_SPLITS_FILE")
    with pytest.raises(DatasetError, match="CRYSTALFRAMES_SPLITS_FILE"):
        load_benchmark_split("megnet_e_form")


def test_benchmark_split_file_errors(tmp_path):
    with pytest.raises(DatasetError, match="benchmark splits file not found"):
        load_benchmark_split("megnet_e_form", tmp_path / "missing.json.gz")
    broken = tmp_path / "splits.json"
    broken.write_text("{not json")
    with pytest.raises(DatasetError, match="cannot read benchmark splits"):
        load_benchmark_split("megnet_e_form", broken)
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"toy_t": {"train": ["a"], "valid": ["b"], "test": ["c"]}}))
    assert load_benchmark_split("toy_t", plain) == {"train": ["a"], "val": ["b"], "test": ["c"]}


def test_official_lists_hold_ids_in_two_splits(shared_data):
    """Why split_by_ids must cope with ambiguous ids: the real JARVIS lists have some."""
    lists = load_benchmark_split(f"dft_3d_{FE}", shared_data / "benchmark_splits.json.gz")
    assert "JVASP-113961" in lists["train"] and "JVASP-113961" in lists["test"]


def test_split_by_ids_leaves_out_ambiguous_ids():
    crystals = toy_crystals(4)
    with pytest.warns(UserWarning, match=r"1 crystal\(s\) left out of every split: .*\(c1\)"):
        parts = split_by_ids(crystals, {"train": ["c0", "c1"], "test": ["c1", "c3"]})
    assert {k: [c.id for c in v] for k, v in parts.items()} == {"train": ["c0"], "val": [], "test": ["c3"]}
    with pytest.raises(DatasetError, match="unknown split label 'holdout'"):
        split_by_ids(toy_crystals(3), {"holdout": ["c0"]})


def test_split_by_field_on_the_mp_sample(mp_sample):
    parts = split_by_field(mp_sample)
    assert {k: len(v) for k, v in parts.items()} == {"train": 5481, "val": 434, "test": 0}
    assert all(c.split == "train" for c in parts["train"])
    via_make = make_split(mp_sample, "field", target="mp2018_e_form")
    assert [c.id for c in via_make["val"]] == [c.id for c in parts["val"]]


def test_split_by_field_labels():
    crystals = toy_crystals(2, split="Validation") + toy_crystals(1, split="TRAIN") + toy_crystals(1)
    parts = split_by_field(crystals)
    assert {k: len(v) for k, v in parts.items()} == {"train": 1, "val": 2, "test": 0}
    with pytest.raises(DatasetError, match="unknown split label 'holdout'"):
        split_by_field(toy_crystals(1, split="holdout"))
