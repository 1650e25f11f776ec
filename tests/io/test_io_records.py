"""Record parsers: the project's JSONL record and the JARVIS / MEGNet figshare record."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crystalframes.io import InputError, crystal_from_jarvis, crystal_from_record

WHERE = "sample.jsonl.gz:17"


def _jarvis(rec: dict, cartesian: bool, **extra) -> dict:
    """A JARVIS-format record holding the structure of the JSONL record ``rec``."""
    lattice = np.asarray(rec["lattice"], dtype=float)
    frac = np.asarray(rec["frac_coords"], dtype=float)
    coords = frac @ lattice if cartesian else frac
    out = {
        "jid": "JVASP-1",
        "atoms": {
            "lattice_mat": lattice.tolist(),
            "coords": coords.tolist(),
            "elements": list(rec["species"]),
            "abc": [5.64, 5.64, 5.64],
            "angles": [90, 90, 90],
            "cartesian": cartesian,
            "props": ["" for _ in rec["species"]],
        },
        "formation_energy_peratom": -2.1,
        "optb88vdw_bandgap": 5.0,
        "mbj_bandgap": "na",
        "spg_symbol": "Fm-3m",
        "search": "-Cl-Na",
        "elastic_tensor": "na",
        "magmom_oszicar": 0.0,
        "is_metal": False,
    }
    out.update(extra)
    return out


def _err(fn, *args, **kw) -> InputError:
    with pytest.raises(InputError) as info:
        fn(*args, **kw)
    return info.value


# ------------------------------------------------------------------------------------------ JSONL


def test_record_reads(make_record):
    c = crystal_from_record(make_record(), WHERE)
    assert c.id == "nacl"
    assert c.split == "train"
    assert c.source == WHERE
    assert c.where == f"{WHERE} [nacl]"
    assert c.atomic_numbers.tolist() == [11] * 4 + [17] * 4
    assert c.frac_coords.shape == (8, 3)
    assert c.targets == {"e_form": -2.1, "gap": 5.0}


@pytest.mark.parametrize("missing", ["na", "NA", None, float("nan"), "", "nan"])
def test_missing_target_values_become_nan(make_record, missing):
    c = crystal_from_record(make_record(targets={"e_form": missing, "gap": "1.5"}), WHERE)
    assert math.isnan(c.targets["e_form"])
    assert c.targets["gap"] == 1.5


@pytest.mark.parametrize(
    "changes, problem",
    [
        ({"targets": {"x": "abc"}}, "target 'x' is not a number: 'abc'"),
        ({"targets": {"x": True}}, "target 'x' is not a number: True"),
        ({"targets": {"x": float("inf")}}, "target 'x' is infinite"),
        ({"targets": [1, 2]}, "'targets' must map names to numbers"),
        ({"species": ["Na"] * 4 + ["Cl"] * 3 + ["Xx"]}, "unknown element 'Xx'"),
        ({"species": ["Na"] * 4 + ["Cl"] * 3}, "'frac_coords' has 8 rows but 'species' has 7"),
        ({"lattice": [[1, 0, 0], [0, 1, 0]]}, "'lattice' must be 3x3, got shape (2, 3)"),
        ({"lattice": "abc"}, "'lattice' is not a numeric array"),
        ({"frac_coords": [[0, 0]] * 8}, "'frac_coords' must be Nx3"),
        ({"species": "NaCl"}, "'species' must be a list of element symbols"),
        ({"species": [], "frac_coords": []}, "structure has no atoms"),
        ({"lattice": [[5.64, 0, 0], [0, 5.64, 0], [5.64, 5.64, 0]]}, "singular lattice"),
        ({"lattice": [[5.64, 0, 0], [0, 5.64, 0], [0, 0, float("nan")]]}, "lattice contains non-finite values"),
        ({"frac_coords": [[float("nan"), 0, 0]] + [[0.5, 0.5, 0.5]] * 0 + [[0, 0.5, 0.5], [0.5, 0, 0.5],
          [0.5, 0.5, 0], [0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]]},
         "coordinates contain non-finite values"),
        ({"frac_coords": [[0, 0, 0], [0.05, 0, 0], [0.5, 0, 0.5], [0.5, 0.5, 0], [0.5, 0.5, 0.5], [0.5, 0, 0],
          [0, 0.5, 0], [0, 0, 0.5]]}, "atoms closer than 0.5 A"),
        ({"split": 3}, "'split' must be a string or null"),
    ],
)
def test_record_errors_name_record_and_problem(make_record, changes, problem):
    err = _err(crystal_from_record, make_record(**changes), WHERE)
    assert err.source == f"{WHERE} [nacl]"
    assert problem in err.problem, err.problem


def test_record_missing_keys(make_record):
    rec = make_record()
    del rec["frac_coords"], rec["lattice"]
    err = _err(crystal_from_record, rec, WHERE)
    assert str(err) == f"{WHERE} [nacl]: record has no 'lattice', 'frac_coords'"


def test_record_not_a_dict():
    err = _err(crystal_from_record, [1, 2, 3], WHERE)
    assert str(err) == f"{WHERE}: record must be a JSON object, got list"


def test_where_already_holding_the_id_is_not_repeated(make_record):
    err = _err(crystal_from_record, make_record(targets={"x": "abc"}), f"{WHERE} [nacl]")
    assert err.source == f"{WHERE} [nacl]"


# ----------------------------------------------------------------------------------------- JARVIS


def test_jarvis_cartesian_and_fractional_give_the_same_crystal(make_record):
    rec = make_record(lattice=[[4.0, 0.3, 0.1], [0.5, 5.0, 0.2], [0.7, 0.4, 6.0]])  # skewed, non-diagonal
    frac = crystal_from_jarvis(_jarvis(rec, cartesian=False), "jdft.json[0]")
    cart = crystal_from_jarvis(_jarvis(rec, cartesian=True), "jdft.json[0]")
    assert frac.id == cart.id == "JVASP-1"
    assert np.allclose(frac.lattice, cart.lattice)
    assert np.allclose(frac.frac_coords, cart.frac_coords, atol=1e-12)
    assert np.allclose(frac.frac_coords, rec["frac_coords"], atol=1e-12)
    assert frac.atomic_numbers.tolist() == cart.atomic_numbers.tolist()
    assert frac.targets.keys() == cart.targets.keys()


def test_jarvis_targets_numeric_and_na_keys_only(make_record):
    c = crystal_from_jarvis(_jarvis(make_record(), cartesian=False), "jdft.json[0]")
    assert set(c.targets) == {"formation_energy_peratom", "optb88vdw_bandgap", "mbj_bandgap", "elastic_tensor",
                              "magmom_oszicar"}
    assert c.targets["formation_energy_peratom"] == -2.1
    assert math.isnan(c.targets["mbj_bandgap"])


def test_jarvis_target_keys_select_and_fill_missing(make_record):
    c = crystal_from_jarvis(_jarvis(make_record(), cartesian=False), "x", target_keys=["optb88vdw_bandgap", "ehull"])
    assert set(c.targets) == {"optb88vdw_bandgap", "ehull"}
    assert c.targets["optb88vdw_bandgap"] == 5.0
    assert math.isnan(c.targets["ehull"])
    err = _err(crystal_from_jarvis, _jarvis(make_record(), cartesian=False), "x", target_keys=["spg_symbol"])
    assert "target 'spg_symbol' is not a number: 'Fm-3m'" in str(err)


def test_megnet_record_layout(make_record):
    rec = _jarvis(make_record(), cartesian=True)
    del rec["jid"]
    rec = {"id": "mp-22862", "atoms": rec["atoms"], "e_form": -2.1, "gap pbe": 5.0, "mu_b": 0.0}
    c = crystal_from_jarvis(rec, "megnet.json[3]")
    assert c.id == "mp-22862"
    assert c.targets == {"e_form": -2.1, "gap pbe": 5.0, "mu_b": 0.0}
    assert c.where == "megnet.json[3] [mp-22862]"


@pytest.mark.parametrize(
    "mutate, problem",
    [
        (lambda r: r.pop("atoms"), "record has no 'atoms'"),
        (lambda r: r["atoms"].pop("coords"), "'atoms' has no 'coords'"),
        (lambda r: r["atoms"]["elements"].pop(), "'atoms.coords' has 8 rows but 'atoms.elements' has 7"),
        (lambda r: r["atoms"]["elements"].__setitem__(0, "Zz"), "unknown element 'Zz'"),
        (lambda r: r["atoms"].__setitem__("lattice_mat", [[1, 0, 0], [0, 1, 0], [1, 1, 0]]), "singular lattice"),
    ],
)
def test_jarvis_errors(make_record, mutate, problem):
    rec = _jarvis(make_record(), cartesian=True)
    mutate(rec)
    err = _err(crystal_from_jarvis, rec, "jdft.json[5]")
    assert err.source == "jdft.json[5] [JVASP-1]"
    assert problem in err.problem, err.problem
