"""How far to trust an ensemble's standard deviation.

An ensemble of a few seeds is usually overconfident: its members agree more closely than they
agree with the truth. The usual remedy (Musil et al., J. Chem. Theory Comput. 2019; Tran et al.,
Mach. Learn.: Sci. Technol. 2020) multiplies the spread by one factor fitted on held-out data;
:func:`calibration` measures a std against absolute errors and returns that factor.
"""

from __future__ import annotations

import numpy as np

# the fraction of a Gaussian within 1 standard deviation of its mean
WITHIN_1_STD = 0.6827


def calibration(std: np.ndarray, error: np.ndarray, bins: int = 8) -> dict:
    """Per-structure predicted ``std`` against ``error`` (absolute errors), both shape (n,):
    the fractions of errors within 1 and 2 std (a calibrated Gaussian: 68 % and 95 %), the
    Spearman correlation between std and error, per std-quantile bin the RMSE against the mean
    std (calibrated: equal), and ``scale_for_68``, the factor that would put 68.3 % of the errors
    within 1 std (1 when calibrated)."""
    from scipy import stats

    std, error = np.asarray(std, dtype=float), np.asarray(error, dtype=float)
    order = np.argsort(std)
    groups = [g for g in np.array_split(order, bins) if len(g)]
    return {
        "n": int(len(std)),
        "mae": float(error.mean()),
        "mean_std": float(std.mean()),
        "within_1_std": float(np.mean(error <= std)),
        "within_2_std": float(np.mean(error <= 2 * std)),
        "spearman_std_error": float(stats.spearmanr(std, error).statistic) if len(std) > 2 else float("nan"),
        "scale_for_68": float(np.quantile(error / np.maximum(std, np.finfo(float).tiny), WITHIN_1_STD)),
        "bins": [{"mean_std": float(std[g].mean()), "rmse": float(np.sqrt(np.mean(error[g] ** 2))), "n": int(len(g))} for g in groups],
    }
