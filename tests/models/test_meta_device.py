"""Device placement: no tensor is created in a model's forward or backward without ``device=``.

The ``meta`` device cannot run our models (frames and periodic entries call ``.item()``, numpy
and data-dependent shapes), and a CPU-only CI has no second device. The equivalent check: run
every spec's forward and backward on CPU under a TorchFunctionMode that records each call of a
tensor factory (``torch.zeros``, ``arange``, ``tensor``, ``full``, ``eye``, ``linspace``...) made
without an explicit ``device``: on a GPU such a tensor lands on the CPU while the inputs are on
the GPU. Factories that inherit a device (``zeros_like``, ``x.new_zeros``) are not recorded. A
test with a deliberately broken module proves the check catches a missing ``device=``.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from crystalframes.cli.models import model_rows
from crystalframes.data.batch import collate
from crystalframes.data.graph import build_graph
from crystalframes.models import build_model

SPECS = [row["spec"] for row in model_rows("cpu_small")]
FACTORIES = {
    torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.range, torch.tensor, torch.as_tensor,
    torch.eye, torch.linspace, torch.logspace, torch.rand, torch.randn, torch.randint, torch.randperm,
    torch.empty_strided, torch.scalar_tensor, torch.tril_indices, torch.triu_indices,
}
SOURCE = Path(__file__).resolve().parents[2] / "src"


class DevicelessFactories(TorchFunctionMode):
    """Records ``file:line: factory`` of each factory call without ``device=`` (the innermost
    frame of our own source, so a call inside torch is charged to the line that made it)."""

    def __init__(self):
        super().__init__()
        self.calls: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None:
            ours = [f for f in traceback.extract_stack() if f.filename.startswith(str(SOURCE)) or "test_meta_device" in f.filename]
            where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
            self.calls.add(f"{where}: torch.{func.__name__}")
        return func(*args, **kwargs)


def deviceless_calls(model, batch) -> set[str]:
    with DevicelessFactories() as mode:
        model.train()
        model(batch).square().sum().backward()
        model.eval()
        with torch.no_grad():
            model(batch)
    return mode.calls


@pytest.mark.parametrize("spec", SPECS)
def test_no_tensor_without_device(spec, nacl_and_skewed):
    torch.manual_seed(0)
    model = build_model(spec)
    batch = collate([build_graph(c, model.graph_settings) for c in nacl_and_skewed], dtype=torch.float32)
    assert deviceless_calls(model, batch) == set(), spec


class Broken(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch):
        out = self.model(batch)
        return out + torch.zeros(out.shape[0], 1)  # the bug: no device=


def test_a_missing_device_is_caught(nacl_and_skewed):
    model = build_model(SPECS[0])
    batch = collate([build_graph(c, model.graph_settings) for c in nacl_and_skewed], dtype=torch.float32)
    calls = deviceless_calls(Broken(model), batch)
    assert any(c.startswith("test_meta_device.py:") and c.endswith("torch.zeros") for c in calls), calls
