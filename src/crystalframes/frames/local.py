"""Local frames built from two vectors: Gram-Schmidt (Hua & Lin, SPFrame, Eqs. 14-16). (The static
distance-driven max frame, CrystalFramer's baseline, is a max frame: it lives beside
:func:`~crystalframes.frames.dynamic.max_frame`.)"""

from __future__ import annotations

import torch

from crystalframes.frames._util import right_handed

# Vectors shorter than this (and a second vector whose part orthogonal to the first is shorter
# than this fraction of its length) cannot define an axis. What it resolves depends on the
# precision the vector was summed in: frames run in float32 or float64 at every
# trainer.precision (crystalframes.precision); a vector that vanishes by symmetry comes out at
# ~1e-16 of its terms in float64 (caught), ~1e-7 in float32 and ~1e-2 when its weights come from
# bf16 features (both above 1e-8: its direction is then rounding noise; docs/training.md).
GRAM_SCHMIDT_EPS = 1e-8


def _safe_normalise(v: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """v / |v| and a mask of |v| <= eps; the division is guarded so no NaN (or NaN gradient)
    appears where the mask is set."""
    norm = v.norm(dim=-1, keepdim=True)
    small = norm.squeeze(-1) <= eps
    return v / norm.clamp_min(eps), small


def gram_schmidt(v1: torch.Tensor, v2: torch.Tensor, fallback: torch.Tensor | None = None, eps: float = GRAM_SCHMIDT_EPS) -> torch.Tensor:
    """Frame from two vectors by Gram-Schmidt (Hua & Lin, SPFrame, Eq. 15):
    e1 = v1/|v1|, e2 = (v2 - (e1.v2) e1)/|...|, e3 = e1 x e2; rows e1, e2, e3.

    Equivariant when v1, v2 are (Eq. 14: v_k = sum_j phi_k e_ij); invariant when they are
    invariant (Eq. 16, SPFrame-GS). Differentiable.

    Degenerate inputs give a defined rotation, never NaN:
    - |v1| <= eps: the frame is ``fallback`` (per-row, default identity);
    - v2 (nearly) collinear with v1 (orthogonal part <= eps (|v2| + eps)): v2 is replaced by
      the ``fallback`` axis least aligned with e1 (first such axis on a tie).
    Pass an equivariant ``fallback`` (e.g. the global QR frame of each atom's lattice) to keep
    equivariance in the degenerate cases; the identity default suits invariant inputs.
    """
    shape = torch.broadcast_shapes(v1.shape, v2.shape)
    v1, v2 = v1.expand(shape), v2.expand(shape)
    if fallback is None:
        fallback = torch.eye(3, dtype=v1.dtype, device=v1.device).expand(*shape[:-1], 3, 3)
    e1, v1_small = _safe_normalise(v1, eps)
    e1 = torch.where(v1_small.unsqueeze(-1), fallback[..., 0, :], e1)
    ortho = v2 - (e1 * v2).sum(-1, keepdim=True) * e1
    collinear = ortho.norm(dim=-1) <= eps * (v2.norm(dim=-1) + eps)
    # replacement: the fallback axis least aligned with e1, orthogonalised
    alignment = (fallback @ e1.unsqueeze(-1)).squeeze(-1).abs()  # (..., 3)
    pick = alignment.argmin(dim=-1, keepdim=True)
    alt = fallback.gather(-2, pick.unsqueeze(-1).expand(*pick.shape[:-1], 1, 3)).squeeze(-2)
    alt = alt - (e1 * alt).sum(-1, keepdim=True) * e1
    ortho = torch.where(collinear.unsqueeze(-1), alt, ortho)
    e2, _ = _safe_normalise(ortho, eps)
    frame = right_handed(e1, e2)
    return torch.where(v1_small[..., None, None], fallback, frame)

