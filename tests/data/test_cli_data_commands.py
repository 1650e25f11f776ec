"""`crystalframes data ...` usage mistakes: one clear line, exit code 2, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from crystalframes.data.graph import GraphSettings


@pytest.fixture
def nacl_cif(tmp_path, nacl):
    from pymatgen.core import Lattice, Structure

    path = tmp_path / "NaCl.cif"
    Structure(Lattice(nacl.lattice), ["Na"] * 4 + ["Cl"] * 4, nacl.frac_coords).to(filename=str(path))
    return path


@pytest.mark.parametrize("k", ["0", "-3", "1001", "100000000", "2.5", "abc", ""])
def test_bad_k_is_a_usage_error(run, nacl_cif, k):
    code, out, err = run("data", "graph", nacl_cif, "--k", k)
    assert code == 2 and "--k" in err and "Traceback" not in err and out == ""


def test_k_at_the_limits_works(run, nacl_cif):
    assert run("data", "graph", nacl_cif, "--k", "1")[0] == 0
    code, out, _ = run("data", "graph", nacl_cif, "--k", "25")
    assert code == 0 and "8 atoms" in out


def test_bad_k_in_a_fresh_interpreter(nacl_cif, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "crystalframes", "data", "graph", str(nacl_cif), "--k", "0"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "--k" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("k", [0, -1, True, 2.5, "25"])
def test_graph_settings_reject_a_bad_k(k):
    with pytest.raises(ValueError, match="k must be a positive integer or None"):
        GraphSettings(k=k)


def test_bad_sha256_option_is_one_line(run, tmp_path, monkeypatch):
    monkeypatch.setenv("CRYSTALFRAMES_CACHE_DIR", str(tmp_path / "cache"))
    code, _, err = run("data", "fetch", "jarvis_dft_3d_2021", "--sha256", "xyz", "--file", tmp_path / "a.zip")
    assert code == 2 and "not a sha256" in err and "Traceback" not in err
    assert not (tmp_path / "cache").exists()


def test_missing_local_archive_is_one_line(run, tmp_path, monkeypatch):
    monkeypatch.setenv("CRYSTALFRAMES_CACHE_DIR", str(tmp_path / "cache"))
    code, _, err = run("data", "fetch", "jarvis_dft_3d_2021", "--file", tmp_path / "missing.zip")
    assert code == 2 and "missing.zip: no such file" in err and "Traceback" not in err
