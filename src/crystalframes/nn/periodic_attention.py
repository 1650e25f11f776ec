"""Crystalformer's infinitely connected attention (Taniai et al., ICLR 2024) with CrystalFramer's
frame-based angle encoding (seed 001), in plain PyTorch (CPU and CUDA, any dtype).

The attention of atom i in one head sums over every atom j of its crystal *and* every lattice
translation n (REFERENCE.md section 3)::

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
  1): the per-entry work becomes a three-term recurrence plus one batched matmul per degree
  (no exp), and its backward pass recomputes the recurrence instead of storing anything.
* The width standardisation of rho keeps running statistics (like BatchNorm): batch statistics
  in training, running ones in evaluation, so evaluation never depends on the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Bases, Chebyshev numerics and the entry enumeration live in their own modules; their public
# names are re-exported here, where the model and the tests have always imported them.
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
from crystalframes.nn.periodic_entries import (  # noqa: F401
    DEFAULT_MEMORY_BUDGET,
    MIN_DISTANCE,
    Bucket,
    PeriodicEntries,
    entry_buckets,
    periodic_entries,
    take,
)

# Crystalformer's constants (REFERENCE.md section 3; the bases' are in nn/chebyshev.py).
R0 = 1.4  # Angstrom: Gaussian length scale r0
RHO_FLOOR = 0.5  # b: rho = (1 - b) ELU(beta x / (1 - b)) + 1 > b
RHO_BETA = 0.1  # beta
REFERENCE_CUTOFF_SIGMAS = 3.5  # the reference's adaptive image range (not converged; see below)
# Outside c sigma a 3-D Gaussian keeps a fraction P(chi_3 > c) of its mass: 7e-3 at c = 3.5,
# 2e-5 at 5, 7e-8 at 6. At 6 sigma, doubling the range moves model outputs by ~1e-8 relative
# (tests/models/test_crystalformer.py::test_periodic_sum_converged).
DEFAULT_CUTOFF_SIGMAS = 6.0
# The first layer enumerates images this much beyond its cutoff, so that later layers (whose
# Gaussians are usually about as wide) only filter that list.
ENUMERATION_HEADROOM = 1.15
# The max frame is built from the entries with w >= MAX_FRAME_PREFILTER x the largest weight of
# the atom and head; the result is verified to equal the frame of all entries (see
# PeriodicAttention._max_frames) and recomputed from all entries where it might not.
MAX_FRAME_PREFILTER = 1e-3


def _distinct_frames_per_centre(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-head frames (n, H, 3, 3) -> (group (n, H), centre (G,), frame (G, 3, 3)): the distinct
    frames of every centre (bitwise equality; frames of different centres never merge) and which
    one every (centre, head) uses. Groups are numbered by centre, then by first head."""
    n, h = frames.shape[:2]
    flat = frames.reshape(n, h, 9)
    heads = torch.arange(h, device=frames.device)
    same = (flat.unsqueeze(2) == flat.unsqueeze(1)).all(dim=-1) | torch.eye(h, dtype=torch.bool, device=frames.device)
    leader = torch.where(same, heads, h).amin(dim=-1)  # (n, H): first head with the same frame
    is_leader = (leader == heads).reshape(-1)
    number = torch.cumsum(is_leader, 0) - 1  # group number of every leading (centre, head)
    group = take(number, (torch.arange(n, device=frames.device).unsqueeze(1) * h + leader).reshape(-1)).view(n, h)
    members = torch.nonzero(is_leader).squeeze(-1)
    return group, torch.div(members, h, rounding_mode="floor"), take(flat.reshape(n * h, 9), members).view(-1, 3, 3)

# ---------------------------------------------------------------------------------------------
# The attention layer
# ---------------------------------------------------------------------------------------------

# Frames an attention layer can use for the angle encoding.
#   none          no angle encoding (Crystalformer)
#   max           CrystalFramer max frame of this layer's attention weights, per atom and head
#   weighted_pca  CrystalFramer weighted-PCA frame of this layer's attention weights
#   static        static local frame of the entries within this layer's cutoff, per atom
#   given         per-atom frames passed to forward (the pca and lattice global baselines)
LAYER_FRAMES = ("none", "max", "weighted_pca", "static", "given")


@dataclass
class PeriodicGeometry:
    """What an attention layer needs to know about the crystals of a batch."""

    pos: torch.Tensor  # (N, 3)
    frac: torch.Tensor  # (N, 3)
    lattice: torch.Tensor  # (B, 3, 3)
    batch: torch.Tensor  # (N,)
    num_atoms: torch.Tensor  # (B,)
    tie_frame: torch.Tensor | None = None  # (N, 3, 3): breaks exact ties of local frames
    frames: torch.Tensor | None = None  # (N, 3, 3): the per-atom frames of frame="given"
    # entries enumerated for a larger cutoff by an earlier layer (filtered, not re-enumerated)
    cached_entries: PeriodicEntries | None = None
    cached_cutoff: torch.Tensor | None = None

    def entries(self, cutoff: torch.Tensor, budget: int = DEFAULT_MEMORY_BUDGET) -> PeriodicEntries:
        """:func:`periodic_entries` for per-atom ``cutoff`` (N,), reusing an earlier layer's
        enumeration when it covers the cutoff (the result is identical either way)."""
        cutoff = cutoff.detach()
        if self.cached_entries is None or bool((cutoff > self.cached_cutoff).any()):
            self.cached_cutoff = cutoff * ENUMERATION_HEADROOM
            self.cached_entries = periodic_entries(self.pos, self.frac, self.lattice, self.batch, self.num_atoms, self.cached_cutoff, budget)
        return self.cached_entries.within(cutoff)


class PeriodicAttention(nn.Module):
    """One multi-head infinitely connected attention layer (Crystalformer), optionally with
    CrystalFramer's angle encoding in a frame (see the module docstring and :data:`LAYER_FRAMES`).

    Parameters: q/k/v/out projections with biases (4 (C^2 + C)), the width vectors w_h (C), the
    distance projections W0 (H x d x K) and, with a frame, the angle projections W1..3
    (3 x H x d x D); W0..3 have no biases (853,505 trainable parameters for the reference model).

    rho standardisation: x_ih = q_ih . w_h is standardised by one mean and variance over all
    atoms and heads, as in the reference; they come from the batch in training (no gradient
    through them) and from running averages (momentum ``rho_momentum``; the first training
    batch sets them) in evaluation. They live in ``rho_stats`` = (mean, variance, batches
    seen), a frozen Parameter rather than a buffer so that parameter counts match the
    reference, which stores its first-batch scale as frozen Parameters too.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        distance_bases: int = DISTANCE_BASES,
        distance_max: float = DISTANCE_MAX,
        frame: str = "none",
        angle_bases: int = 64,
        angle_width_scale: float = ANGLE_WIDTH_SCALE,
        r0: float = R0,
        rho_floor: float = RHO_FLOOR,
        rho_beta: float = RHO_BETA,
        cutoff_sigmas: float = DEFAULT_CUTOFF_SIGMAS,
        rho_momentum: float = 0.1,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        if frame not in LAYER_FRAMES:
            raise ValueError(f"unknown frame {frame!r}; choose one of {LAYER_FRAMES}")
        if not 0.0 < rho_floor < 1.0:
            raise ValueError("rho_floor must be in (0, 1)")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.frame = frame
        self.r0, self.rho_floor, self.rho_beta = float(r0), float(rho_floor), float(rho_beta)
        self.cutoff_sigmas = float(cutoff_sigmas)
        self.rho_momentum = float(rho_momentum)
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
        if frame != "none":
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
        """rho_ih = (1 - b) ELU(beta x / (1 - b)) + 1, x = standardised q_ih . w_h; (N, H)."""
        x = (q * self.width_weight).sum(-1)
        stats = self.rho_stats
        if self.training:
            with torch.no_grad():
                mean, var = x.mean(), x.var(unbiased=False)
                m = 1.0 if stats[2] == 0 else self.rho_momentum
                new = torch.stack([(1 - m) * stats[0] + m * mean.to(stats), (1 - m) * stats[1] + m * var.to(stats), stats[2] + 1])
                stats.copy_(new)
        else:
            mean, var = stats[0], stats[1]
        x = (x - mean.to(x)) * torch.rsqrt(var.to(x) + 1e-12)
        b = self.rho_floor
        return (1 - b) * F.elu(x * (self.rho_beta / (1 - b))) + 1

    # -- forward ---------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, geometry: PeriodicGeometry) -> torch.Tensor:
        n, h, d = x.shape[0], self.heads, self.head_dim
        q = self.q_proj(x).view(n, h, d)
        k = self.k_proj(x).view(n, h, d)
        v = self.v_proj(x).view(n, h, d)
        rho = self.rho(q)
        a = rho * (-0.5 / self.r0**2)  # (N, H)
        head_cutoff = (self.cutoff_sigmas * self.r0) * torch.rsqrt(rho.detach())  # c sigma_ih
        ent = geometry.entries(head_cutoff.amax(dim=1), self.memory_budget)
        s = (take(q, ent.pair_centre) * take(k, ent.pair_neighbour)).sum(-1) * d**-0.5  # (U, H)

        unit = ent.unit_vectors() if self.angle_proj is not None else None
        # widest per-entry temporaries of a bucket: distance bases (K), attention rows (H) and
        # the frame construction (~8 H); the Chebyshev moments chunk themselves
        widest = max(self.distance_centres.shape[0], 8 * h)
        buckets, order = entry_buckets(ent, max(1, self.memory_budget // widest))
        pe, pair_ids, pair_w = [], [], []
        for bucket in buckets:
            w, features = self._bucket(bucket, ent, s, a, head_cutoff, unit, geometry)
            pair_ids.append(take(ent.pair, bucket.entries))
            pair_w.append(take(w.transpose(1, 2).reshape(-1, h), bucket.flat))
            pe.append(features)
        # position encodings per atom, bucket order -> atom order
        out = take(torch.cat(pe), torch.argsort(order))
        # values: sum_(j,n) w v_j = sum_j (sum_n w) v_j, through the distinct pairs
        w_pair = x.new_zeros(ent.pair_centre.shape[0], h).index_add_(0, torch.cat(pair_ids), torch.cat(pair_w))
        out = out.index_add(0, ent.pair_centre, w_pair.unsqueeze(-1) * take(v, ent.pair_neighbour))
        return self.out_proj(out.reshape(n, h * d))

    def _bucket(self, bucket: Bucket, ent: PeriodicEntries, s, a, head_cutoff, unit, geometry):
        """Attention weights (n, H, M) of one bucket's centres and their position encodings (n, H, d)."""
        idx, centres = bucket.index, bucket.centres
        dist = take(ent.dist, idx)  # (n, M), ascending along each row
        logits = take(s, take(ent.pair, idx)).transpose(1, 2) + take(a, centres).unsqueeze(-1) * dist.square().unsqueeze(1)
        inside = bucket.valid.unsqueeze(1) & (dist.unsqueeze(1) <= take(head_cutoff, centres).unsqueeze(-1))  # (n, H, M)
        w = torch.softmax(logits.masked_fill(~inside, float("-inf")), dim=-1)
        basis = gaussian(dist, self.distance_centres.to(dist.dtype), self.distance_width)  # (n, M, K)
        pe = torch.einsum("nhk,hck->nhc", torch.bmm(w, basis), self.distance_proj)
        if self.angle_proj is not None:
            # a head's entries are a prefix of its row (rows are sorted by distance)
            pe = pe + self._angle_encoding(w, inside.sum(-1), bucket, ent, unit, geometry)
        return w, pe

    # -- frames and the angle encoding -----------------------------------------------------------

    def frames(self, w: torch.Tensor, bucket: Bucket, ent: PeriodicEntries, geometry: PeriodicGeometry) -> torch.Tensor:
        """Frames of a bucket's centres: (n, H, 3, 3) for dynamic frames, (n, 3, 3) otherwise."""
        from crystalframes.frames import static_local_frame, weighted_pca_frame

        centres = bucket.centres
        if self.frame == "given":
            return take(geometry.frames, centres)
        tie = take(geometry.tie_frame, centres)
        if self.frame == "max":
            return self._max_frames(w.detach(), bucket, ent, tie)
        vec, rows, n = take(ent.vec, bucket.entries), bucket.rows, centres.shape[0]
        if self.frame == "static":
            return static_local_frame(vec, rows, n, tie)
        weights = take(w.detach().transpose(1, 2).reshape(-1, w.shape[1]), bucket.flat)
        return weighted_pca_frame(vec, weights, rows, n, tie)

    @torch.no_grad()
    def _max_frames(self, w: torch.Tensor, bucket: Bucket, ent: PeriodicEntries, tie: torch.Tensor) -> torch.Tensor:
        """:func:`~crystalframes.frames.max_frame` per (centre, head), (n, H, 3, 3), built from
        the entries with w >= t = MAX_FRAME_PREFILTER w_max only (the Gaussian tail is most
        entries and is never selected). Exact: an excluded entry has w < t, so its e2 score
        w (1 - |cos|) is < t too; wherever the best e2 score among the kept entries is not
        clearly above t (>= 2t; this also covers e1 and ties), the frame is rebuilt from all
        the entries."""
        from crystalframes.frames import max_frame
        from crystalframes.frames.dynamic import MAX_COLLINEAR_COS
        from crystalframes.frames.dynamic import MIN_DISTANCE as FRAME_MIN_DISTANCE

        n, h, m = w.shape
        t = MAX_FRAME_PREFILTER * w.amax(dim=-1, keepdim=True)  # (n, H, 1)
        valid = bucket.valid.unsqueeze(1)
        tie_rows = tie.repeat_interleave(h, dim=0)  # (n H, 3, 3)
        cell_entry = bucket.index.unsqueeze(1).expand(n, h, m).reshape(-1)

        def build(mask: torch.Tensor, rows_wanted: torch.Tensor | None = None) -> torch.Tensor:
            flat = torch.nonzero(mask.reshape(-1)).squeeze(-1)
            rows = torch.div(flat, m, rounding_mode="floor")
            if rows_wanted is not None:  # renumber the selected rows 0..R-1
                rows = take(torch.cumsum(rows_wanted, 0) - 1, rows)
            size = n * h if rows_wanted is None else int(rows_wanted.sum())
            ties = tie_rows if rows_wanted is None else tie_rows[rows_wanted]
            vec = take(ent.vec, take(cell_entry, flat))
            return max_frame(vec, take(w.reshape(-1), flat), rows, size, ties)

        kept = valid & (w >= t)
        frames = build(kept).view(n, h, 3, 3)
        # verification: the best e2 score among the kept entries, with max_frame's own rules
        dist = take(ent.dist, bucket.index).unsqueeze(1)  # (n, 1, M)
        vec = take(ent.vec, bucket.index)  # (n, M, 3)
        cos = torch.einsum("nmc,nhc->nhm", vec, frames[:, :, 0]) / dist.clamp_min(FRAME_MIN_DISTANCE)
        candidate = kept & (dist > FRAME_MIN_DISTANCE) & (cos.abs() < MAX_COLLINEAR_COS)
        best = torch.where(candidate, w * (1 - cos.abs()), torch.zeros_like(w)).amax(dim=-1)  # (n, H)
        redo = (best < 2 * t.squeeze(-1)).reshape(-1)
        if bool(redo.any()):
            every = (valid.expand(n, h, m).reshape(n * h, m) & redo.unsqueeze(-1)).view(n, h, m)
            frames = frames.reshape(n * h, 3, 3).index_copy(0, torch.nonzero(redo).squeeze(-1), build(every, redo)).view(n, h, 3, 3)
        return frames

    def _angle_encoding(self, w, lengths, bucket: Bucket, ent: PeriodicEntries, unit, geometry) -> torch.Tensor:
        """sum_k Wk sum_(j,n) w b_angl(e_k . r_hat) with e_k the rows of each centre's (and head's)
        frame; the atom itself has no direction and contributes no angle feature. ``lengths``
        (n, H): entries of each head (a prefix of the row).

        The moments are computed once per distinct (centre, frame): the heads of a centre that
        share a frame share the cosines, so their weights go through one (H x M)(M x 3) product
        per degree instead of H products of one row each. Per-head max frames mostly coincide
        (1.07 distinct frames per centre among 8 heads on the MP sample, benchmarks/angle_moments.py:
        the heaviest entries are the nearest neighbours in every head); per-atom frames are one
        group per centre.
        """
        frames = self.frames(w, bucket, ent, geometry).to(w.dtype)
        w = w * (take(ent.dist, bucket.index) > MIN_DISTANCE).unsqueeze(1).to(w.dtype)
        n, h, m = w.shape
        if frames.dim() == 4:  # per head: group the (centre, head) rows by their frame
            group, centre, frames = _distinct_frames_per_centre(frames)
        else:
            group, centre = torch.arange(n, device=w.device).unsqueeze(1).expand(n, h), torch.arange(n, device=w.device)
        u = take(take(unit, bucket.index), centre)  # (G, M, 3); padding repeats an entry, but with weight 0
        cos = torch.einsum("gmc,gkc->gmk", u, frames).clamp_(-1.0, 1.0)
        lengths = take(lengths.amax(dim=-1), centre)
        coef = self.angle_basis_coefficients(w)
        terms = coef.shape[0]
        order = torch.argsort(lengths, stable=True)
        rows = take(centre, order)
        moments = ChebyshevMoments.apply(take(w, rows), take(cos, order), take(lengths, order), terms, self.memory_budget)
        moments = take(moments, torch.argsort(order))  # (G, H, 3, terms)
        # each (centre, head) takes its head's moments from its frame's group
        moments = take(moments.reshape(-1, 3, terms), group * h + torch.arange(h, device=w.device))  # (n, H, 3, terms)
        return torch.einsum("nhkr,rm,khcm->nhc", moments, coef, self.angle_proj)

    def angle_basis_coefficients(self, like: torch.Tensor) -> torch.Tensor:
        """Chebyshev coefficients (r, D) of the angle Gaussians at ``like``'s working precision."""
        key = (like.dtype, like.device)
        if key not in self._angle_coefficients:
            precision = "float64" if like.dtype == torch.float64 else "float32"
            self._angle_coefficients[key] = self._angle_coefficients[precision].to(device=like.device, dtype=like.dtype)
        return self._angle_coefficients[key]
