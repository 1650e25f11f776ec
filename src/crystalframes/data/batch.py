"""Batching graphs into one disjoint graph of plain tensors (the only thing models consume)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np
import torch

from crystalframes.data.graph import CrystalGraph


@dataclass
class GraphBatch:
    """B crystals as one disjoint graph. Node tensors are concatenated; ``edge_index`` is offset
    by each crystal's first node; ``batch[n]`` is the crystal of node n."""

    atomic_numbers: torch.Tensor  # (N,) long
    pos: torch.Tensor  # (N, 3)
    frac_coords: torch.Tensor  # (N, 3)
    lattice: torch.Tensor  # (B, 3, 3)
    batch: torch.Tensor  # (N,) long
    num_atoms: torch.Tensor  # (B,) long
    edge_index: torch.Tensor  # (2, E) long, [centre, neighbour]
    edge_shift: torch.Tensor  # (E, 3) long
    edge_vec: torch.Tensor  # (E, 3)
    edge_is_lattice: torch.Tensor  # (E,) bool
    targets: torch.Tensor  # (B, T), nan where missing; (B, 3, ..., 3) for one tensor target
    target_names: tuple[str, ...]
    ids: tuple[str, ...]

    @property
    def num_graphs(self) -> int:
        return int(self.num_atoms.shape[0])

    @property
    def edge_batch(self) -> torch.Tensor:
        return self.batch[self.edge_index[0]]

    def mean_over_atoms(self, x: torch.Tensor) -> torch.Tensor:
        """Per-structure mean (B, C) of per-atom values ``x`` (N, C)."""
        total = x.new_zeros(self.num_graphs, x.shape[1]).index_add_(0, self.batch, x)
        return total / self.num_atoms.to(x.dtype).unsqueeze(-1)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "GraphBatch":
        """Move to ``device``; cast floating tensors to ``dtype`` (integer tensors keep theirs)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.to(device=device, dtype=dtype if (dtype is not None and v.is_floating_point()) else None)
            out[f.name] = v
        return GraphBatch(**out)


def collate(
    graphs: Sequence[CrystalGraph], target_names: Sequence[str] = (), dtype: torch.dtype = torch.float32
) -> GraphBatch:
    """Concatenate graphs into a :class:`GraphBatch` (geometry cast to ``dtype``)."""
    if len(graphs) == 0:
        raise ValueError("cannot collate an empty list of graphs")
    num_atoms = np.array([g.num_nodes for g in graphs], dtype=np.int64)
    node_offset = np.concatenate([[0], np.cumsum(num_atoms)[:-1]])
    edge_index = np.concatenate([g.edge_index + off for g, off in zip(graphs, node_offset)], axis=1)
    targets = _tensor_targets(graphs, target_names)
    if targets is None:
        targets = np.array(
            [[float(g.targets.get(t, np.nan)) for t in target_names] for g in graphs], dtype=np.float64
        ).reshape(len(graphs), len(target_names))

    def cat(name):
        return np.concatenate([getattr(g, name) for g in graphs], axis=0)

    return GraphBatch(
        atomic_numbers=torch.from_numpy(cat("atomic_numbers")),
        pos=torch.from_numpy(cat("pos")).to(dtype),
        frac_coords=torch.from_numpy(cat("frac_coords")).to(dtype),
        lattice=torch.from_numpy(np.stack([g.lattice for g in graphs])).to(dtype),
        batch=torch.from_numpy(np.repeat(np.arange(len(graphs)), num_atoms)),
        num_atoms=torch.from_numpy(num_atoms),
        edge_index=torch.from_numpy(edge_index),
        edge_shift=torch.from_numpy(cat("edge_shift")),
        edge_vec=torch.from_numpy(cat("edge_vec")).to(dtype),
        edge_is_lattice=torch.from_numpy(cat("edge_is_lattice")),
        targets=torch.from_numpy(targets).to(dtype),
        target_names=tuple(target_names),
        ids=tuple(g.id for g in graphs),
    )


def _tensor_targets(graphs: Sequence[CrystalGraph], target_names: Sequence[str]) -> np.ndarray | None:
    """(B, 3, ..., 3) for one tensor target (full Cartesian tensors in the graphs' targets, as
    :func:`crystalframes.train.data.prepare_data` puts them), NaN where a graph has none; None
    when the targets are scalars."""
    if len(target_names) != 1:
        return None
    values = [g.targets.get(target_names[0]) for g in graphs]
    shapes = {v.shape for v in values if isinstance(v, np.ndarray)}
    if not shapes:
        return None
    if len(shapes) > 1:
        raise ValueError(f"tensor target '{target_names[0]}' with several shapes in one batch: {sorted(shapes)}")
    shape = shapes.pop()
    return np.stack([np.asarray(v, dtype=np.float64) if isinstance(v, np.ndarray) else np.full(shape, np.nan) for v in values])
