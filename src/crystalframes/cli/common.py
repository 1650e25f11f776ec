"""Helpers the commands share (each command module imports from here, never from another
command's module). Option callbacks live in :mod:`crystalframes.cli.options`."""

from __future__ import annotations

from typing import List

from crystalframes.io.errors import UserError


def require_training_stack() -> None:
    """Training needs the ``train`` extra; say so instead of an ImportError traceback."""
    import importlib.util

    missing = [name for name in ("lightning", "pydantic", "yaml", "matplotlib") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"training needs {', '.join(missing)}: pip install 'crystalframes[train]'")


def collect_structures(inputs: List[str], model=None):
    """Crystals and errors from files, folders and datasets; bad inputs are listed, not fatal.
    With ``model``, structures holding elements it cannot encode are errors too (found here,
    before batching, so they never cost the good structures of their batch)."""
    from crystalframes.io import InputError, iter_structures
    from crystalframes.models.elements import split_supported

    crystals, errors = [], []
    for item in inputs:
        for rec in iter_structures(item):
            (errors if isinstance(rec, InputError) else crystals).append(rec)
    if model is not None:
        crystals, unsupported = split_supported(model, crystals)
        errors.extend(unsupported)
    return crystals, errors


def model_for_checks(model: str, dtype: str):
    """A trained model (file or run folder) or a freshly initialised one from a spec (seeded).

    A name that is no model file is read as a spec; if it is neither, the error says both
    (with the spec's own complaint when the name looks like a spec)."""
    import torch

    from crystalframes.api import load_model, resolve_model_path
    from crystalframes.io import InputError
    from crystalframes.models.specs import SpecError, build_model, parse_spec

    try:
        resolve_model_path(model)
    except InputError as not_a_file:
        try:
            parse_spec(model)
        except SpecError as bad_spec:
            if ":" in model or "@" in model:
                raise bad_spec from None
            raise InputError(model, f"{not_a_file.problem}, and not a model spec: {bad_spec}") from None
        torch.manual_seed(0)
        net = build_model(model)
    else:
        net = load_model(model).model
    return net.to(getattr(torch, dtype)).eval()
