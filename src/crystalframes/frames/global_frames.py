"""Global frames: one rotation per structure, equivariant: F(Q X, Q L) = F(X, L) Q^T.

Lattices are ``(B, 3, 3)`` with rows = lattice vectors a, b, c (Angstrom). A frame is a
``(..., 3, 3)`` rotation whose rows are the axes (orthonormal, det = +1), so ``x @ F.T`` gives
rotation-invariant coordinates of a Cartesian row vector ``x``.
"""

from __future__ import annotations

import torch

from crystalframes.data.lattice import batched_reduced_lattice_vectors
from crystalframes.frames._util import oriented_eigenframe, right_handed


def _fix_handedness(frame: torch.Tensor) -> torch.Tensor:
    """Negate the first axis where det = -1 (left-handed lattices), as Hua & Lin (SPFrame) A.1 prescribes."""
    sign = torch.where(torch.linalg.det(frame) < 0, -1.0, 1.0).to(frame.dtype)
    frame = frame.clone()
    frame[..., 0, :] = frame[..., 0, :] * sign.unsqueeze(-1)
    return frame


def qr_frame(lattice: torch.Tensor, proper: bool = True) -> torch.Tensor:
    """QR global frame (Hua & Lin, SPFrame, A.1; Kaba et al.'s minimal frame).

    With the lattice vectors as columns, L^T = Q R with diag(R) > 0 (unique), so the rows of
    F = Q^T are the Gram-Schmidt orthonormalisation of a, b, c: e1 = a/|a|, e2 in the a-b plane
    towards b, e3 towards c. If det Q = -1 (left-handed lattice) the first axis is negated.
    Equivariant because Gram-Schmidt commutes with rotations. ``proper=False`` keeps det F =
    sign(det L): then F(L Q^T) = F(L) Q^T for improper Q too (O(3), for the tensor heads).
    """
    q, r = torch.linalg.qr(lattice.transpose(-1, -2))
    d = torch.diagonal(r, dim1=-2, dim2=-1)
    q = q * torch.where(d < 0, -1.0, 1.0).to(q.dtype).unsqueeze(-2)  # make diag(R) positive
    frame = q.transpose(-1, -2)
    return _fix_handedness(frame) if proper else frame


def polar_frame(lattice: torch.Tensor, proper: bool = True) -> torch.Tensor:
    """Polar-decomposition global frame (Hua & Lin, SPFrame, A.1).

    L^T = U H with U orthogonal and H symmetric positive definite; U = W V^T from the SVD
    L^T = W S V^T (unique even when singular values coincide, e.g. cubic cells). F = U^T, with
    the first axis negated if det U = -1. ``proper=False`` keeps U as it is: the polar factor
    of the lattice is O(3)-equivariant (Hua, Lin & Yang, 2024, GoeCTP).
    """
    w, _, vh = torch.linalg.svd(lattice.transpose(-1, -2))
    frame = (w @ vh).transpose(-1, -2)
    return _fix_handedness(frame) if proper else frame


def lattice_pca_frame(lattice: torch.Tensor) -> torch.Tensor:
    """PCA global frame of the lattice vectors (Hua & Lin, SPFrame, A.1 and Algorithm 2).

    Sigma = sum_k (l_k - t)(l_k - t)^T over the three lattice vectors l_k with centroid t;
    axes = eigenvectors by descending eigenvalue. Signs follow Algorithm 2 with its "first
    nonzero component is positive" read in lattice coordinates (projections on a, b, c), since
    Cartesian components are not equivariant; u3 = u1 x u2 gives det = +1.

    Degenerate case: when two eigenvalues coincide (relative gap < 1e-4), as for every cubic and
    hexagonal lattice, the axes are not unique and the frame falls back to :func:`qr_frame`.
    """
    centred = lattice - lattice.mean(dim=-2, keepdim=True)
    sigma = centred.transpose(-1, -2) @ centred
    frame, degenerate = oriented_eigenframe(sigma, lattice)
    return torch.where(degenerate[..., None, None], qr_frame(lattice), frame)


# Fractional offsets within this distance of 1/2 blend their two nearest images (see below).
WRAP_BLEND_WIDTH = 0.02


def _pair_offset_moments(frac: torch.Tensor, batch: torch.Tensor, num_structures: int) -> torch.Tensor:
    """Per structure, the sum over its atom pairs of E[f f^T] for the fractional offsets
    f = f_j - f_i, where each component is its minimum image x in [-1/2, 1/2] or, with weight
    q(x), the other image x - sign(x); q ramps linearly from 0 at |x| = 1/2 - WRAP_BLEND_WIDTH
    to 1/2 at |x| = 1/2.

    So offsets well inside the cell are used as they are, an offset of exactly 1/2 counts both
    equally near images, and the result is a continuous function of the coordinates modulo 1:
    no rounding decision at 0.5 that noise (e.g. 0.50000001 vs 0.49999999) could flip.
    Components are blended independently: E[f f^T] = m m^T + diag(E[f^2] - m^2).
    All pairs of all structures are handled in one vectorised pass (sum_b N_b^2 pairs).
    """
    counts = torch.bincount(batch, minlength=num_structures)
    starts = torch.cumsum(counts, 0) - counts
    pair_struct = torch.repeat_interleave(torch.arange(num_structures, device=frac.device), counts * counts)
    first_pair = torch.cumsum(counts * counts, 0) - counts * counts
    k = torch.arange(len(pair_struct), device=frac.device) - first_pair[pair_struct]
    n = counts[pair_struct]
    i = starts[pair_struct] + torch.div(k, n, rounding_mode="floor")
    j = starts[pair_struct] + k % n
    x = frac[j] - frac[i]
    x = x - torch.round(x)
    other = x - torch.sign(x)
    q = 0.5 * ((x.abs() - (0.5 - WRAP_BLEND_WIDTH)) / WRAP_BLEND_WIDTH).clamp(0.0, 1.0)
    mean = (1 - q) * x + q * other
    var = (1 - q) * x * x + q * other * other - mean * mean
    moments = mean.unsqueeze(-1) * mean.unsqueeze(-2) + torch.diag_embed(var)
    out = frac.new_zeros(num_structures, 3, 3)
    return out.index_add_(0, pair_struct, moments)


def positions_pca_frame(frac_coords: torch.Tensor, lattice: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """PCA frame of the atom positions of each unit cell (CrystalFramer's "PCA frame" baseline).

    To be independent of how atoms are wrapped into the cell, of translations and of atom
    order, the covariance is built from all pairwise minimum-image displacements:
    Sigma = L^T [sum_{i,j} f_ij f_ij^T] L with f_ij the fractional offset of atom j from atom i
    wrapped into [-1/2, 1/2]. For a compact cluster this is 2N times the ordinary position
    covariance. Offsets near 1/2, whose two images are (nearly) equally near, blend both
    images continuously (:func:`_pair_offset_moments`), so noise cannot flip the result.

    Signs: as :func:`lattice_pca_frame` (first non-negligible projection on a, b, c positive).
    Degenerate case: (near-)equal eigenvalues, e.g. a single atom or any cubic arrangement,
    fall back to :func:`qr_frame`. Inputs: ``frac_coords`` (N, 3), ``lattice`` (B, 3, 3),
    ``batch`` (N,) structure index of each atom.
    """
    ff = _pair_offset_moments(frac_coords, batch, lattice.shape[0])
    sigma = lattice.transpose(-1, -2) @ ff @ lattice
    frame, degenerate = oriented_eigenframe(sigma, lattice)
    return torch.where(degenerate[..., None, None], qr_frame(lattice), frame)


def lattice_vector_frame(lattice: torch.Tensor) -> torch.Tensor:
    """Lattice frame (CrystalFramer baseline): the shortest lattice vector l1, the next
    non-collinear l2 and the next non-coplanar l3 (right-handed, see
    :func:`~crystalframes.data.lattice.reduced_lattice_vectors`, computed batched by
    :func:`~crystalframes.data.lattice.batched_reduced_lattice_vectors`), orthonormalised:
    e1 = l1/|l1|, e2 = Gram-Schmidt(l2), e3 = e1 x e2 (on the side of l3).

    Ties between equal-length vectors (cubic, hexagonal) are broken by integer lattice
    coordinates, which rotation does not change, so the frame is exactly equivariant.
    """
    # on the lattices' device, without a host read (the NumPy function per structure copied
    # every batch's lattices to the host)
    ints = batched_reduced_lattice_vectors(lattice).to(lattice.dtype)
    vecs = ints @ lattice  # (B, 3, 3) rows l1, l2, l3
    e1 = vecs[:, 0] / vecs[:, 0].norm(dim=-1, keepdim=True)
    v2 = vecs[:, 1] - (vecs[:, 1] * e1).sum(-1, keepdim=True) * e1
    e2 = v2 / v2.norm(dim=-1, keepdim=True)
    return right_handed(e1, e2)


def positions_pca_frame_of(lattice: torch.Tensor, frac_coords: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """:func:`positions_pca_frame` with the arguments in the order every global frame takes."""
    return positions_pca_frame(frac_coords, lattice, batch)


def identity_frame(lattice: torch.Tensor) -> torch.Tensor:
    """The identity for every structure: NOT equivariant; it exists to show what a real global
    frame contributes (Hua & Lin, SPFrame A.3, note that eComFormer itself is invariant, so SPFrame with an
    identity global frame is invariant only because of the backbone)."""
    return torch.eye(3, dtype=lattice.dtype, device=lattice.device).expand(lattice.shape[0], 3, 3).clone()


# Every global frame, called alike: (lattice (B, 3, 3), frac_coords (N, 3), batch (N,)) -> (B, 3, 3).
# Most depend on the lattice alone; the positions' PCA needs the atoms too.
GLOBAL_FRAMES = {
    "qr": lambda lattice, frac_coords, batch: qr_frame(lattice),
    "polar": lambda lattice, frac_coords, batch: polar_frame(lattice),
    "lattice_pca": lambda lattice, frac_coords, batch: lattice_pca_frame(lattice),
    "lattice_vector": lambda lattice, frac_coords, batch: lattice_vector_frame(lattice),
    "positions_pca": positions_pca_frame_of,
    "identity": lambda lattice, frac_coords, batch: identity_frame(lattice),
}


def global_frame(name: str, lattice: torch.Tensor, frac_coords: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """The global frame ``name`` of every structure of a batch: (B, 3, 3), rows = axes."""
    return GLOBAL_FRAMES[name](lattice, frac_coords, batch)


__all__ = [
    "qr_frame",
    "polar_frame",
    "lattice_pca_frame",
    "positions_pca_frame",
    "lattice_vector_frame",
    "identity_frame",
    "GLOBAL_FRAMES",
    "global_frame",
]
