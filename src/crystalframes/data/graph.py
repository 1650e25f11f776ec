"""Periodic graphs: the ComFormer k-NN multigraph (through periodic images) and the
neighbour-list-free Crystalformer input.

Edge convention used everywhere in crystalframes: edge ``e`` goes from the centre atom
``i = edge_index[0, e]`` to the neighbour ``j = edge_index[1, e]`` in the periodic image
``edge_shift[e]`` (integer lattice coordinates), with displacement
``edge_vec[e] = pos[j] + edge_shift[e] @ lattice - pos[i]`` (pointing i -> j). Messages are
aggregated at the centre atom ``i``, so the local frame that rotates edge ``e`` is the frame of
atom ``i`` (as ComFormer's reference code, Yan et al., aggregates at the source atom u of edge (u, v)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from crystalframes.data.lattice import reduced_lattice_vectors
from crystalframes.io.crystal import Crystal

DEFAULT_K = 25
# Neighbours within this distance (Angstrom) of the k-th one are kept with it: ties are kept or
# dropped together, so a rotated high-symmetry crystal gives exactly the same edge set.
DEFAULT_TIE_TOLERANCE = 1e-4
# Initial search radius (as in the ComFormer reference); grown by GROWTH until every atom has k.
START_RADIUS = 4.0
GROWTH = 1.5


@dataclass(frozen=True)
class GraphSettings:
    """How a crystal becomes a graph. ``k=None`` builds no edges (Crystalformer input)."""

    k: int | None = DEFAULT_K
    lattice_edges: bool = False
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE

    def __post_init__(self):
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1):
            raise ValueError(f"k must be a positive integer or None, got {self.k!r}")
        if self.tie_tolerance < 0:
            raise ValueError("tie_tolerance must be >= 0")

    def as_dict(self) -> dict:
        return {"k": self.k, "lattice_edges": self.lattice_edges, "tie_tolerance": self.tie_tolerance}


@dataclass
class CrystalGraph:
    """One crystal as plain NumPy arrays (float64 geometry; cast when batching)."""

    id: str
    atomic_numbers: np.ndarray  # (N,) int64
    frac_coords: np.ndarray  # (N, 3) wrapped into [0, 1)
    pos: np.ndarray  # (N, 3) Cartesian, = frac_coords @ lattice
    lattice: np.ndarray  # (3, 3) rows are lattice vectors
    edge_index: np.ndarray  # (2, E) int64: [centre i, neighbour j]
    edge_shift: np.ndarray  # (E, 3) int64 lattice translation of the neighbour
    edge_vec: np.ndarray  # (E, 3) float64, i -> j
    edge_is_lattice: np.ndarray  # (E,) bool: lattice self-edge (iComFormer) rather than k-NN
    targets: dict[str, float] = field(default_factory=dict)

    @property
    def num_nodes(self) -> int:
        return int(self.atomic_numbers.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    @property
    def distances(self) -> np.ndarray:
        return np.linalg.norm(self.edge_vec, axis=1)

    @property
    def in_degree(self) -> np.ndarray:
        """Edges per centre atom (the number of messages each atom aggregates; the edge set is
        symmetric, so this equals the number of edges pointing at the atom)."""
        return np.bincount(self.edge_index[0], minlength=self.num_nodes)


def build_graph(crystal: Crystal, settings: GraphSettings = GraphSettings()) -> CrystalGraph:
    """The graph of one crystal under ``settings`` (see :class:`GraphSettings`)."""
    lattice = np.asarray(crystal.lattice, dtype=np.float64)
    frac = np.mod(crystal.frac_coords, 1.0)
    frac[frac >= 1.0] = 0.0  # mod can round -1e-17 up to exactly 1.0
    pos = frac @ lattice
    if settings.k is None:
        ei = np.zeros((2, 0), dtype=np.int64)
        shift = np.zeros((0, 3), dtype=np.int64)
    else:
        ei, shift = knn_edges(pos, lattice, settings.k, settings.tie_tolerance)
    is_lattice = np.zeros(ei.shape[1], dtype=bool)
    if settings.lattice_edges:
        ei_l, shift_l = lattice_self_edges(len(pos), lattice)
        ei = np.concatenate([ei, ei_l], axis=1)
        shift = np.concatenate([shift, shift_l], axis=0)
        is_lattice = np.concatenate([is_lattice, np.ones(ei_l.shape[1], dtype=bool)])
    vec = pos[ei[1]] + shift @ lattice - pos[ei[0]]
    return CrystalGraph(
        id=crystal.id,
        atomic_numbers=crystal.atomic_numbers.copy(),
        frac_coords=frac,
        pos=pos,
        lattice=lattice.copy(),
        edge_index=ei,
        edge_shift=shift,
        edge_vec=vec,
        edge_is_lattice=is_lattice,
        # scalar targets only: every consumer of a graph's targets (batches, the graph cache, the
        # store) holds one float per target; a tensor target is read from the crystal by
        # Crystal.tensor_target, and Crystal.target refuses it with its name and shape
        targets={name: value for name, value in crystal.targets.items() if not isinstance(value, np.ndarray)},
    )


def knn_edges(pos: np.ndarray, lattice: np.ndarray, k: int, tie_tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Symmetrised k-NN multigraph through periodic images (ComFormer convention).

    For every atom keep all neighbours (j, image) with d <= d_k + tie_tolerance, where d_k is its
    k-th smallest distance (the atom's own images count, itself does not); then take the union
    of both directions: (i, j, S) is an edge iff j is among i's kept neighbours through S or i is
    among j's through -S. Returns ``edge_index`` (2, E) and ``edge_shift`` (E, 3), sorted by
    (i, j, shift) so the order is canonical.
    """
    from vesin import NeighborList

    n = len(pos)
    volume = abs(float(np.linalg.det(lattice)))
    # Radius of a sphere holding about 1.3 k atoms at this density, so one search usually suffices.
    radius = max(START_RADIUS, (3 * 1.3 * k * volume / (4 * math.pi * n)) ** (1 / 3))
    points = np.ascontiguousarray(pos)
    box = np.ascontiguousarray(lattice)
    while True:
        i, j, shifts, d = NeighborList(cutoff=radius, full_list=True).compute(
            points=points, box=box, periodic=True, quantities="ijSd"
        )
        counts = np.bincount(i, minlength=n) if len(i) else np.zeros(n, dtype=np.int64)
        if counts.min() >= k:
            order = np.lexsort((d, i))
            d_sorted = d[order]
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            d_k = d_sorted[starts + k - 1]
            if d_k.max() + tie_tolerance < radius:
                break
        radius *= GROWTH
    i = i.astype(np.int64)
    j = j.astype(np.int64)
    shifts = shifts.astype(np.int64)
    keep = d <= d_k[i] + tie_tolerance
    i, j, shifts = i[keep], j[keep], shifts[keep]
    # Union of both directions, deduplicated through an integer key per directed edge.
    src = np.concatenate([i, j])
    dst = np.concatenate([j, i])
    sh = np.concatenate([shifts, -shifts])
    m = int(np.abs(sh).max()) if len(sh) else 0
    base = 2 * m + 1
    key = ((src * n + dst) * base + (sh[:, 0] + m)) * base * base + (sh[:, 1] + m) * base + (sh[:, 2] + m)
    _, first = np.unique(key, return_index=True)  # sorted by key = (i, j, shift)
    return np.stack([src[first], dst[first]]), sh[first]


def lattice_self_edges(num_atoms: int, lattice: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per atom, self-loops to its images at +-l1, +-l2, +-l3 (iComFormer's lattice edges),
    with l1, l2, l3 from :func:`~crystalframes.data.lattice.reduced_lattice_vectors`."""
    n = reduced_lattice_vectors(lattice)
    six = np.concatenate([n, -n])  # (6, 3)
    atoms = np.repeat(np.arange(num_atoms, dtype=np.int64), 6)
    return np.stack([atoms, atoms]), np.tile(six, (num_atoms, 1))
