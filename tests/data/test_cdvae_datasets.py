"""The CDVAE benchmark sets perov_5 and carbon_24 (Xie et al., ICLR 2022): registry, reading the
tables from a local copy in ../shared/data (skipped when absent), bad rows, splits and the
download of the public tables (offline: a local HTTP server stands in for GitHub)."""

from __future__ import annotations

import csv
import gzip
import io
import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from crystalframes.data import datasets as datasets_mod
from crystalframes.data import download as download_mod
from crystalframes.data.datasets import get_dataset_info, list_datasets, target_is_nonnegative, target_units
from crystalframes.data.sources import load_dataset, resolve_source
from crystalframes.data.splits import make_split
from crystalframes.io import read_dataset
from crystalframes.io.errors import DatasetError

CDVAE = "https://raw.githubusercontent.com/txie-93/cdvae/main/data"
PEROV_ROWS = {"train": 1024, "val": 3787, "test": 3785}
CARBON_ROWS = {"val": 2032, "test": 2030}


@pytest.fixture
def shared_env(shared_data, monkeypatch, tmp_path):
    """The local copy of the tables is found through the environment variable, and no cached
    download (an empty cache folder) can stand in for it."""
    if not (shared_data / "cdvae").is_dir():
        pytest.skip("../shared/data/cdvae not found")
    monkeypatch.setenv(datasets_mod.SHARED_DATA_ENV, str(shared_data))
    monkeypatch.setenv("CRYSTALFRAMES_CACHE_DIR", str(tmp_path / "cache"))
    return shared_data / "cdvae"


@pytest.fixture(scope="module")
def perov(shared_data):
    if not (shared_data / "cdvae").is_dir():
        pytest.skip("../shared/data/cdvae not found")
    return read_dataset(shared_data / "cdvae", member=get_dataset_info("perov_5").member)


@pytest.fixture(scope="module")
def carbon(shared_data):
    if not (shared_data / "cdvae").is_dir():
        pytest.skip("../shared/data/cdvae not found")
    return read_dataset(shared_data / "cdvae", member=get_dataset_info("carbon_24").member)


# ------------------------------------------------------------------------------------------------
# registry


def test_registry_entries_have_units_citations_and_the_cdvae_urls():
    perov = get_dataset_info("perov_5")
    carbon = get_dataset_info("carbon_24")
    assert [i.name for i in list_datasets()][3:5] == ["perov_5", "carbon_24"]
    assert perov.default_target == "heat_ref" and carbon.default_target == "energy_per_atom"
    assert perov.targets == {"heat_ref": "eV/cell", "heat_all": "eV/cell", "dir_gap": "eV", "ind_gap": "eV"}
    assert carbon.targets == {"energy_per_atom": "eV/atom"}
    for info in (perov, carbon):
        assert all(target_units(t) == unit for t, unit in info.targets.items())
        assert "Xie" in info.citation and "ICLR 2022" in info.citation and "MIT" in info.license
        assert info.is_table_set and not info.is_embedded and info.filename == info.name
        assert info.files == {s: f"{CDVAE}/{info.name}/{s}.csv" for s in ("train", "val", "test")}
    assert "Castelli" in perov.citation and "Energy Environ. Sci." in perov.citation and "2012" in perov.citation
    assert "Pickard" in carbon.citation and "AIRSS" in carbon.citation and "2020" in carbon.citation
    assert perov.n_records == 18928 and carbon.n_records == 10153
    assert "8,596" in perov.description and "4,062" in carbon.description and "split=random" in carbon.description
    assert get_dataset_info("Perov-5").name == "perov_5" and get_dataset_info("carbon-24").name == "carbon_24"
    assert target_is_nonnegative("dir_gap") and target_is_nonnegative("ind_gap")
    assert not target_is_nonnegative("heat_ref") and not target_is_nonnegative("energy_per_atom")


# ------------------------------------------------------------------------------------------------
# the local copy in ../shared/data


def test_perov_5_rows_splits_and_targets(perov):
    assert not perov.errors
    assert Counter(c.split for c in perov.crystals) == PEROV_ROWS
    assert {c.num_atoms for c in perov.crystals} == {5}
    for name in ("heat_ref", "heat_all", "dir_gap", "ind_gap"):
        values = np.array([c.targets[name] for c in perov.crystals])
        assert np.isfinite(values).all(), name
    assert len({c.id for c in perov.crystals}) == len(perov.crystals)  # material ids unique across splits


def test_carbon_24_rows_splits_pure_carbon(carbon):
    assert not carbon.errors
    assert Counter(c.split for c in carbon.crystals) == CARBON_ROWS
    assert all(set(c.atomic_numbers.tolist()) == {6} for c in carbon.crystals)
    sizes = [c.num_atoms for c in carbon.crystals]
    assert 6 <= min(sizes) and max(sizes) <= 24
    energy = np.array([c.targets["energy_per_atom"] for c in carbon.crystals])
    # absolute CASTEP energies per atom, not formation energies: all near -154 eV/atom
    assert np.isfinite(energy).all() and -160 < energy.min() and energy.max() < -150


def test_heat_of_formation_is_per_cell(perov):
    """heat_ref / heat_all are eV per 5-atom cell (= per formula unit), registered as eV/cell.
    Per cell their range (-0.4..5 eV) is 0..1 eV/atom above the reference phases, what a set of
    mostly hypothetical perovskites looks like; read per atom it would put crystals 5 eV/atom
    above them (more than most cohesive energies). heat_ref tracks the published heat_all
    (same unit, a different reference), and stable known perovskites sit near zero."""
    ref = np.array([c.targets["heat_ref"] for c in perov.crystals])
    heat_all = np.array([c.targets["heat_all"] for c in perov.crystals])
    assert target_units("heat_ref") == target_units("heat_all") == "eV/cell"
    assert -0.5 < ref.min() and ref.max() < 5.0
    per_atom = ref / 5
    assert per_atom.max() < 1.0 and 0.1 < np.median(per_atom) < 0.5
    assert np.corrcoef(ref, heat_all)[0, 1] > 0.95 and np.median(np.abs(ref - heat_all)) < 0.2
    formulas = {c.id: c for c in perov.crystals}
    known = [c for c in formulas.values() if sorted(c.atomic_numbers.tolist()) == [8, 8, 8, 13, 57]]  # LaAlO3
    assert known and all(abs(c.targets["heat_ref"]) < 0.3 for c in known)


def test_registered_names_resolve_to_the_local_copy(shared_env, tmp_path):
    for name in ("perov_5", "carbon_24"):
        assert resolve_source(name) == shared_env
    result = load_dataset("carbon-24", target="energy_per_atom")  # an alias reads the same tables
    assert len(result.crystals) == sum(CARBON_ROWS.values()) and not result.errors
    # nothing was copied or written anywhere: the cache folder was never created
    assert not (tmp_path / "cache").exists()


def test_a_missing_local_copy_says_how_to_get_the_tables(tmp_path, monkeypatch):
    monkeypatch.setenv(datasets_mod.SHARED_DATA_ENV, str(tmp_path / "nothing"))
    monkeypatch.setenv("CRYSTALFRAMES_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DatasetError, match="crystalframes data fetch perov_5.*CRYSTALFRAMES_SHARED_DATA"):
        resolve_source("perov_5")


def test_random_split_works_on_both_and_the_record_split_leaves_carbon_without_train(perov, carbon):
    for result, target in ((perov, "heat_ref"), (carbon, "energy_per_atom")):
        parts = make_split(result.crystals, "random", target=target, seed=123)
        n = len(result.crystals)
        assert len(parts["train"]) == int(0.8 * n) and len(parts["val"]) == len(parts["test"]) == int(0.1 * n)
    field = make_split(carbon.crystals, "field")
    assert field["train"] == [] and len(field["val"]) == 2032 and len(field["test"]) == 2030
    field = make_split(perov.crystals, "field")
    assert {k: len(v) for k, v in field.items()} == PEROV_ROWS


# ------------------------------------------------------------------------------------------------
# bad rows, in small tables written here


def table_text(rows, header=("", "material_id", "cif", "formula", "heat_all", "heat_ref", "dir_gap", "ind_gap")):
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def perovskite_cif(a=4.0, species=("Sr", "Ti", "O", "O", "O")):
    sites = [(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)]
    atoms = "\n".join(f"  {el}  {el}{i}  1  {x}  {y}  {z}  1" for i, (el, (x, y, z)) in enumerate(zip(species, sites)))
    return (
        "data_test\n_symmetry_space_group_name_H-M   'P 1'\n"
        f"_cell_length_a   {a}\n_cell_length_b   {a}\n_cell_length_c   {a}\n"
        "_cell_angle_alpha   90\n_cell_angle_beta   90\n_cell_angle_gamma   90\n"
        "_symmetry_Int_Tables_number   1\nloop_\n _symmetry_equiv_pos_site_id\n _symmetry_equiv_pos_as_xyz\n"
        "  1  'x, y, z'\nloop_\n _atom_site_type_symbol\n _atom_site_label\n _atom_site_symmetry_multiplicity\n"
        " _atom_site_fract_x\n _atom_site_fract_y\n _atom_site_fract_z\n _atom_site_occupancy\n" + atoms + "\n"
    )


def test_bad_rows_are_reported_and_the_others_load(tmp_path):
    rows = [
        ["0", "101", perovskite_cif(3.9), "SrTiO3", "-0.1", "-0.05", "1.8", "1.6"],
        ["1", "102", "data_broken\n_cell_length_a 4.0\nnot a CIF at all\n", "X", "0.5", "0.4", "0", "0"],
        ["2", "103", perovskite_cif(4.1), "SrTiO3", "0.2", "", "0", "0"],  # no heat_ref
        ["3", "104", perovskite_cif(4.0), "SrTiO3", "0.3", "abc", "0", "0"],  # not a number
        ["4", "105", "", "SrTiO3", "0.3", "0.3", "0", "0"],  # no CIF
        ["5", "106", perovskite_cif(4.2, ("Ba", "Zr", "O", "O", "O")), "BaZrO3", "0.0", "0.01", "3.2", "3.0"],
    ]
    (tmp_path / "perov_5_val.csv").write_text(table_text(rows))
    with gzip.open(tmp_path / "perov_5_dev_train.csv.gz", "wt") as fh:
        fh.write(table_text(rows[:1]))
    (tmp_path / "carbon_24_val.csv").write_text(table_text([], header=("material_id", "cif", "energy_per_atom")))

    result = read_dataset(tmp_path, target="heat_ref", member="perov_5_*.csv*")
    assert [c.id for c in result.crystals] == ["101", "101", "106"]  # dev_train (train) first, then val
    assert [c.split for c in result.crystals] == ["train", "val", "val"]
    assert result.crystals[2].targets == {"heat_all": 0.0, "heat_ref": 0.01, "dir_gap": 3.2, "ind_gap": 3.0}
    assert sorted(e.source.rsplit("[", 1)[-1].rstrip("]") for e in result.errors) == ["102", "104", "105"]
    problems = " | ".join(str(e) for e in result.errors)
    assert "cannot parse as CIF" in problems or "no crystal structure" in problems
    assert "target 'heat_ref' is not a number: 'abc'" in problems and "empty 'cif' field" in problems
    assert [e.source for e in result.missing_target] and "103" in str(result.missing_target[0])
    assert "3 bad records" in result.summary()


def test_one_table_alone_and_a_table_without_a_cif_column(tmp_path):
    path = tmp_path / "val.csv"
    path.write_text(table_text([["0", "7", perovskite_cif(), "SrTiO3", "0", "0", "0", "0"]]))
    result = read_dataset(path)
    assert len(result.crystals) == 1 and result.crystals[0].split is None  # a lone file names no split
    assert result.crystals[0].id == "7" and math.isclose(result.crystals[0].targets["heat_ref"], 0.0)
    (tmp_path / "plain.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DatasetError, match="no 'cif' column"):
        read_dataset(tmp_path / "plain.csv")
    # a truncated download: the rows before the cut load, the cut is one error
    rows = [[str(i), str(i), perovskite_cif(3.8 + 0.1 * i), "SrTiO3", "0", "0", "0", "0"] for i in range(40)]
    data = gzip.compress(table_text(rows).encode())
    (tmp_path / "cut.csv.gz").write_bytes(data[: len(data) * 2 // 3])
    result = read_dataset(tmp_path / "cut.csv.gz")
    assert 0 < len(result.crystals) < 40 and len(result.errors) == 1
    assert "truncated" in str(result.errors[0]) or "unreadable" in str(result.errors[0])


# ------------------------------------------------------------------------------------------------
# data fetch: the public CDVAE tables, from a local server


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("CRYSTALFRAMES_CACHE_DIR", str(root))
    monkeypatch.setenv(datasets_mod.SHARED_DATA_ENV, str(tmp_path / "no_local_copy"))
    monkeypatch.setattr(download_mod, "DOWNLOAD_RETRIES", 0)
    return root / "datasets"


def serve_perov_tables(http_server, monkeypatch, bodies):
    info = datasets_mod.DATASETS["perov_5"]
    files = {split: http_server.serve(f"/perov_5/{split}.csv", body) for split, body in bodies.items()}
    monkeypatch.setitem(datasets_mod.DATASETS, "perov_5", replace(info, files=files, n_records=3))
    return files


def test_fetch_downloads_validates_and_caches_the_set(cache, http_server, monkeypatch):
    good = table_text([["0", "1", perovskite_cif(), "SrTiO3", "0", "0.1", "0", "0"]]).encode()
    serve_perov_tables(http_server, monkeypatch, {"train": good, "val": good, "test": good})
    path = download_mod.fetch_dataset("perov_5", progress=False)
    assert path == cache / "perov_5"
    assert sorted(p.name for p in path.iterdir()) == ["perov_5_test.csv", "perov_5_train.csv", "perov_5_val.csv"]
    assert (cache / "perov_5.sha256").read_text().split()[0] == download_mod.file_sha256(path)
    assert sorted(p.name for p in cache.iterdir()) == ["perov_5", "perov_5.sha256"]  # no staging left
    assert resolve_source("perov_5") == path
    result = load_dataset("perov_5")
    assert Counter(c.split for c in result.crystals) == {"train": 1, "val": 1, "test": 1}
    hits = len(http_server.hits)
    assert download_mod.fetch_dataset("perov_5", progress=False) == path and len(http_server.hits) == hits


def test_a_wrong_table_never_reaches_the_cache(cache, http_server, monkeypatch):
    good = table_text([["0", "1", perovskite_cif(), "SrTiO3", "0", "0.1", "0", "0"]]).encode()
    serve_perov_tables(http_server, monkeypatch, {"train": good, "val": b"<html>rate limited</html>", "test": good})
    with pytest.raises(DatasetError, match="no 'cif' column"):
        download_mod.fetch_dataset("perov_5", progress=False)
    assert not (cache / "perov_5").exists()


def test_fetch_from_a_local_folder_of_upstream_tables(cache, tmp_path, monkeypatch):
    folder = tmp_path / "cdvae_checkout" / "perov_5"
    folder.mkdir(parents=True)
    for split in ("train", "val", "test"):
        (folder / f"{split}.csv").write_text(table_text([["0", split, perovskite_cif(), "SrTiO3", "0", "0", "0", "0"]]))
    with pytest.warns(UserWarning, match="far from"):
        path = download_mod.fetch_dataset("perov_5", file=folder)
    assert sorted(p.name for p in path.iterdir()) == ["perov_5_test.csv", "perov_5_train.csv", "perov_5_val.csv"]
