"""read_structure: files and objects in, one validated Crystal or one clear InputError out.

These tests use hand-made structures only, so they run without ../shared/data.
"""

from __future__ import annotations

import gzip
import json
import math
import warnings

import numpy as np
import pytest

from crystalframes.io import Crystal, InputError, read_structure

NACL_CIF = """data_NaCl
_symmetry_space_group_name_H-M   'P 1'
_cell_length_a   5.64000000
_cell_length_b   5.64000000
_cell_length_c   5.64000000
_cell_angle_alpha   90.00000000
_cell_angle_beta   90.00000000
_cell_angle_gamma   90.00000000
_symmetry_Int_Tables_number   1
_chemical_formula_structural   NaCl
_chemical_formula_sum   'Na4 Cl4'
loop_
 _symmetry_equiv_pos_site_id
 _symmetry_equiv_pos_as_xyz
  1  'x, y, z'
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_symmetry_multiplicity
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
  Na  Na0  1  0.00000000  0.00000000  0.00000000  1
  Na  Na1  1  0.00000000  0.50000000  0.50000000  1
  Na  Na2  1  0.50000000  0.00000000  0.50000000  1
  Na  Na3  1  0.50000000  0.50000000  0.00000000  1
  Cl  Cl4  1  0.50000000  0.50000000  0.50000000  1
  Cl  Cl5  1  0.50000000  0.00000000  0.00000000  1
  Cl  Cl6  1  0.00000000  0.50000000  0.00000000  1
  Cl  Cl7  1  0.00000000  0.00000000  0.50000000  1
"""

PARTIAL_CIF = """data_FeNi_partial
_cell_length_a 3.60
_cell_length_b 3.60
_cell_length_c 3.60
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Fe1 Fe 0.0 0.0 0.0 1.0
Fe2 Fe 0.5 0.5 0.0 1.0
Fe3 Fe 0.5 0.0 0.5 1.0
Fe4 Fe 0.0 0.5 0.5 0.5
Ni4 Ni 0.0 0.5 0.5 0.5
"""

NACL_POSCAR = """NaCl
1.0
  5.64 0.00 0.00
  0.00 5.64 0.00
  0.00 0.00 5.64
Na Cl
1 1
direct
  0.0 0.0 0.0
  0.5 0.5 0.5
"""


def _error(obj, **kw) -> InputError:
    """The single InputError read_structure raises for ``obj`` (no warnings may escape)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a leaked pymatgen/ASE warning would fail the test
        with pytest.raises(InputError) as info:
            read_structure(obj, **kw)
    return info.value


def _assert_names(err: InputError, path, *words: str) -> None:
    msg = str(err)
    assert str(path) in msg, msg
    assert err.source == str(path)
    for word in words:
        assert word in msg, f"{word!r} not in {msg!r}"
    assert "Traceback" not in msg and "\n" not in msg


# ------------------------------------------------------------------------------------------ good files


def test_cif_reads_with_stem_id_and_source(tmp_path):
    path = tmp_path / "nacl-conv.cif"
    path.write_text(NACL_CIF)
    c = read_structure(path, targets={"e_form": "-2.1", "gap": "na"})
    assert isinstance(c, Crystal)
    assert c.id == "nacl-conv"
    assert c.source == str(path)
    assert c.num_atoms == 8
    assert sorted(c.atomic_numbers.tolist()) == [11] * 4 + [17] * 4
    assert np.allclose(c.lattice, np.eye(3) * 5.64)
    assert c.targets["e_form"] == pytest.approx(-2.1)
    assert math.isnan(c.targets["gap"])


def test_gzipped_cif_and_str_path(tmp_path):
    path = tmp_path / "NaCl.cif.gz"
    path.write_bytes(gzip.compress(NACL_CIF.encode()))
    c = read_structure(str(path), id="my-id")
    assert c.id == "my-id"
    assert c.num_atoms == 8


@pytest.mark.parametrize("name", ["POSCAR", "CONTCAR", "POSCAR-mp-22862", "nacl.vasp", "nacl.poscar"])
def test_poscar_names(tmp_path, name):
    path = tmp_path / name
    path.write_text(NACL_POSCAR)
    c = read_structure(path)
    assert c.atomic_numbers.tolist() == [11, 17]
    assert np.allclose(c.frac_coords, [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert c.id == path.name.rsplit(".", 1)[0] if "." in name else c.id == name


def test_file_without_known_extension_is_sniffed(tmp_path):
    (tmp_path / "mp-22862").write_text(NACL_POSCAR)
    (tmp_path / "nacl_structure").write_text(NACL_CIF)
    assert read_structure(tmp_path / "mp-22862").num_atoms == 2
    assert read_structure(tmp_path / "nacl_structure").num_atoms == 8


def test_json_file_with_one_record(tmp_path, make_record):
    path = tmp_path / "one.json"
    path.write_text(json.dumps(make_record(id="nacl-json")))
    c = read_structure(path)
    assert c.id == "nacl-json"
    assert c.targets == {"e_form": -2.1, "gap": 5.0}


# ------------------------------------------------------------------------------------------- objects


def test_pymatgen_structure_and_ase_atoms_agree():
    from ase.build import bulk
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = bulk("NaCl", "rocksalt", a=5.64)
    structure = AseAtomsAdaptor.get_structure(atoms)
    from_ase = read_structure(atoms)
    from_pmg = read_structure(structure, targets={"y": 1})
    assert from_ase.id == from_pmg.id == "NaCl"
    assert np.allclose(from_ase.lattice, from_pmg.lattice)
    assert np.allclose(from_ase.frac_coords, from_pmg.frac_coords)
    assert from_ase.atomic_numbers.tolist() == from_pmg.atomic_numbers.tolist() == [11, 17]
    assert from_pmg.targets == {"y": 1.0}


def test_disordered_pymatgen_structure_rejected():
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice.cubic(3.6), [{"Fe": 0.5, "Ni": 0.5}, "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    err = _error(s)
    assert "partially occupied / disordered sites" in err.problem
    assert "site 0: Fe:0.5 Ni:0.5" in err.problem
    assert "order the structure first" in err.problem


def test_non_periodic_ase_atoms_and_molecule_rejected():
    from ase import Atoms
    from pymatgen.core import Molecule

    err = _error(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]]))
    assert "not periodic in 3 dimensions" in err.problem
    slab = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], cell=[3, 3, 3], pbc=[True, True, False])
    assert "not periodic in 3 dimensions" in _error(slab).problem
    assert "not periodic in 3 dimensions" in _error(Molecule(["H", "H"], [[0, 0, 0], [0, 0, 0.74]])).problem


def test_unsupported_object():
    err = _error(3.14)
    assert "cannot read this object" in str(err)


# --------------------------------------------------------------------------------------- bad files


def test_nonexistent_file(tmp_path):
    path = tmp_path / "missing.cif"
    _assert_names(_error(path), path, "file not found")


def test_directory_is_not_a_structure(tmp_path):
    _assert_names(_error(tmp_path), tmp_path, "directory")


@pytest.mark.parametrize("name", ["empty.cif", "POSCAR", "blank.extxyz", "empty.cif.gz"])
def test_empty_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(gzip.compress(b"  \n") if name.endswith(".gz") else b"")
    _assert_names(_error(path), path, "file is empty")


def test_truncated_cif_cut_in_half(tmp_path):
    path = tmp_path / "half.cif"
    path.write_text(NACL_CIF[: len(NACL_CIF) // 2])
    _assert_names(_error(path), path, "CIF")


def test_truncated_cif_cut_at_a_line_is_caught_by_the_formula_check(tmp_path):
    # Cut after the 5th atom line: pymatgen parses it, but the atoms no longer match the formula.
    lines = NACL_CIF.splitlines(keepends=True)
    path = tmp_path / "cut.cif"
    path.write_text("".join(lines[: lines.index("  Cl  Cl4  1  0.50000000  0.50000000  0.50000000  1\n") + 1]))
    _assert_names(_error(path), path, "chemical formula", "truncated")


def test_truncated_gzip_structure(tmp_path):
    path = tmp_path / "nacl.cif.gz"
    path.write_bytes(gzip.compress(NACL_CIF.encode())[:80])
    _assert_names(_error(path), path, "truncated / corrupt gzip")


@pytest.mark.parametrize(
    "name, word",
    [("garbage.cif", "cannot parse as CIF"), ("garbage.vasp", "cannot parse as POSCAR"),
     ("garbage.xyz", "cannot parse as extended XYZ"), ("garbage.json", "not valid JSON"),
     ("garbage.dat", "unrecognised structure file format")],
)
def test_garbage_text(tmp_path, name, word):
    path = tmp_path / name
    path.write_text("hello world\nthis is not a crystal structure\n")
    _assert_names(_error(path), path, word)


def test_partially_occupied_cif(tmp_path):
    path = tmp_path / "feni.cif"
    path.write_text(PARTIAL_CIF)
    err = _error(path)  # also fails if pymatgen's warnings escape
    _assert_names(err, path, "partially occupied / disordered sites", "Fe:0.5 Ni:0.5", "order the structure first")


def test_unknown_element_cif(tmp_path):
    path = tmp_path / "xx.cif"
    path.write_text(NACL_CIF.replace("  Cl  Cl4", "  Xx  Xx4"))
    _assert_names(_error(path), path, "unknown element 'Xx'")


def test_unknown_element_poscar(tmp_path):
    path = tmp_path / "POSCAR"
    path.write_text(NACL_POSCAR.replace("Na Cl", "Na Qq"))
    _assert_names(_error(path), path, "unknown element 'Qq'")


def test_singular_lattice_poscar(tmp_path):
    path = tmp_path / "flat.vasp"
    path.write_text(NACL_POSCAR.replace("  0.00 0.00 5.64", "  5.64 5.64 0.00"))
    _assert_names(_error(path), path, "singular lattice")


def test_atoms_too_close_cif(tmp_path):
    path = tmp_path / "close.cif"
    text = NACL_CIF.replace("_chemical_formula_sum   'Na4 Cl4'\n", "").replace(
        "  Cl  Cl7  1  0.00000000  0.00000000  0.50000000  1", "  Cl  Cl7  1  0.02000000  0.00000000  0.00000000  1"
    )
    path.write_text(text)
    err = _error(path)
    _assert_names(err, path, "atoms closer than 0.5 A")
    assert "0.113" in err.problem  # 0.02 * 5.64 A


def test_poscar_without_species_is_rejected(tmp_path):
    path = tmp_path / "old.vasp"
    path.write_text(NACL_POSCAR.replace("Na Cl\n", "").replace("NaCl\n", "comment\n"))
    _assert_names(_error(path), path, "no element symbols")


def test_non_periodic_xyz(tmp_path):
    path = tmp_path / "h2.xyz"
    path.write_text("2\nhydrogen\nH 0 0 0\nH 0 0 0.74\n")
    _assert_names(_error(path), path, "not periodic in 3 dimensions")


def test_multi_frame_extxyz(tmp_path):
    from ase.build import bulk
    from ase.io import write

    path = tmp_path / "two.extxyz"
    write(path, [bulk("Cu", "fcc", a=3.6), bulk("Cu", "fcc", a=3.7)], format="extxyz")
    _assert_names(_error(path), path, "2 structures")


def test_bad_target_value(tmp_path):
    path = tmp_path / "nacl.cif"
    path.write_text(NACL_CIF)
    _assert_names(_error(path, targets={"gap": "abc"}), path, "target 'gap' is not a number: 'abc'")


def test_json_file_with_pymatgen_structure_dict(tmp_path):
    from ase.build import bulk
    from pymatgen.io.ase import AseAtomsAdaptor

    path = tmp_path / "cu.json"
    path.write_text(json.dumps(AseAtomsAdaptor.get_structure(bulk("Cu", "fcc", a=3.6)).as_dict()))
    c = read_structure(path)
    assert c.id == "cu" and c.atomic_numbers.tolist() == [29]


@pytest.mark.parametrize("key,value,message", [
    ("_cell_length_a", "-5", "cell length must be positive"),
    ("_cell_length_b", "0", "cell length must be positive"),
    ("_cell_angle_gamma", "180", "strictly between 0 and 180"),
    ("_cell_angle_alpha", "-90", "strictly between 0 and 180"),
])
def test_cif_with_impossible_cell_parameters_is_rejected(tmp_path, key, value, message):
    """pymatgen turns a = -5 into a valid left-handed cell: the file was read as a crystal it
    does not describe. The CIF dictionary forbids such values; say which one."""
    cell = {"_cell_length_a": "5", "_cell_length_b": "5", "_cell_length_c": "5",
            "_cell_angle_alpha": "90", "_cell_angle_beta": "90", "_cell_angle_gamma": "90", key: value}
    text = "data_x\n" + "".join(f"{k} {v}\n" for k, v in cell.items()) + (
        "_symmetry_space_group_name_H-M 'P 1'\nloop_\n_atom_site_label\n_atom_site_type_symbol\n"
        "_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\nNa1 Na 0 0 0\n"
    )
    path = tmp_path / "odd.cif"
    path.write_text(text)
    with pytest.raises(InputError, match=f"odd.cif.*{key}.*{message}"):
        read_structure(path)
    fixed = "90" if "angle" in key else "5.0(2)"  # a value with its standard uncertainty reads
    path.write_text(text.replace(f"{key} {value}", f"{key} {fixed}"))
    assert read_structure(path).num_atoms == 1
