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


# ---------------------------------------------------------------------------------------------
# Model contract checks (reused by every model's tests and by `crystalframes check`).
# A model is any torch.nn.Module with a ``graph_settings`` attribute (GraphSettings) whose
# forward maps a GraphBatch to per-structure outputs of shape (B, T).
# ---------------------------------------------------------------------------------------------

DEFAULT_TOLERANCES = {"float64": 1e-9, "float32": 1e-4}


def predict(model, crystals, dtype=None):
    """Model outputs (B, T) for a list of crystals, in one batch, eval mode, no grad."""
    import torch

    from crystalframes.data.batch import collate
    from crystalframes.data.graph import build_graph

    dtype = dtype or next(model.parameters()).dtype
    device = next(model.parameters()).device
    batch = collate([build_graph(c, model.graph_settings) for c in crystals], dtype=dtype).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(batch).detach().cpu()
    finally:
        model.train(was_training)


def translated(crystal, shift_frac):
    from dataclasses import replace

    return replace(crystal, frac_coords=crystal.frac_coords + np.asarray(shift_frac))


def permuted(crystal, perm):
    from dataclasses import replace

    perm = np.asarray(perm)
    return replace(crystal, frac_coords=crystal.frac_coords[perm], atomic_numbers=crystal.atomic_numbers[perm])


def supercell(crystal, reps=(2, 1, 1)):
    """The same crystal described by a (reps[0] x reps[1] x reps[2]) supercell."""
    from dataclasses import replace

    reps = np.asarray(reps, dtype=int)
    shifts = np.stack(np.meshgrid(*[np.arange(r) for r in reps], indexing="ij"), -1).reshape(-1, 3)
    frac = np.concatenate([(crystal.frac_coords + s) / reps for s in shifts])
    return replace(
        crystal,
        lattice=crystal.lattice * reps[:, None],
        frac_coords=frac,
        atomic_numbers=np.tile(crystal.atomic_numbers, len(shifts)),
    )


def mirrored(crystal):
    """The mirror image (x -> -x): an improper transformation, not a symmetry of SO(3) models."""
    from dataclasses import replace

    return replace(crystal, lattice=crystal.lattice * np.array([-1.0, 1.0, 1.0]))


def invariance_errors(model, crystals, trials: int = 3, seed: int = 0, supercells=((2, 1, 1), (2, 2, 2))) -> dict:
    """Largest absolute change of the model's outputs under each transformation, over
    ``crystals`` and ``trials`` random draws (like e3nn's ``assert_equivariant``: a dict of
    errors; compare with :data:`DEFAULT_TOLERANCES` for the model's dtype).

    Keys: ``rotation``, ``translation``, ``permutation``, ``supercell``, ``batch`` (outputs of
    the whole batch vs one structure at a time), and ``mirror`` (reported, not expected to be
    zero for SO(3)-only models).
    """
    rng = np.random.default_rng(seed)
    ref = predict(model, crystals)
    errors = {"rotation": 0.0, "translation": 0.0, "permutation": 0.0, "supercell": 0.0, "batch": 0.0, "mirror": 0.0}

    def worst(key, others):
        errors[key] = max(errors[key], float((predict(model, others) - ref).abs().max()))

    for _ in range(trials):
        worst("rotation", [rotated(c, random_rotation(rng)) for c in crystals])
        worst("translation", [translated(c, rng.uniform(-1, 1, 3)) for c in crystals])
        worst("permutation", [permuted(c, rng.permutation(c.num_atoms)) for c in crystals])
    for reps in supercells:
        worst("supercell", [supercell(c, reps) for c in crystals])
    worst("mirror", [mirrored(c) for c in crystals])
    single = np.concatenate([predict(model, [c]).numpy() for c in crystals])
    errors["batch"] = float(np.abs(single - ref.numpy()).max())
    return errors
