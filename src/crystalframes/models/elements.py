"""Which elements a model can encode, checked per structure before batching.

The readers accept every element of the periodic table (Z = 1..118), but each backbone's atom
encoding covers fewer (eComFormer's CGCNN table Z = 1..100, Crystalformer's one-hot Z = 1..98).
A structure with an element outside that set is one bad input, reported with its source like
any unreadable file, so it never aborts the batch that holds the good ones.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from crystalframes.io.elements import element_label
from crystalframes.io.errors import InputError


def supported_atomic_numbers(model) -> frozenset[int]:
    """Atomic numbers ``model`` can encode (its ``supported_atomic_numbers`` attribute)."""
    return frozenset(int(z) for z in model.supported_atomic_numbers)


def unsupported_elements_error(model, crystal) -> InputError | None:
    """An :class:`InputError` naming the structure and its unsupported elements, or None."""
    supported = supported_atomic_numbers(model)
    bad = sorted({int(z) for z in np.unique(crystal.atomic_numbers)} - supported)
    if not bad:
        return None
    names = ", ".join(element_label(z) for z in bad)
    lo, hi = min(supported), max(supported)
    return InputError(crystal.where, f"the model cannot encode element(s) {names}: it covers Z = {lo}..{hi}")


def split_supported(model, crystals: Sequence) -> tuple[list, list[InputError]]:
    """``(usable crystals, errors)``: structures with elements the model cannot encode become
    errors (in input order); the others are kept."""
    good, errors = [], []
    for crystal in crystals:
        error = unsupported_elements_error(model, crystal)
        (good if error is None else errors).append(crystal if error is None else error)
    return good, errors
