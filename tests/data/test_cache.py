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


# --------------------------------------------------------------------------------------------
# defect 4: the checksum covers everything the file holds


@pytest.fixture
def elastic(nacl):
    return [
        replace(nacl, id="mp-1234", targets={"G_VRH": 1.0, "K_VRH": 5.0}),
        replace(nacl, id="mp-5678", frac_coords=nacl.frac_coords + 0.01, targets={"G_VRH": 2.0, "K_VRH": 7.0}),
    ]


def edit_bytes(path, old: bytes, new: bytes):
    """Replace bytes inside the cache file as a disk error or a careless edit would: no re-save."""
    raw = path.read_bytes()
    assert raw.count(old) == 1, (old, raw.count(old))
    path.write_bytes(raw.replace(old, new))


@pytest.mark.parametrize(
    "old, new, what",
    [
        (b"G_VRH", b"K_VRH", "target names swapped"),  # then K_VRH -> G_VRH below: two bytes changed
        (b"mp-5678", b"mp-5679", "an id changed"),
    ],
)
def test_edited_ids_or_target_names_are_detected(tmp_path, elastic, caplog, old, new, what):
    ref = build_graphs(elastic, GraphSettings(k=6), cache_dir=tmp_path)
    (path,) = cache_files(tmp_path)
    if old == b"G_VRH":
        raw = path.read_bytes()
        g, k = raw.index(b"G_VRH"), raw.index(b"K_VRH")
        raw = bytearray(raw)
        raw[g], raw[k] = raw[k], raw[g]  # 'G' <-> 'K': the labels of the two targets swapped
        path.write_bytes(bytes(raw))
    else:
        edit_bytes(path, old, new)
    with caplog.at_level(logging.WARNING, logger="crystalframes.data"):
        again = build_graphs(elastic, GraphSettings(k=6), cache_dir=tmp_path)
    assert "checksum mismatch" in caplog.text and "rebuilding" in caplog.text, what
    assert same(ref, again)
    assert again[0].targets == {"G_VRH": 1.0, "K_VRH": 5.0} and again[1].id == "mp-5678"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="crystalframes.data"):
        build_graphs(elastic, GraphSettings(k=6), cache_dir=tmp_path)
    assert caplog.text == ""  # rebuilt and rewritten: valid again


@pytest.mark.parametrize("field", ["ids", "target_names", "key", "extra"])
def test_every_entry_is_covered_by_the_checksum(tmp_path, elastic, caplog, field, monkeypatch):
    import torch

    build_graphs(elastic, GraphSettings(k=6), cache_dir=tmp_path)
    (path,) = cache_files(tmp_path)
    data = torch.load(path, weights_only=True)
    if field == "ids":
        data["ids"] = ["mp-1234", "mp-0000"]
    elif field == "target_names":
        data["target_names"] = data["target_names"][::-1]
    elif field == "key":
        # a stored key matching another key check, e.g. a file copied between settings, still
        # fails the checksum when only the key was rewritten
        monkeypatch.setattr(cache_mod, "cache_key", lambda *a: "0" * 64)
        data["key"] = "0" * 64
    else:
        data["note"] = torch.zeros(1)
    torch.save(data, path)
    if field == "key":
        path.rename(tmp_path / f"graphs-{'0' * 32}.pt")
    with caplog.at_level(logging.WARNING, logger="crystalframes.data"):
        again = build_graphs(elastic, GraphSettings(k=6), cache_dir=tmp_path)
    assert "checksum mismatch" in caplog.text
    assert [g.id for g in again] == ["mp-1234", "mp-5678"] and again[0].targets["G_VRH"] == 1.0


def test_cache_of_the_previous_format_is_rebuilt(tmp_path, elastic, caplog):
    import torch

    build_graphs(elastic, GraphSettings(k=6), cache_dir=tmp_path)
    (path,) = cache_files(tmp_path)
    data = torch.load(path, weights_only=True)
    data["format"] = 1
    torch.save(data, path)
    with caplog.at_level(logging.WARNING, logger="crystalframes.data"):
        build_graphs(elastic, GraphSettings(k=6), cache_dir=tmp_path)
    assert "unknown format" in caplog.text


def test_bit_flip_is_detected(tmp_path, elastic, caplog):
    import torch

    ref = build_graphs(elastic, GraphSettings(k=6), cache_dir=tmp_path)
    (path,) = cache_files(tmp_path)
    raw = bytearray(path.read_bytes())
    data = torch.load(path, weights_only=True)
    needle = data["edge_vec"].numpy().tobytes()[:64]
    raw[bytes(raw).index(needle) + 7] ^= 0x10
    path.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="crystalframes.data"):
        again = build_graphs(elastic, GraphSettings(k=6), cache_dir=tmp_path)
    assert "rebuilding" in caplog.text and same(ref, again)


# --------------------------------------------------------------------------------------------
# defect 8: a cache folder that cannot be written


def make_read_only(folder, monkeypatch):
    """chmod 0o555; as root (where chmod does not stop writes) the writes there are made to fail."""
    import os
    import tempfile

    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        real = tempfile.mkstemp

        def refuse(*args, dir=None, **kwargs):
            if dir is not None and os.path.realpath(dir) == os.path.realpath(folder):
                raise PermissionError(13, "Permission denied", str(folder))
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", refuse)


def test_read_only_cache_warns_once_and_returns_the_graphs(tmp_path, crystals, caplog, monkeypatch):
    monkeypatch.setattr(cache_mod, "_unwritable_folders", set())
    folder = tmp_path / "graphs"
    make_read_only(folder, monkeypatch)
    try:
        with caplog.at_level(logging.WARNING, logger="crystalframes.data"):
            train = build_graphs(crystals, GraphSettings(k=6), cache_dir=folder)
            val = build_graphs(crystals[:1], GraphSettings(k=6), cache_dir=folder)  # a second split
    finally:
        folder.chmod(0o755)
    assert same(train, [build_graph(c, GraphSettings(k=6)) for c in crystals]) and len(val) == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"cannot write the graph cache in {folder}" in warnings[0].getMessage()
    assert "Permission denied" in warnings[0].getMessage()
    assert list(folder.iterdir()) == []


def test_unwritable_cache_parent_is_best_effort(tmp_path, crystals, caplog, monkeypatch):
    """The folder cannot even be created (its parent is a file)."""
    monkeypatch.setattr(cache_mod, "_unwritable_folders", set())
    (tmp_path / "file").write_text("x")
    with caplog.at_level(logging.WARNING, logger="crystalframes.data"):
        graphs = build_graphs(crystals, GraphSettings(k=6), cache_dir=tmp_path / "file" / "graphs")
    assert len(graphs) == 2 and "cannot write the graph cache" in caplog.text


# --------------------------------------------------------------------------------------------
# progress on a terminal only


class FakeTerminal(__import__("io").StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("use_cache", [True, False])
def test_progress_bar_only_on_a_terminal(tmp_path, crystals, monkeypatch, capsys, use_cache):
    build_graphs(crystals, GraphSettings(k=6), cache_dir=tmp_path / "a", use_cache=use_cache)
    assert capsys.readouterr().err == ""
    terminal = FakeTerminal()
    monkeypatch.setattr("sys.stderr", terminal)
    calls = []
    build_graphs(crystals, GraphSettings(k=6), cache_dir=tmp_path / "b", use_cache=use_cache, progress=lambda *a: calls.append(a))
    assert "building graphs" in terminal.getvalue() and "/2 " in terminal.getvalue()
    assert calls == [(1, 2), (2, 2)]
