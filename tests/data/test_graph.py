import itertools
from dataclasses import replace

import numpy as np
import pytest

from crystalframes.data.graph import GraphSettings, build_graph
from crystalframes.io import Crystal
from crystalframes.testing import random_rotation, rotated


def edge_keys(g):
    return sorted(zip(g.edge_index[0].tolist(), g.edge_index[1].tolist(), map(tuple, g.edge_shift.tolist())))


def brute_force_knn(crystal, k, tol):
    """Reference k-NN by enumerating a wide box of images (O(N^2 images), small cells only)."""
    pos = np.mod(crystal.frac_coords, 1.0) @ crystal.lattice
    shifts = np.array(list(itertools.product(range(-4, 5), repeat=3)))
    kept = set()
    for i in range(len(pos)):
        cands = []
        for j in range(len(pos)):
            vec = pos[j] + shifts @ crystal.lattice - pos[i]
            for s, d in zip(shifts, np.linalg.norm(vec, axis=1)):
                if not (i == j and not s.any()):
                    cands.append((d, j, tuple(s)))
        cands.sort()
        d_k = cands[k - 1][0]
        kept |= {(i, j, s) for d, j, s in cands if d <= d_k + tol}
    sym = kept | {(j, i, tuple(-np.array(s))) for i, j, s in kept}
    return sorted(sym)


def test_nacl_reference_counts(nacl):
    """Rock salt's neighbour shells: 6 at 2.82 + 12 at 3.988 (+ 8 at 4.884 for k=25) + 6 lattice edges."""
    g12 = build_graph(nacl, GraphSettings(k=12, lattice_edges=True))
    assert g12.num_edges == 192 and set(g12.in_degree.tolist()) == {24}
    g25 = build_graph(nacl, GraphSettings(k=25, lattice_edges=True))
    assert g25.num_edges == 256 and set(g25.in_degree.tolist()) == {32}
    shells, counts = np.unique(np.round(g25.distances, 3), return_counts=True)
    assert shells.tolist() == [2.82, 3.988, 4.884, 5.64]
    assert counts.tolist() == [48, 96, 64, 48]
    assert int(g25.edge_is_lattice.sum()) == 48
    assert build_graph(nacl, GraphSettings(k=12)).num_edges == 144


def test_edges_are_symmetric_and_vectors_consistent(nacl):
    g = build_graph(replace(nacl, frac_coords=nacl.frac_coords + 0.013), GraphSettings(k=7))
    keys = set(edge_keys(g))
    assert all((j, i, tuple(-np.array(s))) in keys for i, j, s in keys)
    expected = g.pos[g.edge_index[1]] + g.edge_shift @ g.lattice - g.pos[g.edge_index[0]]
    assert np.allclose(g.edge_vec, expected, atol=1e-12)


@pytest.mark.parametrize("k", [1, 4, 12, 25])
def test_matches_brute_force_on_real_crystals(jarvis_sample, k):
    small = [c for c in jarvis_sample if c.num_atoms <= 4][:15]
    assert small
    for c in small:
        assert edge_keys(build_graph(c, GraphSettings(k=k))) == brute_force_knn(c, k, 1e-4), c.id


def test_every_atom_has_at_least_k_neighbours(mp_sample):
    for c in mp_sample[:300]:
        g = build_graph(c, GraphSettings(k=25))
        assert g.in_degree.min() >= 25, c.id


def test_edge_set_unchanged_by_rotation_on_whole_jarvis_sample(jarvis_sample):
    """Issue 2 'must show': the same sorted distance multiset (and the same edges) after a random
    rotation, for every structure of the shared JARVIS sample."""
    rng = np.random.default_rng(2)
    settings = GraphSettings(k=25, lattice_edges=True)
    for c in jarvis_sample:
        g = build_graph(c, settings)
        gr = build_graph(rotated(c, random_rotation(rng)), settings)
        assert g.num_edges == gr.num_edges, c.id
        assert edge_keys(g) == edge_keys(gr), c.id
        assert np.allclose(np.sort(g.distances), np.sort(gr.distances), rtol=0, atol=1e-9), c.id


def test_translation_and_permutation_keep_the_distance_multiset(jarvis_sample):
    rng = np.random.default_rng(3)
    for c in jarvis_sample[::10]:
        d = np.sort(build_graph(c).distances)
        moved = replace(c, frac_coords=c.frac_coords + rng.uniform(-3, 3, size=3))
        perm = rng.permutation(c.num_atoms)
        permuted = replace(c, frac_coords=c.frac_coords[perm], atomic_numbers=c.atomic_numbers[perm])
        for other in (moved, permuted):
            g = build_graph(other)
            assert g.num_edges == len(d), c.id
            assert np.allclose(np.sort(g.distances), d, atol=1e-9), c.id


def test_supercell_repeats_every_neighbourhood(jarvis_sample):
    for c in [c for c in jarvis_sample if c.num_atoms <= 6][:20]:
        g = build_graph(c)
        sc_frac = np.concatenate([(c.frac_coords + [t, 0, 0]) / [2, 1, 1] for t in (0, 1)])
        sc = Crystal(c.id, c.lattice * np.array([[2], [1], [1]]), np.tile(c.atomic_numbers, 2), sc_frac)
        gs = build_graph(sc)
        assert gs.num_edges == 2 * g.num_edges, c.id
        assert np.allclose(np.sort(gs.distances), np.sort(np.tile(g.distances, 2)), atol=1e-9), c.id


def test_ties_within_tolerance_are_kept_together():
    """A square lattice of one atom: the 4 in-plane neighbours at 3.0 A are one shell; stretching
    one axis by less than the tolerance must not split the shell, by more must."""
    base = Crystal("sq", np.diag([3.0, 3.0, 10.0]), [6], [[0, 0, 0]])
    assert sorted(build_graph(base, GraphSettings(k=1)).distances.round(6)) == [3.0] * 4
    inside = replace(base, lattice=np.diag([3.0, 3.0 + 5e-5, 10.0]))
    assert len(build_graph(inside, GraphSettings(k=1)).distances) == 4
    outside = replace(base, lattice=np.diag([3.0, 3.0 + 5e-3, 10.0]))
    assert len(build_graph(outside, GraphSettings(k=1)).distances) == 2


def test_no_neighbour_list_for_crystalformer_input(nacl):
    g = build_graph(nacl, GraphSettings(k=None))
    assert g.num_edges == 0 and g.num_nodes == 8
    assert np.all((g.frac_coords >= 0) & (g.frac_coords < 1))
    assert np.allclose(g.pos, g.frac_coords @ g.lattice)


def test_invalid_settings():
    with pytest.raises(ValueError):
        GraphSettings(k=0)
