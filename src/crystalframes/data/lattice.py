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

    Sign rule (REFERENCE.md section 1): l2, l3 are negated if their angle to l1 exceeds 90 deg
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
