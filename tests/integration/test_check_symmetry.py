"""`crystalframes check` and `crystalframes symmetry` on real crystals."""

import json

import pytest
from pymatgen.core import Element, Lattice, Structure




def write_cif(crystal, path):
    Structure(Lattice(crystal.lattice), [Element.from_Z(int(z)) for z in crystal.atomic_numbers], crystal.frac_coords).to(filename=str(path))
    return path


@pytest.fixture(scope="module")
def by_id(jarvis_sample):
    return {c.id: c for c in jarvis_sample}


def test_check_json_reports_every_invariance(run, tmp_path, shared_data):
    import gzip

    lines = gzip.open(shared_data / "jarvis_dft_3d_sample.jsonl.gz", "rt").read().splitlines()[:3]
    src = tmp_path / "three.jsonl"
    src.write_text("\n".join(lines) + "\n")
    code, out, err = run("check", "ecomformer:none@cpu_small", str(src), "--trials", "2", "--json")
    assert code == 0, err
    report = json.loads(out)
    keys = {"max_rotation_error", "max_translation_error", "max_permutation_error", "max_supercell_error",
            "max_basis_change_error", "mirror_difference"}
    assert keys <= set(report["overall"]) and len(report["structures"]) == 3
    for key in keys - {"mirror_difference"}:
        assert report["overall"][key] <= 1e-9, key


@pytest.mark.parametrize("jid, group", [("JVASP-5371", "P2_1"), ("JVASP-22709", "P4_12_12"), ("JVASP-42053", "P6_3")])
def test_equivariant_frames_collapse_and_spframe_keeps_apart(run, tmp_path, by_id, jid, group):
    """Seed 000 Fig. 3 on three real crystals with screw axes: every multi-atom Wyckoff orbit is
    collapsed by the SO(3)-equivariant Gram-Schmidt frame and kept apart by SPFrame."""
    cif = write_cif(by_id[jid], tmp_path / f"{jid}.cif")
    code, out, err = run("symmetry", str(cif), "--frame", "equivariant_gram_schmidt", "--json")
    assert code == 0, err
    eq = json.loads(out)
    assert eq["space_group"]["symbol"] == group
    multi = [o for o in eq["orbits"] if len(o["atoms"]) > 1]
    assert multi and all(o["collapsed"] and o["distinguishability"] < 1e-6 for o in multi)
    png = tmp_path / "frames.png"
    code, out, err = run("symmetry", str(cif), "--frame", "spframe", "--json", "--plot", str(png))
    sp = json.loads(out)
    assert all(not o["collapsed"] and o["distinguishability"] > 0.5 for o in sp["orbits"] if len(o["atoms"]) > 1)
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
