"""Fixed (parameter-free) encodings of invariant edge quantities: Gaussian bases, the eComFormer
inverse-distance feature and the lattice-angle cosines of the Gram-Schmidt SPFrame baseline;
and the one length below which a displacement has no direction."""

from __future__ import annotations

import torch
from torch import nn

# eComFormer encodes an edge by x = -0.75 / |r| (as in Yan et al.'s reference code), which lies in [-4, 0)
# for every |r| > 0.1875 A, i.e. for every real interatomic distance.
INVERSE_DISTANCE_SCALE = 0.75
INVERSE_DISTANCE_RANGE = (-4.0, 0.0)

# Displacements shorter than this (Angstrom) have no direction: the atom itself (j = i, n = 0),
# which infinitely connected attention and the local frames see among their entries, has d = 0,
# and real neighbours are >= 0.5 A away (crystalframes.io.crystal.MIN_INTERATOMIC_DISTANCE).
MIN_DISTANCE = 1e-6


class GaussianBasis(nn.Module):
    """Gaussian radial basis: ``exp(-gamma (x - c_k)^2)`` for ``bins`` centres ``c_k`` evenly
    spaced on ``[start, stop]``, with ``gamma = 1 / spacing`` (the CGCNN / ALIGNN / ComFormer
    ``RBFExpansion`` convention: gamma is the inverse of the spacing, not of its square).

    Maps (...,) to (..., bins). No parameters (the centres are a buffer, so they follow
    ``.to(dtype)`` and ``.to(device)``).
    """

    def __init__(self, start: float, stop: float, bins: int):
        super().__init__()
        if bins < 2:
            raise ValueError(f"a Gaussian basis needs at least 2 bins, got {bins}")
        self.register_buffer("centres", torch.linspace(start, stop, bins), persistent=False)
        self.gamma = (bins - 1) / (stop - start)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.gamma * (x.unsqueeze(-1) - self.centres) ** 2)

    def extra_repr(self) -> str:
        c = self.centres
        return f"start={float(c[0]):g}, stop={float(c[-1]):g}, bins={len(c)}, gamma={self.gamma:g}"


def inverse_distance(distance: torch.Tensor) -> torch.Tensor:
    """eComFormer's invariant edge scalar ``-0.75 / |r|`` of edge lengths (...,)."""
    return -INVERSE_DISTANCE_SCALE / distance


def lattice_cosines(edge_vec: torch.Tensor, lattice: torch.Tensor, edge_batch: torch.Tensor) -> torch.Tensor:
    """Cosines between each edge vector and the three lattice vectors of its structure,
    ``cos(e_ij, l_k) = e_ij . l_k / (|e_ij| |l_k|)`` for k = 1, 2, 3: (E, 3).

    These are the angle features of the Gram-Schmidt SPFrame baseline (Hua & Lin, A.4, "angles
    between the transformed edge vectors and the transformed lattice vectors"): expressing both
    vectors in any common frame leaves their angle unchanged, so they are computed directly from
    dot products, which are rotation invariant without building a frame. They depend on the
    choice of unit cell (the lattice vectors), not only on the crystal; diagonal supercells
    keep the lattice directions and hence the cosines.
    """
    lat = lattice[edge_batch]  # (E, 3, 3) rows l_1, l_2, l_3
    dots = torch.einsum("ek,ejk->ej", edge_vec, lat)
    return dots / (edge_vec.norm(dim=-1, keepdim=True) * lat.norm(dim=-1))
