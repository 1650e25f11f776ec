"""Reading crystal structures and datasets, with clear errors."""

from crystalframes.io.crystal import Crystal
from crystalframes.io.errors import DatasetError, InputError

__all__ = ["Crystal", "InputError", "DatasetError"]
