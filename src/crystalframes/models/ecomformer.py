"""eComFormer (Yan et al., ICLR 2024) with SPFrame and its frame baselines (seed 000).

One backbone code path for every frame variant:

    atoms  -> CGCNN features (92) -> Linear(92, C)                       f_i
    edges  -> -0.75/|r_ij| -> 256 Gaussians on [-4, 0] -> Linear -> Softplus   e_ij
    layers -> "att": node-wise transformer layer
              "equi": [frame block] -> node-wise equivariant update layer on Y(r_ij F_i^T)
    output -> mean over the atoms of each crystal -> Linear(C, C) - SiLU - Linear(C, T)

A frame block precedes every equivariant update layer and is rebuilt from that layer's input
features (seed 000 A.3, Fig. 4). Frames (rows = axes) and what the harmonics see:

==========================  ===========================================  ====================
frame                       F_i                                          harmonics of
==========================  ===========================================  ====================
none                        -                                            r_ij (equivariant)
equivariant_gram_schmidt    GS(sum phi_k r_hat_ij), fallback F_global    r_ij F_i^T
spframe_gram_schmidt        GS(sum phi_k) F_global, + lattice angles     r_ij F_global^T F_INV,i^T
spframe_quaternion          R(q_i) F_global                              r_ij F_global^T F_INV,i^T
max / weighted_pca          CrystalFramer's dynamic frames from the       r_ij F_i^T
                            preceding transformer layer's attention
                            (channel mean of its gates, one per edge)
static                      max frame of 1/|r_ij|^2 (CrystalFramer's     r_ij F_i^T
                            static baseline; ties broken by QR(L))
global                      F_global (the same for every atom)           r_ij F_global^T
==========================  ===========================================  ====================

F_global is one of :data:`crystalframes.frames.GLOBAL_FRAMES` (``qr`` by default).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from crystalframes.data.batch import GraphBatch
from crystalframes.data.graph import GraphSettings
from crystalframes.frames import (
    GLOBAL_FRAMES,
    compose_spframe,
    edges_in_frames,
    global_frame,
    max_frame,
    qr_frame,
    static_local_frame,
    weighted_pca_frame,
)
from crystalframes.models import presets
from crystalframes.models.presets import Preset
from crystalframes.nn.atom_features import AtomFeatureTable
from crystalframes.nn.comformer_layers import (
    TENSOR_PRODUCT_IMPLEMENTATIONS,
    EdgeTable,
    EquivariantUpdateLayer,
    GramSchmidtFrame,
    MessageGraph,
    NodeTransformerLayer,
    QuaternionFrame,
)
from crystalframes.nn.encodings import INVERSE_DISTANCE_RANGE, GaussianBasis, inverse_distance, lattice_cosines

FRAMES = ("none", "equivariant_gram_schmidt", "spframe_gram_schmidt", "spframe_quaternion", "max", "weighted_pca", "static", "global")
# frames rebuilt before each equivariant layer from the attention of the transformer layer before it
DYNAMIC_FRAMES = ("max", "weighted_pca")
DEFAULT_FRAME = "spframe_quaternion"
DEFAULT_GLOBAL_FRAME = "qr"
LAYER_KINDS = ("att", "equi")
# Frames whose construction uses the global frame (composition, or the equivariant fallback).
USES_GLOBAL_FRAME = ("equivariant_gram_schmidt", "spframe_gram_schmidt", "spframe_quaternion", "global")


# When v_2 is collinear with v_1, gram_schmidt takes the fallback axis least aligned with e_1.
# With the untilted global frame that choice ties exactly where symmetry puts e_1 (the c axis of
# a hexagonal cell, [111] of a cubic one), and rounding noise then picks different axes for a
# rotated copy of the crystal (measured: output changes of ~1e-6). A fixed generic rotation of
# the fallback frame keeps it equivariant and moves those ties to directions no symmetry favours.
FALLBACK_TILT_QUATERNION = (0.8, 0.35, 0.25, 0.1)


# What a frame of this backbone cannot satisfy by construction (frame -> {check: reason}; see the
# model contract suite). None: the equivariant layer is rotation invariant per centre, so no
# frame can break rotation invariance, and a frame shared by all atoms (global+NAME, identity and
# cell-dependent ones included) changes nothing at all (tests/models/test_cross_ports.py).
DECLARED_DEPENDENCES: dict[str, dict[str, str]] = {}


def fallback_tilt(like: torch.Tensor) -> torch.Tensor:
    """The fixed rotation R(FALLBACK_TILT_QUATERNION) (3, 3), in ``like``'s dtype and device."""
    from crystalframes.frames import quaternion_to_rotation

    q = torch.tensor(FALLBACK_TILT_QUATERNION, dtype=like.dtype, device=like.device)
    return quaternion_to_rotation(q)


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
        if self.frame not in FRAMES:
            raise ValueError(f"unknown frame {self.frame!r}; choose one of {FRAMES}")
        if self.global_frame not in GLOBAL_FRAMES:
            raise ValueError(f"unknown global frame {self.global_frame!r}; choose one of {tuple(GLOBAL_FRAMES)}")
        if self.frame in DYNAMIC_FRAMES and self.layer_order[0] != "att":
            raise ValueError(f"frame {self.frame!r} is built from a transformer layer's attention: layer_order must start with 'att'")
        if self.tensor_product not in TENSOR_PRODUCT_IMPLEMENTATIONS:
            raise ValueError(f"tensor_product must be one of {TENSOR_PRODUCT_IMPLEMENTATIONS}")
        for name in ("hidden", "scalars", "vectors", "rbf_bins", "angle_bins", "num_targets", "k"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["layer_order"] = "-".join(self.layer_order)
        return d


class EComFormer(nn.Module):
    """eComFormer with an optional frame per equivariant layer; see the module docstring.

    Model contract (:mod:`crystalframes.testing`): ``graph_settings`` says how to build its
    graphs (k-NN multigraph, k = 25, no lattice edges); ``forward(GraphBatch) -> (B, T)``.
    Works in float32 or float64 (cast the model and the batch alike), on any device.
    """

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
        self.layers = nn.ModuleList()
        self.frames = nn.ModuleList()
        for kind in c.layer_order:
            if kind == "att":
                self.layers.append(NodeTransformerLayer(c.hidden))
                continue
            self.layers.append(EquivariantUpdateLayer(c.hidden, c.scalars, c.vectors, tensor_product=c.tensor_product))
            if c.frame == "spframe_quaternion":
                self.frames.append(QuaternionFrame(c.hidden, positive=c.positive_quaternion))
            elif c.frame in ("equivariant_gram_schmidt", "spframe_gram_schmidt"):
                self.frames.append(GramSchmidtFrame(c.hidden, equivariant=c.frame == "equivariant_gram_schmidt"))
        if c.frame == "spframe_gram_schmidt":
            self.angle_basis = GaussianBasis(-1.0, 1.0, c.angle_bins)
            self.angle_embeddings = nn.ModuleList([nn.Linear(3 * c.angle_bins, c.hidden) for _ in self.frames])
        head = c.head_hidden or c.hidden
        self.head = nn.Sequential(nn.Linear(c.hidden, head), nn.SiLU(), nn.Linear(head, c.num_targets))

    def forward(self, batch: GraphBatch) -> torch.Tensor:
        f = self.encode(batch)
        return self.head(batch.mean_over_atoms(f))

    @torch.no_grad()
    def node_features(self, batch: GraphBatch) -> torch.Tensor:
        """Diagnostics: the per-atom features (N, C) that are mean-pooled into the prediction."""
        return self.encode(batch)

    @torch.no_grad()
    def frames_of(self, batch: GraphBatch) -> list[torch.Tensor]:
        """Diagnostics: the frames F_i (N, 3, 3) built before each equivariant layer for
        ``batch`` (empty for frame ``none``). A forward pass like any other: call it in eval
        mode, or BatchNorm uses (and updates) the batch's statistics."""
        record: list[torch.Tensor] = []
        self.encode(batch, record)
        return record

    def encode(self, batch: GraphBatch, record: list | None = None) -> torch.Tensor:
        """Per-atom features after the last layer (N, C); the frames built on the way are
        appended to ``record`` when given."""
        c = self.config
        dtype = self.atom_embedding.weight.dtype
        graph = MessageGraph(batch.edge_index, batch.atomic_numbers.shape[0], dtype, group_edges=c.deduplicate)
        f = self.atom_embedding(self.atom_features(batch.atomic_numbers).to(dtype))
        distances = EdgeTable.of_distances(batch.edge_vec.norm(dim=-1), c.deduplicate)
        edge_feat = distances.map(lambda d: self.edge_embedding(self.rbf(inverse_distance(d))))
        global_frames = global_frame(c.global_frame, batch.lattice, batch.frac_coords, batch.batch) if c.frame in USES_GLOBAL_FRAME else None
        angles = None
        if c.frame == "spframe_gram_schmidt":
            cos = lattice_cosines(batch.edge_vec, batch.lattice, batch.batch.index_select(0, graph.centre))
            angles = self.angle_basis(cos).flatten(1)  # (E, 3 * angle_bins)
        # Built once per forward: the tie-breaking frame of CrystalFramer's frames, and the frames
        # that do not depend on the features (the same before every equivariant layer).
        tie = qr_frame(batch.lattice).index_select(0, batch.batch) if c.frame in DYNAMIC_FRAMES + ("static",) else None
        fixed = None
        if c.frame == "static":  # CrystalFramer's distance-driven max frame over the graph's edges
            fixed = static_local_frame(batch.edge_vec, graph.centre, batch.batch.shape[0], tie)
        elif c.frame == "global":  # the structure's global frame for every atom: nothing learned
            fixed = global_frames.index_select(0, batch.batch)
        frame_index = 0
        weights = None  # per-edge attention of the last transformer layer (dynamic frames)
        for kind, layer in zip(c.layer_order, self.layers):
            if kind == "att":
                if c.frame in DYNAMIC_FRAMES:
                    f, weights = layer(f, edge_feat, graph, return_weights=True)
                else:
                    f = layer(f, edge_feat, graph)
                continue
            edge_vec = batch.edge_vec
            if c.frame != "none":
                frames = fixed if fixed is not None else self._frames(frame_index, f, edge_feat, angles, graph, batch, global_frames, weights, tie)
                if record is not None:
                    record.append(frames)
                edge_vec = edges_in_frames(batch.edge_vec, frames, graph.centre)
                frame_index += 1
            f = layer(f, edge_vec, edge_feat, graph)
        return f

    def _frames(self, index, f, edge_feat, angles, graph, batch, global_frames, weights=None, tie=None) -> torch.Tensor:
        """F_i (N, 3, 3) of the frame block before the ``index``-th equivariant layer (frames that
        change from layer to layer)."""
        frame = self.config.frame
        if frame in DYNAMIC_FRAMES:
            # CrystalFramer's frames from attention weights. Its weights are a softmax over the
            # neighbours; eComFormer's transformer layer gates each neighbour's message with
            # sigmoid(BN(alpha_ij)) per channel instead, and the channel mean of that gate is the
            # share of j's message that reaches i: the same role, one weight per edge (one head).
            build = max_frame if frame == "max" else weighted_pca_frame
            return build(batch.edge_vec, weights, graph.centre, batch.batch.shape[0], tie)
        block = self.frames[index]
        if frame == "equivariant_gram_schmidt":
            # Already equivariant: no composition. Degenerate atoms (v_1 = 0, or v_2 collinear
            # with v_1, as on every site of an axis of symmetry) fall back to the global frame,
            # tilted by a fixed generic rotation; see FALLBACK_TILT_QUATERNION.
            fallback = fallback_tilt(global_frames) @ global_frames
            return block(f, edge_feat, graph, edge_vec=batch.edge_vec, fallback=fallback.index_select(0, batch.batch))
        if frame == "spframe_gram_schmidt":
            local = block(f, edge_feat + self.angle_embeddings[index](angles), graph)
        else:
            local = block(f, edge_feat, graph)
        return compose_spframe(local, global_frames, batch.batch)


# ---------------------------------------------------------------------------------------------
# Presets: the SPFrame paper's per-task settings (Hua & Lin, App. A.5) and the original eComFormer sizes.
# ---------------------------------------------------------------------------------------------


def _onecycle(lr=1e-3, epochs=500, batch_size=64, loss="l1", optimizer="adam") -> dict:
    return {
        "loss": loss,
        "optimizer": optimizer,
        "lr": lr,
        "weight_decay": 0.0,
        "scheduler": {"name": "onecycle", "pct_start": 0.3, "interval": "step"},
        "epochs": epochs,
        "batch_size": batch_size,
    }


def _polynomial(lr, lr_end, epochs, batch_size=64) -> dict:
    # The seed gives start and end learning rates only; power 1 (linear decay) is assumed.
    return {
        "loss": "l1",
        "optimizer": "adam",
        "lr": lr,
        "weight_decay": 0.0,
        "scheduler": {"name": "polynomial", "lr_end": lr_end, "power": 1.0, "interval": "step"},
        "epochs": epochs,
        "batch_size": batch_size,
    }


def _cpu_training(epochs: int, batch_size: int) -> dict:
    # Not from a paper: the ComFormer recipe (AdamW, OneCycle) at CPU-sized epochs and batches.
    return {
        "loss": "l1",
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 1e-5,
        "scheduler": {"name": "onecycle", "pct_start": 0.3, "interval": "step"},
        "epochs": epochs,
        "batch_size": batch_size,
    }


def _paper(hidden: int, blocks: int) -> dict:
    # SPFrame (Hua & Lin) App. A.5: C = hidden for node/edge features and the frame blocks; ns, nv, the 92-d atom
    # features and the 256 Gaussians stay as in eComFormer; each block = att + frame + equi.
    return {"hidden": hidden, "scalars": 64, "vectors": 8, "rbf_bins": 256, "layer_order": message_passing_blocks(blocks)}


_JARVIS = "jarvis_dft_3d_2021"
PRESETS: dict[str, Preset] = presets.presets_by_name(
    Preset(
        "reference",
        "original eComFormer sizes (C=256, ns=64, nv=8, att-equi-att-att): 5,583,809 parameters without frames",
        {"hidden": 256, "scalars": 64, "vectors": 8, "rbf_bins": 256, "layer_order": ("att", "equi", "att", "att")},
        {
            # ComFormer reference training (REFERENCE.md section 1); its loss is not recorded there.
            "loss": "mse",
            "optimizer": "adamw",
            "lr": 1e-3,
            "weight_decay": 1e-5,
            "no_decay_on": ["bias", "batchnorm"],
            "scheduler": {"name": "onecycle", "pct_start": 0.3, "interval": "step"},
            "epochs": 500,
            "batch_size": 64,
            "standardise_targets": True,
        },
    ),
    Preset("jarvis_formation_energy", "SPFrame (Hua & Lin) A.5: JARVIS formation energy", _paper(128, 3), _onecycle(),
           {"dataset": _JARVIS, "target": "formation_energy_peratom"}),
    Preset("jarvis_total_energy", "SPFrame (Hua & Lin) A.5: JARVIS total energy", _paper(128, 2), _onecycle(),
           {"dataset": _JARVIS, "target": "optb88vdw_total_energy"}),
    Preset("jarvis_optb88vdw_bandgap", "SPFrame (Hua & Lin) A.5: JARVIS band gap (OPT)", _paper(128, 3),
           _polynomial(5e-4, 1e-5, 800), {"dataset": _JARVIS, "target": "optb88vdw_bandgap"}),
    Preset("jarvis_mbj_bandgap", "SPFrame (Hua & Lin) A.5: JARVIS band gap (MBJ)", _paper(128, 2),
           _polynomial(3e-4, 1e-5, 500), {"dataset": _JARVIS, "target": "mbj_bandgap"}),
    Preset("jarvis_ehull", "SPFrame (Hua & Lin) A.5: JARVIS energy above hull", _paper(128, 2), _onecycle(),
           {"dataset": _JARVIS, "target": "ehull"}),
    Preset("mp_e_form", "SPFrame (Hua & Lin) A.5: MP formation energy", _paper(196, 2), _onecycle(batch_size=32),
           {"dataset": "mp_2018", "target": "e_form"}),
    Preset("mp_gap", "SPFrame (Hua & Lin) A.5: MP band gap (PBE)", _paper(128, 3), _onecycle(batch_size=32),
           {"dataset": "mp_2018", "target": "gap pbe"}),
    Preset("mp_bulk", "SPFrame (Hua & Lin) A.5: MP bulk modulus (log10 GPa)", _paper(512, 4), _onecycle(),
           {"dataset": "mp_2018_demo", "target": "log10_K_VRH"}),
    Preset("mp_shear", "SPFrame (Hua & Lin) A.5: MP shear modulus (log10 GPa), MSE loss", _paper(128, 4), _onecycle(loss="mse"),
           {"dataset": "mp_2018_demo", "target": "log10_G_VRH"}),
    Preset(
        "cpu_small",
        "tiny model for tests (C=32, ns=16, nv=4, 64 Gaussians, 2 blocks)",
        {"hidden": 32, "scalars": 16, "vectors": 4, "rbf_bins": 64, "layer_order": message_passing_blocks(2)},
        _cpu_training(epochs=40, batch_size=32),
    ),
    Preset(
        "cpu",
        "this machine's default: C=64, ns=32, nv=4, 128 Gaussians, k=16, 2 blocks; ~10 min on 2 CPU cores for mp_2018_demo",
        {"hidden": 64, "scalars": 32, "vectors": 4, "rbf_bins": 128, "k": 16, "layer_order": message_passing_blocks(2)},
        _cpu_training(epochs=18, batch_size=32),
        {"dataset": "mp_2018_demo", "target": "mp2018_e_form"},
    ),
)
DEFAULT_PRESET = "jarvis_formation_energy"


def config_from_preset(preset: str, frame: str = DEFAULT_FRAME, global_frame: str = DEFAULT_GLOBAL_FRAME, **overrides) -> EComFormerConfig:
    """The :class:`EComFormerConfig` of a named preset with a frame and any field overridden."""
    return presets.config_from_preset(EComFormerConfig, PRESETS, preset, "eComFormer", frame=frame, global_frame=global_frame, **overrides)