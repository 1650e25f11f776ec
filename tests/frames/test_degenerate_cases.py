"""Each rule for a degenerate case, stated in a frame's docstring, proved here."""

from dataclasses import replace

import numpy as np
import torch

from crystalframes.frames import (
    gram_schmidt,
    lattice_pca_frame,
    max_frame,
    positions_pca_frame,
    qr_frame,
    quaternion_to_rotation,
    static_local_frame,
    weighted_pca_frame,
)
from crystalframes.frames.dynamic import tie_tolerance
from crystalframes.testing import random_rotation, rotated
from tests.frames.conftest import assert_rotations, batch_of

T = torch.float64


def hexagonal(a=3.0, c=5.0):
    return np.array([[a, 0, 0], [-a / 2, a * np.sqrt(3) / 2, 0], [0, 0, c]])


def test_lattice_pca_falls_back_to_qr_for_cubic_lattices(nacl):
    """Cubic: the three centred lattice vectors form an equilateral triangle, so two
    eigenvalues coincide; the frame is the QR frame, also after any rotation."""
    lattice = torch.tensor(nacl.lattice, dtype=T)[None]
    assert torch.equal(lattice_pca_frame(lattice), qr_frame(lattice))
    q = torch.tensor(random_rotation(np.random.default_rng(0)))
    rot = lattice @ q.T
    assert torch.allclose(lattice_pca_frame(rot), qr_frame(lattice) @ q.T, atol=1e-12)


def test_lattice_pca_is_a_real_pca_frame_when_not_degenerate():
    lattice = torch.tensor([[4.0, 0.2, 0.1], [0.3, 5.0, 0.2], [0.1, 0.4, 6.5]], dtype=T)[None]
    f = lattice_pca_frame(lattice)[0]
    centred = lattice[0] - lattice[0].mean(0)
    sigma = centred.T @ centred
    evals = torch.linalg.eigvalsh(sigma).flip(0)
    for k in range(3):  # each axis is an eigenvector, in descending eigenvalue order
        assert torch.allclose(sigma @ f[k], evals[k] * f[k], atol=1e-9)
    # sign rule: the first lattice vector with a non-negligible projection is positive
    assert float(f[0] @ lattice[0, 0]) > 0 and float(f[1] @ lattice[0, 0]) > 0
    assert not torch.allclose(f, qr_frame(lattice)[0])


def test_positions_pca_falls_back_for_one_atom_and_cubic_arrangements(nacl):
    one = replace(nacl, atomic_numbers=nacl.atomic_numbers[:1], frac_coords=nacl.frac_coords[:1] + 0.1)
    for c in (one, nacl):
        b = batch_of([c])
        assert torch.equal(positions_pca_frame(b.frac_coords, b.lattice, b.batch), qr_frame(b.lattice))


def octahedral_site():
    """One atom in a simple cubic lattice: 6 nearest neighbours at exactly equal distance and
    weight (ties everywhere), and Sigma = 2 I (fully degenerate)."""
    from crystalframes.io import Crystal

    return Crystal("sc", np.eye(3) * 3.0, [29], [[0.0, 0.0, 0.0]])


def test_max_frame_breaks_weight_ties_by_tie_frame_coordinates():
    """Six equal-weight neighbours: e1 is the candidate with the largest first coordinate in
    the tie frame (here the QR frame = identity, so +x); e2 the largest among the remaining
    ties after e1 (+y: (1-|cos|) ties between +-y, +-z, then the 2nd coordinate decides)."""
    b = batch_of([octahedral_site()])
    tie = qr_frame(b.lattice)[b.batch]
    w = torch.exp(-b.edge_vec.norm(dim=-1))
    f = max_frame(b.edge_vec, w, b.edge_index[0], 1, tie)[0]
    assert torch.allclose(f, torch.eye(3, dtype=T), atol=1e-12)
    # after a rotation the same neighbours are chosen: the frame rotates with the crystal
    q = random_rotation(np.random.default_rng(5))
    br = batch_of([rotated(octahedral_site(), q)])
    fr = max_frame(br.edge_vec, w, br.edge_index[0], 1, qr_frame(br.lattice))[0]
    assert torch.allclose(fr, f @ torch.tensor(q).T, atol=1e-12)


def test_tie_tolerance_is_dtype_aware():
    assert tie_tolerance(torch.float64) < 1e-7 < tie_tolerance(torch.float32) < 1e-3


def test_max_frame_without_usable_entries_is_the_tie_frame():
    tie = qr_frame(torch.tensor([[[3.0, 0, 0], [1, 3, 0], [0, 1, 3]]], dtype=T))
    vec = torch.zeros(2, 3, dtype=T)  # only the atom itself (distance 0)
    f = max_frame(vec, torch.ones(2, dtype=T), torch.zeros(2, dtype=torch.long), 1, tie)
    assert torch.equal(f, tie)


def test_max_frame_with_only_collinear_entries_takes_e2_from_the_tie_frame():
    tie = torch.eye(3, dtype=T)[None]
    vec = torch.tensor([[1.0, 1.0, 0.0], [-2.0, -2.0, 0.0]], dtype=T)
    f = max_frame(vec, torch.tensor([1.0, 0.5], dtype=T), torch.zeros(2, dtype=torch.long), 1, tie)[0]
    assert_rotations(f[None])
    assert torch.allclose(f[0], vec[0] / vec[0].norm())
    # the tie-frame axis least aligned with e1 = (1,1,0)/sqrt2 is z
    assert torch.allclose(f[1], torch.tensor([0.0, 0.0, 1.0], dtype=T))


def test_weighted_pca_falls_back_to_max_frame_at_a_cubic_site():
    b = batch_of([octahedral_site()])
    tie = qr_frame(b.lattice)[b.batch]
    w = torch.exp(-b.edge_vec.norm(dim=-1))
    args = (b.edge_vec, w, b.edge_index[0], 1, tie)
    assert torch.equal(weighted_pca_frame(*args), max_frame(*args))


def test_weighted_pca_signs_at_a_centrosymmetric_site_come_from_the_tie_frame():
    """Weights/neighbours symmetric under inversion: the mean direction is ~0, so signs come
    from the tie frame: each axis has a positive projection on the first tie axis that
    decides it."""
    vec = torch.tensor([[2.0, 0, 0], [-2.0, 0, 0], [0, 1.0, 0.3], [0, -1.0, -0.3], [0.1, 0, 3], [-0.1, 0, -3]], dtype=T)
    w = torch.tensor([3.0, 3.0, 2.0, 2.0, 1.0, 1.0], dtype=T)
    tie = qr_frame(torch.tensor([[[3.0, 0.2, 0.1], [0.5, 3.1, 0.2], [0.3, 0.1, 3.3]]], dtype=T))
    f = weighted_pca_frame(vec, w, torch.zeros(6, dtype=torch.long), 1, tie)[0]
    for k in range(2):
        proj = tie[0] @ f[k]
        first = int(torch.nonzero(proj.abs() > 1e-6)[0])
        assert proj[first] > 0


def test_weighted_pca_sign_follows_the_mean_direction_when_it_exists():
    vec = torch.tensor([[2.0, 0, 0], [0, 1.0, 0], [0, 0, 3.0]], dtype=T)
    w = torch.tensor([3.0, 2.0, 1.0], dtype=T)
    tie = -torch.eye(3, dtype=T)[None] @ torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=T))  # any rotation
    f = weighted_pca_frame(vec, w, torch.zeros(3, dtype=torch.long), 1, tie)[0]
    assert torch.allclose(f[0], torch.tensor([1.0, 0, 0], dtype=T))  # largest eigenvalue: x, towards mean
    assert torch.allclose(f[1], torch.tensor([0, 1.0, 0], dtype=T))


def test_multi_head_weights_equal_per_head_calls(jarvis_sample):
    b = batch_of(jarvis_sample[:20])
    tie = qr_frame(b.lattice)[b.batch]
    d = b.edge_vec.norm(dim=-1)
    w = torch.stack([torch.exp(-d), torch.exp(-2 * d)], 1)
    n = len(b.batch)
    for fn in (max_frame, weighted_pca_frame):
        both = fn(b.edge_vec, w, b.edge_index[0], n, tie)
        for h in range(2):
            assert torch.equal(both[:, h], fn(b.edge_vec, w[:, h], b.edge_index[0], n, tie))


def test_static_frame_points_to_the_nearest_neighbour(jarvis_sample):
    b = batch_of(jarvis_sample[:30])
    tie = qr_frame(b.lattice)[b.batch]
    f = static_local_frame(b.edge_vec, b.edge_index[0], len(b.batch), tie)
    d = b.edge_vec.norm(dim=-1)
    for i in range(len(b.batch)):
        m = b.edge_index[0] == i
        nearest = d[m].min()
        # e1 is the direction of one of the nearest neighbours
        cand = b.edge_vec[m][d[m] <= nearest * (1 + 1e-12)]
        assert torch.isclose((cand / cand.norm(dim=-1, keepdim=True) @ f[i, 0]).max(), torch.tensor(1.0, dtype=T))


def test_gram_schmidt_degenerate_inputs_are_defined():
    v1 = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=T)
    v2 = torch.tensor([[2.0, 4.0, 6.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=T)
    f = gram_schmidt(v1, v2)
    assert_rotations(f)
    assert torch.equal(f[1], torch.eye(3, dtype=T))  # zero v1 -> the fallback frame
    assert torch.allclose(f[0, 0], v1[0] / v1[0].norm())  # collinear v2 -> least-aligned fallback axis
    v1.requires_grad_(True)
    gram_schmidt(v1, v2).sum().backward()
    assert torch.isfinite(v1.grad).all()


def test_zero_quaternion_is_the_identity_with_finite_gradient():
    q = torch.zeros(2, 4, dtype=T, requires_grad=True)
    r = quaternion_to_rotation(q)
    assert torch.equal(r, torch.eye(3, dtype=T).expand(2, 3, 3))
    r.sum().backward()
    assert torch.isfinite(q.grad).all()
