"""Value and record coercion: numbers, targets, ids, element symbols and record dicts.

* :func:`crystal_from_record` / :func:`crystal_from_jarvis` -- one record dict (the project's JSONL
  format / a JARVIS or MEGNet figshare JSON record) turned into a :class:`Crystal` directly from
  arrays (no pymatgen objects), so reading thousands of records takes a second or two.
* the small helpers every reader uses to turn a user's value into a number, an id or an error
  message line.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from crystalframes.io.crystal import TENSOR_TARGET_SHAPES, Crystal, location
from crystalframes.io.elements import MAX_ATOMIC_NUMBER, symbol_table
from crystalframes.io.errors import InputError

__all__ = ["crystal_from_jarvis", "crystal_from_record"]

# Values that mean "no value" for a target.
_MISSING_STRINGS = frozenset({"", "na", "n/a", "nan", "none", "null"})

# Keys of a JARVIS / MEGNet record that are identifiers, never targets.
_JARVIS_ID_KEYS = ("jid", "id")
_JARVIS_NON_TARGET_KEYS = frozenset({"jid", "id", "atoms", "split", "material_id", "mpid", "uid"})

_MAX_REPR = 60

# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------

def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."


# Exceptions whose message means nothing to a user without their type (parser internals).
_INTERNAL_ERRORS = (KeyError, IndexError, ZeroDivisionError, StopIteration, AssertionError, AttributeError, TypeError)


def _short_exc(exc: BaseException) -> str:
    """One line describing ``exc``: its first message line, or its class name."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = " ".join(lines[:2])
    if len(text) > 200:
        text = text[:197] + "..."
    name = type(exc).__name__
    if not text or isinstance(exc, _INTERNAL_ERRORS):
        # Messages like "integer modulo by zero" or "'Xx'" mean nothing without the exception type.
        return f"{name}: {text}" if text else name
    return text


def _label(where: str, record_id: str | None) -> str:
    """``where`` plus ``[id]`` unless it already names the id (same rule as Crystal.where)."""
    return location(where, record_id)


def _coerce_target(name: str, value: Any, where: str) -> float | np.ndarray:
    """A target value as float; ``nan`` for missing ("na", None, NaN); a tensor target (a nested
    list of a Voigt shape, 3x3 / 3x6 / 6x6, as JSONL records hold it) as a float64 array;
    InputError if neither."""
    if value is None:
        return math.nan
    if isinstance(value, (list, tuple, np.ndarray)):
        return _coerce_tensor_target(name, value, where)
    if isinstance(value, bool):
        raise InputError(where, f"target '{name}' is not a number: {value!r}")
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in _MISSING_STRINGS:
            return math.nan
        try:
            return float(text)
        except ValueError:
            pass
    raise InputError(where, f"target '{name}' is not a number: {_short_repr(value)}")


def _coerce_tensor_target(name: str, value: Any, where: str) -> np.ndarray:
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(where, f"target '{name}' is neither a number nor a numeric tensor: {_short_repr(value)}") from None
    if arr.shape not in TENSOR_TARGET_SHAPES:
        raise InputError(where, f"target '{name}' is an array of shape {arr.shape}, not a tensor in Voigt form "
                                f"(3x3, 3x6 or 6x6)")
    if not np.all(np.isfinite(arr)):
        raise InputError(where, f"tensor target '{name}' has non-finite entries")
    return arr


def _is_target_value(value: Any) -> bool:
    """True for values a JARVIS record key can hold when it is a target: numbers and "na"."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, str) and value.strip().lower() in ("na", "nan")


def _coerce_targets(targets: Any, where: str) -> dict[str, float]:
    if targets is None:
        return {}
    if not isinstance(targets, dict):
        raise InputError(where, f"'targets' must map names to numbers, got {type(targets).__name__}")
    return {str(k): _coerce_target(str(k), v, where) for k, v in targets.items()}


def _as_array(value: Any, key: str, where: str, rows: int | None = None) -> np.ndarray:
    """``value`` as a float (rows, 3) array; InputError naming ``key`` otherwise."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(where, f"'{key}' is not a numeric array: {_short_repr(value)}") from None
    if arr.size == 0 and rows is None:
        return arr.reshape(0, 3)
    if arr.ndim != 2 or arr.shape[1] != 3 or (rows is not None and arr.shape[0] != rows):
        want = f"{rows}x3" if rows is not None else "Nx3"
        raise InputError(where, f"'{key}' must be {want}, got shape {arr.shape}")
    return arr


def _atomic_numbers(species: Any, key: str, where: str) -> np.ndarray:
    """Element symbols (or atomic numbers) -> int64 array; InputError for unknown elements."""
    if isinstance(species, (str, bytes)) or not isinstance(species, (list, tuple, np.ndarray)):
        raise InputError(where, f"'{key}' must be a list of element symbols, got {_short_repr(species)}")
    table = symbol_table()
    try:
        return np.fromiter((table[s] for s in species), dtype=np.int64, count=len(species))
    except (KeyError, TypeError):
        pass
    # Slow path: whitespace, atomic numbers given as ints, or a genuinely unknown symbol.
    out = np.empty(len(species), dtype=np.int64)
    for i, s in enumerate(species):
        if isinstance(s, str) and s.strip() in table:
            out[i] = table[s.strip()]
        elif isinstance(s, (int, np.integer)) and not isinstance(s, bool) and 1 <= s <= MAX_ATOMIC_NUMBER:
            out[i] = int(s)
        else:
            raise InputError(where, f"unknown element {s!r}" if isinstance(s, str) else
                             f"unknown element {_short_repr(s)} in '{key}'")
    return out


def _record_id(rec: dict, keys: Iterable[str]) -> str | None:
    for key in keys:
        value = rec.get(key)
        if value is not None and value != "":
            return str(value)
    return None


def _split_value(value: Any, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value or None
    raise InputError(where, f"'split' must be a string or null, got {_short_repr(value)}")


# --------------------------------------------------------------------------------------------------
# Record parsers
# --------------------------------------------------------------------------------------------------


def crystal_from_record(rec: dict, where: str) -> Crystal:
    """A validated :class:`Crystal` from one record of the project's JSONL format.

    ``{"id", "db", "source", "split", "targets": {name: float}, "lattice": 3x3 rows,
    "species": [symbols], "frac_coords": Nx3}``. Targets that are ``"na"``, ``None`` or NaN become
    ``nan`` (missing). ``where`` (e.g. ``"file.jsonl.gz:17"``) names the record in errors, together
    with its id. Raises :class:`InputError` for anything unusable.
    """
    if not isinstance(rec, dict):
        raise InputError(where, f"record must be a JSON object, got {type(rec).__name__}")
    record_id = _record_id(rec, ("id",))
    label = _label(where, record_id)
    missing = [k for k in ("lattice", "species", "frac_coords") if k not in rec]
    if missing:
        raise InputError(label, "record has no " + ", ".join(f"'{k}'" for k in missing))
    lattice = _as_array(rec["lattice"], "lattice", label, rows=3)
    numbers = _atomic_numbers(rec["species"], "species", label)
    frac = _as_array(rec["frac_coords"], "frac_coords", label)
    if frac.shape[0] != numbers.shape[0]:
        raise InputError(label, f"'frac_coords' has {frac.shape[0]} rows but 'species' has {numbers.shape[0]}")
    targets = _coerce_targets(rec.get("targets"), label)
    split = _split_value(rec.get("split"), label)
    crystal = Crystal(
        id=record_id or label, lattice=lattice, atomic_numbers=numbers, frac_coords=frac,
        targets=targets, split=split, source=where,
    )
    return crystal.validate()


def crystal_from_jarvis(rec: dict, where: str, target_keys: Iterable[str] | None = None) -> Crystal:
    """A validated :class:`Crystal` from one JARVIS (or MEGNet, via jarvis-tools) figshare record.

    ``{"jid" or "id", "atoms": {"lattice_mat", "coords", "elements", "cartesian"}, <targets>}``.
    Cartesian coordinates are converted to fractional. Without ``target_keys`` every top-level key
    holding a number or ``"na"`` becomes a target; with it, exactly those keys do (absent -> ``nan``,
    non-numeric -> :class:`InputError`).
    """
    if not isinstance(rec, dict):
        raise InputError(where, f"record must be a JSON object, got {type(rec).__name__}")
    record_id = _record_id(rec, _JARVIS_ID_KEYS)
    label = _label(where, record_id)
    atoms = rec.get("atoms")
    if not isinstance(atoms, dict):
        problem = "record has no 'atoms'" if atoms is None else f"'atoms' must be an object, got {type(atoms).__name__}"
        raise InputError(label, problem)
    missing = [k for k in ("lattice_mat", "coords", "elements") if k not in atoms]
    if missing:
        raise InputError(label, "'atoms' has no " + ", ".join(f"'{k}'" for k in missing))
    lattice = _as_array(atoms["lattice_mat"], "atoms.lattice_mat", label, rows=3)
    numbers = _atomic_numbers(atoms["elements"], "atoms.elements", label)
    coords = _as_array(atoms["coords"], "atoms.coords", label)
    if coords.shape[0] != numbers.shape[0]:
        raise InputError(
            label, f"'atoms.coords' has {coords.shape[0]} rows but 'atoms.elements' has {numbers.shape[0]}"
        )
    cartesian = atoms.get("cartesian", False)
    if isinstance(cartesian, str):
        cartesian = cartesian.strip().lower() in ("true", "1", "yes")
    if cartesian and coords.size and np.all(np.isfinite(lattice)):
        try:
            # cart = frac @ L  =>  L^T frac^T = cart^T
            coords = np.linalg.solve(lattice.T, coords.T).T
        except np.linalg.LinAlgError:
            raise InputError(label, "singular lattice: cannot convert cartesian coordinates to fractional") from None

    if target_keys is None:
        targets = {
            str(k): _coerce_target(str(k), v, label)
            for k, v in rec.items()
            if k not in _JARVIS_NON_TARGET_KEYS and _is_target_value(v)
        }
    else:
        targets = {str(k): _coerce_target(str(k), rec.get(k), label) for k in target_keys}
    split = _split_value(rec.get("split"), label)
    crystal = Crystal(
        id=record_id or label, lattice=lattice, atomic_numbers=numbers, frac_coords=coords,
        targets=targets, split=split, source=where,
    )
    return crystal.validate()
