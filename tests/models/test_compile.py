"""torch.compile (``trainer.compile: true``): every spec of ``crystalframes models`` compiles
and its compiled output equals the eager one within 1e-5 (float32).

Backend: ``aot_eager`` by default. It runs what breaks a model under compile (dynamo's tracing
and guards, where eComFormer crashed on e3nn ``Irreps``, and AOT autograd's functionalisation
of forward and backward) and takes ~5-15 s per spec; ``inductor`` adds code generation that
needs a C compiler (present here: cc 12.2) but took 100-110 s per spec on this 2-core machine,
so it runs for one spec per backbone under the ``slow`` marker, beside the full grid.
"""

from __future__ import annotations

import pytest
import torch

from crystalframes.cli.models import model_rows
from crystalframes.data.batch import collate
from crystalframes.data.graph import build_graph
from crystalframes.models import build_model

ALL_SPECS = [row["spec"] for row in model_rows()]
# By default one spec per backbone, the one with the most frame machinery it takes: `max`, or
# the learned SPFrame quaternion frame on a backbone without attention
_BY_BACKBONE = {}
for _spec in ALL_SPECS:
    _frame = _spec.split(":")[1].split("@")[0]
    if _frame in ("max", "spframe_quaternion+qr") and _BY_BACKBONE.get(_spec.split(":")[0], "").find(":max@") < 0:
        _BY_BACKBONE[_spec.split(":")[0]] = _spec
DEFAULT_SPECS = sorted(_BY_BACKBONE.values())
TOL = 1e-5


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def compiled_equals_eager(spec: str, crystals, backend: str) -> None:
    torch.manual_seed(0)
    model = build_model(spec).float()
    batch = collate([build_graph(c, model.graph_settings) for c in crystals], dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        eager = model(batch)
    model.compile(backend=backend)  # in place, as trainer.compile does
    with torch.no_grad():
        compiled = model(batch)
    assert torch.isfinite(compiled).all(), spec
    assert (compiled - eager).abs().max().item() <= TOL, (spec, (compiled - eager).abs().max().item())
    # a training step compiles too (train mode: BatchNorm statistics, backward through AOT autograd)
    model.train()
    model(batch).square().sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is None or torch.isfinite(g).all() for g in grads), spec
    assert any(g is not None and g.abs().sum() > 0 for g in grads), spec


def test_default_specs_cover_every_backbone():
    from crystalframes.models import BACKBONES

    assert len(DEFAULT_SPECS) == len(BACKBONES) and {s.split(":")[0] for s in DEFAULT_SPECS} == set(BACKBONES)


@pytest.mark.parametrize("spec", DEFAULT_SPECS)
def test_compiled_equals_eager(spec, nacl_and_skewed, one_thread):
    compiled_equals_eager(spec, nacl_and_skewed, "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("spec", [s for s in ALL_SPECS if s not in DEFAULT_SPECS])
def test_compiled_equals_eager_every_spec(spec, nacl_and_skewed, one_thread):
    compiled_equals_eager(spec, nacl_and_skewed, "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("spec", DEFAULT_SPECS)
def test_compiled_equals_eager_inductor(spec, nacl_and_skewed, one_thread):
    compiled_equals_eager(spec, nacl_and_skewed, "inductor")


def test_trainer_compile_setting():
    from crystalframes.train.config import validate_config

    cfg = validate_config({"model": {"spec": "ecomformer:none@cpu_small"}, "trainer": {"compile": True}}, "test")
    assert cfg.trainer.compile is True
    assert validate_config({"model": {"spec": "ecomformer:none@cpu_small"}}, "test").trainer.compile is False
