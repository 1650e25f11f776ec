"""Frames on the backbone their paper did not use: CrystalFramer's static local frame and the
per-structure global frames on eComFormer. Float64, real crystals from ../shared/data including
cubic and hexagonal ones; tolerance 1e-9 (DEFAULT_TOLERANCES["float64"])."""

from __future__ import annotations

import pytest
import torch

from crystalframes.models import build_model
from crystalframes.testing import DEFAULT_TOLERANCES, invariance_errors

TOL64 = DEFAULT_TOLERANCES["float64"]


@pytest.fixture(scope="module")
def crystals(mp_sample, jarvis_sample):
    from crystalframes.analysis.symmetry import symmetry_dataset

    picked, want = [], {"cubic": 3, "hexagonal": 3, "other": 3}
    for c in jarvis_sample + mp_sample:
        if not 2 <= c.num_atoms <= 8:
            continue
        number = symmetry_dataset(c, 1e-3).number
        kind = "cubic" if number >= 195 else "hexagonal" if 168 <= number <= 194 else "other"
        if want[kind]:
            want[kind] -= 1
            picked.append(c)
    assert not any(want.values())
    return picked


def model_of(spec):
    torch.manual_seed(0)
    return build_model(spec).double().eval()


def test_ecomformer_with_the_static_local_frame_is_exactly_invariant(crystals):
    errors = invariance_errors(model_of("ecomformer:static@cpu_small"), crystals, trials=2)
    for key in ("rotation", "translation", "permutation", "supercell", "batch"):
        assert errors[key] <= TOL64, (key, errors)


@pytest.mark.parametrize("name", ["qr", "polar", "lattice_pca", "lattice_vector", "positions_pca"])
def test_ecomformer_with_a_global_frame_for_every_atom_is_exactly_invariant(crystals, name):
    errors = invariance_errors(model_of(f"ecomformer:global+{name}@cpu_small"), crystals, trials=2)
    for key in ("rotation", "translation", "permutation", "batch"):
        assert errors[key] <= TOL64, (name, key, errors)


def test_static_frame_gets_gradients_everywhere(crystals):
    """Every parameter of eComFormer with the static frame gets a finite, non-zero gradient."""
    from crystalframes.data.batch import collate
    from crystalframes.data.graph import build_graph

    model = model_of("ecomformer:static@cpu_small").train()
    batch = collate([build_graph(c, model.graph_settings) for c in crystals], dtype=torch.float64)
    model(batch).square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
