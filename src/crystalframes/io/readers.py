"""Backward-compatible home of the readers: the code lives in :mod:`crystalframes.io.coercion`
(values and records), :mod:`crystalframes.io.structures` (structure files and objects) and
:mod:`crystalframes.io.datasets` (dataset containers)."""

from crystalframes.io.coercion import crystal_from_jarvis, crystal_from_record
from crystalframes.io.datasets import ReadResult, iter_records, read_dataset
from crystalframes.io.structures import read_structure

__all__ = [
    "ReadResult",
    "crystal_from_jarvis",
    "crystal_from_record",
    "iter_records",
    "read_dataset",
    "read_structure",
]
