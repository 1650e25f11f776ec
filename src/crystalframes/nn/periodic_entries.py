"""Periodic neighbour enumeration for infinitely connected attention: every entry (centre i,
neighbour j, translation n) within a per-atom cutoff (:func:`periodic_entries`), and the padded
row buckets the attention layer processes them in (:func:`entry_buckets`).

No fixed image box and no atom cap: the entries with d <= R_i are enumerated exactly, in
chunks bounded by a memory budget, so work and memory follow the number of entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from crystalframes.nn.encodings import MIN_DISTANCE
from crystalframes.nn.graph import take

# Elements of the largest temporary tensor built at once by an attention layer.
DEFAULT_MEMORY_BUDGET = 2**21
# An accelerator's budget is this many times the configured (CPU) one: its memory is larger, and
# every bucket and enumeration chunk costs kernel launches and a host synchronisation.
ACCELERATOR_BUDGET_SCALE = 16


@dataclass
class PeriodicEntries:
    """Every (centre i, neighbour j, translation n) with |r_j + nL - r_i| <= R_i, j in i's crystal.

    Sorted by centre, then distance (ties in (j, n) order), so the atom itself (j = i, n = 0,
    d = 0, included) comes first.
    ``pair`` indexes the distinct (i, j) pairs ``pair_centre`` / ``pair_neighbour``; ``offset``
    and ``count`` (N,) delimit each centre's entries.
    """

    centre: torch.Tensor  # (E,) long
    neighbour: torch.Tensor  # (E,) long
    shift: torch.Tensor  # (E, 3) long, n
    vec: torch.Tensor  # (E, 3) r_j + nL - r_i
    dist: torch.Tensor  # (E,)
    pair: torch.Tensor  # (E,) long
    pair_centre: torch.Tensor  # (U,) long
    pair_neighbour: torch.Tensor  # (U,) long
    offset: torch.Tensor  # (N,) long
    count: torch.Tensor  # (N,) long
    # ``count`` on the host when it is known there without a synchronisation (after within())
    count_host: np.ndarray | None = None

    @property
    def num_atoms(self) -> int:
        return int(self.count.shape[0])

    def unit_vectors(self) -> torch.Tensor:
        """r / |r|, and 0 for the atom itself (which has no direction)."""
        d = self.dist.unsqueeze(-1)
        return torch.where(d > MIN_DISTANCE, self.vec / d.clamp_min(MIN_DISTANCE), torch.zeros_like(self.vec))

    @torch.no_grad()
    def within(self, cutoff: torch.Tensor, flag: torch.Tensor | None = None) -> "PeriodicEntries | tuple[PeriodicEntries, bool]":
        """The entries with d <= cutoff[centre] (same order) and the same pairs: what
        :func:`periodic_entries` returns for the smaller cutoff, except that pairs left without
        an entry keep their place (their attention weight is zero).

        One host synchronisation: the new per-centre counts (:attr:`count_host`, which
        :func:`entry_buckets` plans with). A centre's entries are sorted by distance, so the kept
        ones are a prefix of its run, and the host total sizes every index without waiting for the
        device again. ``flag``, a boolean scalar tensor, rides along in the same transfer and is
        returned as a bool (a caller's condition read without a second synchronisation)."""
        keep = (self.dist <= take(cutoff, self.centre)).long()
        count = torch.zeros_like(self.count).index_add_(0, self.centre, keep)
        packed = count if flag is None else torch.cat([count, flag.reshape(1).long()])
        host = packed.cpu().numpy()
        count_host = host[: self.num_atoms]
        total = int(count_host.sum())
        first = _exclusive_cumsum(count)
        index = repeat_rows(self.offset, count, total) + torch.arange(total, device=count.device) - repeat_rows(first, count, total)
        out = PeriodicEntries(
            centre=take(self.centre, index),
            neighbour=take(self.neighbour, index),
            shift=take(self.shift, index),
            vec=take(self.vec, index),
            dist=take(self.dist, index),
            pair=take(self.pair, index),
            pair_centre=self.pair_centre,
            pair_neighbour=self.pair_neighbour,
            offset=first,
            count=count,
            count_host=count_host,
        )
        return out if flag is None else (out, bool(host[-1]))

    def used_pairs(self) -> torch.Tensor:
        """The pair ids that still have an entry: for a consumer that must not see the empty
        pairs :meth:`within` keeps (one synchronisation)."""
        used = torch.zeros(self.pair_centre.shape[0], dtype=torch.bool, device=self.pair.device)
        used[self.pair] = True
        return torch.nonzero(used).squeeze(-1)


def repeat_rows(values: torch.Tensor, counts: torch.Tensor, total: int) -> torch.Tensor:
    """``values[i]`` repeated ``counts[i]`` times, given the ``total`` the host already knows
    (``repeat_interleave`` would otherwise read it from the device: a synchronisation)."""
    return torch.repeat_interleave(values, counts, output_size=total)


def budget_on(budget: int, device: torch.device) -> int:
    """The memory budget (elements) in effect on ``device``: ``budget`` on the CPU, where small
    temporaries stay in cache, ``ACCELERATOR_BUDGET_SCALE`` x ``budget`` elsewhere (bucketing is
    exact, so the budget changes speed and memory, never a result)."""
    return budget if device.type == "cpu" else budget * ACCELERATOR_BUDGET_SCALE


def _exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(x, 0) - x


def _chunks_by_weight(ends: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Consecutive chunks of range(len(ends)) whose weights sum to <= budget (an item heavier
    than the budget gets a chunk of its own); ``ends`` is the cumulative sum of the weights, on
    the host."""
    out, start, base = [], 0, 0
    while start < len(ends):
        stop = max(int(np.searchsorted(ends, base + budget, side="right")), start + 1)
        out.append((start, stop))
        base, start = int(ends[stop - 1]), stop
    return out


def _runs(counts: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(run, position within the run) of every element of consecutive runs of ``counts``
    elements, ``total`` = counts.sum() known on the host (no synchronisation)."""
    run = repeat_rows(torch.arange(counts.shape[0], device=counts.device), counts, total)
    return run, torch.arange(total, device=counts.device) - repeat_rows(_exclusive_cumsum(counts), counts, total)


@torch.no_grad()
def periodic_entries(
    pos: torch.Tensor,
    frac: torch.Tensor,
    lattice: torch.Tensor,
    batch: torch.Tensor,
    num_atoms: torch.Tensor,
    cutoff: torch.Tensor,
    budget: int = DEFAULT_MEMORY_BUDGET,
) -> PeriodicEntries:
    """Enumerate the entries (i, j, n) with |pos_j + n L - pos_i| <= cutoff_i exactly.

    For a pair with fractional offset f = frac_j - frac_i, a translation n can only reach the
    cutoff if |(f + n)_a| <= R_i |L^-1[:, a]| on every axis a (the a-th fractional coordinate
    of r is r . L^-1[:, a]): a small box of candidates per pair. Candidates are generated from
    these boxes at most ``budget / 16`` at a time and filtered by distance, so work and memory
    follow the number of entries, not N^2 x a fixed image box.

    The pairs are the (i, j) with at least one image within the cutoff, in centre-major order
    (every pair of a crystal would be N^2 per crystal: gigabytes for a cell of thousands of
    atoms). Host synchronisations: one for the chunk plan, per chunk one for its candidate counts
    and one for the kept candidates, and one to number the pairs that have entries.

    ``pos`` (N, 3) Cartesian, ``frac`` (N, 3) fractional (pos = frac @ L), ``lattice`` (B, 3, 3)
    rows = lattice vectors, ``batch`` (N,), ``num_atoms`` (B,), ``cutoff`` (N,).
    """
    device = pos.device
    start = _exclusive_cumsum(num_atoms)
    # inv_ex: linalg.inv's singularity check reads the device (a lattice is never singular here)
    reach = torch.linalg.inv_ex(lattice).inverse.norm(dim=-2)  # (B, 3): |L^-1[:, a]|
    # a small margin keeps the boxes supersets under rounding (the distance test is exact)
    half = cutoff.unsqueeze(-1) * reach[batch] * (1 + 1e-9) + 1e-9  # (N, 3)
    pairs_per_centre = take(num_atoms, batch)
    pair_ends = torch.cumsum(pairs_per_centre, 0).cpu().numpy()
    parts: list[tuple] = []
    candidate_budget = max(1, budget // 16)  # ~16 numbers per candidate
    for c0, c1 in _chunks_by_weight(pair_ends, candidate_budget):
        # the chunk's candidate pairs (i, j), made chunk by chunk: all of them at once is N^2
        p_start = int(pair_ends[c0 - 1]) if c0 else 0
        local_centre, j_local = _runs(pairs_per_centre[c0:c1], int(pair_ends[c1 - 1]) - p_start)
        ci = local_centre + c0
        cj = take(start, take(batch, ci)) + j_local
        f = take(frac, cj) - take(frac, ci)
        lo = torch.ceil(-f - take(half, ci)).long()
        size = (torch.floor(-f + take(half, ci)).long() - lo + 1).clamp_min(0)
        count = size.prod(-1)
        # per-pair quantities, gathered once per candidate below
        base, cut2 = take(pos, cj) - take(pos, ci), take(cutoff, ci).square()
        cell = take(lattice, take(batch, ci))
        inner = torch.stack([size[:, 1] * size[:, 2], size[:, 2]], dim=-1)
        ends = torch.cumsum(count, 0).cpu().numpy()
        for p0, p1 in _chunks_by_weight(ends, candidate_budget):
            total = int(ends[p1 - 1] - (ends[p0 - 1] if p0 else 0))
            rep, t = _runs(count[p0:p1], total)
            rep = rep + p0
            st = take(inner, rep)
            shift = torch.stack([t // st[:, 0], (t // st[:, 1]) % (st[:, 0] // st[:, 1]), t % st[:, 1]], dim=-1) + take(lo, rep)
            vec = torch.baddbmm(take(base, rep).unsqueeze(1), shift.to(pos.dtype).unsqueeze(1), take(cell, rep)).squeeze(1)
            keep = torch.nonzero(vec.square().sum(-1) <= take(cut2, rep)).squeeze(-1)
            rep = take(rep, keep)
            parts.append((take(ci, rep), take(cj, rep), take(shift, keep), take(vec, keep), rep + p_start))
    if parts:
        centre, neighbour, shift, vec, pair_id = (torch.cat(x) for x in zip(*parts))
    else:
        centre = neighbour = pair_id = torch.zeros(0, dtype=torch.long, device=device)
        shift, vec = torch.zeros(0, 3, dtype=torch.long, device=device), pos.new_zeros(0, 3)
    # entries come sorted by candidate pair: consecutive runs are the pairs that have entries
    _, pair, runs = torch.unique_consecutive(pair_id, return_inverse=True, return_counts=True)
    first = _exclusive_cumsum(runs)
    pair_centre, pair_neighbour = take(centre, first), take(neighbour, first)
    # by distance within each centre (stable sorts: equal distances keep the (j, n) order),
    # so that the entries of a head with a smaller cutoff are a prefix of its atom's
    dist = vec.norm(dim=-1)
    order = torch.argsort(dist, stable=True)
    order = take(order, torch.argsort(take(centre, order), stable=True))
    count = torch.zeros(pos.shape[0], dtype=torch.long, device=device)
    count.index_add_(0, centre, torch.ones_like(centre))
    return PeriodicEntries(
        centre=take(centre, order),
        neighbour=take(neighbour, order),
        shift=take(shift, order),
        vec=take(vec, order),
        dist=take(dist, order),
        pair=take(pair, order),
        pair_centre=pair_centre,
        pair_neighbour=pair_neighbour,
        offset=_exclusive_cumsum(count),
        count=count,
    )


@dataclass
class Bucket:
    """Centre atoms whose entries are laid out as padded rows, one row per centre: ``index``
    (n, M) entry ids (padding repeats a valid id) and ``valid`` (n, M); ``flat`` are the
    positions of the valid cells in the flattened (n x M) grid and ``entries`` their entry ids;
    ``lengths`` the rows' entry counts, known on the host."""

    centres: torch.Tensor  # (n,) long
    index: torch.Tensor  # (n, M) long
    valid: torch.Tensor  # (n, M) bool
    flat: torch.Tensor  # (E_b,) long
    entries: torch.Tensor  # (E_b,) long
    lengths: np.ndarray  # (n,) entries of every row, on the host (ascending)


def entry_buckets(entries: PeriodicEntries, budget: int) -> tuple[list[Bucket], torch.Tensor]:
    """Group centre atoms by entry count (ascending, stable) into buckets of at most ``budget``
    padded entries (a centre with more entries than that gets a bucket of its own); also
    return the order of the centres over all buckets (in a bucket, rows ascend by length).

    Planned on the host from :attr:`PeriodicEntries.count_host` (read once, by
    :meth:`PeriodicEntries.within`), so the buckets cost no further synchronisation: every size
    below is a host number."""
    count, offset = entries.count, entries.offset
    host = entries.count_host if entries.count_host is not None else count.cpu().numpy()
    order = torch.argsort(count, stable=True)
    host_order = np.argsort(host, kind="stable")  # the same permutation, on the host
    sorted_counts = host[host_order]
    buckets, start, n = [], 0, len(sorted_counts)
    while start < n:
        # (rows x longest row) grows with every row added, the counts being sorted
        fits = np.arange(1, n - start + 1) * sorted_counts[start:] <= budget
        stop = start + max(1, int(fits.sum()))
        centres = order[start:stop]
        width = max(1, int(sorted_counts[stop - 1]))
        cols = torch.arange(width, device=count.device)
        rows_count = take(count, centres)
        valid = cols < rows_count.unsqueeze(-1)
        first = take(offset, centres)
        index = first.unsqueeze(-1) + torch.where(valid, cols, 0)
        row, col = _runs(rows_count, int(sorted_counts[start:stop].sum()))
        buckets.append(Bucket(centres, index, valid, row * width + col, take(first, row) + col, sorted_counts[start:stop]))
        start = stop
    return buckets, order
