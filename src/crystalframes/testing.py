"""Helpers for checking symmetry properties, reused by the project's own tests."""

from __future__ import annotations

import numpy as np


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly distributed proper rotation matrix (det = +1), float64 (Haar measure via QR)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def rotated(crystal, rotation: np.ndarray):
    """The same crystal rigidly rotated: lattice rows L -> L Q^T, fractional coordinates unchanged."""
    from dataclasses import replace

    return replace(crystal, lattice=crystal.lattice @ np.asarray(rotation).T)
