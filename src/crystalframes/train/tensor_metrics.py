"""Metrics of tensor targets as the tensor papers report them (Hua, Lin & Yang, 2024, GoeCTP;
Yan et al., ICML 2024, GMTNet; Wen et al., 2024, MatTen), their isotropic baseline, and the
prediction files of tensor targets. No Lightning import: ``crystalframes eval`` can use them.

All functions take full Cartesian tensors (n, 3, ..., 3) of one rank:

- Frobenius error of a structure: ||T_pred - T_true||_F over all Cartesian entries;
- relative Frobenius error: that over ||T_true||_F (a zero true tensor, e.g. the piezoelectric
  tensor of a centrosymmetric crystal, gives 0 for an exact zero prediction and infinity else);
- EwT x %: the share (a fraction in [0, 1]) of structures whose relative error is below x %;
- per-component MAE over the independent (Voigt) components, named as the prediction columns
  (:func:`crystalframes.io.tensors.component_labels`);
- isotropic baseline: every structure predicted by the mean over the *training* structures of
  each tensor's isotropic part (:func:`isotropic_part`);
- derived scalars (:func:`derived_scalars`): the MAE of trace / 3 (rank 2) and of K_VRH, G_VRH
  (rank 4) computed from the predicted tensors.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from crystalframes.atomic import atomic_write
from crystalframes.io.tensors import component_labels, tensor_columns, voigt_components

# Relative Frobenius error thresholds of EwT (percent), as GMTNet / GoeCTP report them.
EWT_THRESHOLDS = (25, 10, 5)


def frobenius_errors(pred, true):
    """Per-structure ||pred - true||_F, (n,), over all entries after the first dimension. Works on
    NumPy arrays and torch tensors alike (the validation loop calls it on tensors)."""
    diff = pred - true
    return ((diff * diff).reshape(diff.shape[0], -1).sum(-1)) ** 0.5


def relative_frobenius_errors(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-structure ||pred - true||_F / ||true||_F (0 where both vanish, inf where only true does)."""
    error = frobenius_errors(np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64))
    norm = frobenius_errors(np.asarray(true, dtype=np.float64), np.zeros_like(true, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = error / norm
    return np.where(norm > 0, rel, np.where(error > 0, np.inf, 0.0))


def isotropic_part(tensors: np.ndarray, rank: int) -> np.ndarray:
    """The orthogonal projection of each tensor onto the isotropic tensors of its kind.

    Rank 2: (tr T / 3) I. Rank 3: zero (no isotropic polar rank-3 tensor with e_ijk = e_ikj).
    Rank 4 (full Voigt symmetry): a d_ij d_kl + b (d_ik d_jl + d_il d_jk) with the two invariants
    A = C_iijj and B = C_ijij: a = (2A - B) / 15, b = (3B - A) / 30 (the Lame constants of an
    isotropic stiffness)."""
    t = np.asarray(tensors, dtype=np.float64)
    eye = np.eye(3)
    if rank == 2:
        trace = np.einsum("...ii->...", t)
        return trace[..., None, None] / 3 * eye
    if rank == 3:
        return np.zeros_like(t)
    if rank == 4:
        a_inv = np.einsum("...iijj->...", t)
        b_inv = np.einsum("...ijij->...", t)
        lam, mu = (2 * a_inv - b_inv) / 15, (3 * b_inv - a_inv) / 30
        dd = np.einsum("ij,kl->ijkl", eye, eye)
        sym = np.einsum("ik,jl->ijkl", eye, eye) + np.einsum("il,jk->ijkl", eye, eye)
        return lam[..., None, None, None, None] * dd + mu[..., None, None, None, None] * sym
    raise ValueError(f"no isotropic part for a rank-{rank} tensor (ranks 2, 3, 4)")


def derived_scalars(tensors: np.ndarray, rank: int) -> dict[str, np.ndarray]:
    """The rotation-invariant scalars the tensor papers derive from a predicted tensor, per
    structure (n,): rank 2 ``trace_over_3`` (the polycrystalline average, e.g. ``poly_electronic``
    of the dielectric set); rank 4 ``K_VRH`` and ``G_VRH`` (Voigt-Reuss-Hill moduli,
    :func:`crystalframes.io.tensors.vrh_moduli`; NaN for a singular stiffness); none for rank 3."""
    from crystalframes.io.tensors import full_to_voigt, vrh_moduli

    t = np.asarray(tensors, dtype=np.float64)
    if rank == 2:
        return {"trace_over_3": np.einsum("...ii->...", t) / 3}
    if rank == 4:
        moduli = np.array([vrh_moduli(full_to_voigt(x)) for x in t]).reshape(-1, 2)
        return {"K_VRH": moduli[:, 0], "G_VRH": moduli[:, 1]}
    return {}


def _errors_of(pred: np.ndarray, true: np.ndarray) -> dict:
    frob = frobenius_errors(pred, true)
    rel = relative_frobenius_errors(pred, true)
    out = {"frobenius": float(frob.mean())}
    for x in EWT_THRESHOLDS:
        out[f"ewt_{x}"] = float((rel < x / 100).mean())
    return out


def tensor_metrics(pred: np.ndarray, true: np.ndarray, rank: int, train: np.ndarray | None = None) -> dict:
    """The metrics of predictions ``pred`` of tensors ``true`` (n, 3, ..., 3): ``frobenius`` (mean
    Frobenius error), ``ewt_25`` / ``ewt_10`` / ``ewt_5`` (fractions), ``mae`` (mean absolute
    error over the Voigt components), ``component_mae`` (per component), ``n``, and
    ``isotropic_baseline`` (the same error measures for the isotropic mean of the training
    tensors ``train``, predicted for every structure; left out without ``train``)."""
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    component_error = np.abs(voigt_components(pred, rank) - voigt_components(true, rank))
    per_component = component_error.mean(axis=0)
    out = _errors_of(pred, true)
    out["mae"] = float(component_error.mean())
    out["component_mae"] = {label: float(v) for label, v in zip(component_labels(rank), per_component)}
    out["n"] = int(true.shape[0])
    # scalars derived from the tensors, to set against a model trained on the scalar itself
    # (NaN where a stiffness is singular: left out of the mean and counted)
    derived_true, derived_pred = derived_scalars(true, rank), derived_scalars(pred, rank)
    if derived_true:
        out["derived_mae"] = {}
        for name, values in derived_true.items():
            error = np.abs(derived_pred[name] - values)
            kept = np.isfinite(error)
            out["derived_mae"][name] = float(error[kept].mean()) if kept.any() else float("nan")
            if not kept.all():
                out["derived_mae"][f"{name}_undefined"] = int((~kept).sum())
    if train is None:
        return out
    baseline = isotropic_part(np.asarray(train, dtype=np.float64), rank).mean(axis=0)
    out["isotropic_baseline"] = _errors_of(np.broadcast_to(baseline, true.shape), true)
    return out


def write_tensor_predictions(path: Path, crystals, true: np.ndarray, pred: np.ndarray, target: str, rank: int, units: str) -> None:
    """A CSV of each structure's true and predicted components (``true <column>``, ``predicted
    <column>``, columns of :func:`crystalframes.io.tensors.tensor_columns`) and its Frobenius error, in physical units."""
    unit = f" ({units})" if units else ""
    columns = tensor_columns(target, rank)
    true_c, pred_c = voigt_components(true, rank), voigt_components(pred, rank)
    frob = frobenius_errors(np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["id", "formula", "n_atoms", *(f"true {c}{unit}" for c in columns), *(f"predicted {c}{unit}" for c in columns),
                f"frobenius error{unit}"])
    for c, t, p, f in zip(crystals, true_c, pred_c, frob):
        w.writerow([c.id, c.formula, c.num_atoms, *(f"{x:.6g}" for x in t), *(f"{x:.6g}" for x in p), f"{f:.6g}"])
    with atomic_write(path, "w") as fh:
        fh.write(buf.getvalue())


__all__ = ["EWT_THRESHOLDS", "frobenius_errors", "relative_frobenius_errors", "isotropic_part", "derived_scalars", "tensor_metrics",
           "write_tensor_predictions"]
