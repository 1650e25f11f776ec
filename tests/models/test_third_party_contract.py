"""A backbone and a frame defined outside the package run the package's contract suite with one
line (``class TestToy(ModelContract)``): the seam as a third party meets it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pytest
import torch
from torch import nn

from crystalframes.data.graph import GraphSettings
from crystalframes.frames import FRAMES, build_frame
from crystalframes.frames.registry import GlobalFrame, register_frame
from crystalframes.models import BACKBONES, parse_spec, register_backbone
from crystalframes.models.base import CrystalModel, GraphFrames
from crystalframes.models.presets import Preset
from crystalframes.models.specs import SpecError, backbone_of
from crystalframes.nn.atom_features import AtomFeatureTable
from crystalframes.nn.encodings import GaussianBasis
from crystalframes.nn.graph import MessageGraph
from crystalframes.testing import ModelContract

TILT = torch.tensor([[0.36, 0.48, -0.80], [-0.80, 0.60, 0.00], [0.48, 0.64, 0.60]], dtype=torch.float64)  # a rotation


class TiltedGlobal(GlobalFrame):
    """Every atom gets its crystal's global frame turned by one fixed rotation."""

    name = "toy_tilted_global"
    summary = "the global frame turned by a fixed rotation (a test frame)"

    def forward(self, layer, setup, hood):
        return TILT.to(setup.global_frames) @ super().forward(layer, setup, hood)


@dataclass(frozen=True)
class ToyConfig:
    hidden: int = 16
    k: int = 8
    num_targets: int = 1
    frame: str = "none"
    global_frame: str = "qr"

    def as_dict(self):
        return asdict(self)


class PairSum(CrystalModel):
    """x_i = Emb(Z_i) + mean_j MLP(rbf(d_ij), directions of r_ij in F_i): one message pass."""

    provides = frozenset({"lattice", "neighbours"})

    def __init__(self, config: ToyConfig = ToyConfig()):
        super().__init__()
        c = self.config = config
        self.graph_settings = GraphSettings(k=c.k, lattice_edges=False)
        self.atom_features = AtomFeatureTable()
        self.supported_atomic_numbers = self.atom_features.supported_atomic_numbers
        self.embed = nn.Linear(self.atom_features.dim, c.hidden)
        self.frame = build_frame(c.frame, c.global_frame, layers=1)
        self.rbf = GaussianBasis(0.0, 8.0, 8)
        self.pair = nn.Sequential(nn.Linear(8 + (3 if self.frame.active else 0), c.hidden), nn.Tanh())
        self.head = nn.Sequential(nn.Linear(c.hidden, c.num_targets))

    def encode(self, batch):
        dtype = self.embed.weight.dtype
        graph = MessageGraph(batch.edge_index, batch.atomic_numbers.shape[0], dtype)
        x = self.embed(self.atom_features(batch.atomic_numbers).to(dtype))
        parts = [self.rbf(batch.edge_vec.norm(dim=-1))]
        if self.frame.active:
            u = GraphFrames(self.frame, batch, graph, None).next_edges(x)
            parts.append(u / u.norm(dim=-1, keepdim=True))
        return x + graph.mean_at_centre(self.pair(torch.cat(parts, dim=-1)))


TOY = backbone_of("toy_pairsum", PairSum, ToyConfig, {"cpu_small": Preset("cpu_small", "test size", {})}, "none", "cpu_small")


@pytest.fixture(scope="module", autouse=True)
def registered():
    """The toy frame and backbone in the registries for this module's tests only."""
    register_frame(TiltedGlobal)
    register_backbone(TOY)
    yield
    FRAMES.pop(TiltedGlobal.name)
    BACKBONES.pop(TOY.name)


class TestToyContract(ModelContract):
    specs = ["toy_pairsum:none@cpu_small", "toy_pairsum:toy_tilted_global+polar@cpu_small",
             "toy_pairsum:static@cpu_small", "ecomformer:toy_tilted_global+qr@cpu_small",
             "schnet:toy_tilted_global+lattice_pca@cpu_small"]


def test_a_frame_whose_needs_the_backbone_lacks_is_refused_by_name():
    with pytest.raises(SpecError, match="needs features, which backbone toy_pairsum does not provide"):
        parse_spec("toy_pairsum:spframe_quaternion@cpu_small")
    with pytest.raises(SpecError, match="needs attention"):
        parse_spec("schnet:max@cpu_small")
