"""The tensor study (issue 27): which read-out predicts tensors best on the same backbone?
(docs/tensors.md; a long background job, never part of CI.)

    python benchmarks/tensor_study.py                        # both targets, seeds 0 1 2; resumable
    python benchmarks/tensor_study.py --targets e_electronic  # one target
    python benchmarks/tensor_study.py --table                # the table of what has finished

Arms, all on eComFormer at its `cpu` preset: the global-frame read-out (the lattice's polar
frame without the handedness fix: O(3)), the local-frame read-out on CrystalFramer's dynamic max
frame, the local-frame read-out on the SPFrame composite, and the irreps read-out (e3nn). Targets:
`e_electronic` of `mp_dielectric` and `elastic_tensor` of `mp_elastic`, random split (seed 123),
`--epochs` epochs. Each finished run appends its row (mean Frobenius error over the test
structures, per-structure errors, EwT, the isotropic baseline) to
benchmarks/results/tensor_study.json; a rerun skips finished rows and resumes a killed run from
its checkpoint (run folders under --runs). The table gives mean +- std over seeds and each arm's
paired difference to the global-frame read-out (t interval over seeds, bootstrap over the test
structures), as the frame study does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "tensor_study.json"
TARGETS = {"e_electronic": "mp_dielectric", "elastic_tensor": "mp_elastic"}
# (name, spec, read-out overrides); the first arm is the reference of the paired differences
ARMS = (
    ("global polar_o3", "ecomformer:none@cpu", ["model.readout=global", "model.tensor_frame=polar_o3"]),
    ("local max", "ecomformer:max@cpu", ["model.readout=local"]),
    ("local SPFrame", "ecomformer:spframe_quaternion@cpu", ["model.readout=local"]),
    ("irreps", "ecomformer:none@cpu", ["model.readout=irreps"]),
)


def arm_of(row: dict) -> str:
    """The arm a results row belongs to (its spec and read-out overrides)."""
    for name, spec, sets in ARMS:
        if row["spec"].split("+")[0].split("@")[0] == spec.split("@")[0] and all(s in row["overrides"] for s in sets):
            return name
    return row["spec"]


def table(rows: list[dict]) -> str:
    import numpy as np

    from crystalframes.train.study_statistics import paired_difference

    lines = ["| target | read-out | seeds | test Frobenius error | isotropic baseline | EwT 25 % | paired difference to the global read-out (seeds) | (structures) |",
             "|---|---|---:|---:|---:|---:|---|---|"]
    for target in TARGETS:
        mine = [r for r in rows if r["target"] == target]
        groups = {name: [r for r in mine if arm_of(r) == name] for name, _, _ in ARMS}
        reference = groups[ARMS[0][0]]
        for name, group in groups.items():
            if not group:
                continue
            err = np.array([r["test_mae"] for r in group])
            base = np.array([r["test_mean_baseline_mae"] for r in group])
            ewt = np.array([r.get("test_ewt", {}).get("ewt_25", np.nan) for r in group])
            std = f" +- {err.std(ddof=1):.3g}" if len(err) > 1 else ""
            diff = paired_difference(group, reference) if name != ARMS[0][0] and reference else None
            d_seed = f"{diff['diff_mean']:+.3g} [{diff['diff_seed_low']:+.3g}, {diff['diff_seed_high']:+.3g}]" if diff else "-"
            d_boot = f"[{diff['diff_boot_low']:+.3g}, {diff['diff_boot_high']:+.3g}]" if diff else "-"
            lines.append(f"| {target} | {name} | {len(group)} | {err.mean():.3g}{std} | {base.mean():.3g} | {np.nanmean(ewt):.0%} | {d_seed} | {d_boot} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    from crystalframes.train.study import load_rows, run_grid

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", nargs="+", choices=sorted(TARGETS), default=list(TARGETS))
    p.add_argument("--arms", nargs="+", choices=[a[0] for a in ARMS], default=[a[0] for a in ARMS])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--set", dest="overrides", action="append", default=["trainer.threads=2"], help="more config overrides")
    p.add_argument("--runs", type=Path, default=ROOT.parent / "tensor_study_runs")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--table", action="store_true", help="only print the table of the finished runs")
    args = p.parse_args(argv)
    if args.table:
        print(table(load_rows(args.results)))
        return
    for seed in args.seeds:  # seeds outermost: every arm's first seed lands before any second one
        for target in args.targets:
            budget = [f"data.source={TARGETS[target]}", f"data.target={target}", "data.split=random", f"trainer.epochs={args.epochs}"]
            for name, spec, sets in ARMS:
                if name in args.arms:
                    run_grid([spec], args.overrides + budget + sets, [seed], args.runs, args.results,
                             on_row=lambda row, name=name: print(f"finished {row['target']} {name} seed {row['seed']}: "
                                                                 f"test Frobenius {row['test_mae']:.4g} (isotropic {row['test_mean_baseline_mae']:.4g})", flush=True))
    print(table(load_rows(args.results)))


if __name__ == "__main__":
    main()
