"""Readers on the real DFT data in ../shared/data (skipped with a reason when it is absent)."""

from __future__ import annotations

import gzip
import json
import math
import time
import zipfile

import numpy as np
import pytest

from crystalframes.io import (
    Crystal,
    InputError,
    crystal_from_jarvis,
    crystal_from_record,
    iter_records,
    read_dataset,
    read_structure,
)

MP_SAMPLE = "mp_2018_sample.jsonl.gz"
JARVIS_SAMPLE = "jarvis_dft_3d_sample.jsonl.gz"

pytestmark = pytest.mark.shared


def load_raw_records(path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def _structure(rec: dict):
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice(rec["lattice"]), rec["species"], rec["frac_coords"])


def _assert_same_crystal(a: Crystal, b: Crystal, atol: float = 1e-6) -> None:
    """Same cell up to rotation (Gram matrix), same species and fractional positions (mod 1), same order."""
    assert a.atomic_numbers.tolist() == b.atomic_numbers.tolist()
    scale = float(np.abs(a.lattice).max())
    assert np.allclose(a.lattice @ a.lattice.T, b.lattice @ b.lattice.T, atol=atol * scale * scale * 10)
    d = a.frac_coords - b.frac_coords
    d -= np.round(d)
    assert np.abs(d).max() < atol * 10


def _pick(records: list[dict], n: int = 6) -> list[dict]:
    """A few records, including non-orthogonal cells."""
    skewed = [r for r in records if np.count_nonzero(np.asarray(r["lattice"]) - np.diag(np.diag(r["lattice"])))]
    chosen = records[:3] + skewed[:3]
    assert len(chosen) == n and len(skewed) >= 3
    return chosen


# ---------------------------------------------------------------------------------- whole samples


@pytest.mark.parametrize("name, count", [(JARVIS_SAMPLE, 1325), (MP_SAMPLE, 5955)])
def test_every_record_of_the_samples_reads(shared_data, name, count):
    result = read_dataset(shared_data / name)
    assert result.errors == []
    assert len(result.crystals) == count
    assert len({c.id for c in result.crystals}) == count
    assert {c.split for c in result.crystals} <= {"train", "val", "test", None}
    assert all(isinstance(v, float) for c in result.crystals for v in c.targets.values())
    assert sum(bool(c.targets) for c in result.crystals) > 0.8 * count  # 184 JARVIS records carry no targets
    assert max(c.num_atoms for c in result.crystals) <= 152


def test_sample_target_filter(shared_data):
    result = read_dataset(shared_data / MP_SAMPLE, target="mp2018_e_form")
    assert len(result.crystals) + len(result.missing_target) == 5955 and result.errors == []
    assert all(not math.isnan(c.targets["mp2018_e_form"]) for c in result.crystals)
    assert all("missing target 'mp2018_e_form'" in e.problem for e in result.missing_target)


@pytest.mark.benchmark
def test_mp_sample_read_time(shared_data):
    start = time.perf_counter()
    result = read_dataset(shared_data / MP_SAMPLE)
    elapsed = time.perf_counter() - start
    print(f"\nread {len(result.crystals)} records of {MP_SAMPLE} in {elapsed:.2f} s")
    assert elapsed < 5.0


def test_records_match_pymatgen_structures(mp_records):
    """Crystals built directly from arrays equal the ones built through pymatgen."""
    for i, rec in enumerate(mp_records[:20]):
        direct = crystal_from_record(rec, f"{MP_SAMPLE}:{i + 1}")
        via_pmg = read_structure(_structure(rec), id=rec["id"])
        assert via_pmg.id == direct.id == rec["id"]
        _assert_same_crystal(direct, via_pmg, atol=1e-10)


# ------------------------------------------------------------------------------------ round trips


def test_cif_round_trip(tmp_path, mp_records, jarvis_records):
    from pymatgen.io.cif import CifWriter

    for rec in _pick(mp_records) + _pick(jarvis_records):
        path = tmp_path / f"{rec['id']}.cif"
        CifWriter(_structure(rec)).write_file(path)
        c = read_structure(path)
        assert c.id == rec["id"]
        assert c.source == str(path)
        _assert_same_crystal(c, crystal_from_record(rec, "x"), atol=1e-6)  # CifWriter writes 8 decimals


def test_poscar_round_trip(tmp_path, mp_records, jarvis_records):
    from pymatgen.io.vasp import Poscar

    for rec in _pick(mp_records) + _pick(jarvis_records):
        path = tmp_path / f"POSCAR-{rec['id']}"
        Poscar(_structure(rec)).write_file(path)
        c = read_structure(path)
        ref = crystal_from_record(rec, "x")
        _assert_same_crystal(c, ref, atol=1e-12)
        assert np.allclose(c.lattice, ref.lattice, atol=1e-12)  # POSCAR keeps the matrix itself


def test_extxyz_round_trip(tmp_path, mp_records, jarvis_records):
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    for rec in _pick(mp_records) + _pick(jarvis_records):
        path = tmp_path / f"{rec['id']}.extxyz"
        write(path, AseAtomsAdaptor.get_atoms(_structure(rec)), format="extxyz")
        c = read_structure(path)
        assert c.id == rec["id"]
        _assert_same_crystal(c, crystal_from_record(rec, "x"), atol=1e-7)


def test_pymatgen_and_ase_objects(mp_records):
    from pymatgen.io.ase import AseAtomsAdaptor

    for rec in _pick(mp_records):
        structure = _structure(rec)
        ref = crystal_from_record(rec, "x")
        from_pmg = read_structure(structure)
        from_ase = read_structure(AseAtomsAdaptor.get_atoms(structure), id=rec["id"], targets=rec["targets"])
        assert from_pmg.id == structure.composition.reduced_formula
        assert from_ase.id == rec["id"] and from_ase.targets == rec["targets"]
        _assert_same_crystal(from_pmg, ref, atol=1e-10)
        _assert_same_crystal(from_ase, ref, atol=1e-10)


def test_truncated_cif_from_real_structure(tmp_path, mp_records):
    from pymatgen.io.cif import CifWriter

    text = str(CifWriter(_structure(mp_records[0])))
    path = tmp_path / "half.cif"
    path.write_text(text[: len(text) // 2])
    with pytest.raises(InputError) as info:
        read_structure(path)
    assert info.value.source == str(path)
    assert "CIF" in info.value.problem


# ----------------------------------------------------------------------------------- datasets


def test_truncated_real_jsonl_gz(tmp_path, shared_data):
    data = (shared_data / MP_SAMPLE).read_bytes()
    path = tmp_path / "mp_cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 3])
    result = read_dataset(path)
    assert 1000 < len(result.crystals) < 5955
    assert len(result.errors) == 1
    assert result.errors[0].source == str(path)
    assert "file is truncated / corrupt gzip" in result.errors[0].problem
    full_ids = [r["id"] for r in load_raw_records(shared_data / MP_SAMPLE)]
    assert [c.id for c in result.crystals] == full_ids[: len(result.crystals)]
    with pytest.raises(InputError, match="truncated"):
        read_dataset(path, strict=True)


def test_id_prop_folder_with_real_cifs(tmp_path, mp_records):
    from pymatgen.io.cif import CifWriter

    chosen = [r for r in mp_records if "mp2018_e_form" in r["targets"]][:8]
    rows = []
    for rec in chosen:
        CifWriter(_structure(rec)).write_file(tmp_path / f"{rec['id']}.cif")
        rows.append(f"{rec['id']},{rec['targets']['mp2018_e_form']!r}")
    (tmp_path / "id_prop.csv").write_text("\n".join(rows) + "\n")
    result = read_dataset(tmp_path)
    assert result.errors == []
    assert [c.id for c in result.crystals] == [r["id"] for r in chosen]
    for c, rec in zip(result.crystals, chosen):
        assert c.targets == {"target": rec["targets"]["mp2018_e_form"]}
        _assert_same_crystal(c, crystal_from_record(rec, "x"), atol=1e-6)


def _to_jarvis(rec: dict, cartesian: bool) -> dict:
    """A JSONL sample record in the JARVIS figshare layout (jdft_3d-8-18-2021.json)."""
    lattice = np.asarray(rec["lattice"])
    frac = np.asarray(rec["frac_coords"])
    out = {
        "jid": rec["id"],
        "atoms": {
            "lattice_mat": lattice.tolist(),
            "coords": (frac @ lattice if cartesian else frac).tolist(),
            "elements": rec["species"],
            "cartesian": cartesian,
        },
        "formula": "ignored",
    }
    out.update({k: ("na" if v is None else v) for k, v in rec["targets"].items()})
    return out


def test_jarvis_layout_cartesian_and_fractional_agree(jarvis_records):
    for i, rec in enumerate(jarvis_records):
        ref = crystal_from_record(rec, f"{JARVIS_SAMPLE}:{i + 1}")
        cart = crystal_from_jarvis(_to_jarvis(rec, cartesian=True), f"jdft.json[{i}]")
        frac = crystal_from_jarvis(_to_jarvis(rec, cartesian=False), f"jdft.json[{i}]")
        assert cart.id == frac.id == rec["id"]
        assert cart.targets == frac.targets == rec["targets"]
        _assert_same_crystal(cart, frac, atol=1e-12)
        _assert_same_crystal(frac, ref, atol=1e-15)


def test_zip_of_jarvis_and_megnet_json(tmp_path, jarvis_records, mp_records):
    jarvis = [_to_jarvis(r, cartesian=True) for r in jarvis_records]
    jarvis[4]["optb88vdw_bandgap"] = "na"
    megnet = [
        {"id": r["id"], "atoms": _to_jarvis(r, cartesian=True)["atoms"],
         "e_form": r["targets"].get("mp2018_e_form", "na"), "gap pbe": r["targets"].get("mp2018_gap_pbe", "na")}
        for r in mp_records
    ]
    jzip, mzip = tmp_path / "jdft_3d-8-18-2021.zip", tmp_path / "megnet.json.zip"
    with zipfile.ZipFile(jzip, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("jdft_3d-8-18-2021.json", json.dumps(jarvis))
    with zipfile.ZipFile(mzip, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("megnet.json", json.dumps(megnet))

    items = list(iter_records(jzip))
    assert all(isinstance(c, Crystal) for c in items) and len(items) == len(jarvis_records)
    assert math.isnan(items[4].targets["optb88vdw_bandgap"])
    by_gap = read_dataset(jzip, target="optb88vdw_bandgap")
    assert len(by_gap.crystals) == len(jarvis_records) - 1
    assert by_gap.errors == []
    assert by_gap.missing_target[0].source == f"{jzip}:jdft_3d-8-18-2021.json[4] [{jarvis_records[4]['id']}]"

    mp = read_dataset(mzip, target="e_form")
    assert mp.errors == [] and all("missing target 'e_form'" in e.problem for e in mp.missing_target)
    assert [c.id for c in mp.crystals] == [r["id"] for r in mp_records if "mp2018_e_form" in r["targets"]]
    assert all(set(c.targets) == {"e_form", "gap pbe"} for c in mp.crystals)
