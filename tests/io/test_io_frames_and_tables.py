"""Datasets in files users have: multi-frame extended XYZ and ASE trajectories (one record per
frame, via ase.io.iread) and matbench-style JSON tables (pandas orient="split" with pymatgen
Structure dicts). All files are generated here."""

from __future__ import annotations

import gzip
import json
import math

import pytest

from crystalframes.io import Crystal, DatasetError, InputError, iter_records, read_dataset, read_structure


def _copper_frames(n: int):
    """``n`` fcc Cu cells of growing size, each with a target in its info and an energy."""
    from ase.build import bulk
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.6 + 0.05 * i, cubic=True)
        atoms.info["e_form"] = -0.1 * i
        atoms.calc = SinglePointCalculator(atoms, energy=-3.0 - i)
        frames.append(atoms)
    return frames


@pytest.mark.parametrize("name, fmt", [("frames.extxyz", "extxyz"), ("frames.xyz", "extxyz"), ("frames.traj", "traj")])
def test_multi_frame_file_is_a_dataset(tmp_path, name, fmt):
    from ase.io import write

    path = tmp_path / name
    write(path, _copper_frames(3), format=fmt)
    result = read_dataset(path, target="energy")
    assert [c.id for c in result.crystals] == ["frames@0", "frames@1", "frames@2"]
    assert [c.targets["energy"] for c in result.crystals] == [-3.0, -4.0, -5.0]
    assert all(c.num_atoms == 4 and c.source == str(path) for c in result.crystals)
    assert result.crystals[2].lattice[0, 0] == pytest.approx(3.7)
    if fmt == "extxyz":  # info keys travel in the comment line; a trajectory keeps only the calculator
        assert [c.targets["e_form"] for c in result.crystals] == pytest.approx([0.0, -0.1, -0.2])
    assert result.errors == []


def test_single_frame_file_reads_as_read_structure_does(tmp_path):
    from ase.io import write

    path = tmp_path / "one.extxyz"
    write(path, _copper_frames(1), format="extxyz")
    (crystal,) = list(iter_records(path))
    assert crystal.id == "one" == read_structure(path).id


def test_bad_frame_costs_only_itself(tmp_path):
    from ase.io import write

    frames = _copper_frames(3)
    frames[1].positions[1] = frames[1].positions[0] + 0.1  # two atoms 0.1 A apart
    path = tmp_path / "frames.extxyz"
    write(path, frames, format="extxyz")
    items = list(iter_records(path))
    assert [type(i) for i in items] == [Crystal, InputError, Crystal]
    assert str(items[1]).startswith(f"{path} [frames@1]: atoms closer than 0.5 A")


def test_truncated_multi_frame_file_keeps_the_frames_before(tmp_path):
    from ase.io import write

    path = tmp_path / "cut.extxyz"
    write(path, _copper_frames(3), format="extxyz")
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-2]))  # the last frame loses two atom lines
    items = list(iter_records(path))
    assert [type(i) for i in items] == [Crystal, Crystal, InputError]
    assert items[2].source == f"{path} [cut@2]" and "cannot parse as extended XYZ" in items[2].problem


def test_folder_reads_every_frame_of_its_files(tmp_path):
    from ase.io import write

    write(tmp_path / "a.extxyz", _copper_frames(2), format="extxyz")
    write(tmp_path / "b.traj", _copper_frames(2), format="traj")
    result = read_dataset(tmp_path)
    assert [c.id for c in result.crystals] == ["a@0", "a@1", "b@0", "b@1"] and result.skipped == []


def _matbench_table(n: int, target: str = "gap pbe", values=None) -> dict:
    from pymatgen.core import Lattice, Structure

    rows = []
    for i in range(n):
        s = Structure(Lattice.cubic(4.0 + 0.1 * i), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
        rows.append([s.as_dict(), 1.0 + i if values is None else values[i]])
    return {"index": [f"mb-{i:04d}" for i in range(n)], "columns": ["structure", target], "data": rows}


@pytest.mark.parametrize("name", ["matbench_mp_gap.json", "matbench_mp_gap.json.gz"])
def test_matbench_split_table(tmp_path, name):
    path = tmp_path / name
    data = json.dumps(_matbench_table(3)).encode()
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    result = read_dataset(path, target="gap pbe")
    assert [c.id for c in result.crystals] == ["mb-0000", "mb-0001", "mb-0002"]
    assert [c.targets for c in result.crystals] == [{"gap pbe": 1.0}, {"gap pbe": 2.0}, {"gap pbe": 3.0}]
    assert result.crystals[1].lattice[0, 0] == pytest.approx(4.1)
    assert result.crystals[1].where == f"{path}[1] [mb-0001]"
    assert result.errors == []


def test_matbench_bad_rows_and_class_labels(tmp_path):
    table = _matbench_table(4, target="is_metal", values=[True, False, "abc", True])
    table["data"][3][0] = {"@class": "Structure", "lattice": "broken"}
    path = tmp_path / "matbench_mp_is_metal.json"
    path.write_text(json.dumps(table))
    result = read_dataset(path)
    assert [(c.id, c.targets["is_metal"]) for c in result.crystals] == [("mb-0000", 1.0), ("mb-0001", 0.0)]
    assert [e.source for e in result.errors] == [f"{path}[2] [mb-0002]", f"{path}[3] [mb-0003]"]
    assert "target 'is_metal' is not a number: 'abc'" in result.errors[0].problem
    assert "cannot read pymatgen Structure dict" in result.errors[1].problem


def test_matbench_table_without_structure_column(tmp_path):
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"index": [0], "columns": ["formula", "gap"], "data": [["NaCl", 1.0]]}))
    with pytest.raises(DatasetError, match="no 'structure' column"):
        read_dataset(path)


def test_matbench_missing_value_is_missing_target(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(_matbench_table(2, values=[None, 2.5])))
    result = read_dataset(path, target="gap pbe")
    assert [c.id for c in result.crystals] == ["mb-0001"]
    assert len(result.missing_target) == 1 and math.isnan(
        next(iter_records(path)).targets["gap pbe"])
