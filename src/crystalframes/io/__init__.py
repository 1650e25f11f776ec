"""Reading crystal structures and datasets, with clear errors.

The code is split by concern: :mod:`~crystalframes.io.coercion` (values and record dicts),
:mod:`~crystalframes.io.structures` (structure files and objects), :mod:`~crystalframes.io.datasets`
(dataset containers), :mod:`~crystalframes.io.files` (what a path is, its encoding, printable
names); :mod:`~crystalframes.io.readers` re-exports the old names.
"""

from crystalframes.io.crystal import Crystal
from crystalframes.io.errors import DatasetError, InputError, SkippedInput, UserError
from crystalframes.io.coercion import crystal_from_jarvis, crystal_from_record
from crystalframes.io.datasets import ReadResult, iter_records, iter_structures, read_dataset
from crystalframes.io.structures import read_structure

__all__ = [
    "Crystal",
    "InputError",
    "UserError",
    "DatasetError",
    "SkippedInput",
    "ReadResult",
    "crystal_from_jarvis",
    "crystal_from_record",
    "iter_records",
    "iter_structures",
    "read_dataset",
    "read_structure",
]
