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
        in_range = (z >= 0) & (z < len(self.known))
        ok = in_range.clone()
        ok[in_range] = self.known[z[in_range]]
        if not bool(ok.all()):
            bad = sorted({int(v) for v in z[~ok].tolist()})
            names = ", ".join(element_label(v) for v in bad)
            raise ValueError(
                f"no atom features for element(s) {names} (the CGCNN table covers Z = 1..{len(self.known) - 1})"
            )
        return self.table[z]
