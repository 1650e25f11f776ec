"""Fine-tuning against training from scratch, at equal epochs (a long job; never in CI).

    python benchmarks/finetune_vs_scratch.py --init mp_e_form          # a pretrained name, run folder or model file
    python benchmarks/finetune_vs_scratch.py --init runs/demo --epochs 30 --seeds 0 1 2 --table

Target: formation energy of the shared JARVIS-DFT 3D sample (``formation_energy_peratom``,
eV/atom) on its records' own split field (905 train / 121 val / 115 test records carry one;
the 184 without a split are left out), so every run sees the same test structures. For each
seed: the init model's spec trained from scratch, and the same spec started from the init
model's weights (``model.init``; a fresh output layer when the init model's target has another
name). Rows go to benchmarks/results/finetune_vs_scratch.json (resumable, as the frame study);
the table gives mean +- std over seeds and the paired difference fine-tuned - scratch with its
95 % intervals; ``--plot`` draws validation MAE against epochs.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "finetune_vs_scratch.json"
JARVIS = Path(os.environ.get("CRYSTALFRAMES_SHARED_DATA") or ROOT.parent / "shared" / "data") / "jarvis_dft_3d_sample.jsonl.gz"


def plot_curves(groups: dict[str, list[dict]], path: Path) -> None:
    """Validation MAE against epochs per group: mean over seeds, shaded between min and max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(5.5, 4))
    units = ""
    for label, rows in groups.items():
        if not rows:
            continue
        units = rows[0]["units"]
        n = min(len(r["val_mae_per_epoch"]) for r in rows)
        curves = np.array([r["val_mae_per_epoch"][:n] for r in rows])
        epochs = np.arange(1, n + 1)
        ax.plot(epochs, curves.mean(0), label=f"{label} ({len(rows)} seeds)")
        ax.fill_between(epochs, curves.min(0), curves.max(0), alpha=0.2)
    ax.set(xlabel="epoch", ylabel=f"val MAE ({units})", yscale="log", title="JARVIS formation energy: fine-tuned vs scratch")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    from crystalframes.api import load_model
    from crystalframes.models.specs import parse_spec
    from crystalframes.train.card import file_sha256
    from crystalframes.train.study import load_rows, run_grid
    from crystalframes.train.study_statistics import summarise

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--init", required=True, help="pretrained name, run folder or model file to fine-tune from")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--runs", type=Path, default=ROOT.parent / "finetune_runs")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--threads", type=int, default=2, help="CPU threads per run (not part of a run's identity)")
    p.add_argument("--table", action="store_true", help="only print the table of the finished runs")
    p.add_argument("--plot", type=Path, help="also draw validation MAE against epochs (mean over seeds, band: min-max)")
    args = p.parse_args(argv)
    init = load_model(args.init)
    first = getattr(init, "members", [init])[0]
    spec = str(parse_spec(first.spec))
    base = [f"data.source={JARVIS}", "data.target=formation_energy_peratom", f"trainer.epochs={args.epochs}", f"trainer.threads={args.threads}"]
    # the fine-tuned rows must come from these weights: a retrained zoo model keeps its name
    digest = file_sha256(first.path)
    stale = [r for r in load_rows(args.results) if r["spec"] == spec
             and f"model.init={args.init}" in r["overrides"] and r.get("init_sha256") != digest]
    if stale and not args.table:
        raise SystemExit(f"{args.results}: {len(stale)} fine-tuned rows started from another version of {args.init} "
                         f"(seeds {sorted(r['seed'] for r in stale)}; now sha256 {digest[:12]}): move them and "
                         f"{args.runs / 'finetuned'} aside to rerun them")
    if not args.table:
        run_grid([spec], base, args.seeds, args.runs / "scratch", args.results)
        run_grid([spec], base + [f"model.init={args.init}"], args.seeds, args.runs / "finetuned", args.results)
    # this init model's spec only: rows of an earlier zoo model (another spec) stay in the file
    rows = [r for r in load_rows(args.results) if r["spec"] == spec]
    scratch = {r["seed"]: r for r in rows if not any(o.startswith("model.init=") for o in r["overrides"])}
    tuned = [r for r in rows if any(o.startswith("model.init=") for o in r["overrides"]) and r.get("init_sha256") == digest]
    for s in summarise(rows):
        kind = "fine-tuned" if any(o.startswith("model.init=") for o in s["overrides"]) else "scratch"
        print(f"{kind:10s} {s['spec']}: test MAE {s['test_mean']:.4f} +- {s['test_std']:.4f} over seeds {s['seeds']}")
    import numpy as np

    if args.plot:
        plot_curves({"scratch": list(scratch.values()), "fine-tuned": tuned}, args.plot)
    from crystalframes.train.study_statistics import paired_bootstrap, seed_averaged_errors, t_interval

    pairs = [(t, scratch[t["seed"]]) for t in tuned if t["seed"] in scratch]
    if pairs:
        mean, lo, hi = t_interval(np.array([a["test_mae"] - b["test_mae"] for a, b in pairs]))
        ea, eb = seed_averaged_errors([a for a, _ in pairs]), seed_averaged_errors([b for _, b in pairs])
        ids = sorted(set(ea) & set(eb))
        _, blo, bhi = paired_bootstrap(np.array([ea[i] for i in ids]), np.array([eb[i] for i in ids]))
        print(f"fine-tuned - scratch (test MAE): {mean:+.4f}, 95% CI over seeds [{lo:+.4f}, {hi:+.4f}], "
              f"over test structures [{blo:+.4f}, {bhi:+.4f}] ({len(pairs)} seeds, {len(ids)} structures)")


if __name__ == "__main__":
    main()
