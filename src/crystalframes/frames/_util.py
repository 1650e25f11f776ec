"""Small building blocks shared by the frame constructions (not public API)."""

from __future__ import annotations

import torch

# Eigenvalues closer than this (relative to the largest) count as degenerate: eigenvectors of a
# gap g move by ~eps/g under rounding noise eps, so 1e-4 keeps them exact to ~1e-11 in float64.
EIGEN_DEGENERACY_RTOL = 1e-4
# A projection |u . ref| below this fraction of |ref| cannot decide an axis' sign.
SIGN_ATOL = 1e-6


def orient_by_references(axes: torch.Tensor, refs: torch.Tensor, atol: float = SIGN_ATOL) -> torch.Tensor:
    """Flip each axis so its projection on the first reference vector that projects
    non-negligibly (|u . r| > atol |r|) is positive.

    ``axes`` (..., A, 3), ``refs`` (..., R, 3). Equivariant whenever the references are
    (they rotate with the structure). An axis that no reference decides keeps its sign.
    """
    proj = axes @ refs.transpose(-1, -2)  # (..., A, R)
    decisive = proj.abs() > atol * refs.norm(dim=-1).unsqueeze(-2)
    # index of the first decisive reference (argmax of a boolean picks the first True)
    first = decisive.to(torch.int8).argmax(dim=-1, keepdim=True)
    chosen = proj.gather(-1, first).squeeze(-1)
    sign = torch.where(decisive.any(dim=-1) & (chosen < 0), -1.0, 1.0).to(axes.dtype)
    return axes * sign.unsqueeze(-1)


def right_handed(e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
    """Rows e1, e2, e1 x e2 as a frame (..., 3, 3)."""
    return torch.stack([e1, e2, torch.linalg.cross(e1, e2, dim=-1)], dim=-2)


def oriented_eigenframe(
    sigma: torch.Tensor, refs: torch.Tensor, rtol: float = EIGEN_DEGENERACY_RTOL
) -> tuple[torch.Tensor, torch.Tensor]:
    """Principal axes of symmetric ``sigma`` (..., 3, 3) as a rotation with rows u1, u2, u3
    (eigenvalues descending), signs fixed equivariantly and det = +1; plus a boolean mask of
    the matrices whose eigenvalues are (near-)degenerate, where the axes are not unique.

    Sign rule: u1, u2 are oriented by :func:`orient_by_references` with ``refs``; u3 = u1 x u2
    (the structure of Algorithm 2 of Hua & Lin, SPFrame, with its "first nonzero component" read in the
    reference vectors instead of Cartesian axes, because Cartesian components are not
    rotation-equivariant). A reference that is only rounding noise must be passed as zero:
    the test is relative to each reference's own length.
    """
    evals, evecs = torch.linalg.eigh(sigma)  # ascending
    evals = evals.flip(-1)
    axes = evecs.flip(-1).transpose(-1, -2)  # rows = eigenvectors, descending eigenvalues
    scale = evals.abs().amax(dim=-1).clamp_min(torch.finfo(sigma.dtype).tiny)
    gaps = (evals[..., :-1] - evals[..., 1:]) / scale.unsqueeze(-1)
    degenerate = (gaps < rtol).any(dim=-1)
    axes = orient_by_references(axes[..., :2, :], refs)
    return right_handed(axes[..., 0, :], axes[..., 1, :]), degenerate


def segment_amax(values: torch.Tensor, index: torch.Tensor, size: int, fill: float = float("-inf")) -> torch.Tensor:
    """Per-segment maximum of ``values`` (M,) grouped by ``index`` (M,) into ``size`` slots."""
    out = torch.full((size,), fill, dtype=values.dtype, device=values.device)
    return out.scatter_reduce(0, index, values, reduce="amax", include_self=True)
