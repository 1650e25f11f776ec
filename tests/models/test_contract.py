"""One model contract for every backbone x frame this installation can build (the rows of
``crystalframes models`` at the ``cpu_small`` preset), so a new frame or backbone is tested
without a line of new test code.

Float64, eval mode, real crystals from ../shared/data (cubic, hexagonal and lower symmetry),
tolerance DEFAULT_TOLERANCES["float64"] = 1e-9: rotation, translation, permutation, supercell
and batch invariance, determinism, finite outputs, a finite non-zero gradient for every
parameter, and a model file that loads back to the same predictions. What a frame cannot satisfy by construction is
declared once, beside the backbone's frames (``DECLARED_DEPENDENCES``), and asserted the other
way round here: the dependence must show (a negative control), so a declaration cannot hide a bug.
Basis changes (another unit cell of the same crystal) are not part of this suite yet.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from crystalframes.cli.models import model_rows
from crystalframes.data.batch import collate
from crystalframes.data.graph import build_graph
from crystalframes.models import build_model
from crystalframes.testing import DEFAULT_TOLERANCES, invariance_errors, predict

TOL64 = DEFAULT_TOLERANCES["float64"]
SPECS = [row["spec"] for row in model_rows("cpu_small")]
CHECKS = ("rotation", "translation", "permutation", "supercell", "batch")


def declared(spec: str) -> dict[str, str]:
    backbone, _, rest = spec.partition(":")
    frame = rest.split("@")[0]
    module = importlib.import_module(f"crystalframes.models.{backbone}")
    return module.DECLARED_DEPENDENCES.get(frame, {})


@pytest.fixture(scope="module")
def crystals(by_crystal_system):
    return by_crystal_system(2, 6)


def test_the_suite_covers_the_grid():
    assert len(SPECS) >= 16 and {s.split(":")[0] for s in SPECS} == {"ecomformer", "crystalformer"}


@pytest.mark.parametrize("spec", SPECS)
def test_model_contract(spec, crystals):
    torch.manual_seed(0)
    model = build_model(spec).double().eval()
    errors = invariance_errors(model, crystals, trials=1, supercells=((2, 1, 1),))
    exceptions = declared(spec)
    for check in CHECKS:
        if check in exceptions:  # the negative control: the declared dependence shows
            assert errors[check] > 1e3 * TOL64, (spec, check, exceptions[check], errors)
        else:
            assert errors[check] <= TOL64, (spec, check, errors)
    first, second = predict(model, crystals), predict(model, crystals)
    assert torch.isfinite(first).all() and torch.equal(first, second), spec


@pytest.mark.parametrize("spec", SPECS)
def test_every_parameter_gets_a_finite_gradient(spec, mp_sample):
    """Finite, non-zero gradients for every trainable parameter, frame parameters included, on
    16 ordinary MP crystals. (On small symmetric crystals alone the equivariant Gram-Schmidt
    vectors cancel on every atom and the frames fall back, so the second vector's message gets
    no gradient there: measured, and the reason this test does not use them.)"""
    torch.manual_seed(0)
    model = build_model(spec).double().train()
    batch = collate([build_graph(c, model.graph_settings) for c in mp_sample[:16]], dtype=torch.float64)
    model(batch).square().sum().backward()
    zero = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), (spec, name)
        if p.grad.abs().sum() == 0:
            zero.append(name)
    assert not zero, (spec, zero)


@pytest.mark.parametrize("spec", SPECS)
def test_model_file_round_trip(spec, crystals, tmp_path):
    """Every spec saves to a portable model file and loads back (weights_only) to the same
    predictions, under its canonical name."""
    from crystalframes.api import load_model, save_model_file
    from crystalframes.data.normalise import TargetNormaliser

    torch.manual_seed(0)
    model = build_model(spec).eval()
    path = save_model_file(tmp_path / "model.pt", model, model.spec, {}, TargetNormaliser(-1.0, 2.0), ["y"], ["eV"])
    loaded = load_model(path)
    assert loaded.spec == model.spec == spec
    expected = TargetNormaliser(-1.0, 2.0).inverse(predict(model, crystals))
    got = torch.as_tensor(loaded.predict(crystals)).reshape(expected.shape)
    assert torch.allclose(got.to(expected.dtype), expected, rtol=0, atol=1e-6), spec
