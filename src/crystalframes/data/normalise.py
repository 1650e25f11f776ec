"""Target standardisation with training-set statistics.

Models are trained on ``z = (y - mean) / std`` and predictions are mapped back with
``y = z * std + mean`` (the papers standardise with the *train* mean/std only; fitting on val or
test would leak them into training).

``std`` is the population standard deviation (``ddof=0``, numpy's default): it is the exact
scale of the training values, and with tens of thousands of training records the choice against
``ddof=1`` changes nothing measurable. ``fit(values, ddof=1)`` is available if wanted.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np

__all__ = ["TargetNormaliser"]


class _instance_or_class_method:
    """Called on an instance: a normal method. Called on the class: runs on a fresh instance."""

    def __init__(self, func):
        self.func = func
        self.__doc__ = func.__doc__

    def __get__(self, obj, owner):
        target = owner() if obj is None else obj
        return self.func.__get__(target, owner)


class TargetNormaliser:
    """``(y - mean) / std`` for one or several targets.

    Parameters
    ----------
    mean, std
        A float each (one target) or sequences of equal length (one entry per target; values
        passed to :meth:`transform` then have that many columns in their last axis).

    Works on numpy arrays (and lists) and torch tensors; torch results keep the input's dtype and
    device. :meth:`state_dict` holds only plain floats/lists, so it can be saved inside a file read
    with ``torch.load(weights_only=True)``.
    """

    def __init__(self, mean: float | Sequence[float] = 0.0, std: float | Sequence[float] = 1.0):
        mean_arr = np.asarray(mean, dtype=np.float64)
        std_arr = np.asarray(std, dtype=np.float64)
        if mean_arr.ndim > 1 or std_arr.ndim > 1 or mean_arr.shape != std_arr.shape:
            raise ValueError(f"mean and std must be scalars or 1-D of equal length, got {mean_arr.shape} and {std_arr.shape}")
        if not (np.all(np.isfinite(mean_arr)) and np.all(np.isfinite(std_arr))):
            raise ValueError(f"mean and std must be finite, got mean={mean!r}, std={std!r}")
        if np.any(std_arr <= 0):
            raise ValueError(f"std must be > 0, got {std!r}")
        self.mean = mean_arr
        self.std = std_arr

    # -- fitting ----------------------------------------------------------------------------

    @_instance_or_class_method
    def fit(self, values: Any, *, ddof: int = 0, names: Sequence[str] | None = None) -> "TargetNormaliser":
        """Set mean and standard deviation from ``values`` (training targets only); return ``self``.

        Both ``TargetNormaliser.fit(values)`` (a new normaliser) and ``normaliser.fit(values)``
        (refit in place) work.

        ``values`` is ``(N,)`` for one target or ``(N, T)`` for ``T`` targets (numpy, list or
        tensor). NaN entries (missing targets) are ignored per column. A column whose std is 0 (all
        values equal) or undefined gets std 1 with a warning, so transforms never divide by zero.
        ``names`` is only used in messages.
        """
        arr = _as_numpy(values)
        if arr.ndim not in (1, 2):
            raise ValueError(f"values must be (N,) or (N, T), got shape {arr.shape}")
        cols = arr[:, None] if arr.ndim == 1 else arr
        means, stds = [], []
        for j in range(cols.shape[1]):
            col = cols[:, j]
            col = col[~np.isnan(col)]
            label = names[j] if names is not None and j < len(names) else f"target {j}"
            if col.size == 0:
                raise ValueError(f"cannot fit a normaliser: no values for {label}")
            if not np.all(np.isfinite(col)):
                raise ValueError(f"cannot fit a normaliser: infinite values for {label}")
            mean = float(col.mean())
            std = float(col.std(ddof=ddof)) if col.size > ddof else float("nan")
            if not math.isfinite(std) or std == 0.0:
                warnings.warn(f"{label}: standard deviation is {std} ({col.size} values); using std = 1")
                std = 1.0
            means.append(mean)
            stds.append(std)
        if arr.ndim == 1:
            self.mean, self.std = np.asarray(means[0]), np.asarray(stds[0])
        else:
            self.mean, self.std = np.asarray(means), np.asarray(stds)
        return self

    # -- mapping ----------------------------------------------------------------------------

    @property
    def num_targets(self) -> int:
        return 1 if self.mean.ndim == 0 else int(self.mean.shape[0])

    def transform(self, values: Any) -> Any:
        """``(values - mean) / std``; same type (numpy array or tensor) as the input."""
        mean, std = self._params_like(values)
        return (values - mean) / std if _is_tensor(values) else (np.asarray(values, dtype=np.float64) - mean) / std

    def inverse(self, values: Any) -> Any:
        """``values * std + mean``: back to physical units."""
        mean, std = self._params_like(values)
        return values * std + mean if _is_tensor(values) else np.asarray(values, dtype=np.float64) * std + mean

    def inverse_scale(self, values: Any) -> Any:
        """``values * std``: for errors and standard deviations (no shift)."""
        _, std = self._params_like(values)
        return values * std if _is_tensor(values) else np.asarray(values, dtype=np.float64) * std

    def _params_like(self, values: Any):
        if _is_tensor(values):
            import torch

            dtype = values.dtype if values.is_floating_point() else torch.get_default_dtype()
            return (
                torch.as_tensor(self.mean, dtype=dtype, device=values.device),
                torch.as_tensor(self.std, dtype=dtype, device=values.device),
            )
        return self.mean, self.std

    # -- saving -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """``{"mean": float | list[float], "std": float | list[float]}`` (plain Python numbers)."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "TargetNormaliser":
        try:
            return cls(state["mean"], state["std"])
        except KeyError as exc:
            raise ValueError(f"normaliser state lacks {exc.args[0]!r}") from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TargetNormaliser):
            return NotImplemented
        return (
            self.mean.shape == other.mean.shape
            and bool(np.all(self.mean == other.mean))
            and bool(np.all(self.std == other.std))
        )

    def __repr__(self) -> str:
        return f"TargetNormaliser(mean={self.mean.tolist()!r}, std={self.std.tolist()!r})"


def _is_tensor(values: Any) -> bool:
    torch = _torch_if_loaded()
    return torch is not None and isinstance(values, torch.Tensor)


def _torch_if_loaded():
    # Only look at torch if the caller already imported it: numpy users pay no torch import.
    import sys

    return sys.modules.get("torch")


def _as_numpy(values: Any) -> np.ndarray:
    if _is_tensor(values):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)
