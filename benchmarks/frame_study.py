"""The frame study: does a frame help its backbone, at a budget this machine affords?
(docs/results.md; a long background job, never part of CI.)

    python benchmarks/frame_study.py                     # the grid, seeds 0 1 2; resumable
    python benchmarks/frame_study.py --seeds 3           # add a seed to every spec
    python benchmarks/frame_study.py --table             # print the table of what has finished
    python benchmarks/frame_study.py --grid long         # the papers' pairs at 54 epochs (3x the budget)
    python benchmarks/frame_study.py --grid settings     # official settings at cpu size (compare with @cpu)
    python benchmarks/frame_study.py --grid gap          # the main grid on the band gap (mp2018_gap_pbe), the papers' pairs first
    python benchmarks/frame_study.py --grid perov_5      # all three backbones where symmetry matters most
    python benchmarks/frame_study.py --grid carbon_24    # (and on carbon_24); see SYMMETRY_GRID
    python benchmarks/frame_study.py --plot curves.png   # val MAE against epochs
    python benchmarks/frame_study.py --docs              # rewrite docs/results.md's Results section

Every run trains one spec of the grid at its `cpu` preset (18 epochs, batch 32, OneCycle) on
the embedded Materials Project demo (`mp2018_e_form`, the records' own train/val split, 10 % of
train held out as test with a fixed seed, so every run sees the same test structures).
Finished runs append their row to benchmarks/results/frame_study.json (with per-structure test
errors and per-epoch validation MAE) and, with --commit, commit that file, so a session that
stops loses at most the run in progress; a rerun skips finished rows and resumes a killed run
from its last checkpoint (run folders under --runs).
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "frame_study.json"
FRAMES = ("none", "spframe_quaternion", "max", "weighted_pca", "equivariant_gram_schmidt")
GRID = tuple(f"{backbone}:{frame}@cpu" for backbone in ("ecomformer", "crystalformer") for frame in FRAMES) + (
    "ecomformer:none@cpu_original_order",
)
# The two papers' own pairs at three times the budget: does the gap open, close or stay?
LONG = ("ecomformer:none@cpu", "ecomformer:spframe_quaternion@cpu", "crystalformer:none@cpu", "crystalformer:max@cpu")
# Settings of the official code at `cpu` size, each against the same model at the `cpu` preset
# (which the main grid trains): which should the `cpu` preset use?
# (the encodings only exist with a frame; the width standardisation is the same code with or
# without one, so it is measured on the backbone, the cheaper of the two)
SETTING_PAIRS = (("crystalformer:max@cpu_lightweight_pe", "crystalformer:max@cpu"),
                 ("crystalformer:none@cpu_first_batch_rho", "crystalformer:none@cpu"))
SETTINGS = tuple(spec for spec, _ in SETTING_PAIRS)
# every comparison that is not "frame against no frame" (those are in the main table)
COMPARISONS = SETTING_PAIRS + (("ecomformer:none@cpu_original_order", "ecomformer:none@cpu"),
                               # CrystalFramer with the official lightweight encodings against its backbone
                               ("crystalformer:max@cpu_lightweight_pe", "crystalformer:none@cpu"))
# gap: the second target of the papers' Table 1 (PBE band gap, eV) on the main grid, the papers'
# own pairs first (they answer the question the papers ask; the rest follows seed by seed)
# Where symmetry matters most (the SPFrame paper's argument): perov_5, cubic perovskites whose
# atoms sit on symmetry-equivalent sites, and carbon_24, one element, so only geometry separates
# the polymorphs (CDVAE's labelled sets, Xie et al., ICLR 2022; random split, as the record split
# leaves carbon_24 no training set). All three backbones with every frame family they take, the
# equivariant Gram-Schmidt baseline included; the fastest backbone first, so its seeds land first.
SYMMETRY_FRAMES = ("none", "spframe_quaternion", "equivariant_gram_schmidt", "static", "max")
SYMMETRY_GRID = tuple(f"{backbone}:{frame}@cpu" for backbone in ("schnet", "ecomformer", "crystalformer")
                      for frame in SYMMETRY_FRAMES if not (backbone == "schnet" and frame == "max"))
GRIDS = {"main": (GRID, []), "long": (LONG, ["trainer.epochs=54"]), "settings": (SETTINGS, []),
         "gap": (LONG + tuple(s for s in GRID if s not in LONG), ["data.target=mp2018_gap_pbe"]),
         "perov_5": (SYMMETRY_GRID, ["data.source=perov_5", "data.target=heat_ref", "data.split=random"]),
         "carbon_24": (SYMMETRY_GRID, ["data.source=carbon_24", "data.target=energy_per_atom", "data.split=random"])}


def plot_curves(rows: list[dict], path: Path) -> None:
    """Validation MAE against epochs, mean over seeds per (spec, budget), one panel per backbone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["spec"], r["epochs"]), []).append(r["val_mae_per_epoch"])
    backbones = sorted({spec.split(":")[0] for spec, _ in groups})
    fig, axes = plt.subplots(1, len(backbones), figsize=(6 * len(backbones), 4), squeeze=False)
    for ax, backbone in zip(axes[0], backbones):
        for (spec, epochs), curves in sorted(groups.items()):
            if not spec.startswith(backbone + ":"):
                continue
            n = min(len(c) for c in curves)
            mean = np.mean([c[:n] for c in curves], axis=0)
            ax.plot(np.arange(1, n + 1), mean, label=f"{spec.split(':')[1]} ({len(curves)} seeds, {epochs} ep.)")
        ax.set(title=backbone, xlabel="epoch", ylabel=f"val MAE ({rows[0]['units']})", yscale="log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def commit(path: Path, message: str, attempts: int = 20) -> None:
    """Commit one file; retried while another git process holds the index lock."""
    for _ in range(attempts):
        add = subprocess.run(["git", "-C", str(ROOT), "add", str(path)], capture_output=True, text=True)
        done = add.returncode == 0 and subprocess.run(
            ["git", "-C", str(ROOT), "commit", "-q", "-m", message, "--", str(path)], capture_output=True, text=True
        ).returncode == 0
        if done:
            return
        time.sleep(15)
    print(f"warning: could not commit {path} ({message})", flush=True)


def write_docs(rows: list[dict]) -> None:
    """Replace everything after '## Results' in docs/results.md with the tables of the finished
    runs (every target at the presets' budget, then one table per target and budget) and the
    validation-MAE-against-epochs figures, and the README's accuracy table (between its
    frame-study markers) with the first of them."""
    import time

    from crystalframes.atomic import atomic_write
    from crystalframes.train.study import slug
    from crystalframes.train.study_tables import comparison_table, summary_table, target_table

    doc = ROOT / "docs" / "results.md"
    head = doc.read_text().split("## Results")[0]
    figure = ROOT / "docs" / "img" / "frame_study_curves.png"
    parts = [head + "## Results\n",
             f"Generated by `python benchmarks/frame_study.py --docs` on {time.strftime('%Y-%m-%d')} from "
             f"{len(rows)} finished runs. Read a spec with fewer than 3 seeds as preliminary: without a spread, "
             "a difference says nothing.\n",
             "Every target at the presets' budget (18 epochs), in the layout of the papers' Table 1 "
             "(rows = models, columns = targets; test MAE, and the paired difference to the same "
             "backbone without a frame with its 95 % interval over seeds):\n",
             target_table(rows),
             "Per target and budget, with validation MAE and both intervals:\n"]
    for budget in sorted({tuple(r["overrides"]) for r in rows}):
        group = [r for r in rows if tuple(r["overrides"]) == budget]
        parts.append(summary_table(group))
        # one figure per budget: the 54-epoch pairs' curves are not drowned in the 18-epoch grid
        name = figure.stem + "".join("_" + slug(o) for o in budget) + figure.suffix
        plot_curves(group, figure.with_name(name))
        label = ", ".join(budget) or "the presets' budget"
        parts.append(f"![validation MAE against epochs, {label}](img/{name})\n")
    parts.append("Settings and baselines against each other (same seeds, paired as above):\n")
    parts.append(comparison_table(rows, COMPARISONS))
    with atomic_write(doc, "w") as fh:
        fh.write("\n".join(parts))
    # the README's accuracy table: every target at the presets' own budget, between its markers
    readme = ROOT / "README.md"
    begin, end = "<!-- frame-study:begin -->", "<!-- frame-study:end -->"
    text = readme.read_text()
    if begin in text and end in text:
        table = target_table(rows)
        text = text.split(begin)[0] + begin + "\n" + table + end + text.split(end, 1)[1]
        with atomic_write(readme, "w") as fh:
            fh.write(text)


def main(argv=None) -> None:
    from crystalframes.train.study import load_rows, run_grid
    from crystalframes.train.study_tables import comparison_table, summary_table

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", choices=sorted(GRIDS), default="main", help="main: the frame grid at the presets' budget; long: the papers' pairs at 54 epochs; settings: official settings at cpu size; gap: the main grid on the band gap, the papers' pairs first; perov_5 / carbon_24: all three backbones where symmetry matters most")
    p.add_argument("--specs", nargs="+", default=None, help="default: the grid's specs")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--set", dest="overrides", action="append", default=["trainer.threads=2"],
                   help="config overrides shared by every run (the default budget is each spec's preset)")
    p.add_argument("--runs", type=Path, default=ROOT.parent / "study_runs")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--commit", action="store_true", help="git-commit the results file after every finished run")
    p.add_argument("--table", action="store_true", help="only print the table of the finished runs")
    p.add_argument("--plot", type=Path, help="only write the validation-MAE-against-epochs figure of the finished runs")
    p.add_argument("--docs", action="store_true", help="only rewrite the Results section of docs/results.md (table and figure) from the finished runs")
    args = p.parse_args(argv)
    if args.table:
        rows = load_rows(args.results)
        print(summary_table(rows) + "\n" + comparison_table(rows, COMPARISONS))
        return
    if args.plot:
        plot_curves(load_rows(args.results), args.plot)
        return
    if args.docs:
        write_docs(load_rows(args.results))
        return
    specs, budget = GRIDS[args.grid]
    specs = args.specs or list(specs)

    def landed(row: dict) -> None:
        print(f"finished {row['spec']} seed {row['seed']}: val {row['val_mae']:.4f} test {row['test_mae']:.4f} "
              f"({row['train_wall_seconds']:.0f} s)", flush=True)
        if args.commit:
            commit(args.results, f"frame study: {row['spec']} seed {row['seed']} (test MAE {row['test_mae']:.4f})")

    run_grid(specs, args.overrides + budget, args.seeds, args.runs, args.results, on_row=landed)
    print(summary_table(load_rows(args.results)))


if __name__ == "__main__":
    main()
