"""Counting what makes a GPU training step launch-bound, on any device: aten operator calls
(each one a kernel launch on a GPU) and host-device synchronisations, by source line.

On a GPU, a synchronisation is any point where the host waits for the device: a tensor value
read on the host (``.item()``, ``bool(t)``, ``int(t)``, ``.tolist()``, ``.numpy()``, a copy to
the CPU) or an operator whose *output size* depends on the data (``nonzero``, ``unique``,
boolean-mask indexing, ``repeat_interleave`` without ``output_size``, ``bincount``,
``masked_select``): the host must learn the size before it can allocate the result. Neither
shows on a CPU profile (nothing waits), so :class:`StepCounter` recognises them by name while
the code runs on the CPU; ``torch.cuda.set_sync_debug_mode("warn")`` is the GPU-side check
(benchmarks/gpu_check.py). The counts are deterministic, unlike timings, so tests can hold them.
"""

from __future__ import annotations

import collections
import os
import traceback
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

_PACKAGE = str(Path(__file__).resolve().parent)

# Python-level reads of tensor values (TorchFunctionMode sees the method call). ``.numpy()`` is
# not among them: it raises on a GPU tensor, so GPU-capable code reaches it through ``.cpu()``.
HOST_READS = {
    torch.Tensor.item: "item",
    torch.Tensor.tolist: "tolist",
    torch.Tensor.__bool__: "bool",
    torch.Tensor.__int__: "int",
    torch.Tensor.__float__: "float",
    torch.Tensor.__index__: "index",
    torch.Tensor.cpu: "cpu",
}
# aten operators whose output size is data-dependent (each one waits for the device on CUDA).
DATA_DEPENDENT = {
    "aten::nonzero", "aten::unique_consecutive", "aten::_unique", "aten::_unique2", "aten::unique_dim",
    "aten::masked_select", "aten::bincount", "aten::repeat_interleave",
}
# Scalar reads at the operator level: counted there only when no Python-level read above
# already covers them (``item`` and ``bool`` both end in _local_scalar_dense).
_SCALAR = "aten::_local_scalar_dense"


def _where(roots: tuple[str, ...] = (_PACKAGE,), stack_limit: int = 40) -> str:
    """``file:line`` (relative to the root's parent) of the innermost frame in one of the source
    ``roots`` (by default the crystalframes package; profiling.py itself excluded), or '?'."""
    for frame in reversed(traceback.extract_stack(limit=stack_limit)):
        if frame.filename.endswith("profiling.py"):
            continue
        for root in roots:
            # root + separator: a sibling folder sharing the prefix (crystalframes_before) is not inside
            if frame.filename.startswith(root + os.sep):
                return f"{Path(frame.filename).relative_to(Path(root).parent)}:{frame.lineno}"
    return "?"


class _Reads(TorchFunctionMode):
    def __init__(self, counter: "StepCounter"):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kind = HOST_READS.get(func)
        if kind is not None and not self.counter._inside_read:
            if kind != "cpu" or (args and isinstance(args[0], torch.Tensor) and args[0].device.type != "meta"):
                self.counter._record(f"{kind}()")
            self.counter._inside_read = True
            try:
                return func(*args, **(kwargs or {}))
            finally:
                self.counter._inside_read = False
        return func(*args, **(kwargs or {}))


class _Ops(TorchDispatchMode):
    def __init__(self, counter: "StepCounter"):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = "aten::" + func.__name__.split(".")[0]
        self.counter.ops += 1
        if name in DATA_DEPENDENT:
            if not (name == "aten::repeat_interleave" and kwargs.get("output_size") is not None):
                self.counter._record(name)
        elif name in ("aten::index", "aten::index_put", "aten::index_put_"):
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices):
                self.counter._record(name + "(bool mask)")
        elif name == _SCALAR and not self.counter._inside_read:
            self.counter._record(name)
        return func(*args, **kwargs)


class StepCounter:
    """Context manager counting aten operators (``ops``) and host synchronisations (``syncs``,
    with ``where``: a Counter of ``file:line kind`` in crystalframes' source) of the code run
    inside it::

        with StepCounter() as count:
            model(batch).sum().backward()
        print(count.ops, count.syncs, count.where.most_common(10))

    ``roots``: the source folders whose lines count (default: this package); another copy of the
    package, imported under another name, is counted by passing its folder (benchmarks/step_profile.py
    counts an older revision with today's counter that way).
    """

    def __init__(self, roots=None):
        self.roots = tuple(str(Path(r).resolve()) for r in roots) if roots is not None else (_PACKAGE,)
        self.ops = 0
        self.syncs = 0
        self.where: collections.Counter = collections.Counter()
        self.outside: collections.Counter = collections.Counter()
        self._inside_read = False
        self._modes = (_Reads(self), _Ops(self))

    def _record(self, kind: str) -> None:
        where = _where(self.roots)
        if where == "?":
            # torch's own host reads of host tensors (Adam's step counters live on the CPU by
            # design) and of code outside this package: listed, not counted
            self.outside[kind] += 1
            return
        self.syncs += 1
        self.where[f"{where} {kind}"] += 1

    def __enter__(self) -> "StepCounter":
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
