"""Every model stays finite and invariant on extreme but valid cells: 1000 A of vacuum, cell
angles of 10 and 170 degrees, a left-handed basis, 400 atoms, and huge cubes (the Niggli
basis-change trial of ``crystalframes check`` used to break there)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice

from crystalframes.io import Crystal
from crystalframes.models import build_model
from crystalframes.testing import BasisChangeSkipped, invariance_report, niggli_reduced, supercell

SRC = Path(__file__).resolve().parents[2] / "src"
SPECS = ["ecomformer:none@cpu_small", "ecomformer:spframe_quaternion@cpu_small", "crystalformer:none@cpu_small",
         "crystalformer:max@cpu_small"]
TOL64 = 1e-9


def _rock_salt(a=5.64):
    fcc = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    return Crystal("rocksalt", np.eye(3) * a, [11] * 4 + [17] * 4, np.concatenate([fcc, fcc + [0.5, 0, 0]]))


def extreme_cells() -> list[Crystal]:
    slab = Crystal("vacuum_1000A", np.diag([4.0, 4.0, 1000.0]), [14, 8], [[0, 0, 0.0], [0.5, 0.5, 0.0015]])
    acute = Crystal("angles_10deg", Lattice.from_parameters(12, 12, 12, 10, 10, 10).matrix, [6], [[0, 0, 0]])
    obtuse = Crystal("beta_170deg", Lattice.from_parameters(4, 5, 30, 90, 170, 90).matrix, [29, 8], [[0, 0, 0], [0.5, 0.5, 0.5]])
    right = Lattice.from_parameters(4.1, 5.2, 6.3, 80, 95, 105).matrix
    left = Crystal("left_handed", right[[1, 0, 2]], [26, 8, 8], [[0, 0, 0], [0.3, 0.2, 0.6], [0.7, 0.8, 0.1]])
    assert np.linalg.det(left.lattice) < 0
    big = supercell(_rock_salt(), (5, 5, 2))
    big.id = "atoms_400"
    assert big.num_atoms == 400
    return [slab, acute, obtuse, left, big]


@pytest.mark.parametrize("spec", SPECS)
def test_models_are_finite_and_invariant_on_extreme_valid_cells(spec):
    torch.manual_seed(0)
    model = build_model(spec).double().eval()
    rows = invariance_report(model, extreme_cells(), trials=1, supercells=((1, 1, 1),),
                             checks=("rotation", "translation", "permutation", "batch"))
    for row in rows:
        for key in ("rotation", "translation", "permutation", "batch"):
            assert np.isfinite(row[key]) and row[key] <= TOL64, (spec, row)


def test_niggli_basis_change_of_a_huge_cube_is_exact():
    """A 1e5 A cube used to raise 'a basis change must be an integer matrix' (pymatgen's
    absolute tolerances half-reduced it)."""
    cube = Crystal("cube", np.eye(3) * 1e5, [11, 17], [[0, 0, 0], [0.5, 0.5, 0.5]])
    reduced = niggli_reduced(cube)
    assert np.isclose(abs(np.linalg.det(reduced.lattice)), 1e15)
    assert np.allclose(np.sort(np.linalg.norm(reduced.lattice, axis=1)), 1e5)
    flat = Crystal("flat", np.array([[1.0, 0, 0], [0, 1, 0], [1, 1, 0]]), [1], [[0, 0, 0]])
    with pytest.raises(BasisChangeSkipped):
        niggli_reduced(flat)


def test_check_on_huge_cubes_ends_quickly_and_in_bounded_memory(tmp_path):
    """1e7 A: pymatgen tried to allocate 135 TiB; 1e12 A: it never finished. Run in a child with
    a memory limit and a timeout, one invocation over all three cubes."""
    from pymatgen.core import Structure

    files = []
    for a in ("1e5", "1e7", "1e12"):
        path = tmp_path / f"cube_{a}.cif"
        Structure(Lattice.cubic(float(a)), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(path))
        files.append(str(path))
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({6 << 30}, {6 << 30}))
        from crystalframes.cli import main
        main(["check", "ecomformer:none@cpu_small", *sys.argv[1:], "--trials", "1", "--json"])
    """)
    proc = subprocess.run([sys.executable, "-c", code, *files], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(SRC)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert len(report["structures"]) == 3 and not report["bad_inputs"]
    for row in report["structures"]:
        for key in ("max_rotation_error", "max_translation_error", "max_basis_change_error"):
            assert row[key] <= TOL64, row
