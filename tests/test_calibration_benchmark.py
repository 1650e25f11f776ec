"""benchmarks/calibration.py: the calibration figures are right on data whose answer is known."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

SPEC = importlib.util.spec_from_file_location("calibration", Path(__file__).resolve().parents[1] / "benchmarks" / "calibration.py")
calibration = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(calibration)


def test_a_calibrated_gaussian_ensemble_gives_68_and_95_percent():
    rng = np.random.default_rng(0)
    std = rng.uniform(0.05, 0.5, 20000)
    error = np.abs(rng.normal(0.0, std))
    r = calibration.calibration(std, error)
    assert abs(r["within_1_std"] - 0.683) < 0.01 and abs(r["within_2_std"] - 0.954) < 0.01
    assert all(abs(b["rmse"] / b["mean_std"] - 1) < 0.1 for b in r["bins"]) and r["spearman_std_error"] > 0.3
    assert abs(r["scale_for_68"] - 1.0) < 0.05


def test_an_overconfident_ensemble_is_seen_as_one():
    rng = np.random.default_rng(1)
    std = rng.uniform(0.05, 0.5, 5000)
    error = np.abs(rng.normal(0.0, 3 * std))
    r = calibration.calibration(std, error)
    assert r["within_1_std"] < 0.3 and all(b["rmse"] > 2 * b["mean_std"] for b in r["bins"])
    assert abs(r["scale_for_68"] - 3.0) < 0.15  # the std is 3x too small
    rescaled = calibration.calibration(r["scale_for_68"] * std, error)
    assert abs(rescaled["within_1_std"] - 0.683) < 0.01
