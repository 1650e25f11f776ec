"""The sharded graph store (crystalframes.data.store): exact round trip against build_graph,
resumable and repairing builds, integrity checks, bad records, the `data build` command."""

from __future__ import annotations

import gzip
import json
import math
import pickle
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

from crystalframes.data import store as store_mod
from crystalframes.data.graph import GraphSettings, build_graph
from crystalframes.data.sources import load_dataset
from crystalframes.data.store import GraphStore, StoreError, build_store

ARRAYS = ("atomic_numbers", "frac_coords", "pos", "lattice", "edge_index", "edge_shift", "edge_vec", "edge_is_lattice")


def _demo_lines() -> list[str]:
    with gzip.open(files("crystalframes.data") / "embedded" / "mp_2018_demo.jsonl.gz", "rt", encoding="utf-8") as fh:
        return [line for line in fh.read().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def small_source(tmp_path_factory) -> Path:
    """120 demo records, with 3 bad ones among them (invalid JSON, no atoms, unknown element)."""
    lines = _demo_lines()[:120]
    bad_atoms = json.loads(lines[5])
    bad_atoms["species"], bad_atoms["frac_coords"] = [], []
    bad_element = json.loads(lines[40])
    bad_element["species"] = ["Xx"] * len(bad_element["species"])
    lines[5], lines[40] = json.dumps(bad_atoms), json.dumps(bad_element)
    lines[77] = "{not json"
    path = tmp_path_factory.mktemp("store_src") / "small.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _targets_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a
    )


def _assert_same_graphs(store: GraphStore, crystals) -> None:
    assert len(store) == len(crystals)
    for i, crystal in enumerate(crystals):
        want, got = build_graph(crystal, store.settings), store.graph(i)
        assert got.id == want.id
        for name in ARRAYS:
            a, b = getattr(want, name), getattr(got, name)
            assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), (i, name)
        assert _targets_equal(got.targets, want.targets), i


def _store_arrays(path: Path) -> dict:
    """Every shard file's bytes, by relative path (for comparing two builds)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.glob("shard-*/*"))}


def test_round_trip_of_the_demo_data(tmp_path):
    """Every array of every structure equals a direct build_graph (same dtype), and the columns
    (ids, splits, targets, atoms) match the records."""
    result = load_dataset("mp_2018_demo")
    store = build_store("mp_2018_demo", tmp_path / "s", GraphSettings(), shard_size=1500, progress=False)
    store = GraphStore.open(tmp_path / "s", verify="full")
    _assert_same_graphs(store, result.crystals)
    crystals = result.crystals
    assert store.ids() == [c.id for c in crystals]
    assert [store.id(i) for i in range(len(store))] == [c.id for c in crystals]
    assert store.record_splits() == [c.split for c in crystals]
    assert np.array_equal(store.num_atoms(), [c.num_atoms for c in crystals])
    for name in store.target_names():
        want = np.array([c.targets.get(name, np.nan) for c in crystals], dtype=np.float64)
        assert np.array_equal(store.targets(name), want, equal_nan=True)
    assert store.errors() == []
    assert np.array_equal(store.elements(7), crystals[7].atomic_numbers)
    # cheap to pickle, and usable after unpickling (a DataLoader worker's copy)
    clone = pickle.loads(pickle.dumps(store))
    assert clone.graph(3).id == crystals[3].id and len(pickle.dumps(store)) < 100_000


@pytest.mark.parametrize("settings", [GraphSettings(k=None), GraphSettings(k=12, lattice_edges=True),
                                      GraphSettings(k=None, lattice_edges=True)])
def test_round_trip_other_settings(tmp_path, small_source, settings):
    store = build_store(small_source, tmp_path / "s", settings, shard_size=50, progress=False)
    _assert_same_graphs(store, load_dataset(small_source).crystals)
    assert store.settings == settings


def test_bad_records_are_reported_and_the_build_completes(tmp_path, small_source, caplog):
    store = build_store(small_source, tmp_path / "s", GraphSettings(k=8), shard_size=50, progress=False)
    assert len(store) == 117 and store.manifest["num_records"] == 120
    errors = store.errors()
    assert len(errors) == 3
    assert ":6" in errors[0] and "no atoms" in errors[0]
    assert ":41" in errors[1] and ":78" in errors[2] and "JSON" in errors[2]
    assert "3 bad records" in caplog.text


def test_graph_errors_are_bad_records(tmp_path, small_source, monkeypatch):
    real = store_mod.build_graph

    def failing(crystal, settings):
        if crystal.id == load_dataset(small_source).crystals[10].id:
            raise MemoryError("too many neighbours")
        return real(crystal, settings)

    monkeypatch.setattr(store_mod, "build_graph", failing)
    store = build_store(small_source, tmp_path / "s", GraphSettings(k=8), shard_size=50, progress=False)
    assert len(store) == 116 and any("graph not built: MemoryError" in e for e in store.errors())


def test_killed_build_resumes_and_gives_the_same_store(tmp_path, small_source, monkeypatch):
    settings = GraphSettings(k=8)
    whole = build_store(small_source, tmp_path / "whole", settings, shard_size=20, progress=False)
    real = store_mod._write_shard
    written = []

    def dies_after_three(root, index, records, chunks):
        if len(written) == 3:
            raise KeyboardInterrupt  # as if the build were killed here
        written.append(index)
        return real(root, index, records, chunks)

    monkeypatch.setattr(store_mod, "_write_shard", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        build_store(small_source, tmp_path / "part", settings, shard_size=20, progress=False)
    with pytest.raises(StoreError, match="did not finish"):
        GraphStore.open(tmp_path / "part")

    rebuilt = []
    monkeypatch.setattr(store_mod, "_write_shard", lambda *a: rebuilt.append(a[1]) or real(*a))
    resumed = build_store(small_source, tmp_path / "part", settings, shard_size=20, progress=False)
    assert rebuilt == [3, 4, 5]  # the three finished shards were kept
    assert _store_arrays(tmp_path / "part") == _store_arrays(tmp_path / "whole")
    assert resumed.errors() == whole.errors() and len(resumed) == len(whole)
    # a rerun of a finished, intact build checks it and returns: nothing is built again
    monkeypatch.setattr(store_mod, "_build", lambda *a: pytest.fail("an intact store was built again"))
    again = build_store(small_source, tmp_path / "part", settings, shard_size=20, progress=False)
    assert again.ids() == whole.ids()


def test_parallel_build_equals_serial(tmp_path, small_source):
    settings = GraphSettings(k=8)
    build_store(small_source, tmp_path / "one", settings, workers=1, shard_size=50, progress=False)
    two = build_store(small_source, tmp_path / "two", settings, workers=2, shard_size=50, progress=False)
    assert _store_arrays(tmp_path / "one") == _store_arrays(tmp_path / "two")
    assert len(two) == 117 and len(two.errors()) == 3


def test_damaged_shards_are_detected_and_rebuilt(tmp_path, small_source, monkeypatch):
    settings = GraphSettings(k=8)
    out = tmp_path / "s"
    build_store(small_source, out, settings, shard_size=40, progress=False)
    good = _store_arrays(out)

    # a truncated file: found at open by its size alone
    edges = out / "shard-00001" / "edge_index.npy"
    edges.write_bytes(edges.read_bytes()[:-7])
    with pytest.raises(StoreError, match="shard-00001.*edge_index.npy.*truncated.*crystalframes data build"):
        GraphStore.open(out)
    # a flipped byte keeps the size: found by the sha256 check only
    frac = out / "shard-00002" / "frac_coords.npy"
    data = bytearray(frac.read_bytes())
    data[-5] ^= 0xFF
    frac.write_bytes(bytes(data))
    (out / "shard-00001" / "edge_index.npy").unlink()
    build_store(small_source, out, settings, shard_size=40, progress=False)  # repairs shard 1 (missing file), 2
    assert _store_arrays(out) == good
    data[-5] ^= 0xFF
    data[-6] ^= 0x01
    frac.write_bytes(bytes(data))
    GraphStore.open(out)  # sizes only: not read
    with pytest.raises(StoreError, match="shard-00002.*sha256"):
        GraphStore.open(out, verify="full")

    rebuilt = []
    real = store_mod._write_shard
    monkeypatch.setattr(store_mod, "_write_shard", lambda *a: rebuilt.append(a[1]) or real(*a))
    store = build_store(small_source, out, settings, shard_size=40, progress=False)
    assert rebuilt == [2]  # exactly the damaged shard
    assert _store_arrays(out) == good
    store.verify()


def test_another_build_or_a_foreign_folder_is_refused(tmp_path, small_source):
    out = tmp_path / "s"
    build_store(small_source, out, GraphSettings(k=8), shard_size=40, progress=False)
    with pytest.raises(StoreError, match="another build"):
        build_store(small_source, out, GraphSettings(k=9), shard_size=40, progress=False)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not a graph store"):
        build_store(small_source, foreign, GraphSettings(k=8), progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me" and len(list(foreign.iterdir())) == 1
    with pytest.raises(StoreError, match="not a graph store"):
        GraphStore.open(foreign)


def test_cli_build_and_verify(run, tmp_path, small_source):
    out = tmp_path / "store"
    code, stdout, stderr = run("data", "build", small_source, "-o", out, "--k", "8", "--shard-size", "50",
                               "--workers", "1")
    assert code == 0, stderr
    assert "117 structures" in stdout and "3 bad records" in stdout and "bytes/structure" in stdout
    assert GraphStore.open(out).settings == GraphSettings(k=8)
    code, stdout, _ = run("data", "verify", out)
    assert code == 0 and "117 structures" in stdout
    frac = out / "shard-00000" / "frac_coords.npy"
    data = bytearray(frac.read_bytes())
    data[-1] ^= 0x10
    frac.write_bytes(bytes(data))
    code, stdout, stderr = run("data", "verify", out)
    assert code == 2 and "shard-00000" in stderr and "Traceback" not in stderr
    # the edge-less Crystalformer input
    code, _, stderr = run("data", "build", small_source, "-o", tmp_path / "cf", "--crystalformer")
    assert code == 0, stderr
    assert GraphStore.open(tmp_path / "cf").settings == GraphSettings(k=None)
    # refusals are one clear line
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("x")
    code, _, stderr = run("data", "build", small_source, "-o", tmp_path / "other")
    assert code == 2 and "not a graph store" in stderr and "Traceback" not in stderr
    code, _, stderr = run("data", "build", "no_such_dataset_name", "-o", tmp_path / "n")
    assert code == 2 and "Traceback" not in stderr


def test_file_arrays_read_what_numpy_reads(tmp_path):
    """The store reads its .npy files with positioned reads (no memory map, whose fault-around
    made a rank's RSS grow with the store): every index form it uses gives NumPy's own answer,
    and a truncated file is an error naming it, not short data."""
    from crystalframes.data.store import _FileArray

    rng = np.random.default_rng(0)
    arrays = {"offsets": np.arange(9, dtype=np.int64), "coords": rng.random((7, 3)), "lattice": rng.random((4, 3, 3)),
              "index": rng.integers(0, 200, (2, 11)).astype(np.uint8), "present": rng.random((5, 2)) > 0.5,
              "empty": np.zeros((0, 3))}
    for name, expected in arrays.items():
        np.save(tmp_path / f"{name}.npy", expected)
        got = _FileArray(tmp_path / f"{name}.npy")
        assert got.shape == expected.shape and got.dtype == expected.dtype and len(got) == len(expected)
        np.testing.assert_array_equal(np.asarray(got), expected)
        for key in ([slice(0, 0), slice(1, 3), slice(2, None), slice(None, -1)]
                    + ([0, len(expected) - 1, -1] if len(expected) else [])):
            np.testing.assert_array_equal(got[key], expected[key])
        if expected.ndim == 2:
            for cols in (slice(0, 0), slice(1, 3), slice(None)):
                np.testing.assert_array_equal(got[:, cols], expected[:, cols])
            np.testing.assert_array_equal(got[:, 1] if expected.shape[1] > 1 else got[:, 0], expected[:, 1] if expected.shape[1] > 1 else expected[:, 0])
    with pytest.raises(IndexError):
        _FileArray(tmp_path / "offsets.npy")[9]
    path = tmp_path / "coords.npy"
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(OSError, match="coords.npy: truncated"):
        _FileArray(path)[6]


def test_file_arrays_close_descriptors_beyond_the_limit(tmp_path, monkeypatch):
    """More store files than the process keeps open (a cluster's descriptor limit of 1024 and
    a large store): the oldest descriptors are closed, reads keep working."""
    from crystalframes.data.store import _FileArray

    monkeypatch.setattr(store_mod, "_max_open_files", lambda: 2)
    monkeypatch.setattr(_FileArray, "_open", {})
    arrays = []
    for k in range(5):
        np.save(tmp_path / f"a{k}.npy", np.arange(4) + 10 * k)
        arrays.append(_FileArray(tmp_path / f"a{k}.npy"))
    for _ in range(2):
        for k, a in enumerate(arrays):
            assert a[1] == 10 * k + 1
            assert len(_FileArray._open) <= 2


def test_compact_meta_columns_give_back_what_was_stored():
    """A shard's ids and splits are held as one blob / one byte per structure; reading them gives
    the stored values, non-ASCII and empty ones included."""
    from crystalframes.data.store import _Labels, _Texts

    ids = ["mp-1", "", "JVASP-48055", "Fe₂O₃ été", "x" * 300]
    texts = _Texts(ids)
    assert len(texts) == 5 and list(texts) == ids and [texts[j] for j in range(5)] == ids
    assert list(_Texts([])) == []
    labels = ["train", None, "val", "train", "test", None]
    coded = _Labels(labels)
    assert list(coded) == labels and [coded[j] for j in range(6)] == labels
    with pytest.raises(ValueError, match="one byte"):
        _Labels([str(i) for i in range(300)])
