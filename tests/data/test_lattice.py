import numpy as np
import pytest

from crystalframes.data.lattice import reduced_lattice_vectors
from crystalframes.testing import random_rotation


def test_cubic_gives_the_axes():
    n = reduced_lattice_vectors(np.eye(3) * 4.0)
    assert {tuple(r) for r in np.abs(n)} == {(1, 0, 0), (0, 1, 0), (0, 0, 1)}
    assert round(np.linalg.det(n)) == 1


def test_shortest_vectors_of_a_skewed_basis():
    # A bad basis of the simple cubic lattice: the reduced vectors must still be the cube edges.
    basis = np.array([[1, 0, 0], [3, 1, 0], [-2, 5, 1]]) @ (np.eye(3) * 3.0)
    n = reduced_lattice_vectors(basis)
    v = n @ basis
    assert np.allclose(np.linalg.norm(v, axis=1), 3.0)
    assert np.linalg.det(v) > 0


@pytest.mark.parametrize("seed", range(20))
def test_random_lattices_right_handed_and_rotation_equivariant(seed):
    rng = np.random.default_rng(seed)
    lattice = rng.normal(size=(3, 3)) * 4
    if seed % 2:  # left-handed inputs too
        lattice[0] *= -1
    n = reduced_lattice_vectors(lattice)
    v = n @ lattice
    lengths = np.linalg.norm(v, axis=1)
    assert lengths[0] <= lengths[1] * (1 + 1e-9) and lengths[1] <= lengths[2] * (1 + 1e-9)
    assert abs(round(np.linalg.det(n))) == 1  # a basis of the same lattice
    assert np.linalg.det(v) > 0  # right-handed
    cos = v[0] @ v[1:].T / (lengths[0] * lengths[1:])
    assert np.all(cos >= -1e-6)  # not obtuse to l1 (sign rule)
    # l1 is the shortest nonzero lattice vector: compare with brute force over a wide box
    grid = np.stack(np.meshgrid(*[np.arange(-6, 7)] * 3, indexing="ij"), -1).reshape(-1, 3)
    grid = grid[np.any(grid != 0, axis=1)]
    assert lengths[0] <= np.linalg.norm(grid @ lattice, axis=1).min() * (1 + 1e-12)
    q = random_rotation(rng)
    assert np.array_equal(reduced_lattice_vectors(lattice @ q.T), n)


def test_hexagonal_ties_are_rotation_stable():
    a, c = 3.0, 5.0
    hexa = np.array([[a, 0, 0], [-a / 2, a * np.sqrt(3) / 2, 0], [0, 0, c]])
    n = reduced_lattice_vectors(hexa)
    rng = np.random.default_rng(0)
    for _ in range(50):
        assert np.array_equal(reduced_lattice_vectors(hexa @ random_rotation(rng).T), n)
