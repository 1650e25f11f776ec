"""The lattice-vector frame's integer coordinates, batched on the lattices' device
(batched_reduced_lattice_vectors), are those of the NumPy reference reduced_lattice_vectors,
bit for bit, in float64 and float32, and need no host read."""

import numpy as np
import pytest
import torch

from crystalframes.data.lattice import batched_reduced_lattice_vectors, reduced_lattice_vectors

rng = np.random.default_rng(25)


def _rotation() -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _unimodular(k: int) -> np.ndarray:
    while True:
        u = rng.integers(-k, k + 1, (3, 3))
        if abs(round(np.linalg.det(u))) == 1:
            return u


def _hexagonal(a: float, c: float) -> np.ndarray:
    return np.array([[a, 0, 0], [-a / 2, a * np.sqrt(3) / 2, 0], [0, 0, c]])


def _rhombohedral(a: float, degrees: float) -> np.ndarray:
    c = np.cos(np.deg2rad(degrees))
    s = np.sin(np.deg2rad(degrees))
    third = [a * c, a * (c - c * c) / s, 0.0]
    third[2] = np.sqrt(a * a - third[0] ** 2 - third[1] ** 2)
    return np.array([[a, 0, 0], [a * c, a * s, 0], third])


SYMMETRIC = {
    "cubic": np.eye(3) * 4.0,
    "fcc": 2.0 * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]]),
    "bcc": 1.5 * np.array([[-1, 1, 1], [1, -1, 1], [1, 1, -1]]),
    "hexagonal": _hexagonal(3.0, 5.0),
    "hexagonal c = a": _hexagonal(3.0, 3.0),
    "tetragonal": np.diag([3.0, 3.0, 7.0]),
    "orthorhombic, c = 2a": np.diag([2.0, 3.0, 4.0]),
    "needle": np.diag([1.0, 1.2, 20.0]),
    "rhombohedral": _rhombohedral(3.0, 70.0),
}


def _numpy_box_size(lattice: np.ndarray) -> float:
    """How many integer vectors the NumPy reference enumerates (it grows with the skew)."""
    radius = np.linalg.norm(lattice, axis=1).max()
    bounds = np.ceil(radius * np.linalg.norm(np.linalg.inv(lattice).T, axis=1))
    return float(np.prod(2 * bounds + 1))


def _lattices() -> list[np.ndarray]:
    """Symmetric lattices as given, rotated, and in skewed (non-reduced) bases U L (U unimodular,
    entries up to 3); random cells, some skewed the same way."""
    out = []
    for basis in SYMMETRIC.values():
        for k in (0, 1, 2, 3):
            for turn in range(4):
                lattice = (basis if k == 0 else _unimodular(k) @ basis) @ (_rotation() if turn % 2 else np.eye(3))
                if _numpy_box_size(lattice) < 2e5:  # the reference's own cost, not the batched one's
                    out.append(lattice)
    for k in range(150):
        cell = np.diag(rng.uniform(2, 8, 3)) + rng.uniform(-1.5, 1.5, (3, 3))
        out.append(cell if k % 3 == 0 else _unimodular(1 + k % 3) @ cell)
    return [l for l in out if _numpy_box_size(l) < 2e5]


def _assert_equal(lattices: np.ndarray, dtype: torch.dtype) -> None:
    x = torch.tensor(np.asarray(lattices), dtype=dtype)
    expected = np.stack([reduced_lattice_vectors(l) for l in x.double().numpy()])
    got = batched_reduced_lattice_vectors(x)
    assert got.dtype == torch.float64
    differ = np.flatnonzero((got.numpy() != expected).any(axis=(1, 2)))
    assert len(differ) == 0, f"{len(differ)} of {len(x)} differ, e.g. {x[differ[0]].tolist()}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_equal_to_numpy_on_symmetric_skewed_and_random_lattices(dtype):
    lattices = _lattices()
    assert len(lattices) > 250
    _assert_equal(np.stack(lattices), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_equal_to_numpy_on_the_mp_and_jarvis_samples(mp_sample, jarvis_sample, dtype):
    lattices = np.stack([np.asarray(c.lattice, dtype=np.float64) for c in [*mp_sample, *jarvis_sample]])
    _assert_equal(lattices, dtype)


def test_frame_without_host_reads_and_equivariant():
    from crystalframes.frames.global_frames import lattice_vector_frame
    from crystalframes.profiling import StepCounter

    lattices = torch.tensor(np.stack(_lattices()[:64]))
    with StepCounter() as count:
        frames = lattice_vector_frame(lattices)
    assert count.syncs == 0, count.where
    assert torch.allclose(frames @ frames.transpose(-1, -2), torch.eye(3, dtype=frames.dtype).expand_as(frames), atol=1e-12)
    q = torch.tensor(_rotation())
    assert torch.allclose(lattice_vector_frame(lattices @ q.T), frames @ q.T, atol=1e-10)
    assert lattice_vector_frame(lattices[:0]).shape == (0, 3, 3)
