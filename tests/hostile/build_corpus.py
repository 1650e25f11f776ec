"""Writes the committed hostile-input corpus (tests/hostile/files/), its manifest and README.

Run once after changing a case: ``python tests/hostile/build_corpus.py``. The files are
committed; the test reads them and the manifest, never this script. Good structures are built
with pymatgen / ASE from textbook lattice constants; every bad one is written by hand, byte for
byte, because the point is the exact malformed text a user could hand us.

Manifest fields per file (one source of truth for the test and the README):

``expect``   "good" (must be read and predicted, finite), "bad" (one error naming the file),
             "either" (read and finite, or one error naming the file: the issue does not say
             which), or "records" for dataset files, with one expectation per record.
``defect``   the issue-12 defect number(s) it exercises ("" for plain robustness cases).
``match``    a regex the error message must match when the file is rejected.
``max_z``    largest atomic number: the readers accept Z <= 118, but a model rejects elements
             it cannot encode (defect 1), so the expectation depends on the model.
``may_keep``  a stream cut short: an error naming it, and the records before the cut may be kept.
``note``     what the file exercises.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import zipfile
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import write as ase_write
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter
from pymatgen.io.vasp import Poscar

HERE = Path(__file__).resolve().parent
FILES = HERE / "files"

MANIFEST: list[dict] = []


def case(name: str, data: bytes | str, expect="bad", note="", defect="", match="", max_z=None, records=None, may_keep=False):
    raw = data.encode("utf-8") if isinstance(data, str) else data
    (FILES / name).write_bytes(raw)
    entry = {"file": name, "expect": expect, "defect": defect, "note": note}
    if match:
        entry["match"] = match
    if max_z is not None:
        entry["max_z"] = max_z
    if records is not None:
        entry["records"] = records
    if may_keep:
        entry["may_keep"] = True  # a stream cut short: the records before the cut may be kept
    MANIFEST.append(entry)


def zip_bytes(members: dict[str, str]) -> bytes:
    """A zip archive with a fixed timestamp, so rebuilding the corpus gives the same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in members.items():
            z.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), text)
    return buf.getvalue()


def record(expect="good", note="", match="", max_z=None):
    r = {"expect": expect, "note": note}
    if match:
        r["match"] = match
    if max_z is not None:
        r["max_z"] = max_z
    return r


# ---- good crystals ------------------------------------------------------------------------------

def rocksalt(a=5.64, a_sp="Na", b_sp="Cl"):
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [a_sp, b_sp], [[0, 0, 0], [0.5, 0.5, 0.5]])


NACL = rocksalt()
SI = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.431), ["Si"], [[0, 0, 0]]).get_primitive_structure()
CU = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.615), ["Cu"], [[0, 0, 0]]).get_primitive_structure()
GAAS = Structure.from_spacegroup("F-43m", Lattice.cubic(5.653), ["Ga", "As"], [[0, 0, 0], [0.25, 0.25, 0.25]])
MGO = rocksalt(4.212, "Mg", "O")
FE = Structure(Lattice.cubic(2.87), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]])
AL = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.05), ["Al"], [[0, 0, 0]]).get_primitive_structure()
ZNO = Structure.from_spacegroup(
    "P6_3mc", Lattice.hexagonal(3.25, 5.207), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]]
)


def cif(structure) -> str:
    return str(CifWriter(structure))


def poscar(structure, comment=None) -> str:
    return Poscar(structure, comment=comment).get_str()


def extxyz(structures) -> str:
    buf = io.StringIO()
    atoms = [Atoms([str(sp) for sp in s.species], cell=s.lattice.matrix, scaled_positions=s.frac_coords, pbc=True)
             for s in structures]
    ase_write(buf, atoms, format="extxyz")
    return buf.getvalue()


def jsonl_record(structure, id, targets=None, split=None) -> dict:
    return {"id": id, "targets": targets or {}, "split": split, "lattice": structure.lattice.matrix.tolist(),
            "species": [str(sp) for sp in structure.species], "frac_coords": structure.frac_coords.tolist()}


def jarvis_record(structure, jid) -> dict:
    return {"jid": jid, "formation_energy_peratom": -1.2, "atoms": {
        "lattice_mat": structure.lattice.matrix.tolist(), "coords": structure.frac_coords.tolist(),
        "elements": [str(sp) for sp in structure.species], "cartesian": False}}


def one_atom_poscar(lattice_rows, species="Cu", scale="1.0", coords="0 0 0", comment="one atom") -> str:
    rows = "\n".join("  " + " ".join(f"{v:.16g}" for v in row) for row in lattice_rows)
    return f"{comment}\n{scale}\n{rows}\n{species}\n1\nDirect\n{coords}\n"


def cif_text(a, b, c, alpha, beta, gamma, sites, name="hostile", extra=""):
    """A P1 CIF written by hand (no library normalises what we put in)."""
    rows = "\n".join(f"  {label} {sp} {x} {y} {z} {occ}" for label, sp, x, y, z, occ in sites)
    return (f"data_{name}\n_symmetry_space_group_name_H-M   'P 1'\n_cell_length_a {a}\n_cell_length_b {b}\n"
            f"_cell_length_c {c}\n_cell_angle_alpha {alpha}\n_cell_angle_beta {beta}\n_cell_angle_gamma {gamma}\n"
            f"_symmetry_Int_Tables_number 1\n{extra}loop_\n _symmetry_equiv_pos_as_xyz\n  'x, y, z'\n"
            f"loop_\n _atom_site_label\n _atom_site_type_symbol\n _atom_site_fract_x\n _atom_site_fract_y\n"
            f" _atom_site_fract_z\n _atom_site_occupancy\n{rows}\n")


def build() -> None:
    FILES.mkdir(exist_ok=True)
    for old in FILES.iterdir():
        old.unlink()
    rng = random.Random(12)

    # ---- good files of every format: they must keep their results next to the bad ones ----
    case("good_nacl.cif", cif(NACL), "good", "rock salt, conventional 8-atom cell (pymatgen CifWriter)")
    case("good_si.cif", cif(SI), "good", "diamond Si, 2-atom primitive cell")
    case("good_cu.vasp", poscar(CU), "good", "fcc Cu primitive cell, VASP 5 POSCAR")
    case("POSCAR_good_gaas", poscar(GAAS), "good", "zinc blende GaAs, file named POSCAR_* (no extension)")
    case("CONTCAR_good_mgo", poscar(MGO), "good", "rock-salt MgO, file named CONTCAR_*")
    case("good_fe.poscar", poscar(FE), "good", "bcc Fe conventional cell, .poscar extension")
    case("good_al.extxyz", extxyz([AL]), "good", "fcc Al, extended XYZ written by ASE")
    case("good_zno.xyz", extxyz([ZNO]), "good", "wurtzite ZnO, extended XYZ with a .xyz name")
    case("good_record.json", json.dumps(jsonl_record(MGO, "mgo-record", {"e_form": -3.0})), "good",
         "one record of the project's JSONL format in a .json file")
    case("good_jarvis_record.json", json.dumps(jarvis_record(SI, "JVASP-1002")), "good", "one JARVIS-format record")
    case("good_pymatgen_structure.json", json.dumps(CU.as_dict()), "good", "a pymatgen Structure.as_dict() in a .json file")
    case("good_nacl.cif.gz", gzip.compress(cif(NACL).encode(), mtime=0), "good", "gzipped CIF")
    case("good_crlf.cif", cif(SI).replace("\n", "\r\n"), "good", "CIF with CRLF (Windows) line endings")
    case("good_crlf.vasp", poscar(CU).replace("\n", "\r\n"), "good", "POSCAR with CRLF line endings")
    case("good_utf8_bom.cif", b"\xef\xbb\xbf" + cif(NACL).encode(), "good", "CIF starting with a UTF-8 byte-order mark", "13")
    long_comment = "# " + "very long line " * 4000 + "\n"
    case("good_long_line.cif", long_comment + cif(CU), "good", "CIF with a 60 000-character comment line")
    case("good_cif_content.dat", cif(GAAS), "good", "CIF text under an unknown extension (format guessed from content)")
    case("good_two.jsonl", "\n".join(json.dumps(jsonl_record(s, i)) for s, i in ((NACL, "jl-nacl"), (SI, "jl-si"))) + "\n",
         "records", "JSONL dataset, two good lines", records=[record(), record()])
    good_zip = {"records.jsonl": "\n".join(json.dumps(jsonl_record(s, i)) for s, i in ((MGO, "z-mgo"), (AL, "z-al"))) + "\n"}
    case("good_dataset.zip", zip_bytes(good_zip), "records", "zip holding one JSONL member with two good records",
         records=[record(), record()])
    case("good_two_frames.extxyz", extxyz([NACL, SI]), "records",
         "multi-frame extended XYZ: a dataset of two structures (ase.io.iread, issue 'Inputs users have')", "inputs",
         records=[record(), record()])
    matbench = {"index": ["mb-1", "mb-2"], "columns": ["structure", "e_form"],
                "data": [[MGO.as_dict(), -3.0], [CU.as_dict(), 0.0]]}
    case("good_matbench_split.json", json.dumps(matbench), "records",
         "matbench-style JSON (pandas orient='split', pymatgen Structure dicts): a dataset (issue 'Inputs users have')", "inputs",
         records=[record(), record()])

    # ---- extreme but valid cells: readers accept them, models stay finite and invariant ----
    vac = Structure(Lattice.from_parameters(3.0, 3.0, 1000.0, 90, 90, 90), ["C", "C"], [[0, 0, 0.5], [0.5, 0.5, 0.5]])
    case("valid_vacuum_1000A.cif", cif(vac), "good", "2-atom slab with 1000 A of vacuum", "works")
    case("valid_gamma_10deg.cif", cif_text(10, 10, 10, 90, 90, 10, [("Cu1", "Cu", 0, 0, 0, 1)]), "good",
         "monoclinic cell with gamma = 10 deg (shortest vector 1.74 A)", "works")
    case("valid_gamma_170deg.cif", cif_text(10, 10, 10, 90, 90, 170, [("Cu1", "Cu", 0, 0, 0, 1)]), "good",
         "monoclinic cell with gamma = 170 deg", "works")
    rh = Lattice.from_parameters(20, 20, 20, 10, 10, 10)
    case("valid_rhombohedral_10deg.vasp", poscar(Structure(rh, ["Ar"], [[0, 0, 0]])), "good",
         "rhombohedral cell with all angles 10 deg (normalised volume 0.026)", "works")
    left = np.array(CU.lattice.matrix)
    left[2] *= -1
    case("valid_left_handed.vasp", poscar(Structure(Lattice(left), CU.species, CU.frac_coords)), "good",
         "left-handed lattice (negative determinant)", "works")
    big = NACL.copy()
    big.make_supercell([5, 5, 2])
    case("valid_400_atoms.cif", cif(big), "good", "400-atom cell (5x5x2 NaCl supercell)", "works")
    for size, ext, defect in (("1e5", "cif", "7"), ("1e7", "vasp", "7"), ("1e12", "json", "7")):
        s = Structure(Lattice.cubic(float(size)), ["Cu"], [[0, 0, 0]])
        data = {"cif": cif, "vasp": poscar, "json": lambda st: json.dumps(jsonl_record(st, f"huge-{size}"))}[ext](s)
        case(f"valid_huge_cube_{size}A.{ext}", data, "good", f"1-atom cube of edge {size} A (check's Niggli step)", defect)
    case("valid_coords_outside_cell.vasp", one_atom_poscar(np.eye(3) * 3.6, coords="5.25 -7.5 12.0"), "good",
         "fractional coordinates far outside [0, 1)")
    case("valid_cartesian.vasp", poscar(FE).replace("direct", "Cartesian").replace("Direct", "Cartesian")
         .replace("0.500000", "1.435000"), "good", "POSCAR in Cartesian mode")
    case("valid_volume_scale.vasp", one_atom_poscar(np.eye(3), scale="-46.0", species="Cu"), "good",
         "POSCAR with a negative scale factor (= cell volume in A^3)")
    es = Structure(Lattice.cubic(4.0), ["Es"], [[0, 0, 0]])
    case("valid_es_z99.cif", cif(es), "good", "einsteinium (Z = 99): eComFormer encodes it, Crystalformer (Z <= 98) must reject it per structure", "1", max_z=99)
    fm = Structure(Lattice.cubic(4.0), ["Fm", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    case("valid_fm_z100.vasp", poscar(fm), "good", "fermium (Z = 100), the last element eComFormer encodes", "1", max_z=100)

    # ---- unsupported elements (defect 1): readers accept Z <= 118, models do not ----
    ogtspu = Structure(Lattice.cubic(7.0), ["Og", "Ts", "Pu"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0]])
    case("elements_og_ts_pu.vasp", poscar(ogtspu), "good", "POSCAR with species line 'Og Ts Pu' (Z = 118, 117)", "1", max_z=118)
    case("elements_ts.cif", cif(Structure(Lattice.cubic(5.0), ["Ts"], [[0, 0, 0]])), "good", "tennessine (Z = 117) CIF", "1", max_z=117)
    case("elements_md_z101.json", json.dumps(jsonl_record(Structure(Lattice.cubic(4.5), ["Md"], [[0, 0, 0]]), "md-101")),
         "good", "mendelevium (Z = 101) JSON record", "1", max_z=101)

    # ---- unreadable content ----
    case("bad_empty.cif", b"", "bad", "0-byte CIF", match="empty")
    case("bad_empty.vasp", b"", "bad", "0-byte POSCAR", match="empty")
    case("bad_empty.json", b"", "bad", "0-byte JSON record file", match="empty")
    case("bad_whitespace_only.cif", "  \n\n\t\n", "bad", "CIF holding only whitespace", match="empty")
    case("bad_binary_garbage.cif", bytes(rng.randrange(256) for _ in range(2048)), "bad", "2 KiB of random bytes named .cif")
    case("bad_binary_garbage.vasp", bytes(rng.randrange(256) for _ in range(2048)), "bad", "random bytes named .vasp")
    case("bad_binary_garbage.extxyz", bytes(rng.randrange(256) for _ in range(2048)), "bad", "random bytes named .extxyz")
    case("bad_binary_garbage.json", bytes(rng.randrange(256) for _ in range(2048)), "bad", "random bytes named .json")
    case("bad_png_named.cif", b"\x89PNG\r\n\x1a\n" + bytes(rng.randrange(256) for _ in range(500)), "bad", "a PNG header named .cif")
    case("bad_html_error_page.cif", "<!DOCTYPE html><html><body><h1>404 Not Found</h1></body></html>\n", "bad",
         "an HTTP error page saved as .cif (a failed download)")
    case("bad_prose.cif", "This is not a crystal structure.\nJust some notes.\n", "bad", "plain prose named .cif")
    case("bad_notes.txt", "lattice? no idea\n", "bad", "text under an unknown extension", match="format|parse|read")
    full = cif(NACL)
    case("bad_truncated.cif", full[: full.index("_atom_site_occupancy") + 60], "bad",
         "CIF cut inside its atom_site loop (a partial download)")
    case("bad_truncated_header.cif", full[:120], "bad", "CIF cut before any atom (only the cell)")
    case("bad_truncated.cif.gz", gzip.compress(full.encode(), mtime=0)[:-40], "bad", "gzip stream cut short", match="gzip|truncat|corrupt")
    case("bad_partial_occupancy.cif", cif_text(4.2, 4.2, 4.2, 90, 90, 90, [("Fe1", "Fe", 0, 0, 0, 0.5), ("Co1", "Co", 0, 0, 0, 0.5),
         ("O1", "O", 0.5, 0.5, 0.5, 1)]), "bad", "sites with occupancy 0.5 (disordered alloy)", match="occup|disorder")
    case("bad_two_data_blocks.cif", cif(NACL) + "\n" + cif(SI), "bad", "two CIF data blocks in one file", match="structures|block")
    case("bad_cif_no_cell.cif", "data_x\nloop_\n _atom_site_label\n _atom_site_type_symbol\n _atom_site_fract_x\n"
         " _atom_site_fract_y\n _atom_site_fract_z\n  Na1 Na 0 0 0\n", "bad", "CIF with atoms but no cell")
    case("bad_unknown_element.cif", cif_text(4, 4, 4, 90, 90, 90, [("Xx1", "Xx", 0, 0, 0, 1)]), "bad",
         "CIF with element symbol 'Xx'", match="element|Xx")
    case("bad_unknown_element.vasp", one_atom_poscar(np.eye(3) * 4, species="Zz"), "bad", "POSCAR with species 'Zz'", match="element|Zz")
    case("bad_unknown_element.json", json.dumps({**jsonl_record(CU, "qq"), "species": ["Qq"]}), "bad",
         "JSON record with species 'Qq'", match="element|Qq")
    case("bad_utf16.cif", cif(NACL).encode("utf-16"), "either",
         "UTF-16 (with BOM) CIF: read it, or say it is UTF-16", "13", match="UTF-16|utf-16|encoding")
    case("bad_utf16le_nobom.vasp", poscar(CU).encode("utf-16-le"), "either",
         "UTF-16-LE POSCAR without a BOM: read it, or say what the encoding is", "13", match="UTF-16|utf-16|encoding|NUL|binary")
    case("bad_latin1_comment.cif", ("# Müller, Zürich\n" + cif(SI)).encode("latin-1"), "good",
         "Latin-1 bytes in a CIF comment (not UTF-8)")

    # ---- impossible or degenerate geometry ----
    case("bad_singular_lattice.vasp", one_atom_poscar([[1, 0, 0], [0, 1, 0], [1, 1, 0]]), "bad",
         "coplanar lattice vectors (zero volume)", match="singular|volume")
    case("bad_zero_lattice.cif", cif_text(0, 4, 4, 90, 90, 90, [("Na1", "Na", 0, 0, 0, 1)]), "bad", "a = 0 A")
    case("bad_negative_lattice.cif", cif_text(-5, 5, 5, 90, 90, 90, [("Na1", "Na", 0, 0, 0, 1)]), "bad", "a = -5 A")
    case("bad_zero_scale.vasp", one_atom_poscar(np.eye(3) * 4, scale="0.0"), "bad", "POSCAR scale factor 0")
    case("bad_angles_sum.cif", cif_text(5, 5, 5, 120, 120, 130, [("Na1", "Na", 0, 0, 0, 1)]), "bad",
         "cell angles that cannot close (120/120/130 deg)")
    case("bad_nan_coords.vasp", one_atom_poscar(np.eye(3) * 4, coords="nan 0 0"), "bad", "NaN coordinate in a POSCAR",
         match="nan|finite")
    case("bad_inf_coords.cif", cif_text(4, 4, 4, 90, 90, 90, [("Na1", "Na", "inf", 0, 0, 1)]), "bad", "inf fractional coordinate in a CIF")
    case("bad_nan_lattice.json", json.dumps({**jsonl_record(CU, "nanlat"), "lattice": [[float("nan"), 0, 0], [0, 3, 0], [0, 0, 3]]}),
         "bad", "NaN in a JSON record's lattice (JSON NaN token)", match="nan|finite")
    case("bad_inf_lattice.extxyz", '1\nLattice="inf 0 0 0 3 0 0 0 3" Properties=species:S:1:pos:R:3 pbc="T T T"\nCu 0 0 0\n', "bad",
         "inf in an extended XYZ lattice")
    case("bad_lattice_1e308.vasp", one_atom_poscar(np.eye(3) * 1e308), "either",
         "1e308 A lattice: its volume overflows; rejected, or predicted finite (never a silent NaN)")
    case("bad_close_atoms.cif", cif_text(5, 5, 5, 90, 90, 90, [("Na1", "Na", 0, 0, 0, 1), ("Cl1", "Cl", 0.06, 0, 0, 1)]), "bad",
         "two atoms 0.30 A apart", match="closer|overlap")
    case("bad_duplicate_atoms.vasp", "dup\n1.0\n3.6 0 0\n0 3.6 0\n0 0 3.6\nCu\n2\nDirect\n0 0 0\n0 0 0\n", "bad",
         "the same atom listed twice", match="closer|overlap|duplicate")
    case("bad_tiny_cell_0.4A.vasp", one_atom_poscar(np.eye(3) * 0.4), "bad", "1-atom cell of 0.4 A: the atom meets its own image",
         match="closer|overlap|short")
    case("bad_tiny_cell_0.001A.vasp", one_atom_poscar(np.eye(3) * 0.001), "bad",
         "1-atom cell of 0.001 A (44 s, 10.7 GB before the fix)", "6", match="closer|overlap|short")
    case("bad_tiny_cell_0.0005A.cif", cif_text(0.0005, 0.0005, 0.0005, 90, 90, 90, [("Cu1", "Cu", 0, 0, 0, 1)]), "bad",
         "1-atom cell of 0.0005 A (allocation failure, then a segfault before the fix)", "6", match="closer|overlap|short")
    case("bad_tiny_cell_0.001A.json", json.dumps(jsonl_record(Structure(Lattice.cubic(1.0), ["Cu"], [[0, 0, 0]]), "tiny")).replace(
        "1.0, 0.0, 0.0", "0.001, 0.0, 0.0").replace("0.0, 1.0, 0.0", "0.0, 0.001, 0.0").replace("0.0, 0.0, 1.0", "0.0, 0.0, 0.001"),
        "bad", "1-atom 0.001 A cell as a JSON record", "6", match="closer|overlap|short")

    # ---- malformed POSCAR / XYZ ----
    case("bad_missing_species.vasp", "no species line\n1.0\n3.6 0 0\n0 3.6 0\n0 0 3.6\n1\nDirect\n0 0 0\n", "bad",
         "VASP 4 POSCAR without the species line", match="species|element|symbol")
    case("bad_wrong_count.vasp", "too few coords\n1.0\n4 0 0\n0 4 0\n0 0 4\nNa Cl\n4 4\nDirect\n0 0 0\n0.5 0.5 0.5\n", "bad",
         "POSCAR announcing 8 atoms with 2 coordinate lines")
    case("bad_huge_count.vasp", "absurd count\n1.0\n4 0 0\n0 4 0\n0 0 4\nCu\n999999999\nDirect\n0 0 0\n", "bad",
         "POSCAR announcing 999 999 999 atoms (must not try to allocate them)")
    case("bad_text_coords.vasp", "words\n1.0\n4 0 0\n0 4 0\n0 0 4\nCu\n1\nDirect\nzero zero zero\n", "bad", "words where coordinates belong")
    case("bad_molecule.xyz", "2\nwater-ish\nO 0 0 0\nH 0 0 0.96\n", "bad", "plain XYZ molecule: no lattice, not periodic",
         match="periodic|lattice|cell")
    case("bad_extxyz_count.extxyz", '5\nLattice="4 0 0 0 4 0 0 0 4" Properties=species:S:1:pos:R:3 pbc="T T T"\nCu 0 0 0\n', "bad",
         "extended XYZ announcing 5 atoms, holding 1")

    # ---- malformed JSON records ----
    case("bad_json_truncated.json", json.dumps(jsonl_record(NACL, "cut"))[:150], "bad", "JSON cut mid-record", match="JSON|json")
    case("bad_json_empty_list.json", "[]", "bad", "JSON holding an empty list")
    case("bad_json_number_list.json", "[1, 2, 3]", "bad",
         "JSON list of three numbers: refused as a whole (not records), not three bad records",
         defect="24", match="not structure records")
    case("bad_json_string.json", '"hello"', "bad", "JSON holding a string")
    case("bad_json_no_species.json", json.dumps({k: v for k, v in jsonl_record(CU, "nospecies").items() if k != "species"}), "bad",
         "record without 'species'", match="species")
    case("bad_json_coords_mismatch.json", json.dumps({**jsonl_record(NACL, "mismatch"), "species": ["Na"]}), "bad",
         "8 coordinates, 1 species")
    case("bad_json_deep_nesting.json", "[" * 50000 + "]" * 50000, "bad", "100 000 nested brackets (recursion limit)")
    case("bad_pymatgen_dict_broken.json", json.dumps({"@module": "pymatgen.core.structure", "@class": "Structure", "sites": []}),
         "bad", "pymatgen Structure dict without lattice")
    case("bad_target_string.json", json.dumps(jsonl_record(MGO, "tstr", {"e_form": "abc"})), "bad",
         "target value 'abc'", match="target")

    # ---- datasets with bad records among good ones ----
    lines = [
        (json.dumps(jsonl_record(NACL, "m-good-1", {"e_form": -2.0})), record(note="good")),
        ("{not json at all", record("bad", "invalid JSON", match="JSON")),
        (json.dumps(jsonl_record(SI, "m-good-2", {"e_form": float("nan")})), record(note="NaN target = missing")),
        (json.dumps({"id": "m-nokeys", "targets": {}}), record("bad", "no structure keys")),
        (json.dumps(jsonl_record(CU, "m-tstr", {"e_form": "high"})), record("bad", "string target", match="target")),
        (json.dumps(jsonl_record(CU, "m-1e308", {"e_form": 1e308})), record("either", "target 1e308 (defect 13: non-physical magnitude)")),
        (json.dumps(jsonl_record(CU, "m-inf", {"e_form": float("inf")})), record("bad", "target Infinity", match="target|infinite")),
        (json.dumps(jsonl_record(ogtspu, "m-ogtspu")), record(note="Og Ts Pu (defect 1)", max_z=118)),
        (json.dumps(jsonl_record(es, "m-es")), record(note="Es, Z = 99 (defect 1)", max_z=99)),
        ("", None),
        (json.dumps(jsonl_record(Structure(Lattice.cubic(0.001), ["Cu"], [[0, 0, 0]]), "m-tiny")),
         record("bad", "0.001 A cell (defect 6)", match="closer|overlap|short")),
        ("[1, 2]", record("bad", "a JSON list, not a record")),
        (json.dumps(jsonl_record(MGO, "m-good-3", {"e_form": -3.0})), record(note="good")),
    ]
    case("mixed_good_and_bad.jsonl", "\n".join(text for text, _ in lines) + "\n", "records",
         "JSONL: bad lines reported as file:line, good lines kept", "1, 6, 13",
         records=[r for _, r in lines if r is not None])
    case("mixed_crlf_no_final_newline.jsonl", "\r\n".join([json.dumps(jsonl_record(AL, "c-1")), "garbage",
         json.dumps(jsonl_record(FE, "c-2"))]), "records", "JSONL with CRLF and no final newline",
         records=[record(), record("bad", "garbage line"), record()])
    case("bad_only.jsonl", "nope\n{}\n[]\n", "records", "JSONL of three bad lines",
         records=[record("bad"), record("bad"), record("bad")])
    case("bad_empty.jsonl", b"", "bad", "empty JSONL: must be reported, not silently zero rows", match="empty|no records")
    bad_gz = gzip.compress(("\n".join(json.dumps(jsonl_record(s, f"gz-{i}")) for i, s in enumerate([NACL, SI, CU] * 20)) + "\n").encode(), mtime=0)
    case("bad_truncated.jsonl.gz", bad_gz[: len(bad_gz) // 2], "bad", "gzipped JSONL cut in half: an error naming it (the lines before the cut may be kept)",
         match="gzip|truncat|corrupt", may_keep=True)
    case("bad_target_1e308.json", json.dumps(jsonl_record(MGO, "t1e308", {"e_form": 1e308})), "either",
         "JSON record with target 1e308 (defect 13)", "13")

    # ---- archives (defect 5) ----
    payload = json.dumps([jarvis_record(SI, "JVASP-1"), jarvis_record(CU, "JVASP-2")])
    slip = {"jdft_3d.json": payload, "../../evil.json": payload, "/abs/evil.json": payload}
    case("bad_zip_slip.zip", zip_bytes(slip), "bad", "zip with the expected member plus '../../evil.json' and '/abs/evil.json'",
         "5", match=r"\.\.|absolute|member|unsafe")
    case("bad_zip_garbage.zip", b"PK\x03\x04" + bytes(rng.randrange(256) for _ in range(300)), "bad", "zip signature then garbage")
    case("bad_zip_no_records.zip", zip_bytes({"readme.txt": "nothing here"}), "bad", "valid zip with no JSON member")

    write_manifest_and_readme()


def write_manifest_and_readme() -> None:
    (HERE / "manifest.json").write_text(json.dumps(MANIFEST, indent=1) + "\n")
    rows = []
    for e in MANIFEST:
        expect = e["expect"]
        if expect == "records":
            counts = {}
            for r in e["records"]:
                counts[r["expect"]] = counts.get(r["expect"], 0) + 1
            expect = "dataset: " + ", ".join(f"{n} {k}" for k, n in counts.items())
        if "max_z" in e:
            expect += f" (max Z {e['max_z']})"
        rows.append(f"| `{e['file']}` | {expect} | {e['defect']} | {e['note']} |")
    special = [
        ("special_fifo.cif", "bad", "12", "a named pipe (FIFO): must not hang"),
        ("special_loop.cif", "bad", "13", "a symlink to itself: say 'symlink loop', not 'file not found'"),
        ("special_dangling.vasp", "bad", "", "a symlink to a missing file"),
        ("special_x_\\xe9.cif", "good", "2", "non-UTF-8 file name (copy of good_nacl.cif): CSV still written"),
        ("special_<250 chars>.cif", "good", "11", "a 250-character file name (copy of good_si.cif)"),
        ("special_unreadable.cif", "bad (good as root)", "", "chmod 000 copy of good_cu.vasp's crystal"),
    ]
    for name, expect, defect, note in special:
        rows.append(f"| `{name}` (made by make_special.py) | {expect} | {defect} | {note} |")
    readme = f"""# Hostile-input corpus (issue 12)

{len(MANIFEST)} committed files in `files/` plus {len(special)} made at test time by `make_special.py`
(what git cannot hold: a FIFO, symlinks, a non-UTF-8 name, a 250-character name, an unreadable file).
`tests/integration/test_hostile_corpus.py` runs the whole corpus through **one** invocation each of
`crystalframes data info`, `crystalframes predict` and `crystalframes check`, each in a subprocess with
a timeout and an address-space limit, and asserts: no traceback, no hang, every good file predicted
(finite) next to the bad ones, every bad file named with its problem, nothing lost (one result or
error row per input record).

`manifest.json` holds the expectation of every file; `build_corpus.py` writes the files, the manifest
and this README (edit the script, not the files, then run `python tests/hostile/build_corpus.py`).

Expectations: **good** = read and predicted, finite; **bad** = exactly one error naming the file;
**either** = the issue does not fix which (read and finite, or a clear error); **dataset** = one
row per record. *max Z*: the readers accept Z <= 118; a model rejects, per structure, elements it
cannot encode (eComFormer Z <= 100, Crystalformer Z <= 98; defect 1). The defect column gives the
issue-12 defect number; *works* = in the issue's "what already works and must keep working" (models
finite and invariant on extreme but valid cells); *inputs* = the issue's "Inputs users have";
empty = a robustness case of the same kind.

`data info FOLDER` reads the structure files of a folder (.cif, .vasp, .poscar, POSCAR*/CONTCAR*,
.xyz, .extxyz, optionally gzipped); every other file there (.json, .jsonl, .zip, .txt, .dat, the
FIFO, broken symlinks) must be read or listed as skipped (defect 13), never dropped silently.

| file | expected | defect | what it exercises |
|---|---|---|---|
""" + "\n".join(rows) + "\n"
    (HERE / "README.md").write_text(readme)


if __name__ == "__main__":
    build()
    print(f"{len(MANIFEST)} files written to {FILES}")
