"""SPFrame's learned frames (Hua & Lin; the frame blocks of its appendix A.2-A.4) as frames of
the registry: a head per layer passes invariant messages over the backbone's message graph and
turns them into a rotation.

==========================  ===============================================================
frame                       F_i
==========================  ===============================================================
spframe_quaternion          R(q_i) F_global, q_i from invariant messages (Eqs. 6-8)
spframe_gram_schmidt        GS(v_1, v_2) F_global, v_k = sum_j phi_k in R^3 (Eq. 16), the edge
                            features enriched with the cosines of each edge direction with the
                            lattice vectors (A.4)
equivariant_gram_schmidt    GS(v_1, v_2), v_k = sum_j phi_k u_ij with scalar phi_k and the
                            equivariant edge direction u_ij (Eq. 14); degenerate atoms fall
                            back to the global frame (tilted, see FALLBACK_TILT_QUATERNION)
==========================  ===============================================================

What the message graph is belongs to the backbone (see :class:`~crystalframes.frames.registry.
GraphNeighbourhood`): on eComFormer its k-NN edges with their edge features and u_ij = r_hat_ij; on
Crystalformer the atom pairs (i, j) of the layer's attention, with the attention mass of every
head, sum_n w_ijn, as the edge features and the attention-weighted direction u_ij = sum_n w_ijn
r_hat_ijn (head mean) as the direction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from crystalframes.frames.local import gram_schmidt
from crystalframes.frames.registry import Frame, FrameSetup, GraphNeighbourhood, register_frame, view
from crystalframes.frames.spframe import quaternion_to_rotation
from crystalframes.nn.encodings import GaussianBasis, lattice_cosines
from crystalframes.nn.graph import ConcatMLP, EdgeTable, MessageGraph, take

# When v_2 is collinear with v_1, gram_schmidt takes the fallback axis least aligned with e_1.
# With the untilted global frame that choice ties exactly where symmetry puts e_1 (the c axis of
# a hexagonal cell, [111] of a cubic one), and rounding noise then picks different axes for a
# rotated copy of the crystal (measured: output changes of ~1e-6). A fixed generic rotation of
# the fallback frame keeps it equivariant and moves those ties to directions no symmetry favours.
FALLBACK_TILT_QUATERNION = (0.8, 0.35, 0.25, 0.1)


# Relative size below which Gram-Schmidt input vectors count as cancelled (GramSchmidtHead):
# 10x the ~1e-6 rounding of published coordinates and of float32 message sums, 10x below the
# anisotropy a fresh model sees on general positions (~1e-4 of s_k with k = 25 neighbours).
DEGENERATE_RTOL = 1e-5


def fallback_tilt(like: torch.Tensor) -> torch.Tensor:
    """The fixed rotation R(FALLBACK_TILT_QUATERNION) (3, 3), in ``like``'s dtype and device."""
    q = torch.tensor(FALLBACK_TILT_QUATERNION, dtype=like.dtype, device=like.device)
    return quaternion_to_rotation(q)


# ---------------------------------------------------------------------------------------------
# Heads: one per layer of a learned frame
# ---------------------------------------------------------------------------------------------



class InvariantMessage(nn.Module):
    """The invariant message function of the frame blocks (Hua & Lin, SPFrame, Eq. 7):

        q = LN_Q(f_i),  k = (LN_K(f_i) | LN_K(f_j)),  v = (LN_V(f_i) | LN_V(f_j) | LN_E(e_ij))
        alpha_ij = q o xi_K(k) / sqrt(C),  msg_ij = sigmoid(BN(alpha_ij)) o xi_V(v)

    with LN_* linear layers and xi = Linear - SiLU - Linear. Unlike the backbone's attention
    layer the key has no edge part, as the seed writes it. Returns msg (E, C).

    Edge quantities come in two kinds (:class:`~crystalframes.frames.registry.GraphNeighbourhood`):
    edge features e_ij (``edge_dim``; 0 for none) enter the value MLP as above; edge weights
    a_ij (``weight_dim``), sums over the periodic images of a pair such as Crystalformer's
    attention mass, multiply the message linearly, msg_ij o W_A a_ij with no bias: a supercell
    splits one pair into several whose weights add up, and only a message linear in a_ij sums
    to the same total.
    """

    def __init__(self, dim: int, edge_dim: int | None = None, weight_dim: int = 0):
        super().__init__()
        edge_dim = dim if edge_dim is None else edge_dim
        self.dim = dim
        self.lin_query = nn.Linear(dim, dim)
        self.lin_key = nn.Linear(dim, dim)
        self.lin_value = nn.Linear(dim, dim)
        self.lin_edge = nn.Linear(edge_dim, dim) if edge_dim else None
        self.key_update = ConcatMLP((dim, dim), dim)
        self.msg_update = ConcatMLP((dim, dim, dim) if edge_dim else (dim, dim), dim)
        self.bn_alpha = nn.BatchNorm1d(dim)
        # linear in the edge weights, no bias: see the class docstring
        self.lin_weight = nn.Linear(weight_dim, dim, bias=False) if weight_dim else None

    def forward(self, f: torch.Tensor, edge: EdgeTable | None, graph: MessageGraph, weights: torch.Tensor | None = None) -> torch.Tensor:
        # The key sees (f_i, f_j) only: one evaluation per atom pair; the value also sees e_ij:
        # one per (pair, edge-table row). BatchNorm runs on the edges (training statistics).
        pairs = graph.groups(None)
        groups = pairs if self.lin_edge is None else graph.groups(edge)
        q, k, v = self.lin_query(f), self.lin_key(f), self.lin_value(f)
        key = self.key_update([(k, pairs.centre), (k, pairs.neighbour)])
        alpha = pairs.expand(take(q / math.sqrt(self.dim), pairs.centre) * key)
        parts = [(v, groups.centre), (v, groups.neighbour)]
        if self.lin_edge is not None:
            parts.append(groups.edge_part(edge.map(self.lin_edge)))
        msg = torch.sigmoid(self.bn_alpha(alpha)) * groups.expand(self.msg_update(parts))
        return msg if self.lin_weight is None else msg * self.lin_weight(weights)


class QuaternionHead(nn.Module):
    """Invariant local frame from a predicted quaternion (SPFrame, Hua & Lin, Eqs. 6-8, A.2):

        q_i = softplus(LN_msg(f_i + BN(sum_j msg_ij))) in R^4,  F_INV,i = R(q_i / |q_i|)

    ``positive=True`` keeps the seed's softplus, which makes all four components positive and
    so restricts the reachable rotations (axes in the positive octant, angles below pi);
    ``positive=False`` drops it (an unrestricted quaternion head). Zero quaternions map to the
    identity (see :func:`~crystalframes.frames.quaternion_to_rotation`).
    """

    def __init__(self, dim: int, edge_dim: int | None = None, positive: bool = True, weight_dim: int = 0):
        super().__init__()
        self.positive = positive
        self.message = InvariantMessage(dim, edge_dim, weight_dim)
        self.bn = nn.BatchNorm1d(dim)
        self.lin_quaternion = nn.Linear(dim, 4)

    def quaternions(self, f: torch.Tensor, edge: EdgeTable | None, graph: MessageGraph, weights=None) -> torch.Tensor:
        msg = graph.sum_at_centre(self.message(f, edge, graph, weights))
        q = self.lin_quaternion(f + self.bn(msg))
        return F.softplus(q) if self.positive else q

    def forward(self, f: torch.Tensor, edge: EdgeTable | None, graph: MessageGraph, weights=None) -> torch.Tensor:
        return quaternion_to_rotation(self.quaternions(f, edge, graph, weights))


class GramSchmidtHead(nn.Module):
    """Local frame by Gram-Schmidt of two predicted vectors (Hua & Lin, SPFrame, A.4, Eqs. 14-16).

    ``equivariant=True`` (Eq. 14): v_k = sum_j phi_k(f_i, f_j, e_ij) u_ij with scalar
    phi_k (v_2 through the second moment of the directions, see :meth:`vectors`) and u_ij the equivariant direction of edge ij (r_hat_ij on eComFormer), so the frame rotates with the crystal (an SO(3)-equivariant local frame; degenerate
    atoms whose v_1 vanishes or whose v_2 is collinear fall back to ``fallback``, pass an
    equivariant one). ``equivariant=False`` (Eq. 16): v_k = sum_j phi_k(...) with phi_k in R^3,
    an invariant frame F_INV,i to be composed with a global frame.

    Each phi_k has its own message function (:class:`InvariantMessage` followed by a linear
    read-out), as in the seed ("two distinct message passing and aggregation modules").

    Degeneracy is judged relative to s_k = sum_j |phi_k u_ij| (or sum_j |phi_k|): on a
    symmetric site the terms of v_k cancel, and what is left of them (rounding of the sum, or the
    ~1e-6 rounding of published coordinates) carries no reliable direction, yet an absolute
    threshold would accept it and let noise orient the frame. v_k with |v_k| <= rtol s_k counts as
    zero and v_2 within rtol of collinear as collinear (``degenerate_rtol``, default
    :data:`DEGENERATE_RTOL` = 1e-5). Measured why it is this small: with k = 25 neighbours an
    environment is nearly isotropic, so a fresh model's v_2 leaves the line of v_1 by only ~1e-4
    of s_2 on general positions (SbSI); the earlier 1e-3 sent every such atom to the fallback,
    and on Crystalformer, whose u_ij are image sums that largely cancel, 90 % of an MP batch.
    """

    def __init__(self, dim: int, edge_dim: int | None = None, equivariant: bool = True, degenerate_rtol: float | None = None, weight_dim: int = 0):
        super().__init__()
        self.equivariant = equivariant
        self.degenerate_rtol = degenerate_rtol
        width = 1 if equivariant else 3
        self.messages = nn.ModuleList([InvariantMessage(dim, edge_dim, weight_dim) for _ in range(2)])
        self.fallback_fraction: torch.Tensor | None = None  # of the last forward pass
        # with edge weights the read-out must stay linear in them: no bias
        self.readouts = nn.ModuleList([nn.Linear(dim, width, bias=not weight_dim) for _ in range(2)])

    def vectors(self, f, edge, graph, directions=None, weights=None, direction_sizes=None, moments=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(v_k, s_k)] for k = 1, 2: v_k (N, 3) and the total size of its terms
        s_k = sum_j |phi_k(...)| a_ij (N,), the scale against which v_k counts as degenerate;
        a_ij = ``direction_sizes``, the summed length of the terms that make up u_ij (|u_ij|
        when None): a direction that is itself a sum, such as Crystalformer's image sum, can
        cancel to rounding noise, and must not set the scale its own noise is judged by.

        Equivariant vectors: v_1 = sum_j phi_1 u_ij and v_2 = sum_j phi_2 M_ij e_1 with
        e_1 = v_1 / |v_1| and M_ij = ``moments`` (E, 3, 3), the second moment of the edge's
        directions (r_hat r_hat^T on a graph of single edges, the default). That is Eq. 14 with
        phi_2 also seeing the invariant cosine r_hat_ij . e_1: with phi_k of the distance alone,
        as at initialisation, sum_j phi_k r_hat spans about one direction (measured: v_2
        within 1e-6 s_2 of collinear with v_1 on every general position of SbSI, so every atom
        fell back to the global frame), while M e_1 leaves the line of e_1 unless e_1 is an
        axis of M, as it is on a symmetry axis, the degeneracy the fallback is for."""
        out = []
        e1 = None
        for k, (message, readout) in enumerate(zip(self.messages, self.readouts)):
            phi = readout(message(f, edge, graph, weights))  # (E, 1) or (E, 3)
            if not self.equivariant:
                out.append((graph.sum_at_centre(phi), graph.sum_at_centre(phi.norm(dim=-1))))
                continue
            a = directions.norm(dim=-1) if direction_sizes is None else direction_sizes
            if k == 0:
                terms = phi * directions
                v1 = graph.sum_at_centre(terms)
                e1 = v1 / v1.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(v1.dtype).tiny)
            else:
                e = take(e1, graph.centre)
                if moments is None:  # r_hat r_hat^T e_1 = (r_hat . e_1) r_hat
                    unit = directions / directions.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
                    projected = (unit * e).sum(-1, keepdim=True) * unit * a.unsqueeze(-1)
                else:
                    projected = torch.einsum("ejk,ek->ej", moments, e)
                terms = phi * projected
            out.append((graph.sum_at_centre(terms), graph.sum_at_centre(phi.abs().squeeze(-1) * a)))
        return out

    def forward(self, f, edge: EdgeTable | None, graph: MessageGraph, directions=None, fallback=None, weights=None,
                direction_sizes=None, moments=None, degenerate=None) -> torch.Tensor:
        """Frames (N, 3, 3) of :meth:`frames_and_masks`."""
        return self.frames_and_masks(f, edge, graph, directions, fallback, weights, direction_sizes, moments, degenerate)[0]

    def frames_and_masks(self, f, edge: EdgeTable | None, graph: MessageGraph, directions=None, fallback=None, weights=None,
                         direction_sizes=None, moments=None, degenerate=None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Frames (N, 3, 3) and the (zero, collinear) masks (N, 1) of the atoms sent to the
        fallback. ``degenerate``: masks decided by an earlier layer, added to this layer's own
        (see :class:`FallbackSites`). The masks are also left in ``self.degenerate`` and their
        share in ``self.fallback_fraction``: diagnostics of the last forward pass, which no
        computation reads."""
        if self.equivariant and directions is None:
            raise ValueError("the equivariant Gram-Schmidt frame needs an equivariant direction per edge")
        (v1, s1), (v2, s2) = self.vectors(f, edge, graph, directions, weights, direction_sizes, moments)
        # Decide degeneracy relative to the size of the terms (see the class docstring), then
        # hand gram_schmidt inputs on which its own (absolute, tiny) tests agree: a v_1 that
        # counts as zero is passed as exactly zero (-> fallback frame), a v_2 that counts as
        # collinear as a copy of v_1 (-> fallback axis). Gram-Schmidt ignores the lengths, so
        # dividing by s_k changes nothing else.
        tiny = torch.finfo(v1.dtype).tiny
        rtol = self.degenerate_rtol or DEGENERATE_RTOL
        n1 = v1.norm(dim=-1, keepdim=True)
        e1 = v1 / n1.clamp_min(tiny)
        perp = v2 - (e1 * v2).sum(-1, keepdim=True) * e1
        zero = n1 <= rtol * s1.unsqueeze(-1)
        collinear = perp.norm(dim=-1, keepdim=True) <= rtol * s2.unsqueeze(-1)
        if degenerate is not None:
            zero, collinear = zero | degenerate[0], collinear | degenerate[1]
        self.degenerate = (zero, collinear)
        # diagnostics (logged per epoch by the training module): atoms sent to the fallback
        self.fallback_fraction = (zero | collinear).detach().float().mean()
        u1 = torch.where(zero, torch.zeros_like(v1), v1 / s1.clamp_min(tiny).unsqueeze(-1))
        u2 = torch.where(collinear, u1, v2 / s2.clamp_min(tiny).unsqueeze(-1))
        return gram_schmidt(u1, u2, fallback=fallback), (zero, collinear)


# ---------------------------------------------------------------------------------------------
# The frames of the registry
# ---------------------------------------------------------------------------------------------


class FallbackSites:
    """The atoms the equivariant Gram-Schmidt frame sends to its fallback in one forward pass:
    (zero, collinear) masks (N, 1), decided by the frame's first layer and added to the masks of
    every later layer.

    Why shared between layers: degeneracy is a property of the site (v_1 = 0 or v_2 collinear
    with v_1, as on every site of an axis of symmetry), and only the first layer's inputs still
    have the crystal's symmetry. Later layers' do not: a fallback atom's features depend on its
    global-frame orientation, which symmetry-equivalent atoms do not share, so a symmetric site's
    v_2 there leaves the line of v_1 by 1e-6 to 1e-3 of s_2 (measured in float64, MP demo) and
    Gram-Schmidt of such nearly collinear vectors let those differences orient the frame: the
    baseline trained to 0.25 eV/atom where its backbone reached 0.105. Keeping the first layer's
    decision makes every layer's frame of a site the same kind of frame.

    One instance per forward pass, made by :meth:`EquivariantGramSchmidt.setup` and reached
    through that pass's setup, which the backbone hands to every layer's call."""

    def __init__(self):
        self._masks: tuple[torch.Tensor, torch.Tensor] | None = None

    def decided(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The first layer's masks for a later ``layer``; None for the first layer itself."""
        if layer == 0:
            return None
        if self._masks is None:
            raise RuntimeError(f"layer {layer} of the equivariant Gram-Schmidt frame ran before layer 0 decided its fallback sites")
        return self._masks

    def decide(self, layer: int, masks: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Record the masks of ``layer`` if it is the first; later layers' are not kept."""
        if layer == 0:
            self._masks = masks


@dataclass(frozen=True)
class GramSchmidtSetup(FrameSetup):
    """:class:`FrameSetup` with the :class:`FallbackSites` of one forward pass."""

    fallback_sites: FallbackSites = field(default_factory=FallbackSites)


class _LearnedFrame(Frame):
    """A learned frame: one head per layer, built from the neighbourhood's message graph.
    ``edge_dim``: width of the graph's edge features (0: none); ``edge_weight_dim``: width of
    its edge weights (0: none), see :class:`InvariantMessage`."""

    needs = frozenset({"features"})
    composes_with_global = True


@register_frame
class SPFrameQuaternion(_LearnedFrame):
    """SPFrame with the quaternion head: F_i = R(q_i) F_global."""

    name = "spframe_quaternion"
    summary = "SPFrame: learned invariant quaternion frame x global frame"

    options = ("positive_quaternion",)

    def __init__(self, global_frame="qr", *, dim, edge_dim, edge_weight_dim=0, layers=1, positive_quaternion=True, **options):
        super().__init__(global_frame, dim=dim, edge_dim=edge_dim, layers=layers, **options)
        self.heads = nn.ModuleList(QuaternionHead(dim, edge_dim, positive_quaternion, edge_weight_dim) for _ in range(layers))

    def forward(self, layer, setup, hood):
        hood = view(self, hood, GraphNeighbourhood)
        local = self.heads[layer](hood.features, hood.edge_features, hood.graph, hood.edge_weights)
        return (local @ setup.global_frames).index_select(0, hood.centres)


@register_frame
class SPFrameGramSchmidt(_LearnedFrame):
    """SPFrame with the Gram-Schmidt head (invariant vectors): F_i = GS(v_1, v_2) F_global. The
    messages also see the cosines of each edge direction with the lattice vectors (A.4): as
    ``angle_bins`` Gaussians of each cosine added to the edge features, or, on a graph with edge
    weights instead (whose messages must stay linear in them), as the cosine moments
    u_ij . l_k / |l_k| appended to the weights."""

    name = "spframe_gram_schmidt"
    summary = "SPFrame: learned invariant Gram-Schmidt frame x global frame"
    needs = frozenset({"features", "lattice"})
    dependences = {"basis_change": "the messages see the cosines with the chosen basis' lattice vectors"}

    options = ("angle_bins",)

    def __init__(self, global_frame="qr", *, dim, edge_dim, edge_weight_dim=0, layers=1, angle_bins=16, **options):
        super().__init__(global_frame, dim=dim, edge_dim=edge_dim, layers=layers, **options)
        weight_dim = edge_weight_dim + 3 if edge_weight_dim else 0
        self.heads = nn.ModuleList(GramSchmidtHead(dim, edge_dim, equivariant=False, weight_dim=weight_dim) for _ in range(layers))
        if edge_dim:
            self.angle_basis = GaussianBasis(-1.0, 1.0, angle_bins)
            self.angle_embeddings = nn.ModuleList(nn.Linear(3 * angle_bins, edge_dim) for _ in range(layers))

    def forward(self, layer, setup, hood):
        hood = view(self, hood, GraphNeighbourhood)
        f, edge, graph, weights = hood.features, hood.edge_features, hood.graph, hood.edge_weights
        edge_batch = setup.batch.index_select(0, graph.centre)
        if edge is not None:
            cos = lattice_cosines(hood.edge_directions, setup.lattice, edge_batch)
            edge = edge + self.angle_embeddings[layer](self.angle_basis(cos).flatten(1))
        if weights is not None:  # the unnormalised cosines u . l_k / |l_k|: linear in the image sums
            lattice = setup.lattice.index_select(0, edge_batch)  # (E, 3, 3)
            moments = torch.einsum("ek,ejk->ej", hood.edge_directions, lattice) / lattice.norm(dim=-1)
            weights = torch.cat([weights, moments], dim=-1)
        local = self.heads[layer](f, edge, graph, weights=weights)
        return (local @ setup.global_frames).index_select(0, hood.centres)


@register_frame
class EquivariantGramSchmidt(_LearnedFrame):
    """SPFrame's SO(3)-equivariant baseline: F_i = GS(v_1, v_2) of equivariant vectors
    v_k = sum_j phi_k u_ij; the global frame only serves atoms whose vectors are degenerate.
    Edge weights, if the graph has them, are already in the directions u_ij (sums over images),
    so phi_k does not see them (v_k stays linear in the weights)."""

    name = "equivariant_gram_schmidt"
    summary = "SPFrame's baseline: learned equivariant Gram-Schmidt frame (global frame as fallback)"
    global_frame_is_fallback = True

    def __init__(self, global_frame="qr", *, dim, edge_dim, edge_weight_dim=0, layers=1, **options):
        super().__init__(global_frame, dim=dim, edge_dim=edge_dim, layers=layers, **options)
        self.heads = nn.ModuleList(GramSchmidtHead(dim, edge_dim, equivariant=True) for _ in range(layers))

    def setup(self, lattice, frac_coords, batch) -> GramSchmidtSetup:
        """The setup of every frame, with this forward pass's :class:`FallbackSites`."""
        return GramSchmidtSetup(**vars(super().setup(lattice, frac_coords, batch)))

    def forward(self, layer, setup: GramSchmidtSetup, hood):
        # Degenerate atoms (v_1 = 0, or v_2 collinear with v_1, as on every site of an axis of
        # symmetry) fall back to the global frame tilted by a fixed generic rotation; which
        # atoms they are is decided once per forward pass (FallbackSites says why).
        hood = view(self, hood, GraphNeighbourhood)
        fallback = fallback_tilt(setup.global_frames) @ setup.global_frames
        head = self.heads[layer]
        sites = setup.fallback_sites
        frames, masks = head.frames_and_masks(hood.features, hood.edge_features, hood.graph, directions=hood.edge_directions,
                                              fallback=fallback, direction_sizes=hood.edge_direction_sizes,
                                              moments=hood.edge_direction_moments, degenerate=sites.decided(layer))
        sites.decide(layer, masks)
        return frames.index_select(0, hood.centres)
