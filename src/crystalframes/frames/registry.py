"""The frame layer: one protocol every frame implements and one registry of frames by name.

A backbone never names a frame. It builds one with :func:`build_frame` (as MACE receives its
block classes and matgl its bond expansion) and, before each layer that uses a frame, hands it a
:class:`Neighbourhood` filled with what the frame's :attr:`Frame.needs` asks for:

===========  ===================================================================================
need         what the backbone provides
===========  ===================================================================================
lattice      nothing more: the lattice, fractional coordinates and batch vector of
             :meth:`Frame.setup` (global frames, tie-breaking frames)
neighbours   the displacements r of each centre's neighbour entries (``vec``, ``centre``): a
             graph's edges, or the periodic entries (j, n) of infinitely connected attention
attention    one weight per neighbour entry (``weights``, (M,) or (M, H) for H heads), from the
             backbone's attention (CrystalFramer's dynamic frames)
features     the atoms' invariant features (``features``) and a message graph over atom pairs
             (``graph``) with one equivariant direction per edge (``edge_directions``) and
             invariant edge features (``edge_features``, which messages may transform freely)
             and/or edge weights (``edge_weights``, sums over periodic images, which messages
             must use linearly): what learned frame heads pass messages on
===========  ===================================================================================

A frame returns F_i, (n, 3, 3) rotations whose rows are the axes, one per centre of the
neighbourhood, or (n, H, 3, 3) per centre and head (frames that are given per-head
weights). Frames whose ``composes_with_global`` is set take a global frame (a spec's
``+qr``, ``+polar``...; :data:`~crystalframes.frames.global_frames.GLOBAL_FRAMES`).

What a frame cannot satisfy by construction is declared here, beside it
(:attr:`Frame.dependences` and the global frames' :data:`GLOBAL_FRAME_DEPENDENCES`, through
:func:`declared_dependences`), with the reason; the model contract suite asserts that every
declared dependence really shows (tests/models/test_contract.py).

A new frame is one class: subclass :class:`Frame`, set its class attributes, implement
``forward`` and decorate it with :func:`register_frame`; every backbone, ``crystalframes models``,
the spec parser and the contract suite pick it up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from crystalframes.frames.global_frames import GLOBAL_FRAMES, global_frame, qr_frame
from crystalframes.precision import full_precision

NEEDS = ("lattice", "neighbours", "attention", "features")
DEFAULT_GLOBAL_FRAME = "qr"

_SUPERCELL = "a frame of the chosen cell: a supercell has other {}"
_BASIS = "a frame of the chosen basis: another basis of the same lattice gives {}"
# What each global frame cannot satisfy (check -> reason); measured in the model contract suite.
GLOBAL_FRAME_DEPENDENCES: dict[str, dict[str, str]] = {
    "qr": {"basis_change": _BASIS.format("another QR factor")},
    "identity": {"rotation": "the identity does not rotate with the crystal"},
    "polar": {"supercell": _SUPERCELL.format("lattice vectors, so another polar factor"),
              "basis_change": _BASIS.format("another polar factor")},
    "lattice_pca": {"supercell": _SUPERCELL.format("lattice vectors, so other principal axes"),
                    "basis_change": _BASIS.format("other principal axes")},
    "positions_pca": {"supercell": _SUPERCELL.format("atom positions, so other principal axes"),
                      "basis_change": "the atom positions wrapped into another cell have other principal axes"},
    "lattice_vector": {"supercell": _SUPERCELL.format("shortest lattice vectors"),
                       "basis_change": "equally short lattice vectors are ordered by the basis they come from"},
}


@dataclass
class FrameSetup:
    """Per-forward quantities of a frame, from the structures alone (:meth:`Frame.setup`)."""

    lattice: torch.Tensor  # (B, 3, 3)
    batch: torch.Tensor  # (N,) structure of every atom
    global_frames: torch.Tensor | None = None  # (N, 3, 3) each atom's structure's global frame
    tie_frames: torch.Tensor | None = None  # (N, 3, 3) QR frame of each atom's lattice (ties)
    degenerate: tuple | None = None  # (zero, collinear) (N, 1) masks the first layer decided (equivariant Gram-Schmidt)


@dataclass
class EntryRows:
    """Neighbour entries laid out as padded rows, one per centre (an optional dense view a
    backbone may add; frames that profit from it use it, others read the flat fields)."""

    vec: torch.Tensor  # (n, M, 3)
    dist: torch.Tensor  # (n, M)
    valid: torch.Tensor  # (n, M) bool
    weights: torch.Tensor | None = None  # (n, H, M)


@dataclass
class Neighbourhood:
    """One layer's view of the atoms, filled by a backbone according to the frame's needs.

    ``centres`` (n,): the atoms whose frames are wanted (all atoms, or one bucket of them).
    Entry fields (``neighbours`` / ``attention``): ``vec`` (M, 3), ``centre`` (M,) row
    0..n-1 of each entry's centre, ``weights`` (M,) or (M, H); or ``rows`` (dense), from which
    :meth:`entries` derives the flat fields on first use. Graph fields (``features``): ``features`` (N, C),
    ``graph`` (a :class:`~crystalframes.nn.graph.MessageGraph` over all N atoms),
    ``edge_features`` (an :class:`~crystalframes.nn.graph.EdgeTable` or None), ``edge_weights``
    (E, D) or None and ``edge_directions`` (E, 3), an equivariant direction per graph edge, with
    ``edge_direction_sizes`` (E,) the summed length of the terms a direction is a sum of (None:
    its own length), against which a cancelling sum is judged, and ``edge_direction_moments``
    (E, 3, 3) their second moment (None: u u^T / |u| of a single unit direction).
    """

    centres: torch.Tensor
    vec: torch.Tensor | None = None
    centre: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    rows: EntryRows | None = None
    features: torch.Tensor | None = None
    graph: object | None = None
    edge_features: object | None = None
    edge_weights: torch.Tensor | None = None
    edge_directions: torch.Tensor | None = None
    edge_direction_sizes: torch.Tensor | None = None
    edge_direction_moments: torch.Tensor | None = None

    def entries(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(vec, centre, weights) of the flat entries, derived from ``rows`` on first use."""
        if self.vec is None and self.rows is not None:
            r = self.rows
            n, m = r.valid.shape
            flat = torch.nonzero(r.valid.reshape(-1)).squeeze(-1)
            self.vec = r.vec.reshape(n * m, 3).index_select(0, flat)
            self.centre = torch.div(flat, m, rounding_mode="floor")
            if r.weights is not None:
                h = r.weights.shape[1]
                self.weights = r.weights.transpose(1, 2).reshape(n * m, h).index_select(0, flat)
        return self.vec, self.centre, self.weights

    @property
    def num_centres(self) -> int:
        return int(self.centres.shape[0])


class Frame(nn.Module):
    """Base class of every frame (see the module docstring).

    Class attributes: ``name`` (the one name of the frame everywhere), ``summary`` (one line),
    ``needs`` (a subset of :data:`NEEDS`), ``composes_with_global``,
    ``uses_tie_frame`` (needs the QR frame of the lattice to break exact ties), ``shared``
    (every atom of a structure gets the same frame), ``global_frame_is_fallback`` (the global
    frame only serves atoms whose own construction is degenerate) and
    ``dependences`` (check -> reason, what the frame cannot satisfy whatever the global frame).
    Constructor keywords every backbone passes: ``global_frame``, ``dim`` (atom feature width),
    ``edge_dim`` and ``edge_weight_dim`` (widths of the message graph's edge features and edge
    weights, 0 for none), ``layers`` (how many times the frame
    is built per forward; learned frames have one head per layer) and frame options (e.g.
    ``positive_quaternion``, ``angle_bins``: the ``options`` a frame class declares), which frames
    that do not use them ignore; a keyword no registered frame declares is a ``TypeError``.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    active: ClassVar[bool] = True  # False for the ``none`` frame: the backbone then uses no frame
    needs: ClassVar[frozenset[str]] = frozenset()
    composes_with_global: ClassVar[bool] = False
    uses_tie_frame: ClassVar[bool] = False
    shared: ClassVar[bool] = False
    global_frame_is_fallback: ClassVar[bool] = False
    dependences: ClassVar[dict[str, str]] = {}
    # the frame options this frame reads; a backbone passes its options to whatever frame it runs,
    # so a frame accepts every registered frame's options and refuses any other keyword
    options: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs):
        # Every frame is built in float32 or float64 whatever autocast does to the dense layers
        # (crystalframes.precision): a subclass's setup / forward inherit that here.
        super().__init_subclass__(**kwargs)
        for name in ("setup", "forward"):
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "full_precision", False):
                setattr(cls, name, full_precision(method))

    def __init__(self, global_frame: str = DEFAULT_GLOBAL_FRAME, *, dim: int = 0, edge_dim: int = 0, edge_weight_dim: int = 0, layers: int = 1, **options):
        super().__init__()
        unknown = sorted(set(options) - frame_options())
        if unknown:
            raise TypeError(f"unknown frame option(s) {unknown}; the registered frames take {sorted(frame_options())}")
        if global_frame not in GLOBAL_FRAMES:
            raise ValueError(f"unknown global frame {global_frame!r}; choose one of {tuple(GLOBAL_FRAMES)}")
        self.global_frame = global_frame
        self.layers = int(layers)

    @property
    def rebuilt_per_layer(self) -> bool:
        """Frames that depend on the features or the attention change from layer to layer;
        the others may be built once per forward (a backbone may cache them)."""
        return bool(self.needs & {"features", "attention"})

    @full_precision
    def setup(self, lattice: torch.Tensor, frac_coords: torch.Tensor, batch: torch.Tensor) -> FrameSetup:
        """Once per forward: the per-atom global and tie-breaking frames this frame uses."""
        g = global_frame(self.global_frame, lattice, frac_coords, batch).index_select(0, batch) if self.composes_with_global else None
        tie = qr_frame(lattice).index_select(0, batch) if self.uses_tie_frame else None
        return FrameSetup(lattice, batch, g, tie)

    def forward(self, layer: int, setup: FrameSetup, hood: Neighbourhood) -> torch.Tensor:
        raise NotImplementedError


FRAMES: dict[str, type[Frame]] = {}
# Old names that still parse (model files written before the frame layer use them).
FRAME_ALIASES: dict[str, str] = {
    "pca": "global+positions_pca",
    "lattice": "global+lattice_vector",
    "static_local": "static",
    "spframe": "spframe_gram_schmidt",
    **{f"global_{name}": f"global+{name}" for name in GLOBAL_FRAMES},
}


def register_frame(cls: type[Frame]) -> type[Frame]:
    """Class decorator: add a frame to :data:`FRAMES` under its ``name``."""
    if not cls.name or cls.name in FRAMES:
        raise ValueError(f"frame name {cls.name!r} is empty or taken")
    unknown = set(cls.needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"frame {cls.name!r} needs {sorted(unknown)}; a frame can need {NEEDS}")
    FRAMES[cls.name] = cls
    return cls


def frame_options() -> set[str]:
    """The options any registered frame reads (``Frame.options``)."""
    return {option for cls in FRAMES.values() for option in cls.options}


def frame_names() -> tuple[str, ...]:
    """Every registered frame, ``none`` first."""
    return tuple(sorted(FRAMES, key=lambda n: (n != "none", n)))


def resolve_frame(name: str, global_name: str | None = None) -> tuple[str, str | None]:
    """(frame, global frame) of a possibly old name: ``pca`` -> (``global``, ``positions_pca``).
    An alias that already fixes the global frame cannot take another one."""
    if name in FRAME_ALIASES:
        canonical = FRAME_ALIASES[name]
        frame, _, fixed = canonical.partition("+")
        if fixed and global_name not in (None, fixed):
            raise ValueError(f"frame {name!r} is the old name of {canonical!r}: write that instead of adding +{global_name}")
        return frame, fixed or global_name
    return name, global_name


def build_frame(name: str, global_frame: str = DEFAULT_GLOBAL_FRAME, **kwargs) -> Frame:
    """The frame module registered as ``name`` (see :class:`Frame` for the keywords)."""
    name, global_frame = resolve_frame(name, global_frame)
    if name not in FRAMES:
        raise ValueError(f"unknown frame {name!r}; choose one of {frame_names()}")
    return FRAMES[name](global_frame or DEFAULT_GLOBAL_FRAME, **kwargs)


def declared_dependences(name: str, global_name: str | None = None) -> dict[str, str]:
    """What frame ``name`` with global frame ``global_name`` cannot satisfy by construction:
    check -> reason (checks of :func:`crystalframes.testing.invariance_errors`)."""
    name, global_name = resolve_frame(name, global_name)
    cls = FRAMES[name]
    out = dict(cls.dependences)
    if cls.composes_with_global:
        for check, reason in GLOBAL_FRAME_DEPENDENCES[global_name or DEFAULT_GLOBAL_FRAME].items():
            out.setdefault(check, f"{global_name}: {reason}")
    return out


@register_frame
class NoFrame(Frame):
    """No frame: the backbone runs as published without one."""

    name = "none"
    summary = "no frame (the plain backbone)"
    active = False

    def forward(self, layer, setup, hood):
        raise RuntimeError("the 'none' frame builds no frames; a backbone checks Frame.active first")


@register_frame
class GlobalFrame(Frame):
    """The structure's global frame as every atom's frame (CrystalFramer's "PCA" and "lattice"
    baselines are ``global+positions_pca`` and ``global+lattice_vector``)."""

    name = "global"
    summary = "the crystal's global frame for every atom (CrystalFramer's PCA / lattice baselines)"
    needs = frozenset({"lattice"})
    composes_with_global = True
    shared = True

    def forward(self, layer, setup, hood):
        return setup.global_frames.index_select(0, hood.centres)
