"""Lattice geometry shared by the graph builder and the frames.

Everything here is a function of the lattice *basis* through lengths, angles and integer
coordinates only, so rotating the lattice rotates the result (equivariance) and ties between
equal-length vectors are broken by integer coordinates, never by floating-point noise.
"""

from __future__ import annotations

import numpy as np

# Two lattice-vector lengths closer than this (relative) count as equal.
LENGTH_TIE_RTOL = 1e-8
# |sin| of the angle below which two vectors count as collinear (and |triple| / norms for coplanar).
COLLINEAR_TOL = 1e-6


def _integer_candidates(lattice: np.ndarray) -> np.ndarray:
    """All integer vectors n (n != 0) with |n L| <= max row length of L.

    For |n L| <= R we need |n_a| <= R |b_a| where b_a are the reciprocal vectors (rows of L^-T),
    so the box below is guaranteed to contain the three shortest independent lattice vectors
    (each is no longer than the longest basis vector).
    """
    radius = float(np.linalg.norm(lattice, axis=1).max()) * (1 + 1e-9)
    recip = np.linalg.inv(lattice).T  # rows b_a with a_i . b_a = delta
    bounds = np.ceil(radius * np.linalg.norm(recip, axis=1) + 1e-9).astype(int)
    axes = [np.arange(-b, b + 1) for b in bounds]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    grid = grid[np.any(grid != 0, axis=1)]
    vecs = grid @ lattice
    keep = np.linalg.norm(vecs, axis=1) <= radius
    return grid[keep]


def reduced_lattice_vectors(lattice: np.ndarray) -> np.ndarray:
    """Integer coordinates (3, 3) of l1, l2, l3: the shortest lattice vector, the shortest one
    not collinear with it, and the shortest one not coplanar with both (iComFormer's lattice
    edges; CrystalFramer's lattice frame).

    Sign rule (ComFormer's reference code, Yan et al.): l2, l3 are negated if their angle to l1 exceeds 90 deg
    (by more than a 1e-6 tolerance in the cosine, so perpendicular vectors are left alone), then
    all three are negated if (l1 x l2) . l3 < 0, which makes the triple right-handed.

    Ties between equal lengths (every cubic or hexagonal lattice) are broken by the integer
    coordinates (lexicographically largest first), which do not change under rotation, so the
    chosen vectors rotate with the lattice exactly.
    """
    lattice = np.asarray(lattice, dtype=np.float64)
    ints = _integer_candidates(lattice)
    vecs = ints @ lattice
    lengths = np.linalg.norm(vecs, axis=1)
    order = tie_aware_order(lengths, LENGTH_TIE_RTOL * lengths.max(), -ints)
    ints, vecs, lengths = ints[order], vecs[order], lengths[order]

    # l2: first candidate not collinear with l1; l3: first not coplanar with l1, l2.
    cross = np.linalg.norm(np.cross(vecs[0], vecs), axis=1)
    second = int(np.argmax(cross > COLLINEAR_TOL * lengths[0] * lengths))
    normal = np.cross(vecs[0], vecs[second])
    triple = np.abs(vecs @ normal)
    third = int(np.argmax(triple > COLLINEAR_TOL * lengths[0] * lengths[second] * lengths))
    chosen = [0, second, third]
    n = ints[chosen].copy()
    v = vecs[chosen]
    for a in (1, 2):
        # Perpendicular vectors (cos ~ 0, every orthogonal lattice) keep the sign chosen by the
        # integer tie-break: testing "< 0" on noise would flip them at random under rotation.
        if np.dot(v[0], v[a]) < -COLLINEAR_TOL * np.linalg.norm(v[0]) * np.linalg.norm(v[a]):
            n[a] *= -1
            v[a] = -v[a]
    if np.dot(np.cross(v[0], v[1]), v[2]) < 0:
        n = -n
    return n


def tie_aware_order(values: np.ndarray, tol: float, tie_keys: np.ndarray) -> np.ndarray:
    """Indices sorting ``values`` ascending, where values within ``tol`` of their predecessor
    form one tie group ordered by the rows of ``tie_keys`` (lexicographically, first column
    most significant). Grouping by gaps (not by rounding) keeps the result stable under
    floating-point noise far below ``tol``."""
    first = np.argsort(values, kind="stable")
    group = np.empty(len(values), dtype=np.int64)
    group[first] = np.concatenate([[0], np.cumsum(np.diff(values[first]) > tol)])
    keys = [tie_keys[:, c] for c in range(tie_keys.shape[1] - 1, -1, -1)]
    return np.lexsort((*keys, group))


# ---------------------------------------------------------------------------------------------
# The same integer coordinates for a batch of lattices on their device, without a host read
# ---------------------------------------------------------------------------------------------

# Sweeps of pairwise Lagrange steps (b_j -= round(b_j.b_i / b_i.b_i) b_i for every ordered pair):
# a fixed number, so the computation has no data-dependent control flow. Each step only shortens
# b_j, so the rows stay within the longest input row (inside the candidate radius). The MP and
# JARVIS samples need one sweep; bases skewed by unimodular matrices with entries up to 3, two;
# a sweep is 36 small kernels (about 80 dispatched operators with the views).
REDUCTION_SWEEPS = 3
# The candidates: integer combinations with coefficients in -BOX..BOX of the reduced rows.
BOX = 2


def _box(device, dtype) -> "torch.Tensor":
    import torch

    axis = torch.arange(-BOX, BOX + 1, device=device, dtype=dtype)
    grid = torch.cartesian_prod(axis, axis, axis)
    middle = (2 * BOX + 1) ** 3 // 2  # the zero vector
    return torch.cat([grid[:middle], grid[middle + 1 :]])


def batched_reduced_lattice_vectors(lattice: "torch.Tensor") -> "torch.Tensor":
    """:func:`reduced_lattice_vectors` of a batch (B, 3, 3) on the lattices' device, with no host
    read: (B, 3, 3) integer-valued float64 (float32 on MPS, which has no float64).

    :func:`reduced_lattice_vectors` sorts every lattice vector up to the longest basis row by
    (tie group of length, integer coordinates) and takes the first, the first not collinear with
    it and the first not coplanar with both. Only the front of that order decides, so a fixed set
    of candidates serves every lattice: the combinations with coefficients -2..2 of a reduced
    basis (fixed sweeps of pairwise Lagrange steps), expressed in the input basis (so that the
    tie-breaking keys are the same integer coordinates). For a pairwise-reduced basis these hold
    the shortest vector, the shortest ones outside its line and outside the plane of the first
    two, and their equal-length partners, whose coefficients are 0 or +-1 (Voronoi-relevant
    vectors of the 1- and 2-dimensional sublattices). The filters (length <= the candidate
    radius), the tie tolerance, the lexicographic tie-break, the collinearity and coplanarity
    tests and the sign rules are those of the NumPy function, in float64.

    Where the two can differ: lattice vectors missing from the fixed candidates matter only
    through the tie groups (a group is a chain of lengths each within the tolerance of the next),
    i.e. a missing vector whose length is within 1e-8 relative of a chosen one and bridges two
    groups, and the tolerance itself (1e-8 times the longest candidate, which may differ by
    1e-9 relative); and a basis so skewed that REDUCTION_SWEEPS sweeps do not reduce it. The
    tests hold the equality on every crystal of the MP and JARVIS samples and on random,
    high-symmetry and skewed bases."""
    import torch

    dtype = torch.float32 if lattice.device.type == "mps" else torch.float64
    lat = lattice.detach().to(dtype)
    batch = lat.shape[0]
    # [reduced rows | their integer coordinates in the input basis]
    both = torch.cat([lat, torch.eye(3, dtype=dtype, device=lat.device).expand(batch, 3, 3)], dim=-1)
    for _ in range(REDUCTION_SWEEPS):
        for i, j in ((0, 1), (0, 2), (1, 2), (1, 0), (2, 0), (2, 1)):
            bi, bj = both[:, i], both[:, j]
            mu = torch.round((bj[:, :3] * bi[:, :3]).sum(-1) / bi[:, :3].square().sum(-1))
            bj.sub_(mu[:, None] * bi)
    unimodular = both[:, :, 3:]
    ints = _box(lat.device, dtype) @ unimodular  # (B, C, 3): integer coordinates in the input basis
    vecs = ints @ lat
    lengths = torch.linalg.vector_norm(vecs, dim=-1)
    rows = torch.linalg.vector_norm(lat, dim=-1).amax(-1)
    radius = rows * (1 + 1e-9)
    valid = lengths <= radius[:, None]
    # the NumPy function's tolerance: relative to its longest candidate (a basis row at least)
    tol = LENGTH_TIE_RTOL * torch.maximum(torch.where(valid, lengths, 0).amax(-1), rows)
    sorted_lengths, by_length = torch.where(valid, lengths, torch.inf).sort(dim=-1, stable=True)
    step = (sorted_lengths.diff(dim=-1) > tol[:, None]).to(torch.int64)
    group_sorted = torch.cat([step.new_zeros(batch, 1), step.cumsum(-1)], dim=-1)
    group = torch.empty_like(group_sorted).scatter_(-1, by_length, group_sorted)
    group = torch.where(valid, group, lengths.shape[-1] + 1)
    # lexicographic (group, -n0, -n1, -n2) by stable sorts from the least significant key
    order = torch.arange(lengths.shape[-1], device=lat.device).expand(batch, -1)
    for key in (-ints[..., 2], -ints[..., 1], -ints[..., 0], group):
        order = order.gather(-1, key.gather(-1, order).sort(dim=-1, stable=True)[1])
    ints = ints.gather(1, order[..., None].expand(-1, -1, 3))
    vecs = vecs.gather(1, order[..., None].expand(-1, -1, 3))
    lengths = lengths.gather(-1, order)
    valid = valid.gather(-1, order)

    first = vecs[:, 0]
    cross = torch.linalg.vector_norm(torch.linalg.cross(first[:, None].expand_as(vecs), vecs), dim=-1)
    second = ((cross > COLLINEAR_TOL * lengths[:, :1] * lengths) & valid).to(torch.uint8).argmax(-1)
    take = lambda t, k: t.gather(1, k[:, None, None].expand(-1, 1, 3))[:, 0]  # noqa: E731
    normal = torch.linalg.cross(first, take(vecs, second))
    triple = (vecs @ normal[..., None])[..., 0].abs()
    len2 = lengths.gather(-1, second[:, None])
    third = ((triple > COLLINEAR_TOL * lengths[:, :1] * len2 * lengths) & valid).to(torch.uint8).argmax(-1)
    n = torch.stack([ints[:, 0], take(ints, second), take(ints, third)], dim=1)
    v = torch.stack([first, take(vecs, second), take(vecs, third)], dim=1)
    sign = torch.ones(batch, 3, dtype=dtype, device=lat.device)
    norm0 = torch.linalg.vector_norm(v[:, 0], dim=-1)
    for a in (1, 2):
        # perpendicular vectors keep the sign of the tie-break (see reduced_lattice_vectors)
        flip = (v[:, 0] * v[:, a]).sum(-1) < -COLLINEAR_TOL * norm0 * torch.linalg.vector_norm(v[:, a], dim=-1)
        sign[:, a] = torch.where(flip, -1.0, 1.0)
    v = v * sign[..., None]
    handed = torch.where((torch.linalg.cross(v[:, 0], v[:, 1]) * v[:, 2]).sum(-1) < 0, -1.0, 1.0)
    return n * (sign * handed[:, None])[..., None]
