"""Mixed precision: where the low precision stops.

Under ``trainer.precision=bf16-mixed`` / ``16-mixed`` Lightning runs the forward inside
``torch.autocast``: matrix products of the dense layers (embeddings, q/k/v/out projections,
feed-forward blocks, eComFormer's message and update layers) run in bfloat16 / float16 with
float32 weights. Geometry is another matter: frames are where exactness lives (an eigen- or
QR decomposition, a tie between two weights, a sign decided by a projection), and CUDA
autocast, unlike CPU autocast, does not keep ``eigh`` / ``qr`` / ``inv`` / ``svd`` in float32.
So every frame (:class:`crystalframes.frames.Frame` ``setup`` and ``forward``), the periodic
entries, the Chebyshev angle moments and Crystalformer's attention weights run in
:func:`full_precision`: autocast off and half-precision inputs cast to float32. What each
precision can resolve (``tie_tolerance``, ``GRAM_SCHMIDT_EPS``) is then the float32 figure.

=============  ======================  ============================  =========================
precision      dense layers            frames, entries, attention    tie_tolerance (frames)
=============  ======================  ============================  =========================
``64``         float64                 float64                       1.5e-8
``32``         float32                 float32                       3.5e-4
``bf16-mixed`` bfloat16 (eps 7.8e-3)   float32                       3.5e-4
``16-mixed``   float16 (eps 9.8e-4)    float32                       3.5e-4
=============  ======================  ============================  =========================
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import torch

HALF = (torch.bfloat16, torch.float16)
AUTOCAST_DEVICES = ("cpu", "cuda")


def upcast(obj):
    """``obj`` with every bfloat16 / float16 tensor cast to float32: tensors, tuples and lists
    of them, dataclasses (copied only when a field changes, so a cache held by an unchanged
    one stays shared) and edge tables. Anything else is returned as it is."""
    if isinstance(obj, torch.Tensor):
        return obj.float() if obj.dtype in HALF else obj
    if isinstance(obj, (tuple, list)):
        out = [upcast(x) for x in obj]
        return obj if all(a is b for a, b in zip(out, obj)) else type(obj)(out)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changed = {}
        for f in dataclasses.fields(obj):
            if f.init:
                value = getattr(obj, f.name)
                new = upcast(value)
                if new is not value:
                    changed[f.name] = new
        return dataclasses.replace(obj, **changed) if changed else obj
    # containers of tensors that are neither (nn.graph.EdgeTable) say how to map them; precision
    # sits below nn and frames, so it names none of their classes
    map_tensors = getattr(obj, "map_tensors", None)
    return map_tensors(upcast) if callable(map_tensors) else obj


def full_precision(fn):
    """Decorator: run ``fn`` with autocast off (CPU and CUDA) and its half-precision tensor
    arguments cast to float32 (see :func:`upcast`). Outside autocast and with float32 / float64
    inputs it changes nothing: the same operations on the same tensors."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        enabled = [d for d in AUTOCAST_DEVICES if torch.is_autocast_enabled(d)]
        if not enabled and not _any_half(args, kwargs):
            return fn(*args, **kwargs)
        args, kwargs = upcast(args), {k: upcast(v) for k, v in kwargs.items()}
        with contextlib.ExitStack() as stack:
            for device in enabled:
                stack.enter_context(torch.autocast(device, enabled=False))
            return fn(*args, **kwargs)

    wrapper.full_precision = True
    return wrapper


def _any_half(args, kwargs) -> bool:
    return any(upcast(a) is not a for a in (*args, *kwargs.values()))

