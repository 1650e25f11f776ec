"""Tensor properties through frames: read-outs that turn any backbone's invariant per-atom
features into an equivariant Cartesian tensor (dielectric, piezoelectric, elastic).

Three read-outs, on the same backbone features:

- :class:`GlobalFrameTensorHead` (the construction of Hua, Lin & Yang, 2024, "Fast crystal
  tensor property prediction: a general O(3)-equivariant framework based on polar
  decomposition", GoeCTP): the pooled invariant features give the tensor's components t in
  the structure's global frame F (rows = axes), and T = F^T t F (every index) is the output.
- :class:`LocalFrameTensorHead`: each atom gives components t_i in its own frame F_i (the
  frame the backbone's frame module built in its last frame-building layer: dynamic, static,
  SPFrame composite, equivariant Gram-Schmidt...), T = mean_i F_i^T t_i F_i.
- :class:`IrrepsTensorHead`, the standard equivariant approach on the same features: per atom,
  spherical harmonics of its edges weighted by the invariant features (an atomic cluster
  expansion of one body order, Drautz, PRB 2019) and their tensor products, read out as the
  irreps of the tensor's symmetry class and mapped to the Cartesian tensor by e3nn's
  :class:`~e3nn.o3.ReducedTensorProducts` (Geiger & Smidt, 2022).

The index symmetries (eps_ij = eps_ji; e_ijk = e_ikj; C_ijkl with full Voigt symmetry) are built
in: the frame heads predict free components (:class:`~crystalframes.nn.cartesian.TensorKind`),
the irreps head only the irreps of the symmetric class.

What each read-out is equivariant under (for an invariant backbone; tested in
``tests/models/test_tensor_heads.py``):

- global frame: O(3) with ``proper=False`` QR or polar frames (det F = sign det L, so F(L Q^T)
  = F(L) Q^T for every orthogonal Q); SO(3) only with the proper (det F = +1) QR, polar and PCA
  frames. The lattice-vector frame gives F(L Q^T) = -F(L) Q^T for improper Q (its reduced
  vectors keep their handedness), so it is O(3)-equivariant for the even-rank tensors
  (dielectric, elastic) and off by a sign for the piezoelectric one. Like every frame, it is
  undefined where the structure's own symmetry makes the frame ambiguous, and it depends on the
  cell basis for QR / polar;
- local frame: what the per-atom frame gives; the registry's per-atom frames fix det F_i = +1,
  so SO(3);
- irreps: O(3), exactly, whatever the symmetry of the structure: so it predicts a zero
  piezoelectric tensor for every centrosymmetric crystal and an isotropic rank-2 tensor for every
  cubic one (up to rounding), which no frame read-out does by construction.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache

import torch
from torch import nn

from crystalframes.data.batch import GraphBatch
from crystalframes.frames.global_frames import lattice_pca_frame, lattice_vector_frame, polar_frame, positions_pca_frame, qr_frame
from crystalframes.nn.cartesian import TensorKind, out_of_frame

# Global frames a tensor head can rotate by; "_o3" keeps det F = sign det L (no handedness fix).
TENSOR_GLOBAL_FRAMES = {
    "qr": lambda b: qr_frame(b.lattice),
    "qr_o3": lambda b: qr_frame(b.lattice, proper=False),
    "polar": lambda b: polar_frame(b.lattice),
    "polar_o3": lambda b: polar_frame(b.lattice, proper=False),
    "lattice_pca": lambda b: lattice_pca_frame(b.lattice),
    "positions_pca": lambda b: positions_pca_frame(b.frac_coords, b.lattice, b.batch),
    "lattice_vector": lambda b: lattice_vector_frame(b.lattice),
}
READOUTS = ("global", "local", "irreps")


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))


class GlobalFrameTensorHead(nn.Module):
    """Components in the structure's global frame from the mean of the per-atom features,
    rotated back (see the module docstring)."""

    def __init__(self, kind: TensorKind, in_dim: int, frame: str = "polar_o3", hidden: int = 128):
        super().__init__()
        if frame not in TENSOR_GLOBAL_FRAMES:
            raise ValueError(f"unknown global frame {frame!r} for a tensor head; choose one of {tuple(TENSOR_GLOBAL_FRAMES)}")
        self.kind, self.frame = kind, frame
        self.mlp = _mlp(in_dim, hidden, kind.num_free)

    def forward(self, batch: GraphBatch, features: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        components = self.kind.from_free(self.mlp(batch.mean_over_atoms(features)))
        return out_of_frame(components, TENSOR_GLOBAL_FRAMES[self.frame](batch).to(components.dtype), self.kind.rank)


class LocalFrameTensorHead(nn.Module):
    """Each atom's components in its own frame F_i (N, 3, 3), or one set per head for per-head
    frames (N, H, 3, 3), rotated back and averaged over heads and atoms."""

    def __init__(self, kind: TensorKind, in_dim: int, heads: int = 1, hidden: int = 128):
        super().__init__()
        self.kind, self.heads = kind, heads
        self.mlp = _mlp(in_dim, hidden, heads * kind.num_free)

    def forward(self, batch: GraphBatch, features: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        if frames is None:
            raise ValueError("a local-frame tensor head needs the backbone's per-atom frames; its frame is 'none'")
        frames = frames if frames.dim() == 4 else frames.unsqueeze(1)
        if frames.shape[1] != self.heads:
            raise ValueError(f"the head was built for {self.heads} frames per atom, the backbone gave {frames.shape[1]}")
        free = self.mlp(features).reshape(features.shape[0], self.heads, self.kind.num_free)
        per_atom = out_of_frame(self.kind.from_free(free), frames.to(free.dtype), self.kind.rank).mean(dim=1)
        flat = per_atom.reshape(per_atom.shape[0], -1)
        return batch.mean_over_atoms(flat).reshape(-1, *self.kind.shape)


@contextmanager
def _float64_default():
    """e3nn computes its constants (Clebsch-Gordan coefficients, change of basis) in the default
    dtype when a module is made: made in float32, they carry ~1e-8 errors that no later
    ``.double()`` removes. Made in float64 here; ``.float()`` casts them down for training."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@lru_cache(maxsize=None)
def _change_of_basis(kind: TensorKind) -> tuple[str, torch.Tensor]:
    """(irreps, change of basis (dim, 3, ..., 3), float64) of e3nn's reduced tensor products for ``kind``."""
    from e3nn import o3

    with _float64_default():
        rtp = o3.ReducedTensorProducts(kind.formula, **dict(kind.index_irreps))
    return str(rtp.irreps_out), rtp.change_of_basis.detach().to(torch.float64).clone()


class IrrepsTensorHead(nn.Module):
    """The irreps read-out (see the module docstring).

    Per edge e = (i, j): weights w_e = MLP([x_i, x_j, Gaussians(|r_ij|)]) per harmonic degree and
    channel; per atom A_i = sum_j w_e * Y(r_ij) with Y the spherical harmonics of degrees
    0 to ``lmax`` (l = 1o, 2e, 3o, 4e: polar vectors); the tensor's irreps are a linear map of A_i
    plus the tensor product A_i x A_i (parity-odd l = 2, the piezoelectric 2o, needs a product
    of two harmonics), averaged over the crystal's atoms and mapped to a Cartesian tensor.
    """

    def __init__(self, kind: TensorKind, in_dim: int, channels: int = 8, lmax: int = 4, hidden: int = 64,
                 distance_max: float = 8.0, gaussians: int = 32):
        super().__init__()
        from e3nn import o3

        self.kind, self.lmax, self.channels = kind, lmax, channels
        irreps_out, basis = _change_of_basis(kind)
        self.register_buffer("basis", basis, persistent=False)
        self.sh_irreps = o3.Irreps.spherical_harmonics(lmax, p=-1)  # 0e + 1o + 2e + 3o + 4e
        self.node_irreps = o3.Irreps([(channels, (ir.l, ir.p)) for _, ir in self.sh_irreps])
        self.register_buffer("centres", torch.linspace(0.0, distance_max, gaussians), persistent=False)
        self.width = distance_max / gaussians
        self.weights = _mlp(2 * in_dim + gaussians, hidden, channels * (lmax + 1))
        with _float64_default():
            self.linear = o3.Linear(self.node_irreps, irreps_out)
            self.product = o3.FullyConnectedTensorProduct(self.node_irreps, self.node_irreps, irreps_out)
        self.irreps_out = o3.Irreps(irreps_out)

    def forward(self, batch: GraphBatch, features: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        from e3nn import o3

        centre, neighbour = batch.edge_index[0], batch.edge_index[1]
        vec = batch.edge_vec.to(features.dtype)
        if vec.shape[0] == 0:
            raise ValueError("an irreps tensor head needs the backbone's neighbour edges (a k-NN graph); this batch has none")
        dist = vec.norm(dim=-1, keepdim=True)
        rbf = torch.exp(-(((dist - self.centres.to(vec.dtype)) / self.width) ** 2))
        w = self.weights(torch.cat([features[centre], features[neighbour], rbf], dim=-1))
        w = w.reshape(-1, self.lmax + 1, self.channels)
        sh = o3.spherical_harmonics(self.sh_irreps, vec, normalize=True, normalization="component")
        parts, start = [], 0
        for l in range(self.lmax + 1):  # channel c of degree l: w[:, l, c] * Y_l
            y = sh[:, start:start + 2 * l + 1]
            start += 2 * l + 1
            parts.append((w[:, l, :, None] * y[:, None, :]).reshape(vec.shape[0], -1))
        per_edge = torch.cat(parts, dim=-1)
        # mean over each atom's edges (a sum would grow with k)
        count = torch.zeros(features.shape[0], 1, dtype=vec.dtype, device=vec.device).index_add_(
            0, centre, torch.ones(centre.shape[0], 1, dtype=vec.dtype, device=vec.device))
        nodes = torch.zeros(features.shape[0], per_edge.shape[1], dtype=vec.dtype, device=vec.device).index_add_(0, centre, per_edge)
        nodes = nodes / count.clamp_min(1.0)
        irreps = self.linear(nodes) + self.product(nodes, nodes)
        pooled = batch.mean_over_atoms(irreps)
        return torch.einsum("bd,d...->b...", pooled, self.basis.to(pooled.dtype))


class TensorModel(nn.Module):
    """A backbone (any :class:`~crystalframes.models.base.CrystalModel`) with a tensor read-out:
    ``model(batch)`` gives (B, 3, ..., 3) Cartesian tensors of ``kind``.

    ``readout``: ``global`` (``frame`` names the global frame, :data:`TENSOR_GLOBAL_FRAMES`),
    ``local`` (the backbone's per-atom frames of its last frame-building layer; refused for the
    ``none`` frame) or ``irreps`` (needs the backbone's neighbour edges)."""

    def __init__(self, backbone, kind: TensorKind, readout: str = "global", frame: str = "polar_o3", **head_options):
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"unknown tensor read-out {readout!r}; choose one of {READOUTS}")
        if readout == "local" and not backbone.frame.active:
            raise ValueError("a local-frame read-out needs a backbone with a per-atom frame; this one runs the 'none' frame")
        if readout == "irreps" and ("neighbours" not in backbone.provides or backbone.graph_settings.k is None):
            raise ValueError(f"an irreps read-out needs neighbour edges (a k-NN graph), which {type(backbone).__name__} does not build")
        self.backbone, self.kind, self.readout = backbone, kind, readout
        self.tensor_frame = frame  # read by the global read-out only; kept for the model file
        dim = backbone.embedding_dim
        if readout == "global":
            self.head = GlobalFrameTensorHead(kind, dim, frame, **head_options)
        elif readout == "local":
            self.head = LocalFrameTensorHead(kind, dim, heads=head_options.pop("heads", 1), **head_options)
        else:
            self.head = IrrepsTensorHead(kind, dim, **head_options)

    # What training, prediction and model files ask of a model, answered by the backbone's:
    # the graphs it reads, the elements it encodes, its frames and its per-atom features.
    @property
    def spec(self) -> str:
        return self.backbone.spec

    @property
    def graph_settings(self):
        return self.backbone.graph_settings

    @property
    def supported_atomic_numbers(self):
        return self.backbone.supported_atomic_numbers

    @property
    def embedding_dim(self) -> int:
        return self.backbone.embedding_dim

    def record_frames(self, *args, **kwargs):
        return self.backbone.record_frames(*args, **kwargs)

    def node_features(self, batch: GraphBatch) -> torch.Tensor:
        return self.backbone.node_features(batch)

    def settings(self) -> dict:
        """What rebuilds this read-out on its backbone (saved in model files): kind, read-out, frame."""
        return {"kind": self.kind.name, "readout": self.readout, "frame": self.tensor_frame}

    @property
    def o3_equivariant(self) -> bool:
        """Whether the output also follows improper rotations (reflections): see the module docstring."""
        if self.readout == "irreps":
            return True
        if self.readout == "global":
            return self.tensor_frame in ("polar_o3", "qr_o3") or (self.tensor_frame == "lattice_vector" and self.kind.rank % 2 == 0)
        return False

    def declared_dependences(self) -> dict[str, str]:
        """What this model cannot satisfy by construction (check of
        :func:`crystalframes.testing.equivariance_report` -> reason): its backbone's declared
        dependences (its features), its global frame's, reflections for an SO(3)-only read-out,
        and Neumann's principle for a frame read-out."""
        from crystalframes.frames.registry import GLOBAL_FRAME_DEPENDENCES
        from crystalframes.models.specs import declared_dependences

        out = dict(declared_dependences(self.backbone.spec))
        if self.readout == "global":
            base = self.tensor_frame.removesuffix("_o3")
            for check, reason in GLOBAL_FRAME_DEPENDENCES.get(base, {}).items():
                out.setdefault(check, f"{self.tensor_frame}: {reason}")
        if not self.o3_equivariant:
            out["reflection"] = (f"the {self.readout}-frame read-out's frames keep det F = +1 (SO(3)): a reflection "
                                 f"does not map the {self.kind.name} tensor as it maps the crystal")
        if self.readout != "irreps":
            out["neumann"] = ("a frame is ambiguous where the crystal's own symmetry maps it to another frame, so a frame "
                              "read-out need not keep the tensor unchanged by the crystal's point group (the irreps read-out does)")
        return out

    def forward(self, batch: GraphBatch) -> torch.Tensor:
        if self.readout != "local":
            return self.head(batch, self.backbone.encode(batch))
        with self.backbone.record_frames(int(batch.atomic_numbers.shape[0]), detach=False) as record:
            features = self.backbone.encode(batch)
        layers = record.layers()
        if not layers:
            raise ValueError("the backbone built no per-atom frame in this forward pass")
        return self.head(batch, features, layers[-1])


__all__ = ["GlobalFrameTensorHead", "LocalFrameTensorHead", "IrrepsTensorHead", "TensorModel", "TENSOR_GLOBAL_FRAMES", "READOUTS"]
