"""Every frame on every real structure: a rotation, equivariant to 1e-10, deterministic."""

import numpy as np
import pytest
import torch

from crystalframes.frames import (
    gram_schmidt,
    identity_frame,
    positions_pca_frame,
    qr_frame,
    quaternion_to_rotation,
)
from crystalframes.testing import permuted, random_rotation, rotated, translated, worst
from tests.frames.conftest import all_frames, assert_rotations, batch_of, chunks

EQUIVARIANCE_ATOL = 1e-10


@pytest.mark.parametrize("sample", ["jarvis_sample", "mp_sample"])
def test_every_frame_is_a_rotation_on_every_structure(sample, request):
    crystals = request.getfixturevalue(sample)
    for part in chunks(crystals, 400):
        for name, frames in all_frames(batch_of(part)).items():
            assert_rotations(frames, atol=1e-12, name=name)


def test_equivariance_on_the_whole_jarvis_sample(jarvis_sample):
    """F(QX, QL) = F(X, L) Q^T for every equivariant frame, every JARVIS structure, a random
    rotation per structure; float64; tolerance 1e-10."""
    gen = np.random.default_rng(0)
    worst_error = {}
    for part in chunks(jarvis_sample, 200):
        qs = [random_rotation(gen) for _ in part]
        ref = all_frames(batch_of(part))
        rot = all_frames(batch_of([rotated(c, q) for c, q in zip(part, qs)]))
        b = batch_of(part)
        q_struct = torch.tensor(np.stack(qs))
        for name in ref:
            per_atom = ref[name].dim() == 3 and ref[name].shape[0] == len(b.batch) or ref[name].dim() == 4
            q = q_struct[b.batch] if per_atom else q_struct
            if ref[name].dim() == 4:
                q = q.unsqueeze(1)
            err = float((rot[name] - ref[name] @ q.transpose(-1, -2)).abs().max())
            worst_error[name] = worst([worst_error.get(name, 0.0), err])  # NaN propagates
    assert set(worst_error) >= {"qr", "polar", "lattice_pca", "lattice_vector", "positions_pca", "max", "weighted_pca", "static"}
    assert worst(worst_error.values()) <= EQUIVARIANCE_ATOL, worst_error


def test_equivariance_on_cubic_and_hexagonal_crystals_many_rotations(symmetric_crystals):
    gen = np.random.default_rng(1)
    b = batch_of(symmetric_crystals)
    ref = all_frames(b)
    for _ in range(5):
        q = random_rotation(gen)
        rot = all_frames(batch_of([rotated(c, q) for c in symmetric_crystals]))
        qt = torch.tensor(q)
        for name in ref:
            assert float((rot[name] - ref[name] @ qt.T).abs().max()) <= EQUIVARIANCE_ATOL, name


def test_global_frames_ignore_atom_order_translation_and_wrapping(jarvis_sample):
    gen = np.random.default_rng(2)
    part = jarvis_sample[::7]
    ref = all_frames(batch_of(part))
    moved = []
    for c in part:
        c = permuted(c, gen.permutation(c.num_atoms))
        c = translated(c, gen.uniform(-2, 2, 3))
        # re-wrap each atom by a different whole lattice vector
        moved.append(translated(c, gen.integers(-3, 4, size=(c.num_atoms, 3))))
    other = all_frames(batch_of(moved))
    for name in ["qr", "polar", "lattice_pca", "lattice_vector", "positions_pca"]:
        assert float((other[name] - ref[name]).abs().max()) <= EQUIVARIANCE_ATOL, name


def test_identity_global_frame_is_not_equivariant(jarvis_sample):
    lattice = batch_of(jarvis_sample[:5]).lattice
    q = torch.tensor(random_rotation(np.random.default_rng(3)))
    assert torch.equal(identity_frame(lattice @ q.T), identity_frame(lattice))  # it ignores Q
    assert float((identity_frame(lattice) @ q.T - identity_frame(lattice)).abs().max()) > 0.1


def test_invariant_local_frames_are_unchanged_by_rotation(jarvis_sample):
    """Quaternion and GS-SPFrame local frames are functions of invariant inputs; built from
    per-atom distance statistics they are identical for the rotated crystal."""
    gen = np.random.default_rng(4)

    def invariant_inputs(b):
        d = b.edge_vec.norm(dim=-1)
        feats = torch.stack([torch.exp(-d), torch.exp(-d / 2), 1 / d, torch.cos(d)], dim=1)
        agg = torch.zeros(len(b.batch), 4, dtype=d.dtype).index_add_(0, b.edge_index[0], feats)
        return agg

    for part in chunks(jarvis_sample[:300], 100):
        a = invariant_inputs(batch_of(part))
        r = invariant_inputs(batch_of([rotated(c, random_rotation(gen)) for c in part]))
        for f in (lambda x: quaternion_to_rotation(x), lambda x: gram_schmidt(x[:, :3], x[:, 1:])):
            assert float((f(a) - f(r)).abs().max()) < 1e-12


def test_positions_pca_handles_half_cell_offsets_exactly(nacl):
    """Atoms at fractional offset exactly 1/2 have two nearest images; the frame must not depend
    on which one rounding picks (wrapped at 0.5 or -0.5)."""
    from dataclasses import replace

    ortho = replace(nacl, lattice=np.diag([5.0, 6.0, 7.0]))
    b = batch_of([ortho])
    f1 = positions_pca_frame(b.frac_coords, b.lattice, b.batch)
    shifted = replace(ortho, frac_coords=ortho.frac_coords - 1e-13)
    b2 = batch_of([shifted])
    f2 = positions_pca_frame(b2.frac_coords, b2.lattice, b2.batch)
    assert float((f1 - f2).abs().max()) < 1e-10


def test_frames_are_deterministic(symmetric_crystals):
    b = batch_of(symmetric_crystals)
    first, second = all_frames(b), all_frames(b)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_qr_frame_matches_its_definition():
    lattice = torch.tensor([[[3.0, 0.5, 0.2], [0.1, 4.0, 0.3], [0.4, 0.2, 5.0]]], dtype=torch.float64)
    f = qr_frame(lattice)[0]
    a, b = lattice[0, 0], lattice[0, 1]
    assert torch.allclose(f[0], a / a.norm())
    assert float(f[1] @ b) > 0 and abs(float(f[1] @ a)) < 1e-12
    assert float(f[2] @ lattice[0, 2]) > 0
    left = lattice.clone()
    left[0, 2] *= -1  # left-handed lattice: first axis negated so det = +1
    fl = qr_frame(left)[0]
    assert torch.allclose(fl[0], -a / a.norm()) and abs(float(torch.linalg.det(fl)) - 1) < 1e-12


@pytest.mark.parametrize("bad", [torch.eye(3).mul(2.0), torch.diag(torch.tensor([1.0, 1.0, -1.0])),
                                 torch.full((3, 3), float("nan"))])
def test_a_frame_that_is_no_rotation_fails_with_its_name(bad):
    """The per-frame loop above used to read `assert_rotations(frames, atol=1e-12), name`: the
    name was never shown. The helper itself must fail (not scale, reflection, NaN) and name it."""
    with pytest.raises(AssertionError, match="^some_frame: "):
        assert_rotations(bad[None].double(), atol=1e-12, name="some_frame")
