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


def read_stdin_once(inputs: List[str]):
    """(the bytes of standard input or None, [its read error], the inputs left to read) for
    ``inputs`` that may name ``-``: a stream is read once, up front, so it can be iterated again;
    a second ``-`` is refused (it would silently be empty), and standard input that cannot be
    read becomes an error of its own, not the end of the command."""
    from crystalframes.io import InputError
    from crystalframes.io.stdin import STDIN, read_stdin

    if STDIN not in inputs:
        return None, [], inputs
    if inputs.count(STDIN) > 1:
        raise UserError(f"'{STDIN}' (standard input) is named {inputs.count(STDIN)} times; name it once")
    try:
        return read_stdin(), [], inputs
    except InputError as exc:
        return b"", [exc], [item for item in inputs if item != STDIN]


def collect_structures(inputs: List[str], model=None):
    """Crystals and errors from files, folders, registered dataset names and ``-`` (standard
    input; :func:`crystalframes.data.sources.iter_input_structures`); bad inputs are listed, not
    fatal. With ``model``, structures holding elements it cannot encode are errors too (found
    here, before batching, so they never cost the good structures of their batch)."""
    from crystalframes.data.sources import iter_input_structures
    from crystalframes.io import InputError
    from crystalframes.models.elements import split_supported

    crystals = []
    stdin, errors, inputs = read_stdin_once(inputs)
    for item in inputs:
        for rec in iter_input_structures(item, stdin):
            (errors if isinstance(rec, InputError) else crystals).append(rec)
    if model is not None:
        crystals, unsupported = split_supported(model, crystals)
        errors.extend(unsupported)
    return crystals, errors


def model_for_checks(model: str, dtype: str):
    """The network behind ``model``: a pretrained name, a model file, a run folder or a spec
    (a spec gives a freshly initialised, seeded network).

    A pretrained model is an ensemble; its first member is checked and one line on stderr says
    so (the members share their architecture, so the first stands for the frames of all). A name
    that is none of the four gets one error listing the four kinds of model it could have been."""
    import torch
    import typer

    from crystalframes.api import Ensemble, load_model, resolve_model_path
    from crystalframes.io import InputError
    from crystalframes.models.specs import SpecError, build_model, parse_spec
    from crystalframes.zoo import pretrained

    shipped = pretrained()
    try:
        if model not in shipped:
            resolve_model_path(model)
    except InputError:
        try:
            parse_spec(model)
        except SpecError as bad_spec:
            if ":" in model or "@" in model:
                raise bad_spec from None
            names = ", ".join(sorted(shipped)) or "none installed"
            raise InputError(model, "not a pretrained model name, a model file, a run folder or a model spec "
                                    f"(pretrained: {names}; specs look like ecomformer:spframe_quaternion)") from None
        torch.manual_seed(0)
        net = build_model(model)
    else:
        loaded = load_model(model)
        if isinstance(loaded, Ensemble):
            first = loaded.members[0]
            typer.echo(f"{model}: an ensemble of {len(loaded.members)} models; checking its first member "
                       f"({first.spec}, {first.path})", err=True)
            loaded = first
        net = loaded.model
    return net.to(getattr(torch, dtype)).eval()
