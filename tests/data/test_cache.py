import logging
from dataclasses import replace

import numpy as np
import pytest

from crystalframes.data import cache as cache_mod
from crystalframes.data.cache import build_graphs
from crystalframes.data.graph import GraphSettings, build_graph


@pytest.fixture
def crystals(nacl):
    return [nacl, replace(nacl, id="NaCl-shifted", frac_coords=nacl.frac_coords + 0.01, targets={"t": 2.0})]


def cache_files(folder):
    return sorted(folder.glob("graphs-*.pt"))


def same(a, b):
    return all(np.array_equal(x.edge_vec, y.edge_vec) and x.id == y.id and x.targets == y.targets for x, y in zip(a, b))


def test_second_call_reads_the_cache(tmp_path, crystals, monkeypatch):
    first = build_graphs(crystals, GraphSettings(k=6), cache_dir=tmp_path)
    assert len(cache_files(tmp_path)) == 1
    monkeypatch.setattr(cache_mod, "build_graph", lambda *a, **k: pytest.fail("cache not used"))
    second = build_graphs(crystals, GraphSettings(k=6), cache_dir=tmp_path)
    assert same(first, second) and second[1].targets == {"t": 2.0}


def test_changed_data_or_settings_get_their_own_entry(tmp_path, crystals):
    build_graphs(crystals, GraphSettings(k=6), cache_dir=tmp_path)
    g = build_graphs(crystals, GraphSettings(k=8), cache_dir=tmp_path)
    assert g[0].num_edges == build_graph(crystals[0], GraphSettings(k=8)).num_edges
    moved = [replace(crystals[0], frac_coords=crystals[0].frac_coords + 0.02)] + crystals[1:]
    build_graphs(moved, GraphSettings(k=6), cache_dir=tmp_path)
    assert len(cache_files(tmp_path)) == 3


def test_corrupted_cache_is_detected_and_rebuilt(tmp_path, crystals, caplog):
    ref = build_graphs(crystals, GraphSettings(k=6), cache_dir=tmp_path)
    (path,) = cache_files(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    with caplog.at_level(logging.WARNING, logger="crystalframes.data"):
        again = build_graphs(crystals, GraphSettings(k=6), cache_dir=tmp_path)
    assert "unreadable" in caplog.text and same(ref, again)
    assert build_graphs(crystals, GraphSettings(k=6), cache_dir=tmp_path)  # rewritten, valid


def test_tampered_payload_fails_the_checksum(tmp_path, crystals, caplog):
    import torch

    build_graphs(crystals, GraphSettings(k=6), cache_dir=tmp_path)
    (path,) = cache_files(tmp_path)
    data = torch.load(path, weights_only=True)
    data["edge_vec"][0, 0] += 1.0
    torch.save(data, path)
    with caplog.at_level(logging.WARNING, logger="crystalframes.data"):
        again = build_graphs(crystals, GraphSettings(k=6), cache_dir=tmp_path)
    assert "checksum" in caplog.text
    assert np.array_equal(again[0].edge_vec, build_graph(crystals[0], GraphSettings(k=6)).edge_vec)


def test_stale_key_in_file_is_not_trusted(tmp_path, crystals, caplog):
    import torch

    build_graphs(crystals, GraphSettings(k=6), cache_dir=tmp_path)
    (path,) = cache_files(tmp_path)
    data = torch.load(path, weights_only=True)
    data["key"] = "0" * 64
    torch.save(data, path)
    with caplog.at_level(logging.WARNING, logger="crystalframes.data"):
        build_graphs(crystals, GraphSettings(k=6), cache_dir=tmp_path)
    assert "stale" in caplog.text


def test_cache_dir_env_override(tmp_path, monkeypatch, crystals):
    monkeypatch.setenv("CRYSTALFRAMES_CACHE_DIR", str(tmp_path / "c"))
    build_graphs(crystals, GraphSettings(k=6))
    assert len(cache_files(tmp_path / "c" / "graphs")) == 1
