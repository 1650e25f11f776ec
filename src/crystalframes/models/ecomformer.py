"""eComFormer (Yan et al., ICLR 2024) with SPFrame and its frame baselines (Hua & Lin).

One backbone code path for every frame variant:

    atoms  -> CGCNN features (92) -> Linear(92, C)                       f_i
    edges  -> -0.75/|r_ij| -> 256 Gaussians on [-4, 0] -> Linear -> Softplus   e_ij
    layers -> "att": node-wise transformer layer
              "equi": [frame block] -> node-wise equivariant update layer on Y(r_ij F_i^T)
    output -> mean over the atoms of each crystal -> Linear(C, C) - SiLU - Linear(C, T)

A frame (any frame of the registry, :mod:`crystalframes.frames`; the backbone names none)
is built before every equivariant update layer, which then sees the edges in it, Y(r_ij F_i^T)
(Hua & Lin, SPFrame, A.3, Fig. 4). What this backbone hands its frame (the typed views its
provider, :class:`~crystalframes.models.base.GraphFrames`, builds):

- neighbours: the edges of the k-NN multigraph, r_ij from each centre i;
- attention: for CrystalFramer's dynamic frames (``max``, ``weighted_pca``), the weights of the
  transformer layer before the equivariant layer. CrystalFramer's weights are a softmax over the
  neighbours; eComFormer's transformer layer gates each neighbour's message with
  sigmoid(BN(alpha_ij)) per channel instead, and the channel mean of that gate is the share of
  j's message that reaches i: the same role, one weight per edge (one head);
- features: the input features f_i of the equivariant layer, and the k-NN graph with the edge
  features e_ij and directions r_hat_ij for the learned heads (SPFrame's frame blocks).

Frames that depend on neither features nor attention (``static``, ``global``) are built once per
forward. With ``global+NAME`` every atom shares one frame, which this backbone cancels (see
:data:`SHARED_FRAMES_CANCEL`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
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
from crystalframes.nn.comformer_layers import (
    TENSOR_PRODUCT_IMPLEMENTATIONS,
    EdgeTable,
    EquivariantUpdateLayer,
    MessageGraph,
    NodeTransformerLayer,
)
from crystalframes.nn.encodings import INVERSE_DISTANCE_RANGE, GaussianBasis, inverse_distance

DEFAULT_FRAME = "spframe_quaternion"
LAYER_KINDS = ("att", "equi")

# A frame shared by every atom changes nothing on this backbone: its equivariant update layer
# contracts equivariant features of neighbouring atoms expressed in their frames, so a rotation
# common to all atoms cancels (measured: tests/models/test_global_frame_kind.py and the model
# contract suite, where no global frame, the identity and the cell-dependent ones included,
# shows a dependence here).
SHARED_FRAMES_CANCEL = True

# Parameter names of model files written before the frame layer (format version 1): the learned
# frame heads were the backbone's ``frames`` list and the Gram-Schmidt angle embeddings its own.
_OLD_FRAME_KEYS = (("frames.", "frame.heads."), ("angle_embeddings.", "frame.angle_embeddings."))


def message_passing_blocks(n: int) -> tuple[str, ...]:
    """Layer order of the seed's models: n blocks of (transformer layer, equivariant layer)."""
    return ("att", "equi") * n


def parse_layer_order(order) -> tuple[str, ...]:
    """``"att-equi-att-att"`` or a sequence of ``"att"`` / ``"equi"`` -> validated tuple."""
    items = tuple(order.split("-")) if isinstance(order, str) else tuple(order)
    bad = [x for x in items if x not in LAYER_KINDS]
    if not items or bad:
        raise ValueError(f"layer_order must be a non-empty sequence of {LAYER_KINDS}, got {order!r}")
    return items


@dataclass(frozen=True)
class EComFormerConfig:
    """Every size and switch of the model (the ``model`` part of a preset).

    hidden: C, the width of node features, invariant edge features and frame blocks.
    scalars, vectors: ns and nv of the equivariant update layer (ns x 0e + nv x 1o + nv x 2e).
    rbf_bins: Gaussians of the edge encoding. head_hidden: width of the MLP head (None: C).
    layer_order: "att" / "equi" sequence; a frame block precedes every "equi".
    frame, global_frame: see the module docstring. positive_quaternion: the seed's softplus head.
    angle_bins: Gaussians per lattice cosine (``spframe_gram_schmidt`` only).
    tensor_product: "fused" (default) or "e3nn" (literal, slower; same numbers).
    deduplicate: run distance-only maps once per distinct distance and the attention MLPs once
    per distinct atom pair / (pair, distance) (exact; see
    :class:`~crystalframes.nn.comformer_layers.EdgeTable` and ``EdgeGroups``). False: the
    literal per-edge computation.
    """

    hidden: int = 256
    scalars: int = 64
    vectors: int = 8
    rbf_bins: int = 256
    head_hidden: int | None = None
    layer_order: tuple[str, ...] = ("att", "equi", "att", "att")
    frame: str = "none"
    global_frame: str = DEFAULT_GLOBAL_FRAME
    positive_quaternion: bool = True
    angle_bins: int = 16
    num_targets: int = 1
    k: int = 25
    tensor_product: str = "fused"
    deduplicate: bool = True

    def __post_init__(self):
        object.__setattr__(self, "layer_order", parse_layer_order(self.layer_order))
        settle_config(self, positive=("hidden", "scalars", "vectors", "rbf_bins", "angle_bins", "num_targets", "k"))
        if "attention" in FRAMES[self.frame].needs and self.layer_order[0] != "att":
            raise ValueError(f"frame {self.frame!r} is built from a transformer layer's attention: layer_order must start with 'att'")
        if self.tensor_product not in TENSOR_PRODUCT_IMPLEMENTATIONS:
            raise ValueError(f"tensor_product must be one of {TENSOR_PRODUCT_IMPLEMENTATIONS}")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["layer_order"] = "-".join(self.layer_order)
        return d


class EComFormer(CrystalModel):
    """eComFormer with an optional frame per equivariant layer; see the module docstring.

    A :class:`~crystalframes.models.base.CrystalModel`: k-NN multigraph (k = 25, no lattice
    edges); provides every need of the frame layer (attention: the gate weights, see the module
    docstring). Works in float32 or float64 (cast the model and the batch alike), on any device.
    """

    provides = frozenset({"lattice", "neighbours", "attention", "features"})

    def __init__(self, config: EComFormerConfig = EComFormerConfig()):
        super().__init__()
        self.config = config
        c = config
        self.graph_settings = GraphSettings(k=c.k, lattice_edges=False)
        self.atom_features = AtomFeatureTable()
        self.supported_atomic_numbers = self.atom_features.supported_atomic_numbers
        self.atom_embedding = nn.Linear(self.atom_features.dim, c.hidden)
        self.rbf = GaussianBasis(*INVERSE_DISTANCE_RANGE, c.rbf_bins)
        self.edge_embedding = nn.Sequential(nn.Linear(c.rbf_bins, c.hidden), nn.Softplus())
        self.layers = nn.ModuleList(
            NodeTransformerLayer(c.hidden) if kind == "att" else EquivariantUpdateLayer(c.hidden, c.scalars, c.vectors, tensor_product=c.tensor_product)
            for kind in c.layer_order
        )
        # One frame per equivariant layer, built before it (Hua & Lin, SPFrame, A.3, Fig. 4).
        self.frame = build_frame(
            c.frame, c.global_frame, dim=c.hidden, edge_dim=c.hidden, layers=c.layer_order.count("equi"),
            positive_quaternion=c.positive_quaternion, angle_bins=c.angle_bins,
        )
        self.register_load_state_dict_pre_hook(_rename_old_frame_keys)
        head = c.head_hidden or c.hidden
        self.head = nn.Sequential(nn.Linear(c.hidden, head), nn.SiLU(), nn.Linear(head, c.num_targets))

    def encode(self, batch: GraphBatch) -> torch.Tensor:
        """Per-atom features after the last layer (N, C)."""
        c = self.config
        dtype = self.atom_embedding.weight.dtype
        graph = MessageGraph(batch.edge_index, batch.atomic_numbers.shape[0], dtype, group_edges=c.deduplicate)
        f = self.atom_embedding(self.atom_features(batch.atomic_numbers).to(dtype))
        distances = EdgeTable.of_distances(batch.edge_vec.norm(dim=-1), c.deduplicate)
        edge_feat = distances.map(lambda d: self.edge_embedding(self.rbf(inverse_distance(d))))
        frame = self.frame
        frames = GraphFrames(frame, batch, graph, edge_feat) if frame.active else None
        # Attention-driven frames use the weights of the transformer layer before each equivariant
        # layer. CrystalFramer's weights are a softmax over the neighbours; eComFormer's transformer
        # layer gates each neighbour's message with sigmoid(BN(alpha_ij)) per channel instead, and
        # the channel mean of that gate is the share of j's message that reaches i: the same role,
        # one weight per edge (one head).
        wants_weights = frame.active and "attention" in frame.needs
        weights = None
        for kind, block in zip(c.layer_order, self.layers):
            if kind == "att":
                if wants_weights:
                    f, weights = block(f, edge_feat, graph, return_weights=True)
                else:
                    f = block(f, edge_feat, graph)
                continue
            edge_vec = batch.edge_vec if frames is None else frames.next_edges(f, weights)
            f = block(f, edge_vec, edge_feat, graph)
        return f


def _rename_old_frame_keys(module, state_dict, prefix, *args):
    """Load hook: parameter names of files written before the frame layer -> today's names."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        for old, new in _OLD_FRAME_KEYS:
            if key.startswith(prefix + old):
                state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)


# ---------------------------------------------------------------------------------------------
# Presets: the SPFrame paper's per-task sizes (Hua & Lin, App. A.5) and the original eComFormer
# sizes (how each trains: crystalframes.train.recipes).
# ---------------------------------------------------------------------------------------------


def _paper(hidden: int, blocks: int) -> dict:
    # SPFrame (Hua & Lin) App. A.5: C = hidden for node/edge features and the frame blocks; ns, nv, the 92-d atom
    # features and the 256 Gaussians stay as in eComFormer; each block = att + frame + equi.
    return {"hidden": hidden, "scalars": 64, "vectors": 8, "rbf_bins": 256, "layer_order": message_passing_blocks(blocks)}


PRESETS: dict[str, Preset] = presets.presets_by_name(
    Preset(
        "reference",
        "original eComFormer sizes (C=256, ns=64, nv=8, att-equi-att-att): 5,583,809 parameters without frames",
        {"hidden": 256, "scalars": 64, "vectors": 8, "rbf_bins": 256, "layer_order": ("att", "equi", "att", "att")},
    ),
    Preset("jarvis_formation_energy", "SPFrame (Hua & Lin) A.5: JARVIS formation energy", _paper(128, 3)),
    Preset("jarvis_total_energy", "SPFrame (Hua & Lin) A.5: JARVIS total energy", _paper(128, 2)),
    Preset("jarvis_optb88vdw_bandgap", "SPFrame (Hua & Lin) A.5: JARVIS band gap (OPT)", _paper(128, 3)),
    Preset("jarvis_mbj_bandgap", "SPFrame (Hua & Lin) A.5: JARVIS band gap (MBJ)", _paper(128, 2)),
    Preset("jarvis_ehull", "SPFrame (Hua & Lin) A.5: JARVIS energy above hull", _paper(128, 2)),
    Preset("mp_e_form", "SPFrame (Hua & Lin) A.5: MP formation energy", _paper(196, 2)),
    Preset("mp_gap", "SPFrame (Hua & Lin) A.5: MP band gap (PBE)", _paper(128, 3)),
    Preset("mp_bulk", "SPFrame (Hua & Lin) A.5: MP bulk modulus (log10 GPa)", _paper(512, 4)),
    Preset("mp_shear", "SPFrame (Hua & Lin) A.5: MP shear modulus (log10 GPa), MSE loss", _paper(128, 4)),
    Preset(
        "cpu_small",
        "tiny model for tests (C=32, ns=16, nv=4, 64 Gaussians, 2 blocks)",
        {"hidden": 32, "scalars": 16, "vectors": 4, "rbf_bins": 64, "layer_order": message_passing_blocks(2)},
    ),
    Preset(
        "cpu",
        "this machine's default: C=64, ns=32, nv=4, 128 Gaussians, k=16, 2 blocks; ~10 min on 2 CPU cores for mp_2018_demo",
        {"hidden": 64, "scalars": 32, "vectors": 4, "rbf_bins": 128, "k": 16, "layer_order": message_passing_blocks(2)},
    ),
    Preset(
        "cpu_original_order",
        "the `cpu` sizes with eComFormer's original layer order att-equi-att-att (the baseline the SPFrame "
        "paper compares against; every other preset but `reference` uses (att, equi) x n)",
        {"hidden": 64, "scalars": 32, "vectors": 4, "rbf_bins": 128, "k": 16, "layer_order": ("att", "equi", "att", "att")},
    ),
)
DEFAULT_PRESET = "jarvis_formation_energy"


BACKBONE = backbone_of("ecomformer", EComFormer, EComFormerConfig, PRESETS, DEFAULT_FRAME, DEFAULT_PRESET, "eComFormer",
                       shared_frames_cancel=SHARED_FRAMES_CANCEL)


def ecomformer_config(preset: str = DEFAULT_PRESET, *, frame: str = DEFAULT_FRAME, global_frame: str = DEFAULT_GLOBAL_FRAME,
                      **overrides) -> EComFormerConfig:
    """The :class:`EComFormerConfig` of a named preset with a frame and any field overridden
    (the argument order of :func:`crystalframes.models.presets.config_from_preset`)."""
    return presets.config_from_preset(EComFormerConfig, PRESETS, preset, "eComFormer", frame=frame, global_frame=global_frame, **overrides)
