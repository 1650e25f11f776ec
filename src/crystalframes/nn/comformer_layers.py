"""eComFormer layers (Yan et al., ICLR 2024) and the frame-construction blocks of SPFrame
(seed 000, appendix A.2-A.4), on plain tensors.

Edge convention (see :mod:`crystalframes.data.graph`): edge ``e`` goes from the centre atom
``i = edge_index[0, e]`` to the neighbour ``j = edge_index[1, e]``; messages from j are
aggregated at i, so the local frame that rotates edge e is the frame of atom i.

Efficiency without changing the maths
-------------------------------------
The published code does the literal computation and spends most of its time on per-edge work
that can be rearranged exactly:

- A linear layer on a concatenation ``[a_i | b_j | c_ij]`` equals the sum of three linear maps,
  so the node parts are projected once per atom and gathered (:func:`linear_of_concat`).
- The edge features depend on the distance alone; a batch has far fewer distinct distances than
  edges, so distance-only maps run once per distinct distance (:class:`EdgeTable`).
- The k-NN multigraph of a small cell links the same two atoms through several lattice
  translations, often at the same distance: the attention MLPs, whose inputs are (f_i, f_j) or
  (f_i, f_j, e_ij), run once per distinct (i, j) pair or (i, j, distance) triple and are gathered
  to the edges afterwards (:class:`EdgeGroups`; 2.3x fewer pairs and 1.3x fewer triples than
  edges on the MP sample).
- The tensor products use per-edge weights ``W_e = A z_e + b`` (z_e the hidden layer of the
  weight network). For the paths whose per-edge factor is a scalar, sum_u W_e[u, w] x_j[u] =
  z_e . (A x_j)[w] + (b x_j)[w]: A is contracted with the node features once per atom, and each
  edge only needs a (hidden x outputs) product, instead of materialising its 5,120 weights; the
  other paths weight rows of a per-distance table (see :class:`IrrepsToScalarConv`).
  ``tensor_product="e3nn"`` runs the literal e3nn computation; the tests check both agree.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from crystalframes.frames import gram_schmidt, quaternion_to_rotation

SH_LMAX = 2  # spherical harmonics l = 0, 1, 2 (eComFormer)
TENSOR_PRODUCT_IMPLEMENTATIONS = ("fused", "e3nn")


# ---------------------------------------------------------------------------------------------
# Graph bookkeeping
# ---------------------------------------------------------------------------------------------


def rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[index]`` along the first dimension (``index_select`` is several times faster than
    advanced indexing on CPU)."""
    return x.index_select(0, index)


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
        count = torch.bincount(self.centre, minlength=self.num_nodes).to(dtype)
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
        return self.values if self.index is None else rows(self.values, self.index)

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
        return cls(index, rows(centre, member), rows(neighbour, member), None if row is None else rows(row, member))

    def edge_part(self, edge: EdgeTable) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The edge table as a part of :func:`linear_of_concat` with one output row per group."""
        return edge.values, self.row

    def expand(self, values: torch.Tensor) -> torch.Tensor:
        """Per-group values (G, ...) -> per-edge values (E, ...)."""
        return values if self.index is None else rows(values, self.index)


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
        y = y if index is None else rows(y, index)
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


# ---------------------------------------------------------------------------------------------
# Node-wise transformer layer
# ---------------------------------------------------------------------------------------------


class NodeTransformerLayer(nn.Module):
    """eComFormer's node-wise transformer layer (one head, no softmax; seed 000 Eqs. 9-10):

        q_i = W_Q f_i, k = W_K f, v = W_V f, e'_ij = W_E e_ij
        alpha_ij = q_i o xi_K([k_i | k_j | e'_ij]) / sqrt(C)
        m_ij = xi_V([v_i | v_j | e'_ij]) o sigmoid(BN(alpha_ij))
        f_i' = softplus(f_i + BN(W_cat sum_j m_ij))

    with xi = Linear(3C, C) - SiLU - Linear(C, C). The edge enters the key as in the eComFormer
    reference code (the seed's text writes the key without it). 855,296 parameters at C = 256.
    """

    def __init__(self, dim: int, edge_dim: int | None = None):
        super().__init__()
        edge_dim = dim if edge_dim is None else edge_dim
        self.dim = dim
        self.lin_query = nn.Linear(dim, dim)
        self.lin_key = nn.Linear(dim, dim)
        self.lin_value = nn.Linear(dim, dim)
        self.lin_edge = nn.Linear(edge_dim, dim)
        self.key_update = ConcatMLP((dim, dim, dim), dim)
        self.msg_update = ConcatMLP((dim, dim, dim), dim)
        self.lin_concat = nn.Linear(dim, dim)
        self.bn_alpha = nn.BatchNorm1d(dim)
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, f: torch.Tensor, edge: EdgeTable, graph: MessageGraph, return_weights: bool = False):
        """The updated features (N, C); with ``return_weights`` also the attention weight of
        every edge (E,): the mean over channels of its gate sigmoid(BN(alpha_ij)), how much of
        neighbour j's message reaches centre i (what dynamic frames are built from)."""
        g = graph.groups(edge)  # key and value see (f_i, f_j, e_ij): one evaluation per group
        i, j = g.centre, g.neighbour
        q, k, v = self.lin_query(f), self.lin_key(f), self.lin_value(f)
        e = g.edge_part(edge.map(self.lin_edge))
        alpha = g.expand(rows(q / math.sqrt(self.dim), i) * self.key_update([(k, i), (k, j), e]))
        # BatchNorm on the edges: its training-mode statistics are over edges, not groups.
        gate = torch.sigmoid(self.bn_alpha(alpha))
        msg = g.expand(self.msg_update([(v, i), (v, j), e])) * gate
        out = F.softplus(f + self.bn(self.lin_concat(graph.sum_at_centre(msg))))
        return (out, gate.mean(dim=-1)) if return_weights else out


# ---------------------------------------------------------------------------------------------
# Tensor-product convolutions of the node-wise equivariant update layer
# ---------------------------------------------------------------------------------------------


def _weight_network(edge_dim: int, weight_numel: int) -> nn.Sequential:
    """Per-edge tensor-product weights from the invariant edge features (eComFormer):
    Linear(C, C) - Softplus - Linear(C, weight_numel)."""
    return nn.Sequential(nn.Linear(edge_dim, edge_dim), nn.Softplus(), nn.Linear(edge_dim, weight_numel))


def _irrep_slices(irreps) -> list[slice]:
    return list(irreps.slices())


class _TensorProductConv(nn.Module):
    """Shared part of the two convolutions: out_i = mean_{j in N(i)} TP(x_j, Y(r_ij); W(e_ij)),
    an e3nn ``FullyConnectedTensorProduct`` (component normalisation, per-edge weights) whose
    weights come from :func:`_weight_network`."""

    def __init__(self, irreps_in, irreps_sh, irreps_out, edge_dim: int, implementation: str):
        super().__init__()
        from e3nn import o3

        if implementation not in TENSOR_PRODUCT_IMPLEMENTATIONS:
            raise ValueError(f"tensor_product must be one of {TENSOR_PRODUCT_IMPLEMENTATIONS}, got {implementation!r}")
        self.implementation = implementation
        self.irreps_in, self.irreps_sh, self.irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_sh), o3.Irreps(irreps_out)
        self.tp = o3.FullyConnectedTensorProduct(
            self.irreps_in, self.irreps_sh, self.irreps_out, shared_weights=False, internal_weights=False
        )
        self.fc = _weight_network(edge_dim, self.tp.weight_numel)
        # Per instruction: its block of rows in the weight vector and its Wigner 3j symbol.
        self._paths = []
        offset = 0
        for ins in self.tp.instructions:
            if ins.connection_mode != "uvw" or self.irreps_sh[ins.i_in2].mul != 1:
                raise ValueError("only 'uvw' paths with single spherical harmonics are supported")
            mul_in, _, mul_out = ins.path_shape
            l1, l2, l3 = (self.irreps_in[ins.i_in1].ir.l, self.irreps_sh[ins.i_in2].ir.l, self.irreps_out[ins.i_out].ir.l)
            self._paths.append((ins, slice(offset, offset + mul_in * mul_out), (l1, l2, l3)))
            offset += mul_in * mul_out
        self._w3j = {key: o3.wigner_3j(*key) for _, _, key in self._paths}

    def w3j(self, key, like: torch.Tensor) -> torch.Tensor:
        return self._w3j[key].to(dtype=like.dtype, device=like.device)

    def reference(self, x: torch.Tensor, sh: torch.Tensor, edge: EdgeTable, graph: MessageGraph) -> torch.Tensor:
        """The literal computation: materialise every edge's weights, e3nn tensor product, mean."""
        return graph.mean_at_centre(self.tp(rows(x, graph.neighbour), sh, self.fc(edge.per_edge())))

    def forward(self, x: torch.Tensor, sh: torch.Tensor, edge: EdgeTable, graph: MessageGraph) -> torch.Tensor:
        """x (N, irreps_in) node features, sh (E, irreps_sh) harmonics of the edges, edge the
        invariant edge features -> (N, irreps_out), the mean over each atom's edges."""
        if self.implementation == "e3nn":
            return self.reference(x, sh, edge, graph)
        return self.fused(x, sh, edge, graph)

    def hidden(self, edge: EdgeTable) -> EdgeTable:
        """z: the hidden layer of the weight network, W_e = fc[2](z_e), on the distinct rows."""
        return edge.map(lambda e: self.fc[1](self.fc[0](e)))

    def _path_weights(self, ins_slice: slice, mul_in: int, mul_out: int):
        """This path's rows of the last weight-network layer: A (mul_in, C, mul_out), b (mul_in, mul_out)."""
        last = self.fc[2]
        a = last.weight[ins_slice].view(mul_in, mul_out, -1).transpose(1, 2)
        b = last.bias[ins_slice].view(mul_in, mul_out)
        return a, b


class ScalarToIrrepsConv(_TensorProductConv):
    """First tensor product of the equivariant update layer: scalars (ns x 0e) (x) Y -> irreps
    (e.g. ns x 0e + nv x 1o + nv x 2e). Every path is 0e (x) Y_l -> l, so per edge
    out_l[w, m] = pw * (sum_u W_e[u, w] h_j[u]) * (Y_l 3j)[m], and the u-sum is computed with the
    node-level contraction of the module docstring."""

    def __init__(self, irreps_in, irreps_sh, irreps_out, edge_dim: int, implementation: str = "fused"):
        super().__init__(irreps_in, irreps_sh, irreps_out, edge_dim, implementation)
        if self.irreps_in.lmax != 0 or len(self.irreps_in) != 1:
            raise ValueError(f"ScalarToIrrepsConv needs one block of scalars as input, got {self.irreps_in}")

    def fused(self, h, sh, edge, graph):
        sh_slices, out_slices = _irrep_slices(self.irreps_sh), _irrep_slices(self.irreps_out)
        z = self.hidden(edge).per_edge()  # (E, C)
        a_blocks, b_blocks, muls = [], [], []
        for ins, weight_rows, _ in self._paths:
            mul_in, _, mul_out = ins.path_shape
            a, b = self._path_weights(weight_rows, mul_in, mul_out)
            a_blocks.append(a)
            b_blocks.append(b)
            muls.append(mul_out)
        a = torch.cat(a_blocks, dim=2)  # (ns, C, K), K = sum of output multiplicities
        b = torch.cat(b_blocks, dim=1)  # (ns, K)
        ns, hidden, k = a.shape
        per_node = (h @ a.reshape(ns, hidden * k)).view(-1, hidden, k)  # (N, C, K)
        weighted = graph.neighbour_matmul(z, per_node) + rows(h @ b, graph.neighbour)  # (E, K)
        pieces = [None] * len(self.irreps_out)
        start = 0
        for (ins, _, key), mul in zip(self._paths, muls):
            y = sh[:, sh_slices[ins.i_in2]] @ self.w3j(key, sh)[0]  # (E, 2l+1)
            part = ins.path_weight * weighted[:, start : start + mul].unsqueeze(-1) * y.unsqueeze(1)
            start += mul
            part = part.reshape(part.shape[0], -1)
            pieces[ins.i_out] = part if pieces[ins.i_out] is None else pieces[ins.i_out] + part
        for idx, piece in enumerate(pieces):
            if piece is None:  # an output irrep no path reaches stays zero, as in e3nn
                pieces[idx] = sh.new_zeros(sh.shape[0], out_slices[idx].stop - out_slices[idx].start)
        return graph.mean_at_centre(torch.cat(pieces, dim=1))


class IrrepsToScalarConv(_TensorProductConv):
    """Second tensor product: irreps (x) Y -> scalars (ns x 0e). Paths l (x) l -> 0.

    For the path 0e (x) Y_0 the per-edge factor is the scalar Y_0, so it uses the node-level
    contraction; for l >= 1 only U = 2 nv per-edge scalars s[e, u] = pw sum_mn x_j[u, m] Y_l[e, n]
    3j[m, n] remain, and out_e = sum_u s[e, u] W_e[u, :] with W_e[u, :] = (z A_u)[row(e)] + b_u:
    the (distinct rows x U x ns) table z A is built once and each edge sums U of its rows.
    """

    def __init__(self, irreps_in, irreps_sh, irreps_out, edge_dim: int, implementation: str = "fused"):
        super().__init__(irreps_in, irreps_sh, irreps_out, edge_dim, implementation)
        if self.irreps_out.lmax != 0 or len(self.irreps_out) != 1:
            raise ValueError(f"IrrepsToScalarConv needs one block of scalars as output, got {self.irreps_out}")

    def fused(self, x, sh, edge, graph):
        in_slices, sh_slices = _irrep_slices(self.irreps_in), _irrep_slices(self.irreps_sh)
        z = self.hidden(edge)
        nb = graph.neighbour
        out = None
        edge_scalars, a_edge, b_edge = [], [], []
        for ins, weight_rows, key in self._paths:
            mul_in, _, mul_out = ins.path_shape
            a, b = self._path_weights(weight_rows, mul_in, mul_out)  # (mul_in, C, ns), (mul_in, ns)
            xin = x[:, in_slices[ins.i_in1]].view(x.shape[0], mul_in, -1)  # (N, mul, 2l+1)
            y = sh[:, sh_slices[ins.i_in2]]  # (E, 2l+1)
            w3j = self.w3j(key, x)[..., 0]  # (2l+1, 2l+1)
            if key[1] == 0:  # the per-edge factor is a scalar: node-level contraction
                scalar = ins.path_weight * (y @ w3j)[:, 0]  # (E,): pw Y_0 3j(0, 0, 0)
                feats = xin[..., 0]  # (N, mul)
                per_node = (feats @ a.reshape(mul_in, -1)).view(-1, a.shape[1], a.shape[2])
                part = (graph.neighbour_matmul(z.per_edge(), per_node) + rows(feats @ b, nb)) * scalar.unsqueeze(-1)
                out = part if out is None else out + part
            else:
                t = torch.einsum("num,mk->nuk", xin, w3j)  # (N, mul, 2l+1), node level
                edge_scalars.append(ins.path_weight * torch.einsum("euk,ek->eu", rows(t, nb), y))
                a_edge.append(a)
                b_edge.append(b)
        if edge_scalars:
            s = torch.cat(edge_scalars, dim=1)  # (E, U) per-edge scalars
            a = torch.cat(a_edge, dim=0)  # (U, C, ns)
            b = torch.cat(b_edge, dim=0)  # (U, ns)
            units, hidden, ns = a.shape
            # W_e[u, w] = sum_c z_e[c] a[u, c, w] + b[u, w]: the z part on the distinct rows of
            # the edge table, then out_e = s_e W_e as a weighted sum of rows (embedding_bag:
            # no (E, U, ns) tensor of per-edge weights is materialised).
            table = z.values @ a.permute(1, 0, 2).reshape(hidden, units * ns)  # (R, U * ns)
            row = z.index if z.index is not None else torch.arange(s.shape[0], device=s.device)
            bags = row.unsqueeze(1) * units + torch.arange(units, device=s.device)  # (E, U)
            part = F.embedding_bag(bags, table.view(-1, ns), per_sample_weights=s, mode="sum") + s @ b
            out = part if out is None else out + part
        return graph.mean_at_centre(out)


class EquivariantUpdateLayer(nn.Module):
    """eComFormer's node-wise equivariant update layer (seed 000 Eqs. 11-13):

        h = Linear(C, ns)(f);  Y = Y_{0,1,2}(r_ij)  (component normalisation, unit vectors)
        h1_i = pad(h_i) + mean_j TP1(h_j, Y; W1(e_ij))      -> ns x 0e + nv x 1o + nv x 2e
        h2_i = mean_j TP2(h1_j, Y; W2(e_ij))                -> ns x 0e
        f_i' = softplus(Linear(ns, C)(softplus(BN(h2_i)))) + Linear(C, C)(f_i)

    ``edge_vec`` is whatever the caller wants the harmonics of: the raw edge vectors (plain
    eComFormer, equivariant) or the frame-transformed ones r_ij F_i^T (invariant).
    2,862,272 parameters at C = 256, ns = 64, nv = 8.
    """

    def __init__(self, dim: int, scalars: int = 64, vectors: int = 8, edge_dim: int | None = None, tensor_product: str = "fused"):
        from e3nn import o3

        super().__init__()
        edge_dim = dim if edge_dim is None else edge_dim
        self.scalars = scalars
        self.irreps_sh = " + ".join(f"1x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(SH_LMAX + 1))
        self.spherical_harmonics = o3.SphericalHarmonics(list(range(SH_LMAX + 1)), normalize=True, normalization="component")
        hidden = f"{scalars}x0e + {vectors}x1o + {vectors}x2e"
        self.node_linear = nn.Linear(dim, scalars)
        self.tp1 = ScalarToIrrepsConv(f"{scalars}x0e", self.irreps_sh, hidden, edge_dim, tensor_product)
        self.tp2 = IrrepsToScalarConv(hidden, self.irreps_sh, f"{scalars}x0e", edge_dim, tensor_product)
        self.bn = nn.BatchNorm1d(scalars)
        self.node_linear_2 = nn.Linear(scalars, dim)
        self.skip_linear = nn.Linear(dim, dim)

    def forward(self, f: torch.Tensor, edge_vec: torch.Tensor, edge: EdgeTable, graph: MessageGraph) -> torch.Tensor:
        sh = self.spherical_harmonics(edge_vec)
        h = self.node_linear(f)
        h1 = self.tp1(h, sh, edge, graph)
        h1 = h1 + F.pad(h, (0, h1.shape[1] - h.shape[1]))
        h2 = self.tp2(h1, sh, edge, graph)
        return F.softplus(self.node_linear_2(F.softplus(self.bn(h2)))) + self.skip_linear(f)


# ---------------------------------------------------------------------------------------------
# Frame-construction blocks (seed 000 A.2 and A.4)
# ---------------------------------------------------------------------------------------------


class InvariantMessage(nn.Module):
    """The invariant message function of the frame blocks (seed 000 Eq. 7):

        q = LN_Q(f_i),  k = (LN_K(f_i) | LN_K(f_j)),  v = (LN_V(f_i) | LN_V(f_j) | LN_E(e_ij))
        alpha_ij = q o xi_K(k) / sqrt(C),  msg_ij = sigmoid(BN(alpha_ij)) o xi_V(v)

    with LN_* linear layers and xi = Linear - SiLU - Linear. Unlike the backbone's attention
    layer the key has no edge part, as the seed writes it. Returns msg (E, C).
    """

    def __init__(self, dim: int, edge_dim: int | None = None):
        super().__init__()
        edge_dim = dim if edge_dim is None else edge_dim
        self.dim = dim
        self.lin_query = nn.Linear(dim, dim)
        self.lin_key = nn.Linear(dim, dim)
        self.lin_value = nn.Linear(dim, dim)
        self.lin_edge = nn.Linear(edge_dim, dim)
        self.key_update = ConcatMLP((dim, dim), dim)
        self.msg_update = ConcatMLP((dim, dim, dim), dim)
        self.bn_alpha = nn.BatchNorm1d(dim)

    def forward(self, f: torch.Tensor, edge: EdgeTable, graph: MessageGraph) -> torch.Tensor:
        # The key sees (f_i, f_j) only: one evaluation per atom pair; the value also sees e_ij:
        # one per (pair, edge-table row). BatchNorm runs on the edges (training statistics).
        pairs, groups = graph.groups(None), graph.groups(edge)
        q, k, v = self.lin_query(f), self.lin_key(f), self.lin_value(f)
        key = self.key_update([(k, pairs.centre), (k, pairs.neighbour)])
        alpha = pairs.expand(rows(q / math.sqrt(self.dim), pairs.centre) * key)
        value = self.msg_update([(v, groups.centre), (v, groups.neighbour), groups.edge_part(edge.map(self.lin_edge))])
        return torch.sigmoid(self.bn_alpha(alpha)) * groups.expand(value)


class QuaternionFrame(nn.Module):
    """Invariant local frame from a predicted quaternion (SPFrame, seed 000 Eqs. 6-8, A.2):

        q_i = softplus(LN_msg(f_i + BN(sum_j msg_ij))) in R^4,  F_INV,i = R(q_i / |q_i|)

    ``positive=True`` keeps the seed's softplus, which makes all four components positive and
    so restricts the reachable rotations (axes in the positive octant, angles below pi);
    ``positive=False`` drops it (an unrestricted quaternion head). Zero quaternions map to the
    identity (see :func:`~crystalframes.frames.quaternion_to_rotation`).
    """

    def __init__(self, dim: int, edge_dim: int | None = None, positive: bool = True):
        super().__init__()
        self.positive = positive
        self.message = InvariantMessage(dim, edge_dim)
        self.bn = nn.BatchNorm1d(dim)
        self.lin_quaternion = nn.Linear(dim, 4)

    def quaternions(self, f: torch.Tensor, edge: EdgeTable, graph: MessageGraph) -> torch.Tensor:
        msg = graph.sum_at_centre(self.message(f, edge, graph))
        q = self.lin_quaternion(f + self.bn(msg))
        return F.softplus(q) if self.positive else q

    def forward(self, f: torch.Tensor, edge: EdgeTable, graph: MessageGraph) -> torch.Tensor:
        return quaternion_to_rotation(self.quaternions(f, edge, graph))


class GramSchmidtFrame(nn.Module):
    """Local frame by Gram-Schmidt of two predicted vectors (seed 000 A.4, Eqs. 14-16).

    ``equivariant=True`` (Eq. 14): v_k = sum_j phi_k(f_i, f_j, e_ij) r_ij / |r_ij| with scalar
    phi_k, so the frame rotates with the crystal (an SO(3)-equivariant local frame; degenerate
    atoms whose v_1 vanishes or whose v_2 is collinear fall back to ``fallback``, pass an
    equivariant one). ``equivariant=False`` (Eq. 16): v_k = sum_j phi_k(...) with phi_k in R^3,
    an invariant frame F_INV,i to be composed with a global frame.

    Each phi_k has its own message function (:class:`InvariantMessage` followed by a linear
    read-out), as in the seed ("two distinct message passing and aggregation modules").

    Degeneracy is judged relative to s_k = sum_j |phi_k r_hat_ij| (or sum_j |phi_k|): on a
    symmetric site the terms of v_k cancel, and what is left of them (rounding of the sum, or the
    ~1e-6 rounding of published coordinates) carries no reliable direction, yet an absolute
    threshold would accept it and let noise orient the frame. v_k with |v_k| <= rtol s_k counts as
    zero and v_2 within rtol of collinear as collinear (``degenerate_rtol``, default 1e-3, which
    also covers float32 sums of a few dozen terms).
    """

    def __init__(self, dim: int, edge_dim: int | None = None, equivariant: bool = True, degenerate_rtol: float = 1e-3):
        super().__init__()
        self.equivariant = equivariant
        self.degenerate_rtol = degenerate_rtol
        width = 1 if equivariant else 3
        self.messages = nn.ModuleList([InvariantMessage(dim, edge_dim) for _ in range(2)])
        self.readouts = nn.ModuleList([nn.Linear(dim, width) for _ in range(2)])

    def vectors(self, f, edge, graph, edge_vec=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(v_k, s_k)] for k = 1, 2: v_k (N, 3) and the total size of its terms
        s_k = sum_j |phi_k(...)| (N,), the scale against which v_k counts as degenerate."""
        if self.equivariant:
            unit = edge_vec / edge_vec.norm(dim=-1, keepdim=True)
        out = []
        for message, readout in zip(self.messages, self.readouts):
            phi = readout(message(f, edge, graph))  # (E, 1) or (E, 3)
            terms = phi * unit if self.equivariant else phi
            out.append((graph.sum_at_centre(terms), graph.sum_at_centre(terms.norm(dim=-1))))
        return out

    def forward(self, f, edge: EdgeTable, graph: MessageGraph, edge_vec=None, fallback=None) -> torch.Tensor:
        if self.equivariant and edge_vec is None:
            raise ValueError("the equivariant Gram-Schmidt frame needs the edge vectors")
        (v1, s1), (v2, s2) = self.vectors(f, edge, graph, edge_vec)
        # Decide degeneracy relative to the size of the terms (see the class docstring), then
        # hand gram_schmidt inputs on which its own (absolute, tiny) tests agree: a v_1 that
        # counts as zero is passed as exactly zero (-> fallback frame), a v_2 that counts as
        # collinear as a copy of v_1 (-> fallback axis). Gram-Schmidt ignores the lengths, so
        # dividing by s_k changes nothing else.
        tiny = torch.finfo(v1.dtype).tiny
        rtol = self.degenerate_rtol
        n1 = v1.norm(dim=-1, keepdim=True)
        e1 = v1 / n1.clamp_min(tiny)
        perp = v2 - (e1 * v2).sum(-1, keepdim=True) * e1
        zero = n1 <= rtol * s1.unsqueeze(-1)
        collinear = perp.norm(dim=-1, keepdim=True) <= rtol * s2.unsqueeze(-1)
        u1 = torch.where(zero, torch.zeros_like(v1), v1 / s1.clamp_min(tiny).unsqueeze(-1))
        u2 = torch.where(collinear, u1, v2 / s2.clamp_min(tiny).unsqueeze(-1))
        return gram_schmidt(u1, u2, fallback=fallback)
