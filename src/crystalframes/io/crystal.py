"""The one structure type everything downstream consumes."""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from crystalframes.io.elements import MAX_ATOMIC_NUMBER, element_symbol
from crystalframes.io.errors import InputError

# Atoms closer than this (in Angstrom, across periodic images) are almost surely a broken file.
MIN_INTERATOMIC_DISTANCE = 0.5
# |det L| / (|a||b||c|) below this means the three lattice vectors are (nearly) coplanar.
MIN_NORMALISED_VOLUME = 1e-6
# 100 m: far beyond any vacuum padding, and small enough that volumes and squared distances stay
# finite in float32 (1e36 < 3.4e38); a 1e308 A cell would overflow them to inf.
MAX_LATTICE_LENGTH = 1e12
# Up to this many atoms the closest-pair check uses the O(N^2) minimum-image shortcut.
MINIMUM_IMAGE_MAX_ATOMS = 200
# The shapes a tensor target is stored with (Voigt forms of ranks 2, 3, 4: crystalframes.io.tensors).
TENSOR_TARGET_SHAPES = ((3, 3), (3, 6), (6, 6))


@contextmanager
def quiet_pymatgen():
    """No "No Pauling electronegativity for He. Setting to NaN" warnings inside: pymatgen emits
    one the first time it orders a noble gas (He, Ne, Ar...) by electronegativity (a formula, a
    CIF), about its own internals, not the user's valid structure. Scoped to our reading calls,
    so the user's own pymatgen code still sees its warnings."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No Pauling electronegativity", category=UserWarning)
        yield


@dataclass
class Crystal:
    """A periodic crystal: lattice rows are the lattice vectors (Angstrom).

    ``targets`` maps property names to floats (``nan`` when the record has no value), or, for a
    tensor property (a dielectric, piezoelectric or elastic tensor), to a float64 array of its
    Voigt shape ((3, 3), (3, 6), (6, 6); conventions in :mod:`crystalframes.io.tensors`) in the
    Cartesian frame of this crystal's ``lattice``. :meth:`target` gives a scalar and refuses a
    tensor, :meth:`tensor_target` gives a tensor.
    ``split`` is the record's own train/val/test label, if any.
    """

    id: str
    lattice: np.ndarray  # (3, 3) float64, rows = lattice vectors a, b, c
    atomic_numbers: np.ndarray  # (N,) int64
    frac_coords: np.ndarray  # (N, 3) float64
    targets: dict[str, float | np.ndarray] = field(default_factory=dict)
    split: str | None = None
    source: str = ""

    def __post_init__(self):
        self.lattice = np.asarray(self.lattice, dtype=np.float64).reshape(3, 3)
        self.atomic_numbers = np.asarray(self.atomic_numbers, dtype=np.int64).reshape(-1)
        self.frac_coords = np.asarray(self.frac_coords, dtype=np.float64).reshape(-1, 3)

    @property
    def num_atoms(self) -> int:
        return int(self.atomic_numbers.shape[0])

    @property
    def cart_coords(self) -> np.ndarray:
        return self.frac_coords @ self.lattice

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.lattice)))

    @property
    def formula(self) -> str:
        from pymatgen.core import Composition

        counts: dict[str, int] = {}
        for z in self.atomic_numbers:
            sym = element_symbol(z)
            counts[sym] = counts.get(sym, 0) + 1
        with quiet_pymatgen():
            return Composition(counts).reduced_formula

    @property
    def where(self) -> str:
        """Where this crystal came from, for error messages: ``source [id]``, or just ``source``
        when it already names the id (``file.jsonl:17 [mp-1]``, ``.../mp-1.cif``)."""
        return location(self.source, self.id)

    def target(self, name: str) -> float:
        """The value of target ``name``; an :class:`InputError` if missing or non-numeric."""
        if name not in self.targets:
            raise InputError(self.where, f"missing target '{name}'")
        value = self.targets[name]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise InputError(self.where, f"missing target '{name}' (no value)")
        if isinstance(value, np.ndarray):
            # float() of a 3x3 array would raise a bare TypeError, of a 1-element one pass silently
            shape = "x".join(map(str, value.shape))
            raise InputError(self.where, f"target '{name}' is a {shape} tensor, not a scalar: what reads it here "
                                         f"takes scalar targets only")
        return float(value)

    def tensor_target(self, name: str) -> np.ndarray:
        """The tensor target ``name`` in its Voigt shape (a copy); an :class:`InputError` if
        missing or a scalar."""
        if name not in self.targets:
            raise InputError(self.where, f"missing target '{name}'")
        value = self.targets[name]
        if not isinstance(value, np.ndarray):
            raise InputError(self.where, f"target '{name}' is a scalar ({value!r}), not a tensor")
        return value.copy()

    def validate(self) -> "Crystal":
        """Check the structure is physically usable; raise :class:`InputError` naming the problem."""
        where = self.where
        if self.num_atoms == 0:
            raise InputError(where, "structure has no atoms")
        if self.frac_coords.shape != (self.num_atoms, 3):
            raise InputError(where, f"{self.num_atoms} species but {self.frac_coords.shape[0]} coordinates")
        if not np.all(np.isfinite(self.lattice)):
            raise InputError(where, "lattice contains non-finite values (nan/inf)")
        if not np.all(np.isfinite(self.frac_coords)):
            raise InputError(where, "coordinates contain non-finite values (nan/inf)")
        bad = (self.atomic_numbers < 1) | (self.atomic_numbers > MAX_ATOMIC_NUMBER)
        if bad.any():
            raise InputError(where, f"unknown element (atomic number {int(self.atomic_numbers[bad][0])})")
        with np.errstate(over="ignore"):  # a 1e308 A vector has an infinite norm: rejected below
            lengths = np.linalg.norm(self.lattice, axis=1)
        if not lengths.max() <= MAX_LATTICE_LENGTH:
            raise InputError(
                where, f"lattice vector of {lengths.max():.3g} A: longer than {MAX_LATTICE_LENGTH:g} A, not a crystal cell"
            )
        det = float(np.linalg.det(self.lattice))
        if lengths.min() <= 0 or abs(det) / float(np.prod(lengths)) < MIN_NORMALISED_VOLUME:
            raise InputError(
                where, f"singular lattice (volume {abs(det):.3g} A^3): lattice vectors are (nearly) coplanar"
            )
        # An atom meets its own periodic image at the shortest lattice vector, whatever the other
        # atoms do: checking it first rejects a 0.001 A cell in microseconds, where a neighbour
        # search would enumerate ~1e8 images per atom (tens of GB) before finding the overlap.
        # No lattice vector is shorter than the smallest plane spacing (v . b_k = n_k for the
        # reciprocal vectors b_k), so cells with wide planes (nearly every real crystal) need no
        # reduction.
        lattice, frac = self.lattice, self.frac_coords
        if plane_spacings(lattice).min() <= 2 * MIN_INTERATOMIC_DISTANCE:
            lattice = reduced_lattice(self.lattice, where)
            shortest = float(np.linalg.norm(lattice, axis=1).min())
            if shortest < MIN_INTERATOMIC_DISTANCE:
                raise InputError(
                    where,
                    f"atoms closer than {MIN_INTERATOMIC_DISTANCE} A (closest pair {shortest:.3g} A: every atom and "
                    f"its own periodic image, the shortest lattice vector): lattice far too small",
                )
            # The same crystal in the reduced basis: its planes are far apart, so the neighbour
            # search below looks at a handful of images even when the given basis is very skewed.
            frac = np.linalg.solve(lattice.T, self.cart_coords.T).T
        d_min = min_interatomic_distance(lattice, frac, MIN_INTERATOMIC_DISTANCE)
        if d_min < MIN_INTERATOMIC_DISTANCE:
            raise InputError(
                where, f"atoms closer than {MIN_INTERATOMIC_DISTANCE} A (closest pair {d_min:.3f} A): overlapping sites"
            )
        for name, value in self.targets.items():
            if value is None:
                continue
            if isinstance(value, np.ndarray):
                if value.shape not in TENSOR_TARGET_SHAPES or value.dtype != np.float64:
                    raise InputError(where, f"target '{name}' is an array of shape {value.shape} ({value.dtype}), "
                                            f"not a float64 tensor of a Voigt shape (3x3, 3x6, 6x6)")
                if not np.all(np.isfinite(value)):
                    raise InputError(where, f"tensor target '{name}' has non-finite entries")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(where, f"target '{name}' is not a number: {value!r}")
            if math.isinf(value):
                raise InputError(where, f"target '{name}' is infinite")
        return self


def location(source: str, id: str | None) -> str:
    """``source [id]`` for messages, unless ``source`` already names ``id`` (as ``[id]`` or as the
    file name ``id`` / ``id.ext``). A plain substring test would drop short ids like ``e``."""
    if not source:
        return id or "<structure>"
    if not id or f"[{id}]" in source:
        return source
    name = source.replace("\\", "/").rsplit("/", 1)[-1]
    if name == id or name.startswith(id + "."):
        return source
    return f"{source} [{id}]"


def plane_spacings(lattice: np.ndarray) -> np.ndarray:
    """Distances between neighbouring lattice planes of the three families (a, b, c), 1 / |b_k|."""
    return 1.0 / np.linalg.norm(np.linalg.inv(lattice), axis=0)


def reduced_lattice(lattice: np.ndarray, where: str) -> np.ndarray:
    """The Minkowski-reduced basis of ``lattice`` (ASE): the same lattice, and in 3D its first
    vector is a shortest lattice vector, also when a skewed cell hides it in a combination such
    as ``c - a - b``."""
    from ase.geometry import minkowski_reduce

    try:
        reduced, _ = minkowski_reduce(np.asarray(lattice, dtype=np.float64))
    except RuntimeError:  # ASE gives up after 1e5 steps; only absurdly skewed bases get there
        raise InputError(where, "lattice vectors too skewed to reduce to a usable cell") from None
    return np.asarray(reduced, dtype=np.float64)


def min_interatomic_distance(lattice: np.ndarray, frac_coords: np.ndarray, cutoff: float) -> float:
    """Shortest distance between two atoms (including an atom and its own periodic image),
    or ``inf`` if none is within ``cutoff``.

    Small cells whose plane spacings all exceed ``2 * cutoff`` (almost every real crystal) take a
    minimum-image shortcut: then the wrapped fractional offset is the only image that can be
    closer than ``cutoff``, and no atom meets its own image. That is ~50x faster than building
    a cell list for a 0.5 A cutoff, which matters when validating tens of thousands of records.
    Everything else goes through vesin's neighbour list.
    """
    lattice = np.asarray(lattice, dtype=np.float64)
    frac = np.asarray(frac_coords, dtype=np.float64).reshape(-1, 3)
    n = frac.shape[0]
    if n <= MINIMUM_IMAGE_MAX_ATOMS and plane_spacings(lattice).min() > 2 * cutoff:
        if n < 2:
            return math.inf
        offset = frac[None, :, :] - frac[:, None, :]
        offset -= np.round(offset)
        dist2 = np.einsum("ijk,ijk->ij", offset @ lattice, offset @ lattice)
        dist2[np.diag_indices(n)] = math.inf
        best = math.sqrt(float(dist2.min()))
        return best if best < cutoff else math.inf
    from vesin import NeighborList

    cart = np.ascontiguousarray(frac @ lattice)
    (d,) = NeighborList(cutoff=cutoff, full_list=False).compute(
        points=cart, box=np.ascontiguousarray(lattice), periodic=True, quantities="d"
    )
    return float(d.min()) if len(d) else math.inf
