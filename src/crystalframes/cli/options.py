"""Option checks shared by the commands that run models (predict, eval, check, bench, symmetry).

A bad value is a usage mistake: typer reports ``typer.BadParameter`` raised in a callback like
any other bad option value (one line naming the option, exit code 2), before the command runs.
"""

from __future__ import annotations

import difflib

import typer


def choice_option(*choices: str):
    """A typer callback accepting only ``choices`` (with a did-you-mean for near misses)."""

    def check(value):
        if value is not None and value not in choices:
            close = difflib.get_close_matches(str(value), choices, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}{hint}")
        return value

    return check


def device_option(value: str | None):
    """A ``--device`` check: a device torch can parse and that exists on this machine
    (``cpu``, ``cuda``, ``cuda:1``, ``mps``), so a typo or a missing GPU is one clear line."""
    if value is None:
        return value
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError) as exc:
        raise typer.BadParameter(f"{value!r} is not a device ({str(exc).splitlines()[0]}); use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise typer.BadParameter(f"{value!r}: no CUDA device is available (this torch: {torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise typer.BadParameter(f"{value!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise typer.BadParameter(f"{value!r}: the Apple MPS device is not available here; use --device cpu")
    elif device.type != "cpu":
        raise typer.BadParameter(f"{value!r}: unsupported device type {device.type!r}; use cpu, cuda, cuda:N or mps")
    return value
