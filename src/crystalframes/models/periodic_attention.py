"""Crystalformer's infinitely connected attention (Taniai et al., ICLR 2024) with CrystalFramer's
frame-based angle encoding (Ito, Taniai et al., ICLR 2025), in plain PyTorch (CPU and CUDA, any dtype).

The attention of atom i in one head sums over every atom j of its crystal *and* every lattice
translation n (Taniai et al., ICLR 2024)::

    y_i = sum_{j,n} w_ijn (v_j + psi_ijn),
    w_ijn = exp(q_i.k_j / sqrt(d) + a_i |r_j + nL - r_i|^2) / Z_i,          a_i = -rho_i / (2 r0^2)

This is the reference's y_i = sum_j softmax_j(q_i.k_j/sqrt(d) + z_ij)(v_j + psi_ij) with
z_ij = log sum_n exp(a_i d_ijn^2) and psi_ij the Gaussian-weighted image average of psi_ijn,
written per (j, n) "entry". psi is linear in its bases, so the image average and the projection
commute: bases are summed per atom first and projected once per atom::

    sum_{j,n} w_ijn psi_ijn = W0 (sum w_ijn b_dist(d_ijn)) + sum_k Wk (sum w_ijn b_angl(e_k . r_hat_ijn))

(the second term only with a frame: CrystalFramer's psi = W0 b_dist + sum_k Wk b_angl).

How this differs from the reference implementation, on purpose:

* No fixed image box and no atom cap. :func:`periodic_entries` enumerates exactly the entries
  with d <= R_i, R_i = ``cutoff_sigmas`` x the widest Gaussian sigma_ih = r0 / sqrt(rho_ih) of the
  atom's heads, in bounded chunks; each head keeps the entries within its own cutoff. The
  reference sizes an image box from 3.5 sigma; a 3.5-sigma sphere misses ~7e-3 of the Gaussian
  mass (outputs move by ~1e-3 when the range doubles), so the default is 6 sigma (7e-8 of the
  mass; outputs converged to < 1e-6).
* Entries are processed as padded rows (one row per centre atom) grouped in buckets of similar
  length, so that softmaxes and per-atom sums are dense row operations and batched matmuls,
  and every temporary is bounded by ``memory_budget`` elements.
* The angle Gaussians (width = 4 centre spacings, very smooth) are evaluated through their
  Chebyshev expansion in c = e_k . r_hat, accurate to ``ANGLE_BASIS_TOLERANCE`` (absolute, peak
  1): the per-entry work becomes a three-term recurrence plus one batched matmul per block of 8 degrees
  (no exp), and its backward pass recomputes the recurrence instead of storing anything.
* The width standardisation of rho keeps running statistics (like BatchNorm): batch statistics
  in training, running ones in evaluation, so evaluation never depends on the batch.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Bases, Chebyshev numerics and the entry enumeration live in their own modules; their public
# names are re-exported here, where the model and the tests have always imported them.
from crystalframes.frames.registry import Frame, FrameSetup, GraphNeighbourhood, Neighbourhood, RowNeighbourhood
from crystalframes.nn.chebyshev import (  # noqa: F401
    ANGLE_BASIS_TOLERANCE,
    ANGLE_WIDTH_SCALE,
    DISTANCE_BASES,
    DISTANCE_MAX,
    EXP_FLOOR,
    ChebyshevMoments,
    angle_centres,
    chebyshev_expansion,
    distance_centres,
    gaussian,
)
from crystalframes.nn.encodings import MIN_DISTANCE
from crystalframes.nn.graph import MessageGraph, take
from crystalframes.precision import full_precision
from crystalframes.nn.periodic_entries import (  # noqa: F401
    DEFAULT_MEMORY_BUDGET,
    Bucket,
    PeriodicEntries,
    budget_on,
    entry_buckets,
    periodic_entries,
)

# Crystalformer's constants (Taniai et al., ICLR 2024, and its public code; the bases' are in nn/chebyshev.py).
R0 = 1.4  # Angstrom: Gaussian length scale r0
RHO_FLOOR = 0.5  # b: rho = (1 - b) ELU(beta x / (1 - b)) + 1 > b
RHO_BETA = 0.1  # beta
REFERENCE_CUTOFF_SIGMAS = 3.5  # the reference's adaptive image range (not converged; see below)
# Outside c sigma a 3-D Gaussian keeps a fraction P(chi_3 > c) of its mass: 7e-3 at c = 3.5,
# 2e-5 at 5, 7e-8 at 6. At 6 sigma, doubling the range moves model outputs by ~1e-8 relative
# (tests/models/test_crystalformer.py::test_periodic_sum_converged).
DEFAULT_CUTOFF_SIGMAS = 6.0
# How the width standardisation gets its mean and variance in training: "running" (batch
# statistics, running averages for evaluation; ours) or "first_batch" (those of the first
# training batch, frozen for good, as the reference code does).
RHO_STATISTICS = ("running", "first_batch")
# The first layer enumerates images this much beyond its cutoff, so that later layers (whose
# Gaussians are usually about as wide) only filter that list.
ENUMERATION_HEADROOM = 1.15


def _frame_leaders(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head frames (n, H, 3, 3) -> (leader (n, H): the first head of the same centre with
    bitwise the same frame, is_leader (n H,)); no host synchronisation."""
    n, h = frames.shape[:2]
    flat = frames.reshape(n, h, 9)
    heads = torch.arange(h, device=frames.device)
    same = (flat.unsqueeze(2) == flat.unsqueeze(1)).all(dim=-1) | torch.eye(h, dtype=torch.bool, device=frames.device)
    leader = torch.where(same, heads, h).amin(dim=-1)
    return leader, (leader == heads).reshape(-1)


def _frame_groups(frames: torch.Tensor, leader: torch.Tensor, is_leader: torch.Tensor, is_leader_host: np.ndarray):
    """The distinct frames of every centre (frames of different centres never merge) and which
    one every (centre, head) uses: (group (n, H), centre (G,), the same centres on the host,
    frame (G, 3, 3)); groups are numbered by centre, then by first head. The host copy of the
    leader mask sizes the groups (``nonzero_static``: no synchronisation)."""
    n, h = frames.shape[:2]
    members_host = np.flatnonzero(is_leader_host)
    number = torch.cumsum(is_leader, 0) - 1  # group number of every leading (centre, head)
    group = take(number, (torch.arange(n, device=frames.device).unsqueeze(1) * h + leader).reshape(-1)).view(n, h)
    members = torch.nonzero_static(is_leader, size=len(members_host)).squeeze(-1)
    centre = torch.div(members, h, rounding_mode="floor")
    return group, centre, members_host // h, take(frames.reshape(n * h, 9), members).view(-1, 3, 3)


def _distinct_frames_per_centre(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(group (n, H), centre (G,), frame (G, 3, 3)) of per-head frames (n, H, 3, 3): the two
    steps above at once (one synchronisation), for a single set of frames."""
    leader, is_leader = _frame_leaders(frames)
    group, centre, _, distinct = _frame_groups(frames, leader, is_leader, is_leader.cpu().numpy())
    return group, centre, distinct


def _batch_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance over all elements of ``x``, for the width standardisation.

    In a distributed run (torch.distributed initialised with several processes) they are those
    of the global batch: element counts, sums and sums of squares are summed over the ranks in
    float64, so every rank gets bit-identical statistics. Every rank then has to run its training
    forward passes together (one all-reduce per layer and step), as DDP's training steps do."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return x.mean(), x.var(unbiased=False)
    x64 = x.detach().to(torch.float64)
    sums = torch.stack([x64.new_tensor(float(x.numel())), x64.sum(), x64.square().sum()])
    dist.all_reduce(sums)
    mean = sums[1] / sums[0]
    return mean, (sums[2] / sums[0] - mean.square()).clamp_min(0.0)

# ---------------------------------------------------------------------------------------------
# The attention layer
# ---------------------------------------------------------------------------------------------

@dataclass
class PeriodicGeometry:
    """What an attention layer needs to know about the crystals of a batch."""

    pos: torch.Tensor  # (N, 3)
    frac: torch.Tensor  # (N, 3)
    lattice: torch.Tensor  # (B, 3, 3)
    batch: torch.Tensor  # (N,)
    num_atoms: torch.Tensor  # (B,)
    frame_setup: FrameSetup | None = None  # the frame's per-forward quantities (Frame.setup)
    # entries enumerated for a larger cutoff by an earlier layer (filtered, not re-enumerated)
    cached_entries: PeriodicEntries | None = None
    cached_cutoff: torch.Tensor | None = None

    def entries(self, cutoff: torch.Tensor, budget: int = DEFAULT_MEMORY_BUDGET) -> PeriodicEntries:
        """:func:`periodic_entries` for per-atom ``cutoff`` (N,), reusing an earlier layer's
        enumeration when it covers the cutoff (the result is identical either way). Reusing it
        costs one host synchronisation (:meth:`PeriodicEntries.within`), which also carries
        whether the cutoff was covered."""
        cutoff = cutoff.detach()
        if self.cached_entries is not None:
            ent, uncovered = self.cached_entries.within(cutoff, flag=(cutoff > self.cached_cutoff).any())
            if not uncovered:
                return ent
        self.cached_cutoff = cutoff * ENUMERATION_HEADROOM
        self.cached_entries = periodic_entries(self.pos, self.frac, self.lattice, self.batch, self.num_atoms, self.cached_cutoff, budget)
        return self.cached_entries.within(cutoff)


class PeriodicAttention(nn.Module):
    """One multi-head infinitely connected attention layer (Crystalformer), optionally with
    CrystalFramer's angle encoding in a frame (``angle_encoding``; the frame itself, any frame
    of :mod:`crystalframes.frames`, is passed to :meth:`forward`).

    Parameters: q/k/v/out projections with biases (4 (C^2 + C)), the width vectors w_h (C), the
    distance projections W0 (H x d x K) and, with a frame, the angle projections W1..3
    (3 x H x d x D); W0..3 have no biases (853,505 trainable parameters for the reference model).

    rho standardisation: x_ih = q_ih . w_h is standardised by one mean and variance over all
    atoms and heads, as in the reference; they come from the batch in training (no gradient
    through them) and from running averages (momentum ``rho_momentum``; the first training
    batch sets them) in evaluation; ``rho_statistics="first_batch"`` instead freezes those of the
    first training batch for training and evaluation alike, as the reference does. They live in
    ``rho_stats`` = (mean, variance, batches seen), a frozen Parameter rather than a buffer so that parameter counts match the
    reference, which stores its first-batch scale as frozen Parameters too. DDP neither reduces
    nor broadcasts a frozen Parameter after the start, so in a distributed run the batch moments
    are summed over the ranks (:func:`_batch_moments`): every rank holds the same statistics,
    those of the global batch, and ``first_batch`` means the global first batch.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        distance_bases: int = DISTANCE_BASES,
        distance_max: float = DISTANCE_MAX,
        angle_encoding: bool = False,
        angle_bases: int = 64,
        angle_width_scale: float = ANGLE_WIDTH_SCALE,
        distance_coef: float = 1.0,
        angle_coef: float = 1.0,
        r0: float = R0,
        rho_floor: float = RHO_FLOOR,
        rho_beta: float = RHO_BETA,
        cutoff_sigmas: float = DEFAULT_CUTOFF_SIGMAS,
        rho_momentum: float = 0.1,
        rho_statistics: str = "running",
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        if not 0.0 < rho_floor < 1.0:
            raise ValueError("rho_floor must be in (0, 1)")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.r0, self.rho_floor, self.rho_beta = float(r0), float(rho_floor), float(rho_beta)
        # fixed scale factors of the distance and angle encodings (the official code's
        # value_pe_dist_coef / value_pe_angle_coef; 1.5 and 6.0 in CrystalFramer's lightweight setting)
        self.distance_coef, self.angle_coef = float(distance_coef), float(angle_coef)
        self.cutoff_sigmas = float(cutoff_sigmas)
        self.rho_momentum = float(rho_momentum)
        if rho_statistics not in RHO_STATISTICS:
            raise ValueError(f"rho_statistics must be one of {RHO_STATISTICS}, got {rho_statistics!r}")
        self.rho_statistics = rho_statistics
        self.memory_budget = int(memory_budget)

        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.width_weight = nn.Parameter(torch.empty(heads, self.head_dim))
        self.rho_stats = nn.Parameter(torch.tensor([0.0, 1.0, 0.0]), requires_grad=False)

        centres, width = distance_centres(distance_bases, distance_max)
        self.register_buffer("distance_centres", centres, persistent=False)
        self.distance_width = width
        self.distance_proj = nn.Parameter(torch.empty(heads, self.head_dim, distance_bases))
        if angle_encoding:
            centres, width = angle_centres(angle_bases, angle_width_scale)
            self.angle_width = width
            # float64 coefficients for each precision, cast at use (not buffers: a float32
            # round trip of the model would degrade the float64 set)
            self._angle_coefficients = {k: chebyshev_expansion(centres, width, tol) for k, tol in ANGLE_BASIS_TOLERANCE.items()}
            self.angle_proj = nn.Parameter(torch.empty(3, heads, self.head_dim, angle_bases))
        else:
            self.angle_proj = None
        self.reset_parameters()

    def reset_parameters(self):
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        nn.init.normal_(self.width_weight, 0.0, self.head_dim**-0.5)
        # Projections of bases: Xavier-uniform over (H d) x K, scaled by K^-1/2 as in the
        # reference, so a position encoding starts small next to v_j.
        for w in [self.distance_proj] + ([] if self.angle_proj is None else list(self.angle_proj)):
            nn.init.xavier_uniform_(w.data.view(-1, w.shape[-1]), gain=w.shape[-1] ** -0.5)
        with torch.no_grad():
            self.rho_stats.copy_(torch.tensor([0.0, 1.0, 0.0]))

    # -- Gaussian width of every atom and head --------------------------------------------------

    def rho(self, q: torch.Tensor) -> torch.Tensor:
        """rho_ih = (1 - b) ELU(beta x / (1 - b)) + 1, x = standardised q_ih . w_h; (N, H).

        Whether statistics exist yet (``rho_stats[2]``, batches seen) is decided on the device
        with ``torch.where``, not read on the host: a read would stall a GPU every layer."""
        x = (q * self.width_weight).sum(-1)
        stats = self.rho_stats
        if self.training:
            with torch.no_grad():
                batch_mean, batch_var = _batch_moments(x)
                fresh = stats[2] == 0
                m = torch.where(fresh, 1.0, self.rho_momentum).to(stats)
                new = torch.stack([(1 - m) * stats[0] + m * batch_mean.to(stats), (1 - m) * stats[1] + m * batch_var.to(stats), stats[2] + 1])
                if self.rho_statistics == "first_batch":  # frozen once the first batch has set them
                    new = torch.where(fresh, new, stats)
                    mean, var = new[0], new[1]
                else:
                    mean, var = batch_mean, batch_var
                stats.copy_(new)
        else:
            mean, var = stats[0], stats[1]
        x = (x - mean.to(x)) * torch.rsqrt(var.to(x) + 1e-12)
        b = self.rho_floor
        return (1 - b) * F.elu(x * (self.rho_beta / (1 - b))) + 1

    # -- forward ---------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, geometry: PeriodicGeometry, frame: Frame | None = None, layer: int = 0) -> torch.Tensor:
        """The layer's output (N, C); ``frame`` (with ``angle_encoding``) is the model's frame
        and ``layer`` this layer's index in it (learned frames have a head per layer)."""
        if (self.angle_proj is not None) != (frame is not None and frame.active):
            raise ValueError("an attention layer with an angle encoding needs a frame, and one without takes none")
        n, h, d = x.shape[0], self.heads, self.head_dim
        q = self.q_proj(x).view(n, h, d)
        k = self.k_proj(x).view(n, h, d)
        v = self.v_proj(x).view(n, h, d)
        out = self._attend(x, q, k, v, geometry, frame, layer)
        return self.out_proj(out.reshape(n, h * d))

    @full_precision
    def _attend(self, x, q, k, v, geometry: PeriodicGeometry, frame: Frame | None, layer: int) -> torch.Tensor:
        """Widths, entries, attention weights, frames and position encodings (N, H, d) in
        float32 or float64 whatever autocast does to the projections around them: distances,
        cutoffs, softmax over thousands of images and frames need it (crystalframes.precision)."""
        n, h, d = x.shape[0], self.heads, self.head_dim
        rho = self.rho(q)
        a = rho * (-0.5 / self.r0**2)  # (N, H)
        head_cutoff = (self.cutoff_sigmas * self.r0) * torch.rsqrt(rho.detach())  # c sigma_ih
        budget = budget_on(self.memory_budget, x.device)
        ent = geometry.entries(head_cutoff.amax(dim=1), budget)
        s = (take(q, ent.pair_centre) * take(k, ent.pair_neighbour)).sum(-1) * d**-0.5  # (U, H)

        unit = ent.unit_vectors() if self.angle_proj is not None else None
        # widest per-entry temporaries of a bucket: distance bases (K), attention rows (H) and
        # the frame construction (~8 H); the Chebyshev moments chunk themselves
        widest = max(self.distance_centres.shape[0], 8 * h)
        buckets, order = entry_buckets(ent, max(1, budget // widest))
        atom_frames = None
        if frame is not None and frame.active and ("features" in frame.needs or "neighbours" not in frame.needs):
            # frames of whole atoms, built once for the layer (learned and global frames)
            if "features" in frame.needs:
                hood = self._pair_neighbourhood(x, ent, s, a, head_cutoff, unit, buckets)
            else:
                hood = Neighbourhood(torch.arange(n, device=x.device))
            atom_frames = frame(layer, geometry.frame_setup, hood)
        pe, pair_ids, pair_w, angle_inputs = [], [], [], []
        for bucket in buckets:
            w, dist, inside = self._weights(bucket, ent, s, a, head_cutoff)
            basis = gaussian(dist, self.distance_centres.to(dist.dtype), self.distance_width)  # (n, M, K)
            features = torch.einsum("nhk,hck->nhc", torch.bmm(w, basis), self.distance_proj)
            if self.distance_coef != 1.0:
                features = features * self.distance_coef
            if self.angle_proj is not None:
                if atom_frames is not None:
                    frames = take(atom_frames, bucket.centres)
                else:  # frames of the bucket's entries (static, or from this layer's attention)
                    rows = RowNeighbourhood(bucket.centres, vec=take(ent.vec, bucket.index), valid=bucket.valid,
                                            weights=w.detach() if "attention" in frame.needs else None)
                    frames = frame(layer, geometry.frame_setup, rows)
                angle_inputs.append((w, bucket, frames.to(w.dtype)))
            pair_ids.append(take(ent.pair, bucket.entries))
            pair_w.append(take(w.transpose(1, 2).reshape(-1, h), bucket.flat))
            pe.append(features)
        if angle_inputs:
            # after every bucket's frames exist: per-head frames are grouped for the whole layer
            # with one host synchronisation (_frame_groups), not one per bucket
            for i, angle in enumerate(self._angle_encodings(angle_inputs, ent, unit)):
                pe[i] = pe[i] + (angle if self.angle_coef == 1.0 else angle * self.angle_coef)
        # position encodings per atom, bucket order -> atom order
        out = take(torch.cat(pe), torch.argsort(order))
        # values: sum_(j,n) w v_j = sum_j (sum_n w) v_j, through the distinct pairs
        w_pair = x.new_zeros(ent.pair_centre.shape[0], h).index_add_(0, torch.cat(pair_ids), torch.cat(pair_w))
        return out.index_add(0, ent.pair_centre, w_pair.unsqueeze(-1) * take(v, ent.pair_neighbour))

    def _weights(self, bucket: Bucket, ent: PeriodicEntries, s, a, head_cutoff):
        """Attention weights (n, H, M) of one bucket's centres, their entries' distances (n, M)
        and which entries each head sees (n, H, M)."""
        idx, centres = bucket.index, bucket.centres
        dist = take(ent.dist, idx)  # (n, M), ascending along each row
        logits = take(s, take(ent.pair, idx)).transpose(1, 2) + take(a, centres).unsqueeze(-1) * dist.square().unsqueeze(1)
        inside = bucket.valid.unsqueeze(1) & (dist.unsqueeze(1) <= take(head_cutoff, centres).unsqueeze(-1))  # (n, H, M)
        return torch.softmax(logits.masked_fill(~inside, float("-inf")), dim=-1), dist, inside

    @torch.no_grad()
    def _pair_neighbourhood(self, x, ent: PeriodicEntries, s, a, head_cutoff, unit, buckets) -> GraphNeighbourhood:
        """The neighbourhood of learned frames: the atom pairs (i, j) of this layer as a message
        graph whose edge weights are the attention mass of every head, sum_n w_ijn (H), and
        whose edge direction is the attention-weighted sum of the image directions,
        sum_n w_ijn r_hat_ijn (head mean; equivariant), with the summed weights and the second
        moment sum_n w_ijn r_hat r_hat^T of those directions. All are sums over images, so a
        supercell (which splits a pair into several) leaves every linear use of them unchanged;
        the pair graph has no edge features a message could transform non-linearly. An extra pass over the weights without
        gradient: like CrystalFramer's frames, a frame is a function of the attention, not a
        path for its gradient."""
        n, h = x.shape[0], self.heads
        mass = x.new_zeros(ent.pair_centre.shape[0], h)
        direction = x.new_zeros(ent.pair_centre.shape[0], 3)
        sizes = x.new_zeros(ent.pair_centre.shape[0])
        moments = x.new_zeros(ent.pair_centre.shape[0], 3, 3)
        for bucket in buckets:
            w, _, _ = self._weights(bucket, ent, s, a, head_cutoff)
            pair = take(ent.pair, bucket.entries)
            w = take(w.transpose(1, 2).reshape(-1, h), bucket.flat)
            mass.index_add_(0, pair, w)
            u = take(unit, bucket.entries)
            direction.index_add_(0, pair, w.mean(-1, keepdim=True) * u)
            sizes.index_add_(0, pair, w.mean(-1) * u.norm(dim=-1))
            moments.index_add_(0, pair, w.mean(-1)[:, None, None] * u.unsqueeze(-1) * u.unsqueeze(-2))
        # the pairs with an image within this layer's cutoff only (within() keeps the enumeration's pairs)
        used = ent.used_pairs()
        mass, direction, sizes, moments = (take(t, used) for t in (mass, direction, sizes, moments))
        graph = MessageGraph(torch.stack([take(ent.pair_centre, used), take(ent.pair_neighbour, used)]), n, x.dtype, group_edges=False)
        return GraphNeighbourhood(torch.arange(n, device=x.device), features=x, graph=graph, edge_weights=mass,
                                  edge_directions=direction, edge_direction_sizes=sizes, edge_direction_moments=moments)

    def _angle_encodings(self, inputs: list, ent: PeriodicEntries, unit) -> list[torch.Tensor]:
        """sum_k Wk sum_(j,n) w b_angl(e_k . r_hat) (n, H, d) for every bucket's (weights (n, H, M),
        bucket, frames (n, [H,] 3, 3)), e_k the rows of each centre's (and head's) frame; the atom
        itself has no direction and contributes no angle feature. A head's entries are a prefix
        of its row (rows are sorted by distance), so every head of a row lies within the row's
        length (``bucket.lengths``, on the host).

        The moments are computed once per distinct (centre, frame): the heads of a centre that
        share a frame share the cosines, so their weights go through one (H x M)(M x 3) product
        per degree instead of H products of one row each. Per-head max frames mostly coincide
        (1.07 distinct frames per centre among 8 heads on the MP sample, benchmarks/angle_moments.py:
        the heaviest entries are the nearest neighbours in every head); per-atom frames are one
        group per centre. Groups come in centre order and a bucket's rows ascend in length, so
        the groups are already sorted by length, as :class:`ChebyshevMoments` needs. The leader
        masks of all buckets reach the host in one transfer.
        """
        per_head = inputs[0][2].dim() == 4
        if per_head:
            leaders = [_frame_leaders(frames) for _, _, frames in inputs]
            every = torch.cat([is_leader for _, is_leader in leaders]).cpu().numpy()
            ends = list(itertools.accumulate(int(is_leader.shape[0]) for _, is_leader in leaders))
            host = [every[end - int(is_leader.shape[0]) : end] for end, (_, is_leader) in zip(ends, leaders)]
        coef = self.angle_basis_coefficients(inputs[0][0])
        terms = coef.shape[0]
        out = []
        for i, (w, bucket, frames) in enumerate(inputs):
            w = w * (take(ent.dist, bucket.index) > MIN_DISTANCE).unsqueeze(1).to(w.dtype)
            n, h, m = w.shape
            if per_head:  # group the (centre, head) rows by their frame
                group, centre, centre_host, frames = _frame_groups(frames, *leaders[i], host[i])
                lengths = bucket.lengths[centre_host]
            else:
                group, centre = torch.arange(n, device=w.device).unsqueeze(1).expand(n, h), torch.arange(n, device=w.device)
                lengths = bucket.lengths
            u = take(take(unit, bucket.index), centre)  # (G, M, 3); padding repeats an entry, but with weight 0
            cos = torch.einsum("gmc,gkc->gmk", u, frames).clamp_(-1.0, 1.0)
            moments = ChebyshevMoments.apply(take(w, centre), cos, lengths, terms, budget_on(self.memory_budget, w.device))  # (G, H, 3, terms)
            # each (centre, head) takes its head's moments from its frame's group
            moments = take(moments.reshape(-1, 3, terms), group * h + torch.arange(h, device=w.device))  # (n, H, 3, terms)
            out.append(torch.einsum("nhkr,rm,khcm->nhc", moments, coef, self.angle_proj))
        return out

    def angle_basis_coefficients(self, like: torch.Tensor) -> torch.Tensor:
        """Chebyshev coefficients (r, D) of the angle Gaussians at ``like``'s working precision."""
        key = (like.dtype, like.device)
        if key not in self._angle_coefficients:
            precision = "float64" if like.dtype == torch.float64 else "float32"
            self._angle_coefficients[key] = self._angle_coefficients[precision].to(device=like.device, dtype=like.dtype)
        return self._angle_coefficients[key]
