"""eComFormer layers (Yan et al., ICLR 2024) on plain tensors. (SPFrame's frame-construction
blocks are frames: :mod:`crystalframes.frames.learned`.)

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
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# The graph bookkeeping lives in nn/graph.py (the learned frames use it too); re-exported here.
from crystalframes.nn.graph import (  # noqa: F401
    ConcatMLP,
    EdgeGroups,
    EdgeTable,
    MessageGraph,
    linear_of_concat,
    take,
)

SH_LMAX = 2  # spherical harmonics l = 0, 1, 2 (eComFormer)
TENSOR_PRODUCT_IMPLEMENTATIONS = ("fused", "e3nn")


# ---------------------------------------------------------------------------------------------
# Node-wise transformer layer
# ---------------------------------------------------------------------------------------------


class NodeTransformerLayer(nn.Module):
    """eComFormer's node-wise transformer layer (one head, no softmax; Hua & Lin, SPFrame, Eqs. 9-10):

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
        alpha = g.expand(take(q / math.sqrt(self.dim), i) * self.key_update([(k, i), (k, j), e]))
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


class _Path(NamedTuple):
    """One tensor-product instruction as plain numbers (see _TensorProductConv.__init__)."""

    i_in1: int
    i_in2: int
    i_out: int
    mul_in: int
    mul_out: int
    path_weight: float
    weight_rows: slice  # its block of rows in the weight vector
    key: tuple  # (l1, l2, l3)
    index: int


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
        # Everything forward reads about the irreps, as plain ints, floats and slices: torch.compile
        # guards on what forward reads, and guarding an e3nn Irrep (a tuple whose len() raises)
        # crashed dynamo. The e3nn objects above serve the literal ("e3nn") path only.
        self._sh_slices = tuple(self.irreps_sh.slices())
        self._in_slices = tuple(self.irreps_in.slices())
        self._out_dims = tuple(s.stop - s.start for s in self.irreps_out.slices())
        self._paths: list[_Path] = []
        offset = 0
        for index, ins in enumerate(self.tp.instructions):
            if ins.connection_mode != "uvw" or self.irreps_sh[ins.i_in2].mul != 1:
                raise ValueError("only 'uvw' paths with single spherical harmonics are supported")
            mul_in, _, mul_out = ins.path_shape
            l1, l2, l3 = (self.irreps_in[ins.i_in1].ir.l, self.irreps_sh[ins.i_in2].ir.l, self.irreps_out[ins.i_out].ir.l)
            self._paths.append(_Path(ins.i_in1, ins.i_in2, ins.i_out, mul_in, mul_out, float(ins.path_weight),
                                     slice(offset, offset + mul_in * mul_out), (l1, l2, l3), index))
            offset += mul_in * mul_out
            # Each path's Wigner 3j symbol as a buffer: it follows the model's device and dtype
            # (no host-to-device copy per forward); not persistent, so model files do not change.
            self.register_buffer(f"_w3j_{index}", o3.wigner_3j(l1, l2, l3), persistent=False)

    def w3j(self, path: "_Path", like: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"_w3j_{path.index}").to(dtype=like.dtype)

    def reference(self, x: torch.Tensor, sh: torch.Tensor, edge: EdgeTable, graph: MessageGraph) -> torch.Tensor:
        """The literal computation: materialise every edge's weights, e3nn tensor product, mean."""
        return graph.mean_at_centre(self.tp(take(x, graph.neighbour), sh, self.fc(edge.per_edge())))

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
        z = self.hidden(edge).per_edge()  # (E, C)
        a_blocks, b_blocks = [], []
        for path in self._paths:
            a, b = self._path_weights(path.weight_rows, path.mul_in, path.mul_out)
            a_blocks.append(a)
            b_blocks.append(b)
        a = torch.cat(a_blocks, dim=2)  # (ns, C, K), K = sum of output multiplicities
        b = torch.cat(b_blocks, dim=1)  # (ns, K)
        ns, hidden, k = a.shape
        per_node = (h @ a.reshape(ns, hidden * k)).view(-1, hidden, k)  # (N, C, K)
        weighted = graph.neighbour_matmul(z, per_node) + take(h @ b, graph.neighbour)  # (E, K)
        pieces = [None] * len(self._out_dims)
        start = 0
        for path in self._paths:
            mul = path.mul_out
            y = sh[:, self._sh_slices[path.i_in2]] @ self.w3j(path, sh)[0]  # (E, 2l+1)
            part = path.path_weight * weighted[:, start : start + mul].unsqueeze(-1) * y.unsqueeze(1)
            start += mul
            part = part.reshape(part.shape[0], -1)
            pieces[path.i_out] = part if pieces[path.i_out] is None else pieces[path.i_out] + part
        for idx, piece in enumerate(pieces):
            if piece is None:  # an output irrep no path reaches stays zero, as in e3nn
                pieces[idx] = sh.new_zeros(sh.shape[0], self._out_dims[idx])
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
        z = self.hidden(edge)
        nb = graph.neighbour
        out = None
        edge_scalars, a_edge, b_edge = [], [], []
        for path in self._paths:
            mul_in, mul_out = path.mul_in, path.mul_out
            a, b = self._path_weights(path.weight_rows, mul_in, mul_out)  # (mul_in, C, ns), (mul_in, ns)
            xin = x[:, self._in_slices[path.i_in1]].view(x.shape[0], mul_in, -1)  # (N, mul, 2l+1)
            y = sh[:, self._sh_slices[path.i_in2]]  # (E, 2l+1)
            w3j = self.w3j(path, x)[..., 0]  # (2l+1, 2l+1)
            if path.key[1] == 0:  # the per-edge factor is a scalar: node-level contraction
                scalar = path.path_weight * (y @ w3j)[:, 0]  # (E,): pw Y_0 3j(0, 0, 0)
                feats = xin[..., 0]  # (N, mul)
                per_node = (feats @ a.reshape(mul_in, -1)).view(-1, a.shape[1], a.shape[2])
                part = (graph.neighbour_matmul(z.per_edge(), per_node) + take(feats @ b, nb)) * scalar.unsqueeze(-1)
                out = part if out is None else out + part
            else:
                t = torch.einsum("num,mk->nuk", xin, w3j)  # (N, mul, 2l+1), node level
                edge_scalars.append(path.path_weight * torch.einsum("euk,ek->eu", take(t, nb), y))
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
    """eComFormer's node-wise equivariant update layer (Hua & Lin, SPFrame, Eqs. 11-13):

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
