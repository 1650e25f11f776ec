"""The backbone contract: what every model of crystalframes is, declared once.

A backbone is a :class:`CrystalModel`. The package's other parts (the Python API, fine-tuning,
training, the symmetry analysis, the model contract suite of :mod:`crystalframes.testing`) use
a model only through what this class declares, never through attribute names of one backbone:

- ``graph_settings``: how to build its graphs (:class:`~crystalframes.data.graph.GraphSettings`);
- ``supported_atomic_numbers``: the elements it can encode;
- ``provides`` (class attribute): what it hands a frame, a subset of
  :data:`crystalframes.frames.NEEDS` (``lattice``, ``neighbours``, ``attention``, ``features``).
  A frame whose needs it does not provide is refused when its spec is parsed
  (:func:`crystalframes.models.parse_spec`), with the missing needs named;
- ``config``: the settings it was built with (a dataclass with ``as_dict``);
- ``frame``: the frame module it runs (``frame.active`` is False for the ``none`` frame);
- :meth:`encode`: per-atom features (N, C) after its last layer, C = :attr:`embedding_dim`;
- ``head``: the read-out, applied to the mean of those features (:meth:`forward`); its last
  :class:`~torch.nn.Linear` is :attr:`output_layer` (what fine-tuning resets for a new target);
- :meth:`record_frames`: the one way to see the frames a forward pass built (analysis,
  training diagnostics), whichever way the backbone builds them (all atoms at once, or in
  buckets of centres as Crystalformer does).

The contract is checked for every registered backbone by the contract suite
(:func:`crystalframes.testing.check_backbone_contract`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import ClassVar, Iterator

import torch
from torch import nn

from crystalframes.data.batch import GraphBatch


def settle_config(config, positive: tuple[str, ...] = ()) -> None:
    """In a frozen config dataclass's ``__post_init__``: old frame names resolved to today's
    (the same model), the frame and global frame checked against the registries, and every field
    of ``positive`` a positive integer; ValueError naming the field otherwise."""
    from crystalframes.frames import FRAMES, GLOBAL_FRAMES, frame_names, resolve_frame

    frame, global_frame = resolve_frame(config.frame, config.global_frame)
    object.__setattr__(config, "frame", frame)
    object.__setattr__(config, "global_frame", global_frame)
    if config.frame not in FRAMES:
        raise ValueError(f"unknown frame {config.frame!r}; choose one of {frame_names()}")
    if config.global_frame not in GLOBAL_FRAMES:
        raise ValueError(f"unknown global frame {config.global_frame!r}; choose one of {tuple(GLOBAL_FRAMES)}")
    for name in positive:
        if int(getattr(config, name)) < 1:
            raise ValueError(f"{name} must be a positive integer, got {getattr(config, name)}")


class FrameRecord:
    """The frames one or more forward passes built, gathered per layer.

    A backbone may build one layer's frames in parts (Crystalformer builds them per bucket of
    centre atoms); :meth:`layers` puts the parts of each layer back together, one row per atom.
    """

    def __init__(self, num_atoms: int | None = None, detach: bool = True):
        self.num_atoms, self.detach = num_atoms, detach
        self.calls: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (layer, centres, frames)

    def add(self, layer: int, centres: torch.Tensor, frames: torch.Tensor) -> None:
        # kept in the autograd graph when a read-out rotates its output by them (tensor heads)
        self.calls.append((int(layer), centres.detach(), frames.detach() if self.detach else frames))

    def layers(self) -> list[torch.Tensor]:
        """The frames of each layer in layer order: (N, 3, 3), or (N, H, 3, 3) for per-head
        frames. A frame built once and reused by later layers appears once."""
        out = []
        for layer in sorted({layer for layer, _, _ in self.calls}):
            parts = [(c, f) for lay, c, f in self.calls if lay == layer]
            n = self.num_atoms if self.num_atoms is not None else int(max(int(c.max()) for c, _ in parts if c.numel()) + 1)
            first = parts[0][1]
            full = torch.full((n, *first.shape[1:]), float("nan"), dtype=first.dtype, device=first.device)
            for centres, frames in parts:
                full.index_copy_(0, centres, frames)
            out.append(full)
        return out


class CrystalModel(nn.Module):
    """Base class of every backbone (see the module docstring for the contract).

    A subclass sets ``provides`` and, in ``__init__``, ``config``, ``graph_settings``,
    ``supported_atomic_numbers``, ``frame`` and ``head``, and implements :meth:`encode`.
    """

    provides: ClassVar[frozenset[str]] = frozenset()

    config: object
    graph_settings: object
    supported_atomic_numbers: frozenset[int]
    frame: nn.Module
    head: nn.Module

    def encode(self, batch: GraphBatch) -> torch.Tensor:
        """Per-atom features (N, C) after the last layer: what the head's mean pooling reads."""
        raise NotImplementedError

    def forward(self, batch: GraphBatch) -> torch.Tensor:
        """Predictions (B, T): the head on the mean of the per-atom features of each crystal."""
        return self.head(batch.mean_over_atoms(self.encode(batch)))

    @property
    def embedding_dim(self) -> int:
        """C, the width of :meth:`encode`'s features (the input of the head)."""
        return self._linears()[0].in_features

    @property
    def output_layer(self) -> nn.Linear:
        """The head's last linear layer (one output per target)."""
        return self._linears()[-1]

    def _linears(self) -> list[nn.Linear]:
        linears = [m for m in self.head.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise TypeError(f"{type(self).__name__}.head has no nn.Linear: the backbone contract needs one")
        return linears

    @torch.no_grad()
    def node_features(self, batch: GraphBatch) -> torch.Tensor:
        """Diagnostics and embeddings: :meth:`encode` without gradients."""
        return self.encode(batch)

    @contextmanager
    def record_frames(self, num_atoms: int | None = None, detach: bool = True) -> Iterator[FrameRecord]:
        """``with model.record_frames() as record: model(batch)`` then ``record.layers()``: the
        frames the frame module built in those forward passes (nothing for the ``none`` frame);
        ``detach=False`` keeps them differentiable."""
        record = FrameRecord(num_atoms, detach)
        handle = None
        if self.frame.active:  # a frame is called as frame(layer, setup, neighbourhood)
            handle = self.frame.register_forward_hook(lambda module, args, out: record.add(args[0], args[2].centres, out))
        try:
            yield record
        finally:
            if handle is not None:
                handle.remove()

    @torch.no_grad()
    def frames_of(self, batch: GraphBatch) -> list[torch.Tensor]:
        """The frames F_i (N, 3, 3) (or (N, H, 3, 3)) of each layer that builds its own, for
        ``batch``. A forward pass like any other: call it in eval mode, or BatchNorm uses (and
        updates) the batch's statistics."""
        with self.record_frames(int(batch.atomic_numbers.shape[0])) as record:
            self.encode(batch)
        return record.layers()


class GraphFrames:
    """What a message-passing backbone on a neighbour graph hands its frame, layer by layer: the
    provider of eComFormer and SchNet. Built once per forward; :meth:`next_edges` builds the
    frames of the next layer that uses one (rebuilt for frames that depend on the features or the
    attention, built once otherwise) and returns the edge vectors in their centres' frames.

    The view it hands the frame (:mod:`crystalframes.frames.registry`) follows the frame's needs:
    the graph's edges r_ij from each centre as flat entries (``neighbours``) with the weights the
    backbone passes (``attention``): an :class:`~crystalframes.frames.EdgeNeighbourhood`; the
    features x_i with the graph, its edge features and the edge directions r_hat_ij
    (``features``): a :class:`~crystalframes.frames.GraphNeighbourhood`; both for a frame that
    needs both; the lattice through the frame's setup.
    """

    def __init__(self, frame, batch: GraphBatch, graph, edge_features):
        self.frame, self.batch, self.graph, self.edge_features = frame, batch, graph, edge_features
        self.setup = frame.setup(batch.lattice, batch.frac_coords, batch.batch)
        self.centres = torch.arange(batch.batch.shape[0], device=batch.batch.device)
        self.directions = batch.edge_vec / batch.edge_vec.norm(dim=-1, keepdim=True)
        self.layer = 0
        self._frames: torch.Tensor | None = None

    def neighbourhood(self, features: torch.Tensor, weights: torch.Tensor | None = None):
        """The view of the atoms this frame's needs call for."""
        from crystalframes.frames import EdgeGraphNeighbourhood, EdgeNeighbourhood, GraphNeighbourhood, Neighbourhood

        needs = self.frame.needs
        edges = dict(vec=self.batch.edge_vec, centre=self.graph.centre, weights=weights)
        graph = dict(features=features, graph=self.graph, edge_features=self.edge_features, edge_directions=self.directions)
        if "features" in needs and needs & {"neighbours", "attention"}:
            return EdgeGraphNeighbourhood(self.centres, **edges, **graph)
        if "features" in needs:
            return GraphNeighbourhood(self.centres, **graph)
        if needs & {"neighbours", "attention"}:
            return EdgeNeighbourhood(self.centres, **edges)
        return Neighbourhood(self.centres)

    def next_edges(self, features: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Edge vectors r_ij F_i^T (E, 3) in the frames of the next frame-using layer."""
        from crystalframes.frames import edges_in_frames

        if self._frames is None or self.frame.rebuilt_per_layer:
            self._frames = self.frame(self.layer, self.setup, self.neighbourhood(features, weights))
        self.layer += 1
        return edges_in_frames(self.batch.edge_vec, self._frames, self.graph.centre)
