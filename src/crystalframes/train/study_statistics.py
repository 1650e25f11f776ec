"""The statistics of a multi-seed study (:mod:`crystalframes.train.study`): per (spec,
overrides), mean +- standard deviation over seeds, and the paired difference of every frame model
to its backbone without a frame (``backbone:none`` at the same preset, same seeds, same split)
with two 95 % intervals:

* over seeds: t interval with n - 1 degrees of freedom of the per-seed differences of test MAE
  (with 3 seeds t = 4.30, so the interval is wide: it is honest about how little 3 runs say);
* over test structures: a paired bootstrap (2,000 resamples) of the mean difference of the
  seed-averaged absolute errors, structure by structure (what this test set says, given the
  seeds run; it does not cover the seed-to-seed spread).

Input: the rows of a study's results file; output: plain numbers (the markdown is
:mod:`crystalframes.train.study_tables`).
"""

from __future__ import annotations

import math

import numpy as np

BOOTSTRAP_RESAMPLES = 2000


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


def by_spec_and_overrides(rows: list[dict]) -> dict[tuple, list[dict]]:
    """The runs of each (spec, overrides), in the order they first appear."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["spec"], tuple(r["overrides"])), []).append(r)
    return groups


def by_target(rows: list[dict]) -> list[list[dict]]:
    """The rows of each target, in the order the targets first appear."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["target"], []).append(r)
    return list(groups.values())


def sample_std(values: np.ndarray) -> float:
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


def summarise(rows: list[dict]) -> list[dict]:
    """One summary per (spec, overrides): seeds, mean +- std of val/test MAE, and the paired
    difference of test MAE to the backbone without a frame (see the module docstring)."""
    groups = by_spec_and_overrides(rows)
    out = []
    for (spec, overrides), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        val, test = np.array([r["val_mae"] for r in rs]), np.array([r["test_mae"] for r in rs])
        s = {"spec": spec, "overrides": list(overrides), "target": rs[0]["target"], "units": rs[0]["units"],
             "seeds": [r["seed"] for r in rs], "epochs": rs[0]["epochs"], "params": rs[0]["params"],
             "val_mean": float(val.mean()), "val_std": sample_std(val),
             "test_mean": float(test.mean()), "test_std": sample_std(test),
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
