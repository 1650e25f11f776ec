"""End-to-end runs of the `crystalframes data` commands, as a user would type them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest




@pytest.fixture
def nacl_cif(tmp_path, nacl):
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice(nacl.lattice), ["Na"] * 4 + ["Cl"] * 4, nacl.frac_coords)
    path = tmp_path / "NaCl.cif"
    s.to(filename=str(path))
    return path


def test_graph_json_matches_reference_counts(run, nacl_cif):
    code, out, _ = run("data", "graph", str(nacl_cif), "--k", "12", "--lattice-edges", "--json")
    g = json.loads(out)
    assert code == 0 and g["num_nodes"] == 8 and g["num_edges"] == 192 and set(g["in_degree"]) == {24}
    assert g["distances"] == sorted(g["distances"]) and len(g["distances"]) == 192
    code, out, _ = run("data", "graph", str(nacl_cif), "--k", "25", "--lattice-edges", "--json")
    assert json.loads(out)["num_edges"] == 256


def test_info_on_embedded_demo(run):
    code, out, _ = run("data", "info", "mp_2018_demo", "--json")
    info = json.loads(out)
    assert code == 0 and info["num_structures"] == 5955 and info["num_bad_records"] == 0
    e = info["targets"]["mp2018_e_form"]
    assert e["count"] == 5915 and -4 < e["mean"] < 0 and e["units"] == "eV/atom"
    assert info["splits"]["train"] == 5481 and info["atoms_per_cell"]["max"] == 152


def test_info_reports_bad_records_and_keeps_good(run, tmp_path, shared_data):
    import gzip

    lines = gzip.open(shared_data / "mp_2018_sample.jsonl.gz", "rt").read().splitlines()[:5]
    bad = json.loads(lines[1])
    bad["species"][0] = "Xx"
    lines[1] = json.dumps(bad)
    lines.append("{not json")
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    code, out, _ = run("data", "info", str(path), "--json")
    info = json.loads(out)
    assert code == 0 and info["num_structures"] == 4 and info["num_bad_records"] == 2
    assert any("mixed.jsonl:2" in b and "Xx" in b for b in info["bad_records"])
    assert any("mixed.jsonl:6" in b for b in info["bad_records"])
    code, _, err = run("data", "info", str(path), "--strict")
    assert code == 2 and "mixed.jsonl:2" in err and "Traceback" not in err


def test_bad_file_is_one_clear_line(run, tmp_path):
    path = tmp_path / "broken.cif"
    path.write_text("data_x\n_cell_length_a 3\n")
    code, _, err = run("data", "graph", str(path), "--json")
    assert code == 2 and "broken.cif" in err and "Traceback" not in err
    code, _, err = run("data", "info", "no_such_dataset")
    assert code == 2 and "no_such_dataset" in err and "mp_2018_demo" in err


def test_console_script_runs_in_a_subprocess(nacl_cif):
    """The installed entry point (python -m crystalframes) works outside pytest's process."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    proc = subprocess.run(
        [sys.executable, "-m", "crystalframes", "data", "graph", str(nacl_cif), "--k", "12", "--json"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["num_edges"] == 144


def test_info_lists_what_a_folder_skipped(run, tmp_path, nacl_cif):
    """A folder's non-structure entries are listed by name in the table and the JSON, never
    dropped silently; the structure beside them is counted."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "NaCl.cif").write_bytes(nacl_cif.read_bytes())
    (folder / "notes.json").write_text("{}")
    (folder / "README.txt").write_text("hello")
    (folder / "loop.cif").symlink_to(folder / "loop.cif")
    code, out, err = run("data", "info", str(folder))
    assert code == 0, err
    assert "structures:    1" in out and "skipped:       3" in out
    assert "notes.json" in out and "README.txt" in out and "loop.cif" in out
    code, out, _ = run("data", "info", str(folder), "--json")
    summary = json.loads(out)
    assert summary["num_structures"] == 1 and len(summary["skipped"]) == 3
