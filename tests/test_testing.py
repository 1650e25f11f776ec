"""crystalframes.testing: combining per-structure errors never hides a NaN output."""

import math

import numpy as np
import pytest
import torch

from crystalframes.data.graph import GraphSettings
from crystalframes.io import Crystal
from crystalframes.testing import INVARIANCE_KEYS, invariance_errors, worst


class NanUnderRotation(torch.nn.Module):
    """A stub model: 0 for every structure, except NaN for structure ``broken_id`` whenever its
    lattice is not the axis-aligned one it was given (rotations, the shear basis change)."""

    graph_settings = GraphSettings(k=None)
    supported_atomic_numbers = frozenset(range(1, 119))

    def __init__(self, broken_id: str):
        super().__init__()
        self.broken_id = broken_id
        self.offset = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, batch):
        lattice = batch.lattice
        off_diagonal = (lattice - torch.diag_embed(torch.diagonal(lattice, dim1=-2, dim2=-1))).abs().amax(dim=(1, 2))
        broken = torch.tensor([i == self.broken_id for i in batch.ids]) & (off_diagonal > 1e-6)
        out = torch.zeros(batch.num_graphs, 1, dtype=lattice.dtype) + self.offset
        return out.masked_fill(broken.unsqueeze(-1), float("nan"))


def cubic(id_: str, a: float) -> Crystal:
    return Crystal(id_, np.eye(3) * a, [11, 17], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture
def good_then_broken():
    """The NaN comes from the second structure: Python's max kept the first one's 0."""
    return [cubic("good", 4.0), cubic("broken", 5.0)]


@pytest.mark.parametrize("values", [[1e-12, math.nan], [math.nan, 1e-12], [0.0, 1.0, math.nan, 2.0]])
def test_worst_is_nan_wherever_the_nan_comes(values):
    assert math.isnan(worst(values))
    assert math.isnan(worst(iter(values)))  # a generator, as invariance_errors passes


def test_worst_is_the_largest_finite_value():
    assert worst([3e-16, 2e-9, 1e-12]) == 2e-9


def test_invariance_errors_show_a_nan_output_of_a_later_structure(good_then_broken):
    errors = invariance_errors(NanUnderRotation("broken"), good_then_broken, trials=1, supercells=())
    assert set(errors) == set(INVARIANCE_KEYS)
    assert math.isnan(errors["rotation"]), errors
    assert not errors["rotation"] <= 1e-9  # the contract tests' comparison fails
    assert errors["translation"] == 0.0 and errors["permutation"] == 0.0
