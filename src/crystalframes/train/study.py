"""Multi-seed accuracy studies: "does this frame help this backbone, at this budget?"

A study trains a grid of model specs x seeds with the same config overrides (data, budget) and
answers with spread, not anecdotes: mean +- standard deviation over seeds per spec, and the
paired difference of every frame model to its backbone without a frame (``backbone:none`` at
the same preset, same seeds, same split) with two 95 % intervals:

* over seeds: t interval with n - 1 degrees of freedom of the per-seed differences of test MAE
  (with 3 seeds t = 4.30, so the interval is wide: it is honest about how little 3 runs say);
* over test structures: a paired bootstrap (2,000 resamples) of the mean difference of the
  seed-averaged absolute errors, structure by structure (what this test set says, given the
  seeds run; it does not cover the seed-to-seed spread).

Runs are resumable: each finished run appends one row to a JSON file (atomically), a rerun of
the same grid skips finished rows, and a run that was killed part-way resumes from its last
checkpoint. Several processes can work through one grid (one per core or GPU): each run is
claimed with a lock, so a run another process is training is skipped, not trained twice. Rows
carry the per-structure test errors (for the bootstrap) and the validation MAE of every epoch
(for MAE-against-epochs curves).
"""

from __future__ import annotations

import csv
import json
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

RESULTS_FORMAT = "crystalframes-study"
RESULTS_VERSION = 1
BOOTSTRAP_RESAMPLES = 2000


def budget_overrides(overrides: Iterable[str]) -> list[str]:
    """The overrides that change what is trained: all but ``trainer.threads`` (so a grid can be
    split over processes with other thread counts), sorted."""
    return sorted(o for o in overrides if not o.startswith("trainer.threads="))


def run_key(spec: str, seed: int, overrides: Iterable[str]) -> str:
    """The identity of one run: canonical spec, seed and the overrides that change what is
    trained (order-free)."""
    return f"{spec}|seed={seed}|" + ";".join(budget_overrides(overrides))


def load_rows(path: Path) -> list[dict]:
    """The rows of a results file ([] if it does not exist); a file of another format is refused."""
    path = Path(path)
    if not path.exists():
        return []
    payload = json.loads(path.read_text())
    if payload.get("format") != RESULTS_FORMAT:
        raise ValueError(f"{path}: not a crystalframes study results file")
    rows = list(payload["rows"])
    for row in rows:  # rows written before keys dropped trainer.threads
        row["overrides"] = budget_overrides(row["overrides"])
        row["key"] = run_key(row["key"].split("|")[0], row["seed"], row["overrides"])
    return rows


def save_rows(path: Path, rows: list[dict]) -> None:
    from crystalframes.atomic import atomic_write

    with atomic_write(Path(path), "w") as fh:
        json.dump({"format": RESULTS_FORMAT, "version": RESULTS_VERSION, "rows": rows}, fh, indent=1)
        fh.write("\n")


def append_row(path: Path, row: dict) -> None:
    """Add one row to a results file, reread under an exclusive lock so processes that split a
    grid between them keep each other's rows."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = [r for r in load_rows(path) if r["key"] != row["key"]]
        rows.append(row)
        save_rows(path, rows)


def slug(text: str) -> str:
    """``text`` as a file-name part: every character but letters and digits becomes '-'."""
    return "".join(ch if ch.isalnum() else "-" for ch in text)


def _folder_name(spec: str, seed: int, overrides: Iterable[str] = ()) -> str:
    """Run folder of one run: spec and seed, plus a hash of the overrides that change what is
    trained (all but ``trainer.threads``), so grids with other budgets share a --runs folder."""
    import hashlib

    name = slug(spec) + f"-s{seed}"
    budget = budget_overrides(overrides)
    return name if not budget else name + "-" + hashlib.sha1(";".join(budget).encode()).hexdigest()[:8]


def row_of_run(folder: Path, spec: str, seed: int, overrides: list[str]) -> dict:
    """One results row from a finished run folder (metrics.json, predictions_test.csv, the
    per-epoch log)."""
    from crystalframes.models.specs import parse_spec

    m = json.loads((folder / "metrics.json").read_text())
    ids, errors = [], []
    with open(folder / "predictions_test.csv", newline="") as fh:
        reader = csv.reader(fh)
        next(reader)
        for rec in reader:
            ids.append(rec[0])
            errors.append(abs(float(rec[3]) - float(rec[4])))
    curve = {}
    log = folder / "logs" / "metrics.csv"
    if log.exists():
        with open(log, newline="") as fh:
            for rec in csv.DictReader(fh):
                if rec.get("val_mae"):
                    curve[int(rec["epoch"])] = float(rec["val_mae"])
    import yaml

    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    return {
        "key": run_key(spec, seed, overrides),
        "spec": str(parse_spec(m["spec"])),  # canonical: a run trained as "x@cpu" joins "x+qr@cpu"
        "seed": seed,
        "overrides": budget_overrides(overrides),
        "target": m["target"],
        "units": m["units"],
        "epochs": m["epochs_completed"],
        "batch_size": cfg["trainer"]["batch_size"],
        "params": m.get("params"),
        "train_wall_seconds": m["train_wall_seconds"],
        "val_mae": m["val"]["mae"],
        "test_mae": m["test"]["mae"],
        "val_mean_baseline_mae": m["val"]["mean_baseline_mae"],
        "test_mean_baseline_mae": m["test"]["mean_baseline_mae"],
        "val_mae_per_epoch": [curve[e] for e in sorted(curve)],
        "test_ids": ids,
        "test_abs_errors": [round(e, 7) for e in errors],
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        # a fine-tuning run: the sha256 of the model file it started from (see train.finetune)
        **({"init_sha256": m["init"]["sha256"]} if "init" in m else {}),
    }


def run_grid(specs: list[str], overrides: list[str], seeds: Iterable[int], output: Path, results: Path,
             on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Train every spec x seed not yet in ``results`` (seed-major: every spec gets seed 0 before
    any gets seed 1, so a partial study is balanced), appending each finished run's row."""
    from crystalframes.models.specs import parse_spec
    from crystalframes.train.config import config_with_preset_training, explicit_keys, load_config
    from crystalframes.train.run import train

    specs = [str(parse_spec(s)) for s in specs]  # all specs valid before the first long run
    output, results = Path(output), Path(results)
    output.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        for spec in specs:
            key = run_key(spec, seed, overrides)
            if key in {r["key"] for r in load_rows(results)}:  # reread: another process may share the file
                continue
            folder = output / _folder_name(spec, seed, overrides)
            with _claim(folder) as claimed:
                if not claimed:  # another process is training this run: leave it to that one
                    print(f"skipping {spec} seed {seed}: another process is training it ({folder})", flush=True)
                    continue
                if key in {r["key"] for r in load_rows(results)}:  # it finished while we looked
                    continue
                if not (folder / "metrics.json").exists():
                    sets = [*overrides, f"model.spec={spec}", f"trainer.seed={seed}"]
                    cfg = config_with_preset_training(load_config(None, sets), explicit_keys(None, sets))
                    resume = (folder / "checkpoints" / "last.ckpt").exists()
                    train(cfg, folder, resume=resume, overwrite=folder.exists() and not resume)
                row = row_of_run(folder, spec, seed, overrides)
                append_row(results, row)
            if on_row is not None:
                on_row(row)
    return load_rows(results)


@contextmanager
def _claim(folder: Path):
    """An exclusive, non-blocking lock on one run (a file beside its folder, so a fresh run
    that replaces the folder keeps it): yields False if another process holds it, so processes
    given the same grid share its runs instead of training one twice. The operating system
    releases the lock of a process that dies."""
    import fcntl

    with open(folder.with_name(folder.name + ".lock"), "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


def baseline_spec(spec: str) -> str:
    """The same backbone and preset without a frame."""
    from crystalframes.models.specs import parse_spec

    p = parse_spec(spec)
    return f"{p.backbone}:none@{p.preset}"


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of a t interval with n - 1 degrees of freedom (NaN bounds for n < 2)."""
    from scipy import stats

    n = len(values)
    mean = float(np.mean(values))
    if n < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, n - 1) * float(np.std(values, ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half


def paired_bootstrap(a: np.ndarray, b: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of mean(a - b) with a percentile interval from resampling the paired
    items (rows of a and b belong together)."""
    d = np.asarray(a) - np.asarray(b)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(d.mean()), float(lo), float(hi)


def seed_averaged_errors(rows: list[dict]) -> dict[str, float]:
    """Test structure id -> absolute error averaged over the given runs (ids every run has)."""
    common = set(rows[0]["test_ids"]).intersection(*(r["test_ids"] for r in rows[1:]))
    out = {}
    for i in common:
        out[i] = float(np.mean([r["test_abs_errors"][r["test_ids"].index(i)] for r in rows]))
    return out


def _by_spec_and_overrides(rows: list[dict]) -> dict[tuple, list[dict]]:
    """The runs of each (spec, overrides), in the order they first appear."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["spec"], tuple(r["overrides"])), []).append(r)
    return groups


def _by_target(rows: list[dict]) -> list[list[dict]]:
    """The rows of each target, in the order the targets first appear."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["target"], []).append(r)
    return list(groups.values())


def _sample_std(values: np.ndarray) -> float:
    """Standard deviation over seeds (ddof = 1); NaN for a single run."""
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def paired_difference(rows: list[dict], reference: list[dict]) -> dict | None:
    """Test MAE of ``rows`` minus that of ``reference`` (runs of two specs), paired by seed: the
    mean difference with its t interval over seeds and its paired bootstrap interval over the
    test structures both sides have (None when no seed is shared)."""
    by_seed = {r["seed"]: r for r in reference}
    paired = [(r, by_seed[r["seed"]]) for r in sorted(rows, key=lambda r: r["seed"]) if r["seed"] in by_seed]
    if not paired:
        return None
    out = {"paired_seeds": [a["seed"] for a, _ in paired]}
    out["diff_mean"], out["diff_seed_low"], out["diff_seed_high"] = t_interval(np.array([a["test_mae"] - b["test_mae"] for a, b in paired]))
    ea, eb = seed_averaged_errors([a for a, _ in paired]), seed_averaged_errors([b for _, b in paired])
    ids = sorted(set(ea) & set(eb))
    _, out["diff_boot_low"], out["diff_boot_high"] = paired_bootstrap(np.array([ea[i] for i in ids]), np.array([eb[i] for i in ids]))
    out["diff_structures"] = len(ids)
    return out


def comparison_table(rows: list[dict], pairs: Iterable[tuple[str, str]]) -> str:
    """Markdown: for each (spec, reference spec) pair with finished runs on both sides (same
    overrides), both test MAEs (mean +- std over the paired seeds) and the paired difference
    with its two 95 % intervals: how one setting compares with another, not only with no frame."""
    from crystalframes.models.specs import parse_spec

    if len(split := _by_target(rows)) > 1:  # one table per target: each has its units
        tables = [t for t in (comparison_table(rs, pairs) for rs in split) if t != "(no finished pairs)\n"]
        return "\n".join(tables) or "(no finished pairs)\n"
    groups = _by_spec_and_overrides(rows)
    lines = []
    for spec, reference in pairs:
        spec, reference = str(parse_spec(spec)), str(parse_spec(reference))
        for (name, overrides), rs in groups.items():
            if name != spec or (reference, overrides) not in groups:
                continue
            ref = groups[(reference, overrides)]
            d = paired_difference(rs, ref)
            if d is None:
                continue
            a = np.array([r["test_mae"] for r in rs if r["seed"] in d["paired_seeds"]])
            b = np.array([r["test_mae"] for r in ref if r["seed"] in d["paired_seeds"]])
            lines.append(f"| `{spec}` | `{reference}` | {', '.join(overrides) or '-'} | {len(a)} | {_pm(float(a.mean()), _sample_std(a))} | "
                         f"{_pm(float(b.mean()), _sample_std(b))} | {d['diff_mean']:+.4f} | {_interval(d['diff_seed_low'], d['diff_seed_high'])} | "
                         f"{_interval(d['diff_boot_low'], d['diff_boot_high'])} |")
    if not lines:
        return "(no finished pairs)\n"
    units = rows[0]["units"]
    head = [f"| model | against | overrides | seeds | test MAE ({units}) | against: test MAE | difference | 95% CI over seeds (t) | "
            "95% CI over test structures (paired bootstrap) |", "|---|---|---|---:|---:|---:|---:|---|---|"]
    return "\n".join(head + lines) + "\n"


def summarise(rows: list[dict]) -> list[dict]:
    """One summary per (spec, overrides): seeds, mean +- std of val/test MAE, and the paired
    difference of test MAE to the backbone without a frame (see the module docstring)."""
    groups = _by_spec_and_overrides(rows)
    out = []
    for (spec, overrides), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        val, test = np.array([r["val_mae"] for r in rs]), np.array([r["test_mae"] for r in rs])
        s = {"spec": spec, "overrides": list(overrides), "target": rs[0]["target"], "units": rs[0]["units"],
             "seeds": [r["seed"] for r in rs], "epochs": rs[0]["epochs"], "params": rs[0]["params"],
             "val_mean": float(val.mean()), "val_std": _sample_std(val),
             "test_mean": float(test.mean()), "test_std": _sample_std(test),
             "train_seconds": float(np.mean([r["train_wall_seconds"] for r in rs]))}
        base = groups.get((baseline_spec(spec), overrides))
        if base is not None and baseline_spec(spec) != spec:
            diff = paired_difference(rs, base)
            if diff is not None:
                s.update(baseline=baseline_spec(spec), **diff)
        out.append(s)
    # rows a reader can scan: grouped by backbone, then by baseline (preset), the baseline first
    first: dict[str, int] = {}
    for s in out:
        for k in (s["spec"].split(":")[0], baseline_spec(s["spec"])):
            first.setdefault(k, len(first))
    return sorted(out, key=lambda s: (first[s["spec"].split(":")[0]], first[baseline_spec(s["spec"])], s["spec"] != baseline_spec(s["spec"])))


def target_table(rows: list[dict]) -> str:
    """Markdown in the layout of the papers' Table 1: rows = models, columns = targets, for the
    runs whose only override (if any) is the target (``data.target=...``): per target, test MAE
    mean +- std over seeds (number of seeds) and the paired difference to the backbone without a
    frame with its 95 % t interval over seeds (the bootstrap intervals are in the per-target
    tables)."""
    rows = [r for r in rows if all(o.startswith("data.target=") for o in r["overrides"])]
    if not rows:
        return "(no finished runs)\n"
    summaries = summarise(rows)
    targets = list(dict.fromkeys(s["target"] for s in summaries))
    units = {s["target"]: s["units"] for s in summaries}
    cells: dict[str, dict[str, tuple[str, str]]] = {}
    for s in summaries:
        mae = f"{_pm(s['test_mean'], s['test_std'])} ({len(s['seeds'])})"
        diff = f"{s['diff_mean']:+.4f} {_interval(s['diff_seed_low'], s['diff_seed_high'])}" if "diff_mean" in s else "-"
        cells.setdefault(s["spec"], {})[s["target"]] = (mae, diff)
    head = ["| model | " + " | ".join(f"`{t}` test MAE ({units[t]}) (seeds) | `{t}`: - no frame [95% CI over seeds]" for t in targets) + " |",
            "|---|" + "---:|---|" * len(targets)]
    lines = [f"| `{spec}` | " + " | ".join(" | ".join(by_target.get(t, ("-", "-"))) for t in targets) + " |"
             for spec, by_target in cells.items()]
    return "\n".join(head + lines) + "\n"


def _pm(mean: float, std: float) -> str:
    return f"{mean:.4f}" if math.isnan(std) else f"{mean:.4f} +- {std:.4f}"


def _interval(low: float, high: float) -> str:
    return "-" if math.isnan(low) else f"[{low:+.4f}, {high:+.4f}]"


def summary_table(rows: list[dict]) -> str:
    """Markdown: one row per spec, mean +- std over seeds, the paired difference of test MAE to
    the backbone without a frame and its two 95 % intervals."""
    if not rows:
        return "(no finished runs)\n"
    if len(split := _by_target(rows)) > 1:  # one table per target: each has its units and baselines
        return "\n".join(summary_table(rs) for rs in split)
    summaries = summarise(rows)
    units = summaries[0]["units"]
    lines = [f"| model | seeds | epochs | val MAE ({units}) | test MAE ({units}) | test - no frame | 95% CI over seeds (t) | "
             f"95% CI over test structures (paired bootstrap) | params |",
             "|---|---:|---:|---:|---:|---:|---|---|---:|"]
    for s in summaries:
        diff = f"{s['diff_mean']:+.4f}" if "diff_mean" in s else "-"
        seeds_ci = _interval(s["diff_seed_low"], s["diff_seed_high"]) if "diff_mean" in s else "-"
        boot_ci = _interval(s["diff_boot_low"], s["diff_boot_high"]) if "diff_mean" in s else "-"
        lines.append(f"| `{s['spec']}` | {len(s['seeds'])} | {s['epochs']} | {_pm(s['val_mean'], s['val_std'])} | "
                     f"{_pm(s['test_mean'], s['test_std'])} | {diff} | {seeds_ci} | {boot_ci} | {s['params']:,} |")
    first = rows[0]
    budgets = sorted({", ".join(r["overrides"]) or "none" for r in rows})
    head = (f"Target `{first['target']}`; mean of training targets: val {first['val_mean_baseline_mae']:.4f}, "
            f"test {first['test_mean_baseline_mae']:.4f} {units}. Shared overrides: {' / '.join(budgets)}.\n\n")
    return head + "\n".join(lines) + "\n"
