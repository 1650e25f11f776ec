"""Gradients (SPFrame, Hua & Lin, learns frames; CrystalFramer, Ito, Taniai et al., ICLR 2025, does not) and the SPFrame symmetry property."""

import numpy as np
import pytest
import torch

from crystalframes.frames import (
    compose_spframe,
    edges_in_frames,
    gram_schmidt,
    max_frame,
    qr_frame,
    quaternion_to_rotation,
    weighted_pca_frame,
)
from tests.frames.conftest import batch_of

T = torch.float64


def test_quaternion_to_rotation_gradcheck_and_is_a_rotation():
    q = torch.randn(6, 4, dtype=T, requires_grad=True)
    assert torch.autograd.gradcheck(quaternion_to_rotation, (q,))
    r = quaternion_to_rotation(q)
    assert torch.allclose(r @ r.transpose(-1, -2), torch.eye(3, dtype=T).expand(6, 3, 3), atol=1e-12)
    # q and -q are the same rotation; scale does not matter
    assert torch.allclose(quaternion_to_rotation(-3 * q), r, atol=1e-12)


def test_quaternion_matches_axis_angle():
    angle = 0.7
    q = torch.tensor([np.cos(angle / 2), 0, 0, np.sin(angle / 2)], dtype=T)  # about z
    expected = torch.tensor([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]], dtype=T)
    assert torch.allclose(quaternion_to_rotation(q), expected, atol=1e-12)


def test_gram_schmidt_gradcheck():
    v1 = torch.randn(5, 3, dtype=T, requires_grad=True)
    v2 = torch.randn(5, 3, dtype=T, requires_grad=True)
    assert torch.autograd.gradcheck(gram_schmidt, (v1, v2))


def test_dynamic_frames_stop_gradients(jarvis_sample):
    b = batch_of(jarvis_sample[:3])
    vec = b.edge_vec.clone().requires_grad_(True)
    w = torch.exp(-vec.norm(dim=-1))
    tie = qr_frame(b.lattice)[b.batch]
    for fn in (max_frame, weighted_pca_frame):
        f = fn(vec, w, b.edge_index[0], len(b.batch), tie)
        assert not f.requires_grad


def test_spframe_edge_transform_is_eq5():
    gen = torch.Generator().manual_seed(0)
    local = quaternion_to_rotation(torch.randn(4, 4, dtype=T, generator=gen))
    glob = qr_frame(torch.randn(2, 3, 3, dtype=T, generator=gen))
    batch = torch.tensor([0, 0, 1, 1])
    frames = compose_spframe(local, glob, batch)
    vec = torch.randn(7, 3, dtype=T, generator=gen)
    centre = torch.tensor([0, 1, 2, 3, 3, 0, 2])
    out = edges_in_frames(vec, frames, centre)
    for e in range(7):
        i = int(centre[e])
        expected = vec[e] @ glob[batch[i]].T @ local[i].T
        assert torch.allclose(out[e], expected, atol=1e-12)


# --- Hua & Lin, SPFrame, Fig. 2-3: SPFrame keeps symmetry-equivalent atoms apart ---------------------


def symmetry_pairs(crystal):
    """(p, q, R_cart) for equivalent atoms p != q related by a proper spglib operation R != I,
    where R_cart = L^T R_frac L^-T maps p's neighbourhood onto q's."""
    from crystalframes.analysis.symmetry import symmetry_dataset

    ds = symmetry_dataset(crystal, 1e-5)
    lat = crystal.lattice
    out = []

    def image_index(rot, trans, p):
        diff = crystal.frac_coords - (rot @ crystal.frac_coords[p] + trans)
        diff -= np.round(diff)
        dist = np.linalg.norm(diff @ lat, axis=1)
        q = int(np.argmin(dist))
        return q if dist[q] < 1e-6 else None

    ops = list(zip(ds.rotations, ds.translations))
    for p in range(crystal.num_atoms):
        # Atoms on a symmetry element (site symmetry > 1) have equivariant vectors pinned to it
        # (collinear or zero), where no equivariant frame is defined: general positions only.
        if sum(image_index(r, t, p) == p for r, t in ops) != 1:
            continue
        for rot, trans in ops:
            # proper rotations only (incl. screw axes): SO(3) frames say nothing about mirrors
            if np.array_equal(rot, np.eye(3)) or round(np.linalg.det(rot)) != 1:
                continue
            q = image_index(rot, trans, p)
            if q is not None and q != p:
                out.append((p, q, lat.T @ rot @ np.linalg.inv(lat.T)))
                break
    return out


def per_atom_inputs(b):
    """Invariant and equivariant per-atom vectors built from each atom's neighbourhood with
    fixed distance functions (stand-ins for the learned phi_k of Eqs. 14 and 16)."""
    d = b.edge_vec.norm(dim=-1, keepdim=True)
    unit = b.edge_vec / d
    phi = torch.cat([torch.exp(-d), torch.exp(-((d - 3) ** 2)), torch.sin(d)], dim=1)  # (E, 3) invariant
    n = len(b.batch)
    inv1 = torch.zeros(n, 3, dtype=T).index_add_(0, b.edge_index[0], phi)
    inv2 = torch.zeros(n, 3, dtype=T).index_add_(0, b.edge_index[0], phi.roll(1, dims=1) ** 2)
    eq1 = torch.zeros(n, 3, dtype=T).index_add_(0, b.edge_index[0], phi[:, :1] * unit)
    eq2 = torch.zeros(n, 3, dtype=T).index_add_(0, b.edge_index[0], phi[:, 1:2] * unit)
    return (inv1, inv2), (eq1, eq2)


def neighbourhood(b, frames, atom):
    m = b.edge_index[0] == atom
    local = edges_in_frames(b.edge_vec[m], frames, b.edge_index[0][m])
    return local[torch.argsort(local[:, 0] * 1e6 + local[:, 1] * 1e3 + local[:, 2])]


@pytest.fixture(scope="module")
def screw_and_rotation_crystals(jarvis_sample):
    """Real crystals idealised by spglib (positions made exactly symmetric, so the relations
    below can be tested to ~1e-8 instead of the ~1e-6 A symmetry of DFT-relaxed files)."""
    import spglib

    from crystalframes.io import Crystal

    found = []
    for c in jarvis_sample:
        if c.num_atoms > 24:
            continue
        lat, frac, z = spglib.standardize_cell((c.lattice, c.frac_coords, c.atomic_numbers), symprec=1e-3)
        ideal = Crystal(c.id, lat, z, frac)
        if ideal.num_atoms <= 24 and symmetry_pairs(ideal):
            found.append(ideal)
        if len(found) == 6:
            break
    assert found
    return found


def test_invariant_local_frames_identical_on_equivalent_atoms(screw_and_rotation_crystals):
    """Same invariant inputs -> the same quaternion/GS invariant local frame for atoms p, q of
    one Wyckoff orbit; the SPFrame-transformed neighbourhoods of p and q then differ by the
    symmetry rotation (kept apart), while equivariant GS frames make them identical
    (information collapsed)."""
    tol, different = 1e-8, 1e-2  # frames, and neighbour positions in Angstrom
    checked = 0
    for c in screw_and_rotation_crystals:
        b = batch_of([c])
        (inv1, inv2), (eq1, eq2) = per_atom_inputs(b)
        f_inv = gram_schmidt(inv1, inv2)
        f_quat = quaternion_to_rotation(torch.cat([inv1, inv2[:, :1]], dim=1))
        sp = compose_spframe(f_inv, qr_frame(b.lattice), b.batch)
        f_eq = gram_schmidt(eq1, eq2)
        for p, q, r_cart in symmetry_pairs(c):
            r = torch.tensor(r_cart, dtype=T)
            assert torch.allclose(f_inv[p], f_inv[q], atol=tol)
            assert torch.allclose(f_quat[p], f_quat[q], atol=tol)
            # equivariant frames differ by the symmetry rotation: F(q) = F(p) R^T ...
            assert torch.allclose(f_eq[q], f_eq[p] @ r.T, atol=tol)
            assert not torch.allclose(f_eq[q], f_eq[p], atol=different)
            # ... so they map both neighbourhoods onto the same local picture (collapse)
            assert torch.allclose(neighbourhood(b, f_eq, p), neighbourhood(b, f_eq, q), atol=tol)
            # SPFrame keeps them distinguishable
            assert not torch.allclose(neighbourhood(b, sp, p), neighbourhood(b, sp, q), atol=different)
            checked += 1
    assert checked >= 3
