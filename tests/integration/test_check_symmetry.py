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


@pytest.fixture
def three_structures(tmp_path, shared_data):
    """The first three records of the shared JARVIS sample as a JSONL file."""
    import gzip

    lines = gzip.open(shared_data / "jarvis_dft_3d_sample.jsonl.gz", "rt").read().splitlines()[:3]
    src = tmp_path / "three.jsonl"
    src.write_text("\n".join(lines) + "\n")
    return src


def test_check_json_reports_every_invariance(run, three_structures):
    src = three_structures
    code, out, err = run("check", "ecomformer:none@cpu_small", str(src), "--trials", "2", "--json")
    assert code == 0, err
    report = json.loads(out)
    keys = {"max_rotation_error", "max_translation_error", "max_permutation_error", "max_supercell_error",
            "max_basis_change_error", "mirror_difference"}
    assert keys <= set(report["overall"]) and len(report["structures"]) == 3
    for key in keys - {"mirror_difference"}:
        assert report["overall"][key] <= 1e-9, key


def test_check_reports_a_declared_dependence_as_declared_not_failed(run, three_structures):
    """The identity global frame does not rotate with the crystal: on Crystalformer the rotation
    error shows (far above the tolerance), and check names it as the frame's declared
    dependence instead of a failure; the other checks still pass."""
    src = three_structures
    code, out, err = run("check", "crystalformer:global+identity@cpu_small", str(src), "--trials", "1", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["overall"]["max_rotation_error"] > 1e-6
    assert "rotation" in report["declared_dependences"] and report["failed"] == []
    code, out, err = run("check", "crystalformer:global+identity@cpu_small", str(src), "--trials", "1")
    assert "expected by design (a declared dependence" in out
    assert "  rotation: the identity does not rotate with the crystal (global frame 'identity')" in out


@pytest.mark.parametrize("jid, group", [("JVASP-5371", "P2_1"), ("JVASP-22709", "P4_12_12"), ("JVASP-42053", "P6_3")])
def test_equivariant_frames_collapse_and_spframe_keeps_apart(run, tmp_path, by_id, jid, group):
    """Seed 000 Fig. 3 on three real crystals with screw axes: every multi-atom Wyckoff orbit
    on a general position is collapsed by the SO(3)-equivariant Gram-Schmidt frame, and
    every multi-atom orbit is kept apart by SPFrame."""
    cif = write_cif(by_id[jid], tmp_path / f"{jid}.cif")
    code, out, err = run("symmetry", str(cif), "--frame", "equivariant_gram_schmidt", "--json")
    assert code == 0, err
    eq = json.loads(out)
    assert eq["space_group"]["symbol"] == group
    assert eq["idealised_max_displacement"] < 1e-3
    # General positions (site symmetry 1) collapse. Sites on a 3-fold axis (P6_3: 2a, 2b) admit
    # no equivariant frame at all once idealised (v_2 collinear with v_1 along the axis), so the
    # fallback global frame is used there and such orbits are not collapsed (measured 1.9-2.9 A).
    general = [o for o in eq["orbits"] if len(o["atoms"]) > 1 and o["site_symmetry"].strip(".") == "1"]
    assert general and all(o["collapsed"] and o["distinguishability"] < 1e-6 for o in general)
    png = tmp_path / "frames.png"
    code, out, err = run("symmetry", str(cif), "--frame", "spframe_gram_schmidt", "--json", "--plot", str(png))
    sp = json.loads(out)
    assert all(not o["collapsed"] and o["distinguishability"] > 0.5 for o in sp["orbits"] if len(o["atoms"]) > 1)
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("spec, coincide", [
    ("ecomformer:none@cpu_small", True),                        # equivariant tensor products: collapse
    ("crystalformer:none@cpu_small", True),                     # invariant attention: collapse
    ("ecomformer:spframe_quaternion@cpu_small", False),         # SPFrame keeps equivalent atoms apart
    ("ecomformer:equivariant_gram_schmidt@cpu_small", None),    # frames collapse; features: see below
])
def test_model_features_of_equivalent_atoms(run, tmp_path, by_id, spec, coincide):
    """With --model, on the idealised P2_1 crystal JVASP-5371 (float64, fresh seeded model):
    per-atom features of the equivalent atoms of every multi-atom orbit coincide to rounding
    (measured <= 2e-15) for equivariant models and differ under SPFrame (measured 2e-5..6e-5
    at initialisation). The equivariant Gram-Schmidt model's own first-block frames collapse
    every orbit; its features need not coincide, because a site whose v_2 is within the
    degeneracy tolerance of v_1 takes the global fallback frame (measured: one atom in the
    second block at initialisation, spread 6e-4)."""
    cif = write_cif(by_id["JVASP-5371"], tmp_path / "p21.cif")
    code, out, err = run("symmetry", str(cif), "--model", spec, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["model"].startswith(spec.split("@")[0])
    assert report["idealised_max_displacement"] < 1e-3
    multi = [o for o in report["orbits"] if len(o["atoms"]) > 1]
    assert multi
    if coincide is None:
        assert report["frame"].startswith("ecomformer:equivariant_gram_schmidt")
        assert all(o["collapsed"] and o["distinguishability"] < 1e-9 for o in multi)
        return
    assert all(o["features_coincide"] is coincide for o in multi), [o["feature_spread"] for o in multi]
    if coincide:
        assert max(o["feature_spread"] for o in multi) < 1e-12
    else:
        assert min(o["feature_spread"] for o in multi) > 1e-6


def test_check_reports_a_nan_output_of_a_later_structure_as_a_failure(run, tmp_path, monkeypatch):
    """A model whose output turns NaN under rotation for the second structure only: the overall
    rotation error is NaN (Python's max kept the first structure's 0) and `failed` names it."""
    import math

    import crystalframes.cli.check as check
    from tests.test_testing import NanUnderRotation, cubic

    files = []
    for crystal in (cubic("good", 4.0), cubic("broken", 5.0)):
        files.append(write_cif(crystal, tmp_path / f"{crystal.id}.cif"))
    monkeypatch.setattr(check, "model_for_checks", lambda model, dtype: NanUnderRotation("broken"))
    code, out, err = run("check", "stub", *files, "--trials", "1", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert [s["id"] for s in report["structures"]] == ["good", "broken"]
    assert math.isnan(report["overall"]["max_rotation_error"]), report["overall"]
    assert "max_rotation_error" in report["failed"] and "max_translation_error" not in report["failed"]
    code, out, err = run("check", "stub", *files, "--trials", "1")
    assert "FAILED" in out and "max_rotation_error" in out


def test_symmetry_frames_use_the_spec_names_and_accept_the_old_ones(run, tmp_path):
    """One name per frame: the structure frames of `symmetry` are named as in model specs
    (spframe_gram_schmidt, static, global+qr); the names of earlier releases still work and
    give the same report."""
    from pymatgen.core import Lattice, Structure

    cif = tmp_path / "NaCl.cif"
    Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(cif))
    for new, old in (("spframe_gram_schmidt", "spframe"), ("static", "static_local"), ("global+qr", "global_qr")):
        code_new, out_new, err = run("symmetry", str(cif), "--frame", new, "--json")
        code_old, out_old, _ = run("symmetry", str(cif), "--frame", old, "--json")
        assert code_new == code_old == 0, err
        assert json.loads(out_new)["orbits"] == json.loads(out_old)["orbits"]


# --- issue 24: pretrained names, large cells, plain wording ---------------------------------


def test_check_takes_a_pretrained_name_and_says_which_member_it_checks(run, tmp_path, nacl):
    from crystalframes.testing import supercell

    cif = write_cif(nacl, tmp_path / "nacl.cif")
    code, out, err = run("check", "mp_e_form", cif, "--trials", "1")
    assert code == 0, err
    assert "mp_e_form: an ensemble of 4 models; checking its first member (crystalformer:none@cpu" in err
    assert "passed (within tolerance): rotation, translation, permutation, supercell" in out
    assert "no failures" in out and "More on each check: docs/diagnostics.md" in out


def test_a_name_that_is_no_model_says_so_without_contradiction(run):
    code, out, err = run("check", "mp_e_frm", "x.cif")
    assert code == 2
    assert ("error: mp_e_frm: not a pretrained model name, a model file, a run folder or a model spec "
            "(pretrained: mp_e_form, mp_gap; specs look like ecomformer:spframe_quaternion)") in err


def test_symmetry_takes_a_pretrained_name(run, tmp_path, nacl):
    cif = write_cif(nacl, tmp_path / "nacl.cif")
    code, out, err = run("symmetry", cif, "--model", "mp_gap", "--json")
    assert code == 0, err
    assert json.loads(out)["model"] == "ecomformer:none@cpu" and "checking its first member" in err


def test_translation_copies_are_not_reported_as_collapsed(run, tmp_path, nacl):
    """Rock salt's conventional cell: each orbit's 4 atoms are copies of one atom by the face
    centring translations; identical in any frame, which the old output called COLLAPSED."""
    cif = write_cif(nacl, tmp_path / "nacl.cif")
    code, out, err = run("symmetry", cif, "--json")
    report = json.loads(out)
    assert [(o["verdict"], o["translation_copies"], o["collapsed"]) for o in report["orbits"]] == [
        ("translation copies", 3, None)] * 2
    code, out, err = run("symmetry", cif)
    assert "COLLAPSED" not in out and "translation copies only (nothing to tell apart)" in out
    assert "identical in any frame, not a collapse" in out


def test_a_supercell_is_measured_on_its_distinct_atoms_with_progress(run, tmp_path, by_id):
    """A 2x2x2 supercell of the P2_1 crystal JVASP-5371 (112 atoms): still collapsed by the
    equivariant frame, measured among the 2 atoms per orbit that are not translation copies;
    the cost is announced and the steps are shown on stderr."""
    from crystalframes.testing import supercell

    cif = write_cif(supercell(by_id["JVASP-5371"], (2, 2, 2)), tmp_path / "big.cif")
    code, out, err = run("symmetry", cif, "--frame", "equivariant_gram_schmidt")
    assert code == 0, err
    assert "big.cif: 112 atoms: this will take about" in err
    assert "symmetry: comparing the neighbourhoods of 14 atoms in 7 orbits ..." in err
    assert out.count("COLLAPSED: the frames show these atoms as identical (14 translation copies set aside)") == 7


def test_symmetry_refuses_a_cell_above_max_atoms_with_its_cost(run, tmp_path, nacl):
    from crystalframes.testing import supercell

    cif = write_cif(supercell(nacl, (2, 2, 2)), tmp_path / "nacl64.cif")
    code, out, err = run("symmetry", cif, "--max-atoms", "50")
    assert code == 2 and out == ""
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "nacl64.cif: 64 atoms, more than --max-atoms 50; the analysis would take about" in err
    assert "pass --max-atoms 64 (or 0 for no limit) to run it anyway" in err
    code, out, err = run("symmetry", cif, "--max-atoms", "64")
    assert code == 0, err


def test_check_skips_a_structure_above_max_atoms_and_says_how_to_lift_it(run, tmp_path, nacl):
    from crystalframes.testing import supercell

    small = write_cif(nacl, tmp_path / "nacl.cif")
    big = write_cif(supercell(nacl, (2, 2, 2)), tmp_path / "nacl64.cif")
    code, out, err = run("check", "crystalformer:none@cpu_small", small, big, "--trials", "1", "--max-atoms", "50")
    assert code == 0, err
    assert "bad input: " in err and "64 atoms, more than --max-atoms 50" in err and "pass --max-atoms 64" in err


def test_symmetry_names_the_atoms_that_fell_back_to_the_global_frame(run, tmp_path, by_id):
    """P6_3 (JVASP-42053): the atoms on the 3-fold axis (2a, 2b) admit no equivariant frame and
    take the global one; the report names them instead of calling the orbit kept apart silently."""
    cif = write_cif(by_id["JVASP-42053"], tmp_path / "p63.cif")
    code, out, err = run("symmetry", cif, "--frame", "equivariant_gram_schmidt", "--json")
    report = json.loads(out)
    on_axis = [o for o in report["orbits"] if o["site_symmetry"].strip(".") == "3"]
    assert on_axis and all(o["fallback_atoms"] == o["atoms"] for o in on_axis)
    general = [o for o in report["orbits"] if o["site_symmetry"].strip(".") == "1"]
    assert general and all(o["fallback_atoms"] == [] for o in general)
    code, out, err = run("symmetry", cif, "--frame", "equivariant_gram_schmidt")
    assert "atoms fell back to the global frame" in out and "no equivariant frame exists" in out
