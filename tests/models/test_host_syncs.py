"""Host synchronisations of a training step stay few and do not grow with the work's chunking.

Counted on CPU by :class:`crystalframes.profiling.StepCounter` (by name: ``.item()``, ``bool()``,
``.cpu()``, ``nonzero``, ``unique``...; each one stalls a GPU). Crystalformer processes a layer's
entries in buckets and enumerates its images in chunks, both sized by ``memory_budget``: a
synchronisation inside the bucket loop would multiply with the number of buckets. What remains
by design: per layer, one read of the per-centre entry counts (which plans the buckets) and,
with per-head frames, one of the frame groups (with learned frames, one of the pairs that have
images); the image enumeration reads its chunk plan and
each chunk's kept candidates (few chunks at a GPU's budget).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from crystalframes.data.batch import collate
from crystalframes.data.graph import build_graph
from crystalframes.models import build_model
from crystalframes.nn import periodic_entries as pe_module
from crystalframes.profiling import StepCounter
from crystalframes.testing import random_crystals

_SOURCE, _FIRST = inspect.getsourcelines(pe_module.periodic_entries)
ENUMERATION_LINES = range(_FIRST, _FIRST + len(_SOURCE))


def step_syncs(spec: str, budget: int | None = None) -> StepCounter:
    torch.manual_seed(0)
    model = (build_model(spec, memory_budget=budget) if budget else build_model(spec)).float().train()
    batch = collate([build_graph(c, model.graph_settings) for c in random_crystals(8, seed=1)], dtype=torch.float32)
    model(batch).sum().backward()  # first step: running statistics start
    with StepCounter() as counter:
        model(batch).sum().backward()
    return counter


def outside_enumeration(counter: StepCounter) -> dict[str, int]:
    out = {}
    for key, n in counter.where.items():
        path, line = key.split(" ")[0].rsplit(":", 1)
        if not (path.endswith("nn/periodic_entries.py") and int(line) in ENUMERATION_LINES):
            out[key] = n
    return out


@pytest.mark.parametrize("frame", ["none", "max", "spframe_gram_schmidt"])
def test_crystalformer_syncs_do_not_grow_with_buckets(frame):
    spec = f"crystalformer:{frame}@cpu_small"
    layers = build_model(spec).config.num_layers
    few = step_syncs(spec, 2**21)  # a bucket or two per layer
    many = step_syncs(spec, 2**14)  # about ten buckets per layer
    assert sum(outside_enumeration(few).values()) == sum(outside_enumeration(many).values()), (few.where, many.where)
    # per layer: the entry counts; for per-head frames the frame groups, for learned frames the
    # atom pairs that have images (their message graph)
    per_layer = 1 if frame == "none" else 2
    assert sum(outside_enumeration(many).values()) <= per_layer * layers, many.where
    assert not [k for k in many.where if "/frames/" in k or "chebyshev" in k], many.where


def test_ecomformer_step_syncs_are_the_graph_bookkeeping():
    """eComFormer's syncs are its graph bookkeeping at the start of the pass (distinct distances
    and edge groups, the padded neighbour width): none per layer, none in the frames."""
    counter = step_syncs("ecomformer:max@cpu_small")
    assert counter.syncs <= 6 and all("nn/graph.py" in k for k in counter.where), counter.where
