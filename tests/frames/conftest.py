"""Batches of real crystals with the inputs every frame needs, in float64."""

import numpy as np
import pytest
import torch

from crystalframes.data.batch import collate
from crystalframes.data.graph import GraphSettings, build_graph
from crystalframes.frames import (
    global_frame,
    max_frame,
    qr_frame,
    static_local_frame,
    weighted_pca_frame,
)

GRAPH = GraphSettings(k=12)
EQUIVARIANT_GLOBAL = ["qr", "polar", "lattice_pca", "lattice_vector", "positions_pca"]


def batch_of(crystals):
    return collate([build_graph(c, GRAPH) for c in crystals], dtype=torch.float64)


def invariant_weights(batch, heads=3):
    """Per-edge weights that depend on distances only (as attention weights on invariant
    features do), with several "heads" of different shapes; ties wherever distances tie."""
    d = batch.edge_vec.norm(dim=-1)
    return torch.stack([torch.exp(-d), torch.exp(-((d - 3.0) ** 2)), torch.ones_like(d)][:heads], dim=1)


def all_frames(batch):
    """Every equivariant frame of the module, evaluated on one batch: name -> tensor."""
    out = {name: global_frame(name, batch.lattice, batch.frac_coords, batch.batch) for name in EQUIVARIANT_GLOBAL}
    tie = qr_frame(batch.lattice)[batch.batch]
    centre, n = batch.edge_index[0], len(batch.batch)
    w = invariant_weights(batch)
    out["max"] = max_frame(batch.edge_vec, w, centre, n, tie)
    out["weighted_pca"] = weighted_pca_frame(batch.edge_vec, w, centre, n, tie)
    out["static"] = static_local_frame(batch.edge_vec, centre, n, tie)
    return out


def chunks(items, size):
    return [items[i : i + size] for i in range(0, len(items), size)]


@pytest.fixture(scope="session")
def symmetric_crystals(jarvis_sample, mp_sample):
    """Real crystals whose symmetry creates ties: cubic and hexagonal ones (by spglib), plus
    some low-symmetry ones."""
    from crystalframes.analysis.symmetry import symmetry_dataset

    picked = {"cubic": [], "hexagonal": [], "other": []}
    for c in jarvis_sample + mp_sample[:800]:
        sg = symmetry_dataset(c, 1e-3).number
        kind = "cubic" if sg >= 195 else "hexagonal" if 168 <= sg <= 194 else "other"
        if len(picked[kind]) < 12:
            picked[kind].append(c)
    assert len(picked["cubic"]) >= 5 and len(picked["hexagonal"]) >= 5
    return picked["cubic"] + picked["hexagonal"] + picked["other"]


def assert_rotations(frames: torch.Tensor, atol=1e-12, name: str = "frames"):
    """Every matrix in ``frames`` is a finite proper rotation to ``atol``; ``name`` (the frame's)
    leads every failure message."""
    eye = torch.eye(3, dtype=frames.dtype)
    assert torch.isfinite(frames).all(), f"{name}: non-finite entries"
    orth = float((frames @ frames.transpose(-1, -2) - eye).abs().max())
    assert orth < atol, f"{name}: F F^T - I up to {orth:.3g} (atol {atol:.0e})"
    det = float((torch.linalg.det(frames) - 1).abs().max())
    assert det < atol, f"{name}: det F - 1 up to {det:.3g} (atol {atol:.0e})"


def rng():
    return np.random.default_rng(1234)
