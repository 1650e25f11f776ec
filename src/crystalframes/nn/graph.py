"""Message-passing bookkeeping on plain tensors: the batched graph, per-edge tables stored once
per distinct row, edge groups with identical inputs, and linear maps of concatenations
evaluated part by part. Shared by eComFormer's layers (:mod:`crystalframes.nn.comformer_layers`)
and the learned frames (:mod:`crystalframes.frames.learned`); see comformer_layers' docstring
for why these rearrangements are exact.

Edge convention (see :mod:`crystalframes.data.graph`): edge ``e`` goes from the centre atom
``i = edge_index[0, e]`` to the neighbour ``j = edge_index[1, e]``; messages from j are
aggregated at i.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn




def take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[index]`` along the first dimension, for an index of any shape: the one gather of the
    package (``index_select`` is several times faster than advanced indexing on CPU)."""
    if index.dim() == 1:
        return x.index_select(0, index)
    flat = x.reshape(x.shape[0], -1).index_select(0, index.reshape(-1))
    return flat.view(*index.shape, *x.shape[1:])


class MessageGraph:
    """Index bookkeeping of one batched graph, shared by every layer of a forward pass.

    ``centre`` (E,) and ``neighbour`` (E,) from ``edge_index``; ``inv_count`` (N, 1) holds
    1 / |N_i| (the number of edges whose centre is i), 0 for an atom without edges.
    ``group_edges=False`` makes :meth:`groups` return one group per edge (the literal computation).
    """

    def __init__(self, edge_index: torch.Tensor, num_nodes: int, dtype: torch.dtype, group_edges: bool = True):
        self.centre = edge_index[0]
        self.neighbour = edge_index[1]
        self.num_nodes = int(num_nodes)
        self.num_edges = int(edge_index.shape[1])
        # index_add, not bincount: bincount reads its input's maximum on the host (a device wait)
        count = torch.zeros(self.num_nodes, dtype=dtype, device=self.centre.device).index_add_(0, self.centre, torch.ones_like(self.centre, dtype=dtype))
        self.inv_count = torch.where(count > 0, 1.0 / count.clamp_min(1.0), torch.zeros_like(count)).unsqueeze(-1)
        self.group_edges = group_edges
        self._slots: tuple[torch.Tensor, int] | None = None
        self._pairs: EdgeGroups | None = None
        self._triples: tuple[torch.Tensor, EdgeGroups] | None = None

    def groups(self, edge: "EdgeTable | None" = None) -> "EdgeGroups":
        """The edges grouped by (centre, neighbour) when ``edge`` is None, else by (centre,
        neighbour, row of ``edge``): the members of a group carry the same node features and
        (bitwise) the same edge features, so a map of those inputs needs one evaluation per
        group. An edge table with one row per edge gives one group per edge. Cached: every
        layer of a forward pass shares the grouping (the tables of one pass share their index)."""
        if not self.group_edges:
            return EdgeGroups(None, self.centre, self.neighbour, None if edge is None else edge.index)
        if edge is None:
            if self._pairs is None:
                self._pairs = EdgeGroups.of_keys(self.centre * self.num_nodes + self.neighbour, self.centre, self.neighbour, None)
            return self._pairs
        if edge.index is None:
            return EdgeGroups(None, self.centre, self.neighbour, None)
        if self._triples is None or self._triples[0] is not edge.index:
            num_rows = int(edge.index.max()) + 1 if self.num_edges else 1
            keys = self.groups(None).index * num_rows + edge.index
            self._triples = (edge.index, EdgeGroups.of_keys(keys, self.centre, self.neighbour, edge.index))
        return self._triples[1]

    def sum_at_centre(self, values: torch.Tensor) -> torch.Tensor:
        """sum_{j in N(i)} values_ij: (E, ...) -> (N, ...)."""
        out = values.new_zeros((self.num_nodes,) + tuple(values.shape[1:]))
        return out.index_add_(0, self.centre, values)

    def mean_at_centre(self, values: torch.Tensor) -> torch.Tensor:
        """(1/|N_i|) sum_{j in N(i)} values_ij: (E, C) -> (N, C)."""
        return self.sum_at_centre(values) * self.inv_count

    def _neighbour_slots(self) -> tuple[torch.Tensor, int]:
        """Position of every edge in a (N, D) table grouped by neighbour atom, D = max count."""
        if self._slots is None:
            nb = self.neighbour
            order = torch.argsort(nb, stable=True)
            counts = torch.bincount(nb, minlength=self.num_nodes)
            starts = torch.cumsum(counts, 0) - counts
            width = int(counts.max()) if self.num_edges else 0
            rank = torch.arange(self.num_edges, device=nb.device) - starts[nb[order]]
            slot = torch.empty_like(nb)
            slot[order] = nb[order] * width + rank
            self._slots = (slot, width)
        return self._slots

    def neighbour_matmul(self, z: torch.Tensor, per_node: torch.Tensor) -> torch.Tensor:
        """``z_e @ per_node[j_e]`` for every edge: z (E, C), per_node (N, C, K) -> (E, K).

        Edges are grouped by neighbour atom into a zero-padded (N, D, C) table so one batched
        matrix product does the work without gathering an (E, C, K) tensor.
        """
        slot, width = self._neighbour_slots()
        table = z.new_zeros(self.num_nodes * width, z.shape[1]).index_copy(0, slot, z)
        out = torch.bmm(table.view(self.num_nodes, width, -1), per_node)
        return out.reshape(self.num_nodes * width, -1).index_select(0, slot)


class EdgeTable:
    """Per-edge invariant features stored once per distinct row: edge e has features
    ``values[index[e]]`` (``index`` None: one row per edge).

    eComFormer's edge features are a function of the distance alone, and a crystal has far fewer
    distinct distances than edges (symmetry; ~7x fewer per batch of 64 MP structures in float32), so every
    distance-only map (edge embedding, the layers' edge projections, the hidden layer of the
    tensor-product weight networks) runs on the distinct rows and is gathered afterwards. Rows
    are merged only when bitwise equal, so the results are exactly those of the per-edge
    computation.
    """

    def __init__(self, values: torch.Tensor, index: torch.Tensor | None = None):
        self.values = values
        self.index = index

    def map_tensors(self, fn) -> "EdgeTable":
        """The table with ``fn`` applied to its values (the row index kept); itself when ``fn``
        returns the values unchanged (``crystalframes.precision.upcast``)."""
        values = fn(self.values)
        return self if values is self.values else EdgeTable(values, self.index)

    @classmethod
    def of_distances(cls, distances: torch.Tensor, deduplicate: bool = True) -> "EdgeTable":
        """The table of the edge lengths (E,), one row per distinct value. Gradients with
        respect to the distances need every edge's own value, so rows are not merged when they
        require grad (nor with ``deduplicate=False``)."""
        if not deduplicate or distances.requires_grad:
            return cls(distances, None)
        distinct, index = torch.unique(distances, return_inverse=True)
        return cls(distinct, index)

    def map(self, fn) -> "EdgeTable":
        """fn applied to the rows (fn must act row by row)."""
        return EdgeTable(fn(self.values), self.index)

    def per_edge(self) -> torch.Tensor:
        return self.values if self.index is None else take(self.values, self.index)

    def __add__(self, other: torch.Tensor) -> "EdgeTable":
        """Add per-edge values (E, C): the result has one row per edge."""
        return EdgeTable(self.per_edge() + other, None)


class EdgeGroups:
    """Edges merged into groups with identical inputs (see :meth:`MessageGraph.groups`).

    ``index`` (E,): the group of every edge (None: one group per edge); ``centre``,
    ``neighbour`` (G,): the atoms of every group; ``row`` (G,): its row of the edge table
    (None: the edge table has one row per group already).
    """

    def __init__(self, index: torch.Tensor | None, centre: torch.Tensor, neighbour: torch.Tensor, row: torch.Tensor | None):
        self.index = index
        self.centre = centre
        self.neighbour = neighbour
        self.row = row

    @classmethod
    def of_keys(cls, keys: torch.Tensor, centre: torch.Tensor, neighbour: torch.Tensor, row: torch.Tensor | None) -> "EdgeGroups":
        """Group the edges by an integer key (E,) that is equal exactly for edges with the same
        inputs; ``centre``, ``neighbour`` and ``row`` are per edge."""
        distinct, index = torch.unique(keys, return_inverse=True)
        # One member per group (which one does not matter: they agree on everything kept).
        member = torch.empty(distinct.shape[0], dtype=index.dtype, device=index.device)
        member.scatter_(0, index, torch.arange(keys.shape[0], device=keys.device))
        return cls(index, take(centre, member), take(neighbour, member), None if row is None else take(row, member))

    def edge_part(self, edge: EdgeTable) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The edge table as a part of :func:`linear_of_concat` with one output row per group."""
        return edge.values, self.row

    def expand(self, values: torch.Tensor) -> torch.Tensor:
        """Per-group values (G, ...) -> per-edge values (E, ...)."""
        return values if self.index is None else take(values, self.index)


def linear_of_concat(linear: nn.Linear, parts: Sequence[tuple[torch.Tensor, torch.Tensor | None]]) -> torch.Tensor:
    """``linear(cat([x[index] for x, index in parts], -1))`` (index None: x has one row per
    output row already), computed by projecting each part with its block of the weight matrix
    before gathering, so node-level parts (index = centre or neighbour) cost one product per atom
    and :class:`EdgeTable` parts one per distinct row, instead of one per edge."""
    if sum(x.shape[-1] for x, _ in parts) != linear.in_features:
        raise ValueError(f"parts have {sum(x.shape[-1] for x, _ in parts)} features, the layer expects {linear.in_features}")
    out = None
    start = 0
    for x, index in parts:
        width = x.shape[-1]
        bias = linear.bias if out is None else None  # added once, to the first (smallest) part
        y = F.linear(x, linear.weight[:, start : start + width], bias)
        start += width
        y = y if index is None else take(y, index)
        out = y if out is None else out.add_(y)  # out is a fresh tensor: accumulate in place
    return out


class ConcatMLP(nn.Module):
    """xi(x) = Linear(C, C)(act(Linear(sum(in_dims), C)(x))) for x a concatenation of parts
    (the key/value maps of eComFormer's attention), evaluated by :func:`linear_of_concat`."""

    def __init__(self, in_dims: Sequence[int], dim: int, activation: nn.Module | None = None):
        super().__init__()
        self.in_dims = tuple(in_dims)
        self.first = nn.Linear(sum(self.in_dims), dim)
        self.activation = activation if activation is not None else nn.SiLU()
        self.second = nn.Linear(dim, dim)

    def forward(self, parts: Sequence[tuple[torch.Tensor, torch.Tensor | None]]) -> torch.Tensor:
        return self.second(self.activation(linear_of_concat(self.first, parts)))
