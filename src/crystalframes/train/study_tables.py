"""Markdown tables of a multi-seed study (:mod:`crystalframes.train.study`), from the
statistics of :mod:`crystalframes.train.study_statistics`: one row per spec (``summary_table``),
the papers' models x targets layout (``target_table``) and chosen pairs of specs
(``comparison_table``)."""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from crystalframes.train.study_statistics import by_spec_and_overrides, by_target, paired_difference, sample_std, summarise


def comparison_table(rows: list[dict], pairs: Iterable[tuple[str, str]]) -> str:
    """Markdown: for each (spec, reference spec) pair with finished runs on both sides (same
    overrides), both test MAEs (mean +- std over the paired seeds) and the paired difference
    with its two 95 % intervals: how one setting compares with another, not only with no frame."""
    from crystalframes.models.specs import parse_spec

    if len(split := by_target(rows)) > 1:  # one table per target: each has its units
        tables = [t for t in (comparison_table(rs, pairs) for rs in split) if t != "(no finished pairs)\n"]
        return "\n".join(tables) or "(no finished pairs)\n"
    groups = by_spec_and_overrides(rows)
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
            lines.append(f"| `{spec}` | `{reference}` | {', '.join(overrides) or '-'} | {len(a)} | {_pm(float(a.mean()), sample_std(a))} | "
                         f"{_pm(float(b.mean()), sample_std(b))} | {d['diff_mean']:+.4f} | {_interval(d['diff_seed_low'], d['diff_seed_high'])} | "
                         f"{_interval(d['diff_boot_low'], d['diff_boot_high'])} |")
    if not lines:
        return "(no finished pairs)\n"
    units = rows[0]["units"]
    head = [f"| model | against | overrides | seeds | test MAE ({units}) | against: test MAE | difference | 95% CI over seeds (t) | "
            "95% CI over test structures (paired bootstrap) |", "|---|---|---|---:|---:|---:|---:|---|---|"]
    return "\n".join(head + lines) + "\n"


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


def summary_table(rows: list[dict]) -> str:
    """Markdown: one row per spec, mean +- std over seeds, the paired difference of test MAE to
    the backbone without a frame and its two 95 % intervals."""
    if not rows:
        return "(no finished runs)\n"
    if len(split := by_target(rows)) > 1:  # one table per target: each has its units and baselines
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
def _pm(mean: float, std: float) -> str:
    return f"{mean:.4f}" if math.isnan(std) else f"{mean:.4f} +- {std:.4f}"


def _interval(low: float, high: float) -> str:
    return "-" if math.isnan(low) else f"[{low:+.4f}, {high:+.4f}]"
