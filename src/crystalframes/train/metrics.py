"""Metrics and prediction files (no Lightning import: `crystalframes eval` uses them)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from crystalframes.atomic import atomic_write


def write_json(path: Path, obj) -> None:
    with atomic_write(path, "w") as fh:
        json.dump(obj, fh, indent=2)
        fh.write("\n")


def metrics_of(pred: np.ndarray, true: np.ndarray) -> dict:
    err = pred - true
    ss_tot = float(((true - true.mean()) ** 2).sum())
    return {
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "r2": float(1 - (err**2).sum() / ss_tot) if ss_tot > 0 else float("nan"),
        "n": int(len(true)),
    }


def write_predictions(path: Path, crystals, pred: np.ndarray, target: str, units: str) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    label = f"{target} ({units})" if units else target
    w.writerow(["id", "formula", "n_atoms", f"true {label}", f"predicted {label}"])
    for c, p in zip(crystals, pred):
        w.writerow([c.id, c.formula, c.num_atoms, f"{c.target(target):.6g}", f"{p:.6g}"])
    with atomic_write(path, "w") as fh:
        fh.write(buf.getvalue())
