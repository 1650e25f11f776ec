"""Cartesian tensors of crystals: Voigt notation, rotation, and Neumann's principle.

The one place for the conventions every tensor target and tensor head uses:

* **Voigt pairs** ``(11, 22, 33, 23, 13, 12)`` -> indices ``0..5`` (:data:`VOIGT_PAIRS`), the
  order of the Materials Project, pymatgen and IEEE Std 176.
* **rank 2** (dielectric ``epsilon_ij``, symmetric): stored as the full 3x3 matrix; a symmetric
  rank-2 tensor's Voigt vector (6,) carries no factors.
* **rank 3** (piezoelectric stress constants ``e_ijk = e_ikj``, C/m^2): Voigt 3x6,
  ``e_iJ = e_ijk`` with ``J = voigt(jk)``, no factors of 2 (the stress-like convention of
  ``e``; the strain-like ``d`` coefficients would carry a 1/2 off the diagonal, not used here).
* **rank 4** (elastic stiffness ``C_ijkl``, GPa, with ``C_ijkl = C_jikl = C_ijlk = C_klij``):
  Voigt 6x6, ``C_IJ = C_ijkl``, no factors (stiffness; compliance would carry 2s and 4s).
* **rotation**: ``T'_{i1..in} = R_{i1 j1} ... R_{in jn} T_{j1..jn}`` (:func:`rotate`), for any
  rank, with ``R`` acting on Cartesian column vectors (``r' = R r``). Improper ``R`` (a
  reflection) gives the same formula: these are polar tensors, no ``det R`` factor.
* **crystal symmetry** in Cartesian coordinates: a lattice stored as rows (``r = f @ L``, as in
  :class:`~crystalframes.io.crystal.Crystal`) and a symmetry operation ``f -> W f + t`` on
  fractional column vectors (spglib's and pymatgen's ``W``) give the Cartesian rotation
  ``R = L^T W L^-T`` (:func:`cartesian_rotations`). Neumann's principle: a property tensor of a
  crystal is unchanged by every operation of the crystal's point group,
  :func:`neumann_residual` measures how far a tensor is from that.
"""

from __future__ import annotations

import warnings
from itertools import product

import numpy as np

__all__ = [
    "VOIGT_PAIRS",
    "voigt_index",
    "full_to_voigt",
    "voigt_to_full",
    "voigt_shape",
    "tensor_rank",
    "component_labels",
    "tensor_columns",
    "voigt_components",
    "rotate",
    "cartesian_rotations",
    "point_group_rotations",
    "neumann_residual",
    "ieee_rotation",
    "vrh_moduli",
    "DEFAULT_SYMPREC",
]

# Voigt index -> Cartesian index pair.
VOIGT_PAIRS: tuple[tuple[int, int], ...] = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))
_VOIGT_OF_PAIR = np.empty((3, 3), dtype=np.int64)
for _v, (_i, _j) in enumerate(VOIGT_PAIRS):
    _VOIGT_OF_PAIR[_i, _j] = _VOIGT_OF_PAIR[_j, _i] = _v

# spglib's tolerance (Angstrom) for finding a structure's symmetry: pymatgen's default, so the
# point group checked is the one pymatgen's IEEE rotation (which takes no tolerance) is built on.
DEFAULT_SYMPREC = 0.01

# The Voigt shape of each Cartesian rank of the property tensors handled here.
_VOIGT_SHAPES = {2: (3, 3), 3: (3, 6), 4: (6, 6)}


def voigt_index(i: int, j: int) -> int:
    """The Voigt index (0..5) of the Cartesian pair ``(i, j)`` (symmetric: ``(j, i)`` too)."""
    return int(_VOIGT_OF_PAIR[i, j])


def voigt_shape(rank: int) -> tuple[int, int]:
    """The stored (Voigt) shape of a property tensor of Cartesian ``rank``: (3, 3) for rank 2
    (the full matrix: symmetric rank-2 tensors are kept as 3x3), (3, 6) for rank 3, (6, 6) for
    rank 4."""
    try:
        return _VOIGT_SHAPES[rank]
    except KeyError:
        raise ValueError(f"no Voigt form for a rank-{rank} tensor (ranks 2, 3, 4)") from None


def tensor_rank(voigt_shape_: tuple[int, ...]) -> int:
    """The Cartesian rank of a tensor stored with Voigt shape ``voigt_shape_`` ((3, 3) -> 2,
    (3, 6) -> 3, (6, 6) -> 4)."""
    for rank, shape in _VOIGT_SHAPES.items():
        if tuple(voigt_shape_) == shape:
            return rank
    raise ValueError(f"no property tensor is stored with shape {tuple(voigt_shape_)} (3x3, 3x6 or 6x6)")


def voigt_to_full(voigt: np.ndarray) -> np.ndarray:
    """The full Cartesian tensor of a Voigt array: (3, 3) -> itself (rank 2), (3, 6) -> (3, 3, 3)
    (``e_ijk = e_iJ``), (6, 6) -> (3, 3, 3, 3) (``C_ijkl = C_IJ``); no factors (module docstring).
    Accepts leading batch dimensions (``(..., 6, 6)``)."""
    v = np.asarray(voigt, dtype=np.float64)
    shape = v.shape[-2:]
    if shape == (3, 3):
        return v.copy()
    if shape == (3, 6):
        return v[..., :, _VOIGT_OF_PAIR]
    if shape == (6, 6):
        return v[..., _VOIGT_OF_PAIR[:, :, None, None], _VOIGT_OF_PAIR[None, None, :, :]]
    raise ValueError(f"not a Voigt array: shape {v.shape} (3x3, 3x6 or 6x6)")


def full_to_voigt(tensor: np.ndarray) -> np.ndarray:
    """The Voigt array of a full Cartesian tensor (inverse of :func:`voigt_to_full`): rank 2 ->
    (3, 3) symmetrised, rank 3 -> (3, 6), rank 4 -> (6, 6). Each Voigt entry is the mean of the
    Cartesian entries it stands for, so a tensor that is not exactly index-symmetric (noise) is
    projected onto the symmetric ones rather than read at one arbitrary index order."""
    t = np.asarray(tensor, dtype=np.float64)
    rank = t.ndim
    if t.shape != (3,) * rank or rank not in _VOIGT_SHAPES:
        raise ValueError(f"not a full rank-2, 3 or 4 Cartesian tensor: shape {t.shape}")
    if rank == 2:
        return (t + t.T) / 2
    if rank == 3:
        sym = (t + t.transpose(0, 2, 1)) / 2
        return np.stack([sym[:, i, j] for i, j in VOIGT_PAIRS], axis=1)
    sym = (t + t.transpose(1, 0, 2, 3)) / 2
    sym = (sym + sym.transpose(0, 1, 3, 2)) / 2
    sym = (sym + sym.transpose(2, 3, 0, 1)) / 2
    out = np.empty((6, 6))
    for (a, (i, j)), (b, (k, m)) in product(enumerate(VOIGT_PAIRS), repeat=2):
        out[a, b] = sym[i, j, k, m]
    return out


_AXES = "xyz"
_PAIR_LABELS = tuple(_AXES[i] + _AXES[j] for i, j in VOIGT_PAIRS)  # xx yy zz yz xz xy


def component_labels(rank: int) -> list[str]:
    """Names of the independent components of a property tensor of Cartesian ``rank``, in the
    order of :func:`voigt_components`: rank 2 the Voigt pairs ``xx yy zz yz xz xy``; rank 3 the
    3x6 Voigt matrix row by row, ``x_xx ... z_xy``; rank 4 the upper triangle of the 6x6 Voigt
    matrix row by row, ``xx_xx xx_yy ... xy_xy`` (21). Prediction files name their columns
    ``<target>_<label>``."""
    if rank == 2:
        return list(_PAIR_LABELS)
    if rank == 3:
        return [f"{_AXES[i]}_{p}" for i in range(3) for p in _PAIR_LABELS]
    if rank == 4:
        return [f"{_PAIR_LABELS[a]}_{_PAIR_LABELS[b]}" for a in range(6) for b in range(a, 6)]
    raise ValueError(f"no Voigt form for a rank-{rank} tensor (ranks 2, 3, 4)")


def tensor_columns(target: str, rank: int) -> list[str]:
    """The prediction-file columns of tensor target ``target``: ``<target>_<label>`` for each of
    :func:`component_labels` (``e_electronic_xx``, ``piezoelectric_tensor_x_xx``, ``elastic_tensor_xx_xx``)."""
    return [f"{target}_{label}" for label in component_labels(rank)]


def voigt_components(tensor: np.ndarray, rank: int) -> np.ndarray:
    """The components :func:`component_labels` names, (..., 6 | 18 | 21), of full Cartesian
    tensors (..., 3, ..., 3) of ``rank`` (leading dimensions kept). Each is read at one index
    order (the tensors are index-symmetric by construction or by Neumann-checked data)."""
    t = np.asarray(tensor, dtype=np.float64)
    lead = t.shape[: t.ndim - rank]
    if rank == 2:
        return np.stack([t[..., i, j] for i, j in VOIGT_PAIRS], axis=-1)
    if rank == 3:
        return np.stack([t[..., i, j, k] for i in range(3) for j, k in VOIGT_PAIRS], axis=-1)
    if rank == 4:
        return np.stack([t[(..., *VOIGT_PAIRS[a], *VOIGT_PAIRS[b])] for a in range(6) for b in range(a, 6)], axis=-1)
    raise ValueError(f"no Voigt form for a rank-{rank} tensor of shape {lead} + {t.shape[len(lead):]}")


_LETTERS = "abcdefghijklmnop"


def rotate(tensor, rotation, rank: int | None = None):
    """``T'_{i1..in} = R_{i1 j1} ... R_{in jn} T_{j1..jn}``: a full Cartesian tensor of rank n
    rotated by R, for NumPy arrays and torch tensors alike (the one rotation of the package's
    property tensors: datasets, symmetry checks and the tensor read-outs).

    ``tensor`` (..., 3, ..., 3) has ``rank`` trailing Cartesian dimensions (default: all but the
    leading dimensions of ``rotation``, which is (3, 3) or (..., 3, 3) and broadcasts against the
    tensor's leading dimensions). Polar tensors: no det R factor. For Voigt arrays convert first
    (:func:`voigt_to_full`)."""
    if rank is None:
        rank = tensor.ndim - (rotation.ndim - 2)
    if not 1 <= rank <= 8 or tuple(tensor.shape[tensor.ndim - rank:]) != (3,) * rank or tuple(rotation.shape[-2:]) != (3, 3):
        raise ValueError(f"cannot rotate a tensor of shape {tuple(tensor.shape)} and rank {rank} by {tuple(rotation.shape)}")
    out_idx, in_idx = _LETTERS[:rank], _LETTERS[8:8 + rank]
    terms = ",".join(f"...{o}{i}" for o, i in zip(out_idx, in_idx))
    expression = f"{terms},...{in_idx}->...{out_idx}"
    if isinstance(tensor, np.ndarray) and isinstance(rotation, np.ndarray):
        return np.einsum(expression, *([rotation.astype(np.float64)] * rank), tensor.astype(np.float64), optimize=True)
    import torch

    return torch.einsum(expression, *([torch.as_tensor(rotation)] * rank), torch.as_tensor(tensor))


def cartesian_rotations(lattice: np.ndarray, fractional_rotations: np.ndarray) -> np.ndarray:
    """The Cartesian rotations ``R = L^T W L^-T`` of fractional rotations ``W`` (acting on
    fractional column vectors, spglib's convention) for a lattice ``L`` whose *rows* are the
    lattice vectors (Cartesian ``r = L^T f`` as a column, ``f @ L`` as a row). (K, 3, 3) in,
    (K, 3, 3) out."""
    lat = np.asarray(lattice, dtype=np.float64)
    w = np.asarray(fractional_rotations, dtype=np.float64)
    return lat.T @ w @ np.linalg.inv(lat.T)


def point_group_rotations(lattice: np.ndarray, frac_coords: np.ndarray, atomic_numbers: np.ndarray,
                          symprec: float = DEFAULT_SYMPREC) -> np.ndarray:
    """The Cartesian rotations (K, 3, 3) of the point group of a structure (the distinct
    rotational parts of its space-group operations, found by spglib through pymatgen's
    :class:`~pymatgen.symmetry.analyzer.SpacegroupAnalyzer` with ``symprec`` in Angstrom), in
    the Cartesian frame of ``lattice`` (rows = lattice vectors). Only the identity when spglib
    finds nothing."""
    from pymatgen.core import Lattice, Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    structure = Structure(Lattice(lattice), [int(z) for z in atomic_numbers], frac_coords)
    with warnings.catch_warnings():  # spglib >= 2.5 deprecation chatter on every call
        warnings.simplefilter("ignore")
        try:
            dataset = SpacegroupAnalyzer(structure, symprec=symprec).get_symmetry_dataset()
        except (ValueError, TypeError):  # spglib found no symmetry at all: P1
            dataset = None
    if dataset is None:
        return np.eye(3)[None]
    rotations = np.unique(np.asarray(dataset.rotations, dtype=np.int64), axis=0)
    return cartesian_rotations(lattice, rotations)


def neumann_residual(tensor: np.ndarray, rotations: np.ndarray, floor: float = 0.0) -> float:
    """How far a full Cartesian ``tensor`` is from being unchanged by every ``rotations`` (K, 3, 3):
    ``max_R ||R.T - T||_F / max(||T||_F, floor)``. 0 for a tensor that obeys Neumann's principle
    exactly; ``floor`` (in the tensor's units) keeps a tensor that is zero up to noise (the
    piezoelectric tensor of a centrosymmetric crystal) from counting its noise as a violation."""
    t = np.asarray(tensor, dtype=np.float64)
    rotated = rotate(np.broadcast_to(t, (len(rotations),) + t.shape), rotations)
    worst = float(np.sqrt(((rotated - t) ** 2).reshape(len(rotations), -1).sum(axis=1)).max())
    scale = max(float(np.linalg.norm(t)), floor)
    return 0.0 if worst == 0.0 else (worst / scale if scale > 0 else np.inf)


def ieee_rotation(lattice: np.ndarray, frac_coords: np.ndarray, atomic_numbers: np.ndarray) -> np.ndarray:
    """The rotation ``Q`` from the Cartesian frame of a structure to its IEEE standard frame
    (IEEE Std 176, as pymatgen's ``Tensor.get_ieee_rotation`` constructs it, with the structure's
    symmetry found at pymatgen's default symprec, 0.01 A = :data:`DEFAULT_SYMPREC`): a tensor
    ``T`` of the structure's frame is ``rotate(T, Q)`` in the IEEE frame, and a tensor given in
    the IEEE frame is ``rotate(T_ieee, Q.T)`` in the structure's frame."""
    from pymatgen.core import Lattice, Structure
    from pymatgen.core.tensors import Tensor

    structure = Structure(Lattice(lattice), [int(z) for z in atomic_numbers], frac_coords)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = Tensor(np.zeros((3, 3))).get_ieee_rotation(structure, refine_rotation=True)
    return np.asarray(q, dtype=np.float64)


def vrh_moduli(stiffness: np.ndarray) -> tuple[float, float]:
    """The Voigt-Reuss-Hill bulk and shear moduli ``(K_VRH, G_VRH)`` of a 6x6 Voigt stiffness
    (Hill, Proc. Phys. Soc. A 1952): the means of the Voigt (uniform strain) and Reuss (uniform
    stress) bounds, the latter from the compliance ``S = C^-1`` (the inverse of the factor-free
    Voigt stiffness is the engineering-shear compliance those formulas use). Invariant under
    rotations, so the frame of ``stiffness`` does not matter. ``(nan, nan)`` for a singular
    stiffness (no compliance)."""
    c = np.asarray(stiffness, dtype=np.float64)
    k_voigt = (c[0, 0] + c[1, 1] + c[2, 2] + 2 * (c[0, 1] + c[1, 2] + c[0, 2])) / 9
    g_voigt = (c[0, 0] + c[1, 1] + c[2, 2] - (c[0, 1] + c[1, 2] + c[0, 2]) + 3 * (c[3, 3] + c[4, 4] + c[5, 5])) / 15
    try:
        s = np.linalg.inv(c)
    except np.linalg.LinAlgError:
        return float("nan"), float("nan")
    k_reuss = 1 / (s[0, 0] + s[1, 1] + s[2, 2] + 2 * (s[0, 1] + s[1, 2] + s[0, 2]))
    g_reuss = 15 / (4 * (s[0, 0] + s[1, 1] + s[2, 2]) - 4 * (s[0, 1] + s[1, 2] + s[0, 2]) + 3 * (s[3, 3] + s[4, 4] + s[5, 5]))
    return float((k_voigt + k_reuss) / 2), float((g_voigt + g_reuss) / 2)
