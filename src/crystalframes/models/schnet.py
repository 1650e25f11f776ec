"""A SchNet-family backbone (Schütt et al., NeurIPS 2017; J. Chem. Phys. 2018) that sees
directions only through a frame: the fast model for screening on a laptop.

    atoms  -> CGCNN features (92) -> Linear(92, C)                                  x_i
    edges  -> |r_ij| -> Gaussians on [0, distance_max] -> Linear -> Softplus        e_ij
    layers -> continuous-filter convolution and atom-wise update (SchNet's interaction block):
              W_ij = Linear(ssp(Linear_e(e_ij) + Linear_u(A(u_ij))))
              x_i <- x_i + MLP(mean_j W_ij * Linear(x_j))
    output -> mean over the atoms of each crystal -> Linear(C, C) - ssp - Linear(C, T)

ssp is SchNet's shifted softplus, ssp(x) = softplus(x) - log 2. Without a frame (``none``) the
filter sees the distance alone: plain SchNet on the k-NN graph, invariant by construction and
blind to angles. With a frame, u_ij = r_ij F_i^T / |r_ij| is the edge's direction in its
centre's frame (as SPFrame feeds eComFormer's equivariant layer, Hua & Lin), and A(u) its
three components expanded in ``angle_bins`` Gaussians each: the only way direction reaches this
model. The first interaction block is distance-only; a frame is built before each later block
(rebuilt there when it depends on the features, built once per forward otherwise): as eComFormer
builds its frames after a transformer layer, a learned frame then reads features that already
describe each atom's neighbourhood, not its element alone.

It provides the lattice, the neighbours (its edges) and the features (x_i, the k-NN graph with
e_ij and the edge directions) to frames; it has no attention, so frames built from attention
weights (CrystalFramer's ``max`` and ``weighted_pca``) are refused when the spec is parsed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from crystalframes.data.batch import GraphBatch
from crystalframes.data.graph import GraphSettings
from crystalframes.frames import FRAMES, build_frame
from crystalframes.frames.registry import DEFAULT_GLOBAL_FRAME
from crystalframes.models import presets
from crystalframes.models.base import CrystalModel, GraphFrames, settle_config
from crystalframes.models.presets import Preset
from crystalframes.models.specs import backbone_of
from crystalframes.nn.atom_features import AtomFeatureTable
from crystalframes.nn.encodings import GaussianBasis
from crystalframes.nn.graph import EdgeTable, MessageGraph, take

DEFAULT_FRAME = "none"


class ShiftedSoftplus(nn.Module):
    """ssp(x) = softplus(x) - log 2 (SchNet): ssp(0) = 0, smooth, unbounded above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(x) - math.log(2.0)


@dataclass(frozen=True)
class SchNetConfig:
    """Every size and switch of the model (the ``model`` part of a preset).

    hidden: C, the width of atom features, filters and edge features. interactions: the number
    of interaction blocks. rbf_bins / distance_max: the Gaussians of the distance (Angstrom).
    angle_bins: Gaussians per frame component of the edge direction (with a frame).
    k: neighbours per atom of the k-NN graph. frame, global_frame: see the module docstring.
    positive_quaternion: SPFrame's softplus on the quaternion head (``spframe_quaternion``).
    """

    hidden: int = 64
    interactions: int = 3
    rbf_bins: int = 50
    distance_max: float = 8.0
    angle_bins: int = 8
    k: int = 12
    head_hidden: int | None = None
    num_targets: int = 1
    frame: str = DEFAULT_FRAME
    global_frame: str = DEFAULT_GLOBAL_FRAME
    positive_quaternion: bool = True

    def __post_init__(self):
        settle_config(self, positive=("hidden", "interactions", "rbf_bins", "angle_bins", "num_targets", "k"))
        if FRAMES[self.frame].active and self.interactions < 2:
            raise ValueError("with a frame, interactions must be at least 2 (the first block is distance-only)")
        if not self.distance_max > 0:
            raise ValueError(f"distance_max must be positive, got {self.distance_max}")

    def as_dict(self) -> dict:
        return asdict(self)


class Interaction(nn.Module):
    """SchNet's interaction block: a continuous-filter convolution and an atom-wise update,
    the filter seeing the edge features and, with a frame, the direction in the frame."""

    def __init__(self, dim: int, angle_dim: int):
        super().__init__()
        self.filter_edge = nn.Linear(dim, dim)
        self.filter_angle = nn.Linear(angle_dim, dim, bias=False) if angle_dim else None
        self.filter_out = nn.Sequential(ShiftedSoftplus(), nn.Linear(dim, dim))
        self.atom_in = nn.Linear(dim, dim, bias=False)
        self.update = nn.Sequential(nn.Linear(dim, dim), ShiftedSoftplus(), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor, edge: EdgeTable, graph: MessageGraph, angles: torch.Tensor | None) -> torch.Tensor:
        pre = edge.map(self.filter_edge)
        if angles is None:  # distance only: one filter per distinct distance
            w = pre.map(self.filter_out).per_edge()
        else:
            w = self.filter_out(pre.per_edge() + self.filter_angle(angles))
        message = graph.mean_at_centre(w * take(self.atom_in(x), graph.neighbour))
        return x + self.update(message)


class SchNet(CrystalModel):
    """SchNet on the k-NN graph, with an optional frame; see the module docstring."""

    provides = frozenset({"lattice", "neighbours", "features"})

    def __init__(self, config: SchNetConfig = SchNetConfig()):
        super().__init__()
        c = self.config = config
        self.graph_settings = GraphSettings(k=c.k, lattice_edges=False)
        self.atom_features = AtomFeatureTable()
        self.supported_atomic_numbers = self.atom_features.supported_atomic_numbers
        self.atom_embedding = nn.Linear(self.atom_features.dim, c.hidden)
        self.rbf = GaussianBasis(0.0, c.distance_max, c.rbf_bins)
        self.edge_embedding = nn.Sequential(nn.Linear(c.rbf_bins, c.hidden), nn.Softplus())
        self.frame = build_frame(c.frame, c.global_frame, dim=c.hidden, edge_dim=c.hidden, layers=c.interactions - 1,
                                 positive_quaternion=c.positive_quaternion)
        angle_dim = 3 * c.angle_bins if self.frame.active else 0
        self.angle_basis = GaussianBasis(-1.0, 1.0, c.angle_bins) if angle_dim else None
        self.interactions = nn.ModuleList(Interaction(c.hidden, angle_dim if layer else 0) for layer in range(c.interactions))
        head = c.head_hidden or c.hidden
        self.head = nn.Sequential(nn.Linear(c.hidden, head), ShiftedSoftplus(), nn.Linear(head, c.num_targets))

    def encode(self, batch: GraphBatch) -> torch.Tensor:
        dtype = self.atom_embedding.weight.dtype
        graph = MessageGraph(batch.edge_index, batch.atomic_numbers.shape[0], dtype)
        x = self.atom_embedding(self.atom_features(batch.atomic_numbers).to(dtype))
        edge = EdgeTable.of_distances(batch.edge_vec.norm(dim=-1)).map(lambda d: self.edge_embedding(self.rbf(d)))
        frames = GraphFrames(self.frame, batch, graph, edge) if self.frame.active else None
        for layer, block in enumerate(self.interactions):
            angles = None
            if frames is not None and layer > 0:
                u = frames.next_edges(x)
                angles = self.angle_basis(u / u.norm(dim=-1, keepdim=True)).flatten(1)
            x = block(x, edge, graph, angles)
        return x


# Presets: architectures (how each trains: crystalframes.train.recipes)
PRESETS: dict[str, Preset] = presets.presets_by_name(
    Preset("reference", "SchNet-sized (Schütt et al. 2018): C=64, 3 interactions, 50 Gaussians to 8 A, k=12",
           {"hidden": 64, "interactions": 3, "rbf_bins": 50, "k": 12}),
    Preset("cpu", "the frame study's CPU size: C=64, 3 interactions, k=12; 18 epochs of batch 32, the budget of the other "
           "backbones' `cpu` presets (equal-budget comparisons)", {"hidden": 64, "interactions": 3, "k": 12}),
    Preset("cpu_small", "small model for tests and CPU runs: C=32, 2 interactions, 16 Gaussians, 4 angle bins, k=8",
           {"hidden": 32, "interactions": 2, "rbf_bins": 16, "angle_bins": 4, "k": 8}),
)
DEFAULT_PRESET = "reference"

BACKBONE = backbone_of("schnet", SchNet, SchNetConfig, PRESETS, DEFAULT_FRAME, DEFAULT_PRESET, "SchNet")
