"""The frame layer: one protocol every frame implements and one registry of frames by name.

A backbone never names a frame. It builds one with :func:`build_frame` (as MACE receives its
block classes and matgl its bond expansion) and, before each layer that uses a frame, hands it a
typed view of the atoms, a :class:`Neighbourhood`, built by the backbone's provider according to
what the frame's :attr:`Frame.needs` asks for:

===========  ===================================================================================
need         what the backbone provides, and in which view
===========  ===================================================================================
lattice      nothing more: the lattice, fractional coordinates and batch vector of
             :meth:`Frame.setup` (global frames, tie-breaking frames); the view is the plain
             :class:`Neighbourhood` (the centres)
neighbours   the displacements r of each centre's neighbour entries, in one of two layouts
             (:class:`EntryNeighbourhood`): a graph's edges as a flat list
             (:class:`EdgeNeighbourhood`: eComFormer, SchNet), or the periodic entries (j, n)
             of infinitely connected attention as padded rows, one per centre
             (:class:`RowNeighbourhood`: Crystalformer's buckets); every frame may read either
             through :meth:`EntryNeighbourhood.entries`, and a frame that profits from the
             dense rows tests for :class:`RowNeighbourhood`
attention    one weight per neighbour entry (``weights`` of either layout: (M,) or (M, H) flat,
             (n, H, M) in rows), from the backbone's attention (CrystalFramer's dynamic frames)
features     the atoms' invariant features and a message graph over atom pairs with one
             equivariant direction per edge, invariant edge features (which messages may
             transform freely) and/or edge weights (sums over periodic images, which messages
             must use linearly): :class:`GraphNeighbourhood`, what learned frame heads pass
             messages on
===========  ===================================================================================

A frame that needs both neighbour entries and features gets an :class:`EdgeGraphNeighbourhood`
(both views at once) from a backbone that has them in one layout (eComFormer, SchNet).

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

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from crystalframes.frames.global_frames import GLOBAL_FRAMES, global_frame, qr_frame
from crystalframes.nn.graph import EdgeTable, MessageGraph
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


@dataclass(frozen=True)
class FrameSetup:
    """Per-forward quantities of a frame, from the structures alone (:meth:`Frame.setup`); built
    once per forward and handed to every layer's call. Frozen: a frame whose layers must agree on
    a decision keeps it in state of its own, created by its own :meth:`Frame.setup` (see
    :class:`~crystalframes.frames.learned.EquivariantGramSchmidt`), not in fields written here."""

    lattice: torch.Tensor  # (B, 3, 3)
    batch: torch.Tensor  # (N,) structure of every atom
    global_frames: torch.Tensor | None = None  # (N, 3, 3) each atom's structure's global frame
    tie_frames: torch.Tensor | None = None  # (N, 3, 3) QR frame of each atom's lattice (ties)


@dataclass
class Neighbourhood:
    """The view every frame gets: ``centres`` (n,), the atoms whose frames are wanted (all atoms,
    or one bucket of them). Frames that need only the lattice receive this base itself; the
    subclasses add what the other needs ask for (module docstring), each with only its own
    fields."""

    centres: torch.Tensor

    @property
    def num_centres(self) -> int:
        return int(self.centres.shape[0])


class EntryNeighbourhood(Neighbourhood):
    """Neighbour entries in either layout; :meth:`entries` reads them flat whatever the layout."""

    def entries(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(vec (M, 3), centre (M,) row 0..n-1 of each entry's centre, weights (M,) / (M, H) or
        None when the frame does not need attention)."""
        raise NotImplementedError


@dataclass(kw_only=True)
class EdgeNeighbourhood(EntryNeighbourhood):
    """Neighbour entries as a flat list, a graph's edges (eComFormer, SchNet): ``vec`` (M, 3)
    the displacement r of each entry from its centre, ``centre`` (M,) its centre's row,
    ``weights`` (M,) or (M, H) for H heads (None unless the frame needs attention)."""

    vec: torch.Tensor
    centre: torch.Tensor
    weights: torch.Tensor | None = None

    def entries(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return self.vec, self.centre, self.weights


@dataclass(kw_only=True)
class RowNeighbourhood(EntryNeighbourhood):
    """Neighbour entries as padded rows, one per centre (Crystalformer's buckets): ``vec``
    (n, M, 3), ``valid`` (n, M) which cells hold an entry (padding cells may hold any finite
    values), ``weights`` (n, H, M) (None unless the frame needs attention). Frames that profit
    from the dense layout use it (:func:`~crystalframes.frames.dynamic.max_frame_of_rows`);
    :meth:`entries` derives the flat list for the others, once."""

    vec: torch.Tensor
    valid: torch.Tensor
    weights: torch.Tensor | None = None
    _flat: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def entries(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if self._flat is None:
            n, m = self.valid.shape
            flat = torch.nonzero(self.valid.reshape(-1)).squeeze(-1)
            vec = self.vec.reshape(n * m, 3).index_select(0, flat)
            centre = torch.div(flat, m, rounding_mode="floor")
            weights = None
            if self.weights is not None:
                h = self.weights.shape[1]
                weights = self.weights.transpose(1, 2).reshape(n * m, h).index_select(0, flat)
            self._flat = (vec, centre, weights)
        return self._flat


@dataclass(kw_only=True)
class GraphNeighbourhood(Neighbourhood):
    """The atoms' features and a message graph, what learned frames pass messages on:
    ``features`` (N, C) of all N atoms, ``graph`` (a :class:`~crystalframes.nn.graph.MessageGraph`
    over them), ``edge_directions`` (E, 3) an equivariant direction per graph edge,
    ``edge_features`` (an :class:`~crystalframes.nn.graph.EdgeTable`; None: the graph has none),
    ``edge_weights`` (E, D) (None: none), ``edge_direction_sizes`` (E,) the summed length of the
    terms a direction is a sum of (None: its own length), against which a cancelling sum is
    judged, and ``edge_direction_moments`` (E, 3, 3) their second moment (None: u u^T / |u| of a
    single unit direction)."""

    features: torch.Tensor
    graph: MessageGraph
    edge_directions: torch.Tensor
    edge_features: EdgeTable | None = None
    edge_weights: torch.Tensor | None = None
    edge_direction_sizes: torch.Tensor | None = None
    edge_direction_moments: torch.Tensor | None = None


@dataclass(kw_only=True)
class EdgeGraphNeighbourhood(EdgeNeighbourhood, GraphNeighbourhood):
    """Both: flat neighbour entries and the message graph (a frame that needs neighbours and
    features, on a backbone whose entries are its graph's edges)."""


def view(frame: "Frame", hood: Neighbourhood, kind: type) -> Neighbourhood:
    """``hood`` if it is a ``kind``; otherwise a TypeError naming the frame and what it got (a
    backbone that hands a frame a view its needs do not call for)."""
    if not isinstance(hood, kind):
        raise TypeError(f"frame {frame.name!r} (needs {sorted(frame.needs)}) reads a {kind.__name__}; "
                        f"the backbone handed it a {type(hood).__name__}")
    return hood


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
