"""Cartesian tensors of the properties crystalframes predicts beyond scalars, in torch: their
kinds, their free components with the index symmetries built in, and their rotation.

Three kinds (Nye, *Physical Properties of Crystals*, 1957; de Jong et al., Sci. Data 2015):

- ``dielectric``: a symmetric rank-2 tensor eps_ij = eps_ji, 6 free components;
- ``piezoelectric``: a rank-3 tensor e_ijk = e_ikj (stress-like indices j, k), 18;
- ``elastic``: a rank-4 stiffness C_ijkl = C_jikl = C_ijlk = C_klij, 21.

Free components follow the Voigt order of index pairs (11, 22, 33, 23, 13, 12): a dielectric
tensor is its 6 Voigt entries, a piezoelectric one its 3 x 6 Voigt matrix row by row, an
elastic one the upper triangle of its 6 x 6 Voigt matrix row by row. No factors of 2 are
involved: the stress-like Voigt forms of e and C take the tensor entries as they are. Building
a tensor from free components is a gather, so every symmetry holds exactly, not to rounding.

Rotation: a Cartesian tensor of rank n transforms as T'_{i...} = R_ia ... T_{a...} for any
orthogonal R, proper or not (these are polar tensors: no det R factor).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property

import torch

# the Voigt convention and the rotation of property tensors live with the datasets that store them
from crystalframes.io.tensors import rotate, voigt_index


@dataclass(frozen=True)
class TensorKind:
    """A kind of Cartesian tensor: its rank, free components and irreps.

    ``irreps`` are those of the tensor's symmetry class under O(3) for a polar vector index
    (e3nn notation), the output of an irreps read-out; ``formula`` is e3nn's
    :class:`~e3nn.o3.ReducedTensorProducts` formula of the same index symmetry."""

    name: str
    rank: int
    irreps: str
    formula: str
    # irreps of the formula's free indices (e3nn needs one index of each group of linked indices)
    index_irreps: tuple[tuple[str, str], ...] = (("i", "1o"),)

    @cached_property
    def _free_index(self) -> tuple[torch.Tensor, int]:
        """For every Cartesian entry (flattened, 3^rank), the free component it equals."""
        entries = list(itertools.product(range(3), repeat=self.rank))
        if self.rank == 2:
            index = [voigt_index(i, j) for i, j in entries]
            count = 6
        elif self.rank == 3:
            index = [6 * i + voigt_index(j, k) for i, j, k in entries]
            count = 18
        elif self.rank == 4:
            upper = {(a, b): n for n, (a, b) in enumerate((a, b) for a in range(6) for b in range(a, 6))}
            index = [upper[tuple(sorted((voigt_index(i, j), voigt_index(k, l))))] for i, j, k, l in entries]
            count = 21
        else:
            raise ValueError(f"no tensor kind of rank {self.rank}")
        return torch.tensor(index, dtype=torch.long), count

    @property
    def num_free(self) -> int:
        """How many free components a tensor of this kind has (6, 18, 21)."""
        return self._free_index[1]

    @property
    def shape(self) -> tuple[int, ...]:
        return (3,) * self.rank

    def from_free(self, free: torch.Tensor) -> torch.Tensor:
        """(..., num_free) free components -> (..., 3, ..., 3) Cartesian tensors with the
        kind's index symmetries exact."""
        if free.shape[-1] != self.num_free:
            raise ValueError(f"a {self.name} tensor has {self.num_free} free components, got {free.shape[-1]}")
        index = self._free_index[0].to(free.device)
        return free[..., index].reshape(*free.shape[:-1], *self.shape)

    def to_free(self, tensor: torch.Tensor) -> torch.Tensor:
        """(..., 3, ..., 3) -> (..., num_free): each free component is the mean of the Cartesian
        entries it stands for (the projection onto the kind's symmetric tensors)."""
        index = self._free_index[0].to(tensor.device)
        flat = tensor.reshape(*tensor.shape[: tensor.dim() - self.rank], -1)
        total = flat.new_zeros(*flat.shape[:-1], self.num_free).index_add_(-1, index, flat)
        counts = torch.bincount(index, minlength=self.num_free).to(flat.dtype)
        return total / counts


DIELECTRIC = TensorKind("dielectric", 2, "0e + 2e", "ij=ji")
PIEZOELECTRIC = TensorKind("piezoelectric", 3, "1o + 1o + 2o + 3o", "ijk=ikj", (("i", "1o"), ("j", "1o")))
ELASTIC = TensorKind("elastic", 4, "0e + 0e + 2e + 2e + 4e", "ijkl=jikl=ijlk=klij")
TENSOR_KINDS = {k.name: k for k in (DIELECTRIC, PIEZOELECTRIC, ELASTIC)}


def kind_of_rank(rank: int) -> TensorKind:
    """The kind of a target of ``rank`` (2: dielectric-like, 3: piezoelectric, 4: elastic)."""
    for kind in TENSOR_KINDS.values():
        if kind.rank == rank:
            return kind
    raise ValueError(f"no tensor kind of rank {rank}; ranks: {sorted(k.rank for k in TENSOR_KINDS.values())}")


def into_frame(tensor: torch.Tensor, frame: torch.Tensor, rank: int) -> torch.Tensor:
    """Components of a Cartesian tensor in a frame whose rows are its axes: F applied to every
    index (what a vector's ``x @ F.T`` is for rank 1)."""
    return rotate(tensor, frame, rank)


def out_of_frame(components: torch.Tensor, frame: torch.Tensor, rank: int) -> torch.Tensor:
    """The Cartesian tensor whose components in ``frame`` are ``components``: F^T applied to
    every index (the inverse of :func:`into_frame` for an orthogonal frame)."""
    return rotate(components, frame.transpose(-1, -2), rank)


__all__ = ["TensorKind", "TENSOR_KINDS", "DIELECTRIC", "PIEZOELECTRIC", "ELASTIC", "kind_of_rank", "into_frame", "out_of_frame"]
