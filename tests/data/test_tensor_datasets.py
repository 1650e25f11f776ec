"""Tensor targets and the tensor sets mp_dielectric, mp_elastic, mp_piezo: the Voigt and rotation
conventions (crystalframes.io.tensors), tensor targets in records, and reading the sets from the
local copy in ../shared/data/tensors (skipped when absent) with the frame conversion and the
Neumann check of each row."""

from __future__ import annotations

import gzip
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from crystalframes.data.datasets import get_dataset_info, target_units
from crystalframes.data.graph import GraphSettings, build_graph
from crystalframes.data.sources import load_dataset, resolve_source
from crystalframes.io import Crystal, read_dataset
from crystalframes.io.errors import InputError
from crystalframes.io.tensor_tables import (
    NEUMANN_TOLERANCE,
    TENSOR_SETS,
    TensorSetReport,
    _csv_rows,
    _json_columns_rows,
    iter_tensor_set,
)
from crystalframes.io.tensors import (
    cartesian_rotations,
    full_to_voigt,
    ieee_rotation,
    neumann_residual,
    point_group_rotations,
    rotate,
    tensor_rank,
    voigt_shape,
    voigt_to_full,
    vrh_moduli,
)


def random_rotation(rng, proper=True) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if (np.linalg.det(q) > 0) != proper:
        q[:, 0] *= -1
    return q


def random_voigt(rng, shape) -> np.ndarray:
    v = rng.normal(size=shape)
    return (v + v.T) / 2 if shape[0] == shape[1] else v


# ------------------------------------------------------------------------------------------------
# Voigt conventions and rotations


@pytest.mark.parametrize("shape", [(3, 3), (3, 6), (6, 6)])
def test_voigt_round_trip_and_index_symmetries(shape):
    rng = np.random.default_rng(1)
    v = random_voigt(rng, shape)
    full = voigt_to_full(v)
    rank = tensor_rank(shape)
    assert full.shape == (3,) * rank and voigt_shape(rank) == shape
    np.testing.assert_array_equal(full_to_voigt(full), v)
    if rank == 3:
        np.testing.assert_array_equal(full, full.transpose(0, 2, 1))  # e_ijk = e_ikj
    if rank == 4:
        for axes in [(1, 0, 2, 3), (0, 1, 3, 2), (2, 3, 0, 1)]:  # C_ijkl = C_jikl = C_ijlk = C_klij
            np.testing.assert_array_equal(full, full.transpose(axes))


def test_voigt_indices_are_the_ieee_order_without_factors():
    rng = np.random.default_rng(2)
    c, e = random_voigt(rng, (6, 6)), random_voigt(rng, (3, 6))
    cf, ef = voigt_to_full(c), voigt_to_full(e)
    # 4 = 23, 5 = 13, 6 = 12 (1-based): C_14 = C_1123, C_56 = C_1312, C_63 = C_2133, e_36 = e_312, e_15 = e_113
    assert cf[0, 0, 1, 2] == c[0, 3] and cf[0, 2, 0, 1] == c[4, 5] and cf[1, 0, 2, 2] == c[5, 2]
    assert ef[2, 0, 1] == e[2, 5] and ef[0, 0, 2] == e[0, 4] and ef[1, 1, 1] == e[1, 1]


def test_full_to_voigt_projects_a_tensor_without_the_index_symmetry():
    rng = np.random.default_rng(3)
    t = rng.normal(size=(3, 3, 3))
    v = full_to_voigt(t)
    assert v[0, 5] == pytest.approx((t[0, 0, 1] + t[0, 1, 0]) / 2)
    with pytest.raises(ValueError, match="shape"):
        full_to_voigt(rng.normal(size=(3, 3, 3, 3, 3)))
    with pytest.raises(ValueError, match="Voigt"):
        voigt_to_full(np.zeros((6, 3)))


@pytest.mark.parametrize("rank", [1, 2, 3, 4])
def test_rotation_is_a_group_action_of_o3(rank):
    rng = np.random.default_rng(4 + rank)
    t = rng.normal(size=(3,) * rank)
    r1, r2 = random_rotation(rng), random_rotation(rng, proper=False)
    np.testing.assert_allclose(rotate(rotate(t, r1), r2), rotate(t, r2 @ r1), atol=1e-12)
    np.testing.assert_allclose(rotate(rotate(t, r1), r1.T), t, atol=1e-12)
    np.testing.assert_array_equal(rotate(t, np.eye(3)), t)
    # the inversion multiplies a polar tensor of odd rank by -1 and leaves an even one
    np.testing.assert_allclose(rotate(t, -np.eye(3)), (-1) ** rank * t, atol=1e-15)
    batched = rotate(np.stack([t, t]), np.stack([r1, r2]))
    np.testing.assert_allclose(batched[1], rotate(t, r2), atol=1e-12)


def test_rank_2_rotation_is_r_t_rt_and_keeps_voigt_symmetry():
    rng = np.random.default_rng(5)
    r = random_rotation(rng)
    eps = random_voigt(rng, (3, 3))
    np.testing.assert_allclose(rotate(eps, r), r @ eps @ r.T, atol=1e-12)
    c = voigt_to_full(random_voigt(rng, (6, 6)))
    rotated = rotate(c, r)
    np.testing.assert_allclose(voigt_to_full(full_to_voigt(rotated)), rotated, atol=1e-12)


def test_cartesian_rotations_of_a_row_lattice_are_orthogonal():
    # hexagonal cell, rows = lattice vectors; the six-fold axis along c: (a, b) -> (a + b, -a)
    # in fractional columns, W = [[1, -1, 0], [1, 0, 0], [0, 0, 1]]
    lat = np.array([[3.0, 0, 0], [-1.5, 1.5 * np.sqrt(3), 0], [0, 0, 5.0]])
    w = np.array([[1, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=float)
    r = cartesian_rotations(lat, w[None])[0]
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(r @ lat[0], lat[0] + lat[1], atol=1e-12)  # a -> a + b, as W says
    wrong = lat @ w @ np.linalg.inv(lat)  # the column-lattice formula on a row lattice
    assert not np.allclose(wrong @ wrong.T, np.eye(3), atol=1e-3)


def test_point_group_of_rock_salt_and_neumann(nacl):
    rotations = point_group_rotations(nacl.lattice, nacl.frac_coords, nacl.atomic_numbers)
    assert len(rotations) == 48
    np.testing.assert_allclose(rotations @ rotations.transpose(0, 2, 1), np.broadcast_to(np.eye(3), (48, 3, 3)), atol=1e-12)
    assert neumann_residual(2.5 * np.eye(3), rotations) < 1e-14
    assert neumann_residual(np.diag([1.0, 1.0, 2.0]), rotations) > 0.1  # uniaxial: not cubic
    piezo = voigt_to_full(np.eye(3, 6, 3))  # an e_14-type tensor: forbidden by the inversion of m-3m
    assert neumann_residual(piezo, rotations) == pytest.approx(2.0)
    # a tensor zero up to noise is judged against the floor, not its own norm
    assert neumann_residual(1e-9 * piezo, rotations) == pytest.approx(2.0)
    assert neumann_residual(1e-9 * piezo, rotations, floor=1e-3) < 1e-5


def test_vrh_moduli_match_pymatgen():
    from pymatgen.analysis.elasticity import ElasticTensor

    rng = np.random.default_rng(6)
    a = rng.normal(size=(6, 6))
    c = 40 * (a @ a.T + 6 * np.eye(6))
    k, g = vrh_moduli(c)
    reference = ElasticTensor.from_voigt(c)
    assert (k, g) == (pytest.approx(reference.k_vrh, rel=1e-12), pytest.approx(reference.g_vrh, rel=1e-12))
    r = random_rotation(rng)
    assert vrh_moduli(full_to_voigt(rotate(voigt_to_full(c), r))) == (pytest.approx(k), pytest.approx(g))


# ------------------------------------------------------------------------------------------------
# tensor targets in records


def test_a_tensor_target_reads_from_jsonl_and_scalar_consumers_refuse_it(tmp_path, nacl):
    record = {"id": "x", "lattice": nacl.lattice.tolist(), "species": ["Na"] * 4 + ["Cl"] * 4,
              "frac_coords": nacl.frac_coords.tolist(),
              "targets": {"e_total": (2.0 * np.eye(3)).tolist(), "poly_total": 2.0}}
    bad = dict(record, id="y", targets={"e_total": [[1.0, 2.0]]})
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(record) + "\n" + json.dumps(bad) + "\n")
    result = read_dataset(path)
    (crystal,) = result.crystals
    assert isinstance(crystal.targets["e_total"], np.ndarray) and crystal.targets["e_total"].dtype == np.float64
    np.testing.assert_array_equal(crystal.tensor_target("e_total"), 2.0 * np.eye(3))
    assert crystal.target("poly_total") == 2.0
    with pytest.raises(InputError, match=r"target 'e_total' is a 3x3 tensor, not a scalar"):
        crystal.target("e_total")
    with pytest.raises(InputError, match="is a scalar"):
        crystal.tensor_target("poly_total")
    assert "shape (1, 2)" in str(result.errors[0])
    # graphs (batches, the graph cache, the store) hold scalar targets only
    graph = build_graph(crystal, GraphSettings())
    assert graph.targets == {"poly_total": 2.0}


def test_a_tensor_target_of_a_wrong_shape_is_a_bad_record(nacl):
    nacl.targets["e_total"] = np.zeros((3, 4))
    with pytest.raises(InputError, match="Voigt shape"):
        nacl.validate()
    nacl.targets["e_total"] = np.full((3, 3), np.nan)
    with pytest.raises(InputError, match="non-finite"):
        nacl.validate()


def test_registry_entries_of_the_tensor_sets():
    for name, tensors in [("mp_dielectric", ["e_electronic", "e_total"]), ("mp_elastic", ["elastic_tensor"]),
                          ("mp_piezo", ["piezoelectric_tensor"])]:
        info = get_dataset_info(name)
        assert info.is_tensor_set and info.member == name and info.collection == "tensors"
        assert set(tensors) <= set(info.targets)
        assert [Path(url).name for url in info.files.values()] in (
            [spec.stem for spec in TENSOR_SETS[name]], ["elastic_tensor.csv", "mp_val_clean.json"])
        assert info.citation and info.license
    assert target_units("elastic_tensor") == "GPa" and target_units("piezoelectric_tensor") == "C/m^2"
    assert get_dataset_info("piezo").name == "mp_piezo"


# ------------------------------------------------------------------------------------------------
# the sets read from ../shared/data/tensors

FILE_ROWS = {"dielectric_constant.csv": 951, "elastic_tensor.csv": 1063, "strainnet_mp_elastic.json": 1199,
             "piezoelectric_tensor.csv": 847}
INFO_LINE = re.compile(r"^(mp_\w+): (\d+) of (\d+) rows break their point group's symmetry \(relative residual > "
                       r"([0-9.e-]+), symprec ([0-9.]+) A\) and are left out(?:; (\d+) rows whose stiffness is not "
                       r"positive definite \(mechanically unstable\) too)?(?:; (\d+) materials already read from an "
                       r"earlier file are left out)?; (\d+) kept$")


@pytest.fixture(scope="module")
def tensors_dir(shared_data) -> Path:
    folder = shared_data / "tensors"
    if not folder.is_dir():
        pytest.skip("../shared/data/tensors not found")
    return folder


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def loaded(tensors_dir, request):
    """name -> (ReadResult through the registry, the reader's INFO lines), each set read once."""
    cache = {}

    def load(name):
        if name not in cache:
            logger, handler = logging.getLogger("crystalframes.io"), _Lines()
            level = logger.level
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            try:
                assert resolve_source(name) == tensors_dir
                cache[name] = (load_dataset(name), handler.lines)
            finally:
                logger.removeHandler(handler)
                logger.setLevel(level)
        return cache[name]

    return load


def raw_rows(folder: Path, stem: str) -> dict[str, dict]:
    """material_id -> the raw row of a file (the reader's row splitting: aligned from the right)."""
    path = folder / (stem + ".gz")
    text = gzip.open(path, "rt", encoding="utf-8", newline="").read()
    rows = _json_columns_rows(text, stem) if stem.endswith(".json") else _csv_rows(text, stem)
    return {row["material_id"]: row for _, row in rows}


def raw_tensor(row: dict, column: str) -> np.ndarray:
    value = row[column]
    return np.array(json.loads(value) if isinstance(value, str) else value, dtype=float)


@pytest.mark.parametrize("name", ["mp_dielectric", "mp_elastic", "mp_piezo"])
def test_each_set_loads_and_counts_what_it_leaves_out_in_one_info_line(loaded, tensors_dir, name):
    result, lines = loaded(name)
    matches = [INFO_LINE.match(line) for line in lines if line.startswith(name + ":")]
    assert len(matches) == 1 and matches[0], lines
    _, broken, total, tolerance, symprec, unstable, duplicates, kept = matches[0].groups()
    assert int(total) == sum(FILE_ROWS[spec.stem] for spec in TENSOR_SETS[name])
    assert float(tolerance) == NEUMANN_TOLERANCE and float(symprec) == 0.01
    assert not result.errors
    assert int(kept) == len(result.crystals) == int(total) - int(broken) - int(unstable or 0) - int(duplicates or 0)
    assert (unstable is not None) == (name == "mp_elastic")  # only stiffnesses are checked for stability
    # the check leaves out a minority, and only rows that break it: every kept row passes
    assert 0 < int(broken) < 0.25 * int(total)
    ids = [c.id for c in result.crystals]
    assert len(set(ids)) == len(ids)
    for crystal in result.crystals[::25]:
        rotations = point_group_rotations(crystal.lattice, crystal.frac_coords, crystal.atomic_numbers)
        for target, value in crystal.targets.items():
            if isinstance(value, np.ndarray):
                assert neumann_residual(voigt_to_full(value), rotations) <= NEUMANN_TOLERANCE
    for target in get_dataset_info(name).targets:
        assert target in result.crystals[0].targets


def test_dielectric_and_elastic_rows_keep_the_raw_tensor_of_the_poscar_frame(loaded, tensors_dir):
    for name, stem, columns in [("mp_dielectric", "dielectric_constant.csv", {"e_total": "e_total", "e_electronic": "e_electronic"}),
                                ("mp_elastic", "elastic_tensor.csv", {"elastic_tensor": "elastic_tensor"})]:
        raw = raw_rows(tensors_dir, stem)
        crystal = next(c for c in loaded(name)[0].crystals if c.id in raw)
        from pymatgen.core import Structure

        poscar = Structure.from_str(raw[crystal.id]["poscar"], fmt="poscar")
        np.testing.assert_allclose(crystal.lattice, poscar.lattice.matrix)
        for target, column in columns.items():
            np.testing.assert_array_equal(crystal.targets[target], raw_tensor(raw[crystal.id], column))
    crystal = loaded("mp_dielectric")[0].crystals[0]
    assert crystal.target("poly_total") == float(raw_rows(tensors_dir, "dielectric_constant.csv")[crystal.id]["poly_total"])


@pytest.mark.parametrize("name, stem, target, column", [
    ("mp_piezo", "piezoelectric_tensor.csv", "piezoelectric_tensor", "piezoelectric_tensor"),
    ("mp_elastic", "strainnet_mp_elastic.json", "elastic_tensor", "elasticity.elastic_tensor"),
])
def test_ieee_frame_rows_are_rotated_into_the_structures_frame(loaded, tensors_dir, name, stem, target, column):
    raw = raw_rows(tensors_dir, stem)
    crystals = [c for c in loaded(name)[0].crystals if c.id in raw and c.source.startswith(str(tensors_dir / stem))]
    assert crystals
    raw_breaks = 0
    for crystal in crystals[:60]:
        q = ieee_rotation(crystal.lattice, crystal.frac_coords, crystal.atomic_numbers)
        stored, given = voigt_to_full(crystal.targets[target]), voigt_to_full(raw_tensor(raw[crystal.id], column))
        np.testing.assert_allclose(stored, rotate(given, q.T), atol=1e-9 * max(1.0, np.abs(given).max()))
        rotations = point_group_rotations(crystal.lattice, crystal.frac_coords, crystal.atomic_numbers)
        assert neumann_residual(stored, rotations) <= NEUMANN_TOLERANCE
        raw_breaks += neumann_residual(given, rotations) > NEUMANN_TOLERANCE
    # the given tensor, taken as if in the structure's frame, breaks the symmetry of some rows
    assert raw_breaks > 0


def test_a_rotated_structure_with_its_rotated_tensor_still_passes(loaded):
    rng = np.random.default_rng(7)
    crystals = loaded("mp_piezo")[0].crystals
    # a low-symmetry crystal with a non-zero tensor: the check has something to see
    crystal = next(c for c in crystals if np.abs(c.targets["piezoelectric_tensor"]).max() > 0.1
                   and 1 < len(point_group_rotations(c.lattice, c.frac_coords, c.atomic_numbers)) <= 4)
    q = random_rotation(rng)
    lattice = crystal.lattice @ q.T  # rows are vectors: r -> q r is L -> L q^T
    tensor = voigt_to_full(crystal.targets["piezoelectric_tensor"])
    rotations = point_group_rotations(lattice, crystal.frac_coords, crystal.atomic_numbers)
    assert neumann_residual(rotate(tensor, q), rotations) < NEUMANN_TOLERANCE
    assert neumann_residual(tensor, rotations) > NEUMANN_TOLERANCE  # negative control: tensor not rotated


def test_a_broken_tensor_is_left_out_and_counted(tensors_dir, tmp_path, caplog):
    # the first rows of the dielectric file, once as given and once with a cubic row made uniaxial
    lines = gzip.open(tensors_dir / "dielectric_constant.csv.gz", "rt", encoding="utf-8", newline="").read()
    rows = list(_csv_rows(lines, "d"))[:12]
    from pymatgen.core import Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    victim = next(row for _, row in rows if SpacegroupAnalyzer(Structure.from_str(row["poscar"], fmt="poscar"))
                  .get_crystal_system() == "cubic")
    import csv
    import io

    def write(folder: Path, broken: bool):
        folder.mkdir()
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        header = list(rows[0][1])
        writer.writerow(header)
        for _, row in rows:
            row = dict(row)
            if broken and row["material_id"] == victim["material_id"]:
                row["e_total"] = json.dumps(np.diag([1.0, 2.0, 3.0]).tolist())
            writer.writerow([row[h] for h in header])
        (folder / "dielectric_constant.csv").write_text(buffer.getvalue())
        return folder

    reports = {}
    for broken in (False, True):
        report = TensorSetReport()
        with caplog.at_level(logging.INFO, logger="crystalframes.io"):
            caplog.clear()
            kept = [c.id for c in iter_tensor_set(write(tmp_path / str(broken), broken), "mp_dielectric", report=report)]
        (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("mp_dielectric:")]
        assert line.startswith(f"mp_dielectric: {len(report.broken)} of {len(rows)} rows break")
        reports[broken] = (report, kept)
    (clean, kept_clean), (dirty, kept_dirty) = reports[False], reports[True]
    assert victim["material_id"] in kept_clean and victim["material_id"] not in kept_dirty
    assert len(dirty.broken) == len(clean.broken) + 1
    assert [i for _, i, _ in dirty.broken if i not in {j for _, j, _ in clean.broken}] == [victim["material_id"]]


def test_a_material_in_both_elastic_files_is_kept_once(loaded, tensors_dir):
    result, lines = loaded("mp_elastic")
    first = set(raw_rows(tensors_dir, "elastic_tensor.csv"))
    second = set(raw_rows(tensors_dir, "strainnet_mp_elastic.json"))
    both = first & second
    assert both  # the two files overlap
    sources = {c.id: c.source for c in result.crystals}
    from_first = [i for i in both if i in sources and "elastic_tensor.csv" in sources[i]]
    assert from_first  # a material of both files comes from the first file when that row passes
    (match,) = [INFO_LINE.match(line) for line in lines if line.startswith("mp_elastic:")]
    assert int(match.group(7)) == len(from_first)
    # every kept stiffness is positive definite (the first file has no unstable one, the second some)
    assert min(np.linalg.eigvalsh(c.targets["elastic_tensor"]).min() for c in result.crystals) > 0
    assert int(match.group(6)) > 0
    # the second file's rows carry K_VRH / G_VRH computed from their tensors
    crystal = next(c for c in result.crystals if "strainnet" in c.source)
    assert (crystal.target("K_VRH"), crystal.target("G_VRH")) == vrh_moduli(crystal.targets["elastic_tensor"])


def test_the_first_elastic_files_moduli_agree_with_vrh_of_its_tensors(loaded):
    crystals = [c for c in loaded("mp_elastic")[0].crystals if "elastic_tensor.csv" in c.source][:50]
    k = np.array([vrh_moduli(c.targets["elastic_tensor"])[0] for c in crystals])
    assert np.median(np.abs(k - np.array([c.target("K_VRH") for c in crystals]))) < 1.0  # GPa


def test_a_crystal_record_is_not_a_scalar_for_a_tensor_target(loaded):
    crystal: Crystal = loaded("mp_piezo")[0].crystals[0]
    with pytest.raises(InputError, match=r"'piezoelectric_tensor' is a 3x6 tensor"):
        crystal.target("piezoelectric_tensor")


# ------------------------------------------------------------------------------------------------
# data fetch: the public files, from a local server


def upstream_piezo_text(tensors_dir: Path, n: int) -> str:
    """The first ``n`` rows of the piezoelectric file as upstream writes it: a ``# ref`` line and
    an unnamed leading index column in every data row."""
    import csv
    import io

    text = gzip.open(tensors_dir / "piezoelectric_tensor.csv.gz", "rt", encoding="utf-8", newline="").read()
    rows = [row for _, row in _csv_rows(text, "p")][:n]
    buffer = io.StringIO()
    buffer.write("# ref: de Jong et al., Sci. Data 2, 150053 (2015).\n")
    writer = csv.writer(buffer)
    writer.writerow(list(rows[0]))
    for i, row in enumerate(rows):
        writer.writerow([str(i), *row.values()])
    return buffer.getvalue()


def test_fetch_downloads_checks_and_caches_a_tensor_set(tensors_dir, tmp_path, http_server, monkeypatch):
    from dataclasses import replace

    from crystalframes.data import datasets as datasets_mod
    from crystalframes.data import download as download_mod
    from crystalframes.io.errors import DatasetError

    monkeypatch.setenv("CRYSTALFRAMES_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(datasets_mod.SHARED_DATA_ENV, str(tmp_path / "no_local_copy"))
    monkeypatch.setattr(download_mod, "DOWNLOAD_RETRIES", 0)
    info = datasets_mod.DATASETS["mp_piezo"]
    url = http_server.serve("/piezoelectric_tensor.csv", b"<html>rate limited</html>")
    monkeypatch.setitem(datasets_mod.DATASETS, "mp_piezo", replace(info, files={"piezoelectric_tensor.csv": url}))
    with pytest.raises(DatasetError, match="lacks the column"):
        download_mod.fetch_dataset("mp_piezo", progress=False)
    assert not (tmp_path / "cache" / "datasets" / "mp_piezo").exists()

    url = http_server.serve("/good/piezoelectric_tensor.csv", upstream_piezo_text(tensors_dir, 8).encode())
    monkeypatch.setitem(datasets_mod.DATASETS, "mp_piezo",
                        replace(info, files={"piezoelectric_tensor.csv": url}, n_records=8))
    path = download_mod.fetch_dataset("mp_piezo", progress=False)
    assert sorted(p.name for p in path.iterdir()) == ["piezoelectric_tensor.csv"]
    assert resolve_source("mp_piezo") == path
    result = load_dataset("mp_piezo")
    assert 0 < len(result.crystals) <= 8 and not result.errors
    assert result.crystals[0].targets["piezoelectric_tensor"].shape == (3, 6)


def test_data_info_of_a_local_copy_shows_tensor_targets_and_the_check(tensors_dir, tmp_path, monkeypatch, run, caplog):
    from crystalframes.data import datasets as datasets_mod

    (tmp_path / "tensors").mkdir()
    (tmp_path / "tensors" / "piezoelectric_tensor.csv").write_text(upstream_piezo_text(tensors_dir, 8))
    monkeypatch.setenv(datasets_mod.SHARED_DATA_ENV, str(tmp_path))
    monkeypatch.setenv("CRYSTALFRAMES_CACHE_DIR", str(tmp_path / "cache"))
    with caplog.at_level(logging.INFO, logger="crystalframes.io"):
        code, out, err = run("data", "info", "mp_piezo")
    assert code == 0, err
    assert re.search(r"piezoelectric_tensor \(3x6, norm\)\s+\d+", out) and "eij_max" in out
    assert re.search(r"mp_piezo: \d+ of 8 rows break their point group's symmetry", caplog.text)


def test_the_ieee_rotation_takes_the_six_fold_axis_to_z():
    # simple hexagonal cell whose c axis (the six-fold axis) lies along x
    lattice = np.array([[0, 3.0, 0], [0, -1.5, 1.5 * np.sqrt(3)], [5.0, 0, 0]])
    q = ieee_rotation(lattice, np.zeros((1, 3)), np.array([14]))
    np.testing.assert_allclose(q @ q.T, np.eye(3), atol=1e-10)
    np.testing.assert_allclose(np.abs(rotate(lattice[2] / 5.0, q)), [0, 0, 1], atol=1e-8)
    # a uniaxial tensor along the six-fold axis is diag(1, 1, 2) in the IEEE frame, and back
    eps = np.eye(3) + np.outer(lattice[2], lattice[2]) / 25.0
    np.testing.assert_allclose(rotate(eps, q), np.diag([1.0, 1.0, 2.0]), atol=1e-8)
    np.testing.assert_allclose(rotate(rotate(eps, q), q.T), eps, atol=1e-12)
