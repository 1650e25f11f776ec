"""Invariance of every model/frame combination on a whole dataset (printed figures, not a test).

    python3 benchmarks/invariance_sweep.py                      # shared JARVIS sample, the whole grid
    python3 benchmarks/invariance_sweep.py --checks rotation supercell --json sweep.json
    python3 benchmarks/invariance_sweep.py --limit 200 --specs ecomformer:none crystalformer:max \
        --trials 3 --supercells 2,1,1 2,2,2

For each model spec (a freshly initialised model, seed 0, float64, eval mode) and every
structure: the largest change of the output under ``--trials`` random rotations, translations
and atom permutations, the supercells ``--supercells`` and a mirror reflection (which
SO(3)-invariant models need not be invariant to). This is
``crystalframes.testing.invariance_report``, the report of ``crystalframes check``, with
``--batch-size`` structures per batch. Prints one Markdown row per spec: the largest change over
all structures per check, and the structure with the largest rotation error; "output spread" is
the standard deviation of the output over the structures, the scale the errors are to be read
against.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

SHARED_JARVIS = Path(__file__).resolve().parents[2] / "shared" / "data" / "jarvis_dft_3d_sample.jsonl.gz"
CHECKS = ("rotation", "translation", "permutation", "supercell", "basis_change", "mirror")


def grid_specs(preset: str = "cpu_small") -> list[str]:
    """Every backbone x frame x global frame (the rows of ``crystalframes models``)."""
    from crystalframes.cli.models import model_rows

    return [row["spec"] for row in model_rows(preset)]


def sweep(spec: str, crystals: list, trials: int, supercells: list, batch_size: int, seed: int, checks=CHECKS) -> dict:
    import torch

    from crystalframes.models import build_model
    from crystalframes.testing import invariance_report, predict_in_batches

    torch.manual_seed(seed)
    model = build_model(spec).to(torch.float64).eval()
    rows = invariance_report(model, crystals, trials=trials, seed=seed, supercells=supercells, checks=checks, batch_size=batch_size)
    row = {"spec": model.spec, "structures": len(crystals)}
    for key in checks:
        values = np.array([r[key] for r in rows])
        row[f"max_{key}"] = float(values.max())
        row[f"median_{key}"] = float(np.median(values))
    row["worst_rotation_id"] = max(rows, key=lambda r: r["rotation"])["id"] if "rotation" in checks else ""
    # What the errors compare against: how much the output varies from structure to structure.
    row["output_spread"] = float(predict_in_batches(model, crystals, batch_size).numpy().std(axis=0).max())
    return row


def main(argv=None) -> None:
    import torch

    from crystalframes.atomic import atomic_write
    from crystalframes.io import read_dataset

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(SHARED_JARVIS))
    p.add_argument("--specs", nargs="+", default=None, help="default: the whole grid of `crystalframes models` at cpu_small")
    p.add_argument("--limit", type=int, default=None, help="first N structures only")
    p.add_argument("--trials", type=int, default=1, help="random rotations per structure")
    p.add_argument("--supercells", nargs="+", default=["2,1,1"])
    p.add_argument("--checks", nargs="+", default=list(CHECKS), choices=CHECKS)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = p.parse_args(argv)
    args.specs = args.specs or grid_specs()
    torch.set_num_threads(args.threads)
    crystals = read_dataset(args.data).crystals[: args.limit]
    supercells = [tuple(int(x) for x in s.split(",")) for s in args.supercells]
    print(f"{args.data}: {len(crystals)} structures; float64; {args.trials} rotations, supercells {args.supercells}", flush=True)
    print("| spec | output spread | " + " | ".join(f"max {key}" for key in args.checks) + " | worst rotation | s |")
    print("|---|---:|" + "---:|" * len(args.checks) + "---|---:|", flush=True)
    rows = []
    for spec in args.specs:
        start = time.perf_counter()
        r = sweep(spec, crystals, args.trials, supercells, args.batch_size, args.seed, args.checks)
        r["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(r)
        errors = " | ".join(f"{r['max_' + key]:.1e}" for key in args.checks)
        print(f"| `{r['spec']}` | {r['output_spread']:.1e} | {errors} | {r['worst_rotation_id']} | {r['seconds']:.0f} |", flush=True)
        if args.json:
            with atomic_write(args.json, "w") as fh:
                json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
