"""A per-structure frame used as every atom's frame is one kind, ``global+NAME``, on every
backbone: CrystalFramer's "pca" and "lattice" baselines are ``global+positions_pca`` and
``global+lattice_vector``, eComFormer gets the same six, and the old names keep working (model
files written before the rename load and predict exactly as they did)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from crystalframes.frames import GLOBAL_FRAMES
from crystalframes.io import Crystal
from crystalframes.models import build_model, parse_spec

FILES = Path(__file__).parent / "files"


def nacl_and_zno():
    a = 5.64
    fcc = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    nacl = Crystal("NaCl", np.eye(3) * a, [11] * 4 + [17] * 4, np.concatenate([fcc, fcc + [0.5, 0, 0]]))
    lat = np.array([[3.2, 0, 0], [-1.6, 2.77128, 0], [0, 0, 5.2]])
    zno = Crystal("ZnO", lat, [30, 30, 8, 8], np.array([[1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, 0.5], [1 / 3, 2 / 3, 0.38], [2 / 3, 1 / 3, 0.88]]))
    return [nacl, zno]


@pytest.mark.parametrize("old,new", [("pca", "global+positions_pca"), ("lattice", "global+lattice_vector")])
def test_old_crystalformer_names_are_aliases(old, new):
    assert str(parse_spec(f"crystalformer:{old}@cpu_small")) == f"crystalformer:{new}@cpu_small"
    with pytest.raises(ValueError, match="write that instead"):
        parse_spec(f"crystalformer:{old}+qr@cpu_small")


@pytest.mark.parametrize("name", ["pca", "lattice"])
def test_model_files_written_with_the_old_names_load_and_predict_as_before(name):
    """The files were written by the code before the rename (``crystalformer:pca@cpu_small``),
    with the predictions that code made beside them."""
    from crystalframes.api import load_model

    expected = json.loads((FILES / "crystalformer_old_names.predictions.json").read_text())[name]
    model = load_model(FILES / f"crystalformer_{name}@cpu_small.v0.1.0.pt")
    assert model.spec.startswith("crystalformer:global+")
    got = np.asarray(model.predict(nacl_and_zno())).ravel()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backbone", ["ecomformer", "crystalformer"])
@pytest.mark.parametrize("global_name", sorted(GLOBAL_FRAMES))
def test_every_global_frame_runs_on_every_backbone(backbone, global_name):
    """Finite outputs and rotation invariance in float64. The identity frame is not equivariant:
    Crystalformer's angle encoding then sees the rotation (a negative control that proves the
    test can fail), while on eComFormer a frame shared by every atom cancels (its equivariant layer
    contracts features of neighbouring atoms, so only relative rotations between frames count)."""
    from crystalframes.testing import predict, random_rotation, rotated

    torch.manual_seed(0)
    model = build_model(f"{backbone}:global+{global_name}@cpu_small").double().eval()
    crystals = nacl_and_zno()
    rotation = random_rotation(np.random.default_rng(1))
    y0, y1 = predict(model, crystals), predict(model, [rotated(c, rotation) for c in crystals])
    assert torch.isfinite(y0).all()
    change = (y1 - y0).abs().max().item()
    if global_name == "identity" and backbone == "crystalformer":
        assert change > 1e-6
    else:
        assert change < 1e-9


@pytest.mark.parametrize("frame", ["spframe_quaternion", "spframe_gram_schmidt", "equivariant_gram_schmidt"])
def test_ecomformer_files_with_learned_frames_written_before_the_frame_layer_load_and_predict_as_before(frame):
    """Written by the code before the learned frame heads moved into ``crystalframes.frames``
    (their parameters then lived under ``frames.*`` and ``angle_embeddings.*``), with that code's
    predictions beside them."""
    from crystalframes.api import load_model

    expected = json.loads((FILES / "ecomformer_learned_frames.predictions.json").read_text())[frame]
    model = load_model(FILES / f"ecomformer_{frame}@cpu_small.v0.1.0.pt")
    got = np.asarray(model.predict(nacl_and_zno())).ravel()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
