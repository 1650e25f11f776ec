"""Which frame is each tensor file in? Re-measures the pass rates quoted in
crystalframes.io.tensor_tables and docs/tensors.md (a minute or two on a CPU core).

    python benchmarks/tensor_frames.py [FOLDER]     # default: the tensors/ folder of the shared data

For every row of every file of the three tensor sets: the relative Neumann residual
``max_R ||R.T - T|| / ||T||`` of its tensors under its own structure's point group (symprec 0.01 A)
as the reader stores them (in the structure's Cartesian frame), and as a control in a wrong
frame: for a file given in the IEEE frame, the raw tensor taken as if in the structure's frame;
for a file given in the structure's frame, the tensor after a random rotation (seed 0). Prints the
number of rows under the tolerance (1e-2) and under 1e-3, 5e-2, per file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from crystalframes.data.datasets import local_table_dirs
from crystalframes.io.tensor_tables import NEUMANN_TOLERANCE, TENSOR_SETS, _file_rows, _row_crystal, tensor_set_files
from crystalframes.io.tensors import ieee_rotation, neumann_residual, point_group_rotations, rotate, voigt_to_full

TOLERANCES = (1e-3, NEUMANN_TOLERANCE, 5e-2)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def measure(folder: Path) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for name, specs in TENSOR_SETS.items():
        for spec, path in zip(specs, tensor_set_files(folder, name) or []):
            stored, control = [], []
            for where, row in _file_rows(path, spec, str(path)):
                crystal = _row_crystal(row, spec, where)
                rotations = point_group_rotations(crystal.lattice, crystal.frac_coords, crystal.atomic_numbers)
                wrong = (ieee_rotation(crystal.lattice, crystal.frac_coords, crystal.atomic_numbers)
                         if spec.frame == "ieee" else _random_rotation(rng))
                full = [voigt_to_full(crystal.targets[t]) for t in spec.tensors]
                stored.append(max(neumann_residual(t, rotations) for t in full))
                control.append(max(neumann_residual(rotate(t, wrong), rotations) for t in full))
            rows.append({"set": name, "file": spec.stem, "frame": spec.frame, "rows": len(stored),
                         "stored": np.array(stored), "control": np.array(control)})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path)
    args = parser.parse_args(argv)
    folder = args.folder or next((d / "tensors" for d in local_table_dirs() if (d / "tensors").is_dir()), None)
    if folder is None:
        sys.exit("no tensors/ folder found: pass its path")
    print(f"{'file':30s} {'frame':9s} {'rows':>5s}  " + "  ".join(f"pass<{t:g} stored / control" for t in TOLERANCES))
    for r in measure(folder):
        cells = [f"{(r['stored'] < t).sum():5d} ({(r['stored'] < t).mean():6.1%}) / {(r['control'] < t).sum():4d} "
                 f"({(r['control'] < t).mean():6.1%})" for t in TOLERANCES]
        print(f"{r['file']:30s} {r['frame']:9s} {r['rows']:5d}  " + "  ".join(cells))


if __name__ == "__main__":
    main()
