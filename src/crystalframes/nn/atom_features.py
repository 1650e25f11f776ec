"""Fixed atom features: the 92-d CGCNN one-hot table (data file beside this module, see
``data/ATTRIBUTION.md``), looked up by atomic number."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import numpy as np
import torch
from torch import nn

from crystalframes.io.elements import element_label

CGCNN_FEATURE_DIM = 92
_CGCNN_FILE = "cgcnn_atom_init.json"


@lru_cache(maxsize=1)
def cgcnn_table() -> np.ndarray:
    """The CGCNN table as an array (Z_max + 1, 92), float64, row Z = features of element Z;
    rows of elements without features (Z = 0 and beyond Z = 100) are NaN."""
    text = resources.files("crystalframes.nn").joinpath("data", _CGCNN_FILE).read_text()
    rows = {int(z): v for z, v in json.loads(text).items()}
    table = np.full((max(rows) + 1, CGCNN_FEATURE_DIM), np.nan)
    for z, v in rows.items():
        if len(v) != CGCNN_FEATURE_DIM:
            raise ValueError(f"{_CGCNN_FILE}: element {z} has {len(v)} features, expected {CGCNN_FEATURE_DIM}")
        table[z] = v
    return table


class AtomFeatureTable(nn.Module):
    """Looks up fixed features by atomic number: (N,) long -> (N, dim).

    Raises ``ValueError`` naming the element(s) when an atomic number has no features, instead
    of substituting another element's row.
    """

    def __init__(self, table: np.ndarray | None = None):
        super().__init__()
        table = cgcnn_table() if table is None else np.asarray(table, dtype=np.float64)
        known = ~np.isnan(table).any(axis=1)
        self.register_buffer("table", torch.from_numpy(np.nan_to_num(table, nan=0.0)), persistent=False)
        self.register_buffer("known", torch.from_numpy(known), persistent=False)

    @property
    def supported_atomic_numbers(self) -> frozenset[int]:
        """Atomic numbers with features (checked per structure by :mod:`crystalframes.models.elements`)."""
        return frozenset(int(z) for z in torch.nonzero(self.known).flatten().tolist())

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    def forward(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        z = atomic_numbers
        if z.device.type == "cpu":
            bad = unsupported_elements(z, self.known.numpy())
            if bad:
                names = ", ".join(element_label(v) for v in bad)
                raise ValueError(f"no atom features for element(s) {names} (the CGCNN table covers Z = 1..{len(self.known) - 1})")
            return self.table[z]
        index = z.clamp(0, len(self.known) - 1)
        ok = self.known[index] & (z >= 0) & (z < len(self.known))
        return self.table[index].masked_fill(~ok.unsqueeze(-1), float("nan"))


# Element checks inside forward. Every training and prediction path checks each structure's
# elements before batching (crystalframes.models.elements.split_supported), so the check in the
# forward pass is for a user calling a model directly. On the CPU, reading the atomic numbers costs
# nothing and such a user gets the error naming the elements. On an accelerator the same read would
# make every step wait for the device, so there the lookup cannot fail instead: the index is
# clamped into the table (an out-of-range index is a device-side assert, which ends the process's
# CUDA context) and the rows of unsupported elements are NaN, so that their structures' outputs are
# visibly non-finite (and reported by the prediction paths) rather than another element's.


# not compiled: dynamo would trace the NumPy code below into tensor operations (and fail on its
# in-place masked assignment); a host-side check is a graph break either way
@torch.compiler.disable
def unsupported_elements(z: torch.Tensor, known: np.ndarray) -> list[int]:
    """The sorted distinct atomic numbers of the CPU tensor ``z`` that ``known`` (a boolean array
    indexed by atomic number) does not hold. Read with NumPy: on the CPU this is no device wait,
    and :class:`crystalframes.profiling.StepCounter`, which counts torch reads by name on any
    device as a proxy for a GPU run, does not count it."""
    z = z.numpy()
    ok = (z >= 0) & (z < len(known))
    ok[ok] = known[z[ok]]
    return [int(v) for v in np.unique(z[~ok])]
