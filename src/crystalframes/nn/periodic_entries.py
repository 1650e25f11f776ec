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

# Elements of the largest temporary tensor built at once by an attention layer.
DEFAULT_MEMORY_BUDGET = 2**21
# Entries with no direction: the atom itself (j = i, n = 0) has d = 0.
MIN_DISTANCE = 1e-6


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

    @property
    def num_entries(self) -> int:
        return int(self.centre.shape[0])

    @property
    def num_atoms(self) -> int:
        return int(self.count.shape[0])

    def unit_vectors(self) -> torch.Tensor:
        """r / |r|, and 0 for the atom itself (which has no direction)."""
        d = self.dist.unsqueeze(-1)
        return torch.where(d > MIN_DISTANCE, self.vec / d.clamp_min(MIN_DISTANCE), torch.zeros_like(self.vec))

    @torch.no_grad()
    def within(self, cutoff: torch.Tensor) -> "PeriodicEntries":
        """The entries with d <= cutoff[centre] (same order): what :func:`periodic_entries`
        returns for the smaller cutoff."""
        keep = torch.nonzero(self.dist <= take(cutoff, self.centre)).squeeze(-1)
        centre, old_pair = take(self.centre, keep), take(self.pair, keep)
        used = torch.zeros(self.pair_centre.shape[0], dtype=torch.bool, device=centre.device)
        used[old_pair] = True
        renumber = torch.cumsum(used, 0) - 1
        used = torch.nonzero(used).squeeze(-1)
        count = torch.bincount(centre, minlength=self.num_atoms)
        return PeriodicEntries(
            centre=centre,
            neighbour=take(self.neighbour, keep),
            shift=take(self.shift, keep),
            vec=take(self.vec, keep),
            dist=take(self.dist, keep),
            pair=take(renumber, old_pair),
            pair_centre=take(self.pair_centre, used),
            pair_neighbour=take(self.pair_neighbour, used),
            offset=_exclusive_cumsum(count),
            count=count,
        )


def _exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(x, 0) - x


def take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[index] along the first dimension for an index of any shape (index_select is several
    times faster than advanced indexing on CPU)."""
    flat = x.reshape(x.shape[0], -1).index_select(0, index.reshape(-1))
    return flat.view(*index.shape, *x.shape[1:])


def _chunks_by_weight(weights: torch.Tensor, budget: int) -> list[tuple[int, int]]:
    """Consecutive chunks of range(len(weights)) whose weights sum to <= budget (an item heavier
    than the budget gets a chunk of its own)."""
    ends = torch.cumsum(weights, 0).cpu().numpy()
    out, start, base = [], 0, 0
    while start < len(ends):
        stop = max(int(np.searchsorted(ends, base + budget, side="right")), start + 1)
        out.append((start, stop))
        base, start = int(ends[stop - 1]), stop
    return out


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

    ``pos`` (N, 3) Cartesian, ``frac`` (N, 3) fractional (pos = frac @ L), ``lattice`` (B, 3, 3)
    rows = lattice vectors, ``batch`` (N,), ``num_atoms`` (B,), ``cutoff`` (N,).
    """
    device = pos.device
    start = _exclusive_cumsum(num_atoms)
    reach = torch.linalg.inv(lattice).norm(dim=-2)  # (B, 3): |L^-1[:, a]|
    # a small margin keeps the boxes supersets under rounding (the distance test is exact)
    half = cutoff.unsqueeze(-1) * reach[batch] * (1 + 1e-9) + 1e-9  # (N, 3)
    pairs_per_centre = num_atoms[batch]
    parts: list[tuple] = []
    pair_offset = 0
    candidate_budget = max(1, budget // 16)  # ~16 numbers per candidate
    for c0, c1 in _chunks_by_weight(pairs_per_centre, candidate_budget):
        reps = pairs_per_centre[c0:c1]
        ci = torch.repeat_interleave(torch.arange(c0, c1, device=device), reps)
        cj = start[batch[ci]] + torch.arange(ci.shape[0], device=device) - torch.repeat_interleave(_exclusive_cumsum(reps), reps)
        f = take(frac, cj) - take(frac, ci)
        lo = torch.ceil(-f - take(half, ci)).long()
        size = (torch.floor(-f + take(half, ci)).long() - lo + 1).clamp_min(0)
        count = size.prod(-1)
        # per-pair quantities, gathered once per candidate below
        base, cut2 = take(pos, cj) - take(pos, ci), take(cutoff, ci).square()
        cell = take(lattice, take(batch, ci))
        inner = torch.stack([size[:, 1] * size[:, 2], size[:, 2]], dim=-1)
        for p0, p1 in _chunks_by_weight(count, candidate_budget):
            cnt = count[p0:p1]
            rep = torch.repeat_interleave(torch.arange(p0, p1, device=device), cnt)
            t = torch.arange(rep.shape[0], device=device) - torch.repeat_interleave(_exclusive_cumsum(cnt), cnt)
            st = take(inner, rep)
            shift = torch.stack([t // st[:, 0], (t // st[:, 1]) % (st[:, 0] // st[:, 1]), t % st[:, 1]], dim=-1) + take(lo, rep)
            vec = torch.baddbmm(take(base, rep).unsqueeze(1), shift.to(pos.dtype).unsqueeze(1), take(cell, rep)).squeeze(1)
            keep = torch.nonzero(vec.square().sum(-1) <= take(cut2, rep)).squeeze(-1)
            rep = take(rep, keep)
            parts.append((take(ci, rep), take(cj, rep), take(shift, keep), take(vec, keep), rep + pair_offset))
        pair_offset += int(ci.shape[0])
    if parts:
        centre, neighbour, shift, vec, pair_id = (torch.cat(x) for x in zip(*parts))
    else:
        centre = neighbour = pair_id = torch.zeros(0, dtype=torch.long, device=device)
        shift, vec = torch.zeros(0, 3, dtype=torch.long, device=device), pos.new_zeros(0, 3)
    # entries come sorted by candidate pair: consecutive runs are the distinct pairs
    _, pair, runs = torch.unique_consecutive(pair_id, return_inverse=True, return_counts=True)
    first = _exclusive_cumsum(runs)
    pair_centre, pair_neighbour = take(centre, first), take(neighbour, first)
    # then by distance within each centre (stable sorts: equal distances keep the (j, n)
    # order), so that the entries of a head with a smaller cutoff are a prefix of its atom's
    dist = vec.norm(dim=-1)
    order = torch.argsort(dist, stable=True)
    order = take(order, torch.argsort(take(centre, order), stable=True))
    count = torch.bincount(centre, minlength=pos.shape[0])
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
    positions of the valid cells in the flattened (n x M) grid and ``entries`` their entry ids."""

    centres: torch.Tensor  # (n,) long
    index: torch.Tensor  # (n, M) long
    valid: torch.Tensor  # (n, M) bool
    flat: torch.Tensor  # (E_b,) long
    entries: torch.Tensor  # (E_b,) long

    @property
    def rows(self) -> torch.Tensor:
        """Row (local centre) of every valid cell: (E_b,)."""
        return torch.div(self.flat, self.index.shape[1], rounding_mode="floor")


def entry_buckets(entries: PeriodicEntries, budget: int) -> tuple[list[Bucket], torch.Tensor]:
    """Group centre atoms by entry count (ascending, stable) into buckets of at most ``budget``
    padded entries (a centre with more entries than that gets a bucket of its own); also
    return the order of the centres over all buckets."""
    count, offset = entries.count, entries.offset
    order = torch.argsort(count, stable=True)
    sorted_counts = count[order].cpu().numpy()
    buckets, start, n = [], 0, len(sorted_counts)
    while start < n:
        # (rows x longest row) grows with every row added, the counts being sorted
        fits = np.arange(1, n - start + 1) * sorted_counts[start:] <= budget
        stop = start + max(1, int(fits.sum()))
        centres = order[start:stop]
        cols = torch.arange(max(1, int(sorted_counts[stop - 1])), device=count.device)
        valid = cols < take(count, centres).unsqueeze(-1)
        index = take(offset, centres).unsqueeze(-1) + torch.where(valid, cols, 0)
        flat = torch.nonzero(valid.reshape(-1)).squeeze(-1)
        buckets.append(Bucket(centres, index, valid, flat, take(index.reshape(-1), flat)))
        start = stop
    return buckets, order
