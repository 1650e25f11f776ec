"""Reading structures and datasets into validated :class:`Crystal` objects.

Every problem with the input becomes an :class:`InputError` naming the file (or ``file:line [id]``
for records of a dataset) and the problem; no parser traceback reaches the user.

* :func:`read_structure` -- one structure from a file (CIF, POSCAR, extended XYZ, JSON record),
  a pymatgen ``Structure`` or an ASE ``Atoms``.
* :func:`crystal_from_record` / :func:`crystal_from_jarvis` -- one record dict (the project's JSONL
  format / a JARVIS or MEGNet figshare JSON record).
* :func:`iter_records` / :func:`read_dataset` -- a whole dataset, collecting bad records as errors.

Dataset records are turned into :class:`Crystal` directly from arrays (no pymatgen objects), so
reading thousands of records takes a second or two.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import math
import re
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crystalframes.io.crystal import MAX_ATOMIC_NUMBER, Crystal, location
from crystalframes.io.errors import DatasetError, InputError

logger = logging.getLogger("crystalframes.io")

__all__ = [
    "ReadResult",
    "crystal_from_jarvis",
    "crystal_from_record",
    "iter_records",
    "read_dataset",
    "read_structure",
]

# Structure file formats recognised by name (the ".gz" suffix is stripped first).
_CIF_SUFFIXES = (".cif",)
_POSCAR_SUFFIXES = (".vasp", ".poscar")
_POSCAR_PREFIXES = ("poscar", "contcar")
_XYZ_SUFFIXES = (".xyz", ".extxyz")
_JSON_SUFFIXES = (".json",)
_FORMAT_NAMES = {"cif": "CIF", "poscar": "POSCAR", "extxyz": "extended XYZ", "json": "JSON"}

# Values that mean "no value" for a target.
_MISSING_STRINGS = frozenset({"", "na", "n/a", "nan", "none", "null"})

# Keys of a JARVIS / MEGNet record that are identifiers, never targets.
_JARVIS_ID_KEYS = ("jid", "id")
_JARVIS_NON_TARGET_KEYS = frozenset({"jid", "id", "atoms", "split", "material_id", "mpid", "uid"})

_MAX_REPR = 60


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------

_SYMBOL_TO_Z: dict[str, int] | None = None


def _symbol_table() -> dict[str, int]:
    """Element symbol -> atomic number, built once."""
    global _SYMBOL_TO_Z
    if _SYMBOL_TO_Z is None:
        from ase.data import chemical_symbols

        _SYMBOL_TO_Z = {sym: z for z, sym in enumerate(chemical_symbols) if 1 <= z <= MAX_ATOMIC_NUMBER}
    return _SYMBOL_TO_Z


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


def _coerce_target(name: str, value: Any, where: str) -> float:
    """A target value as float; ``nan`` for missing ("na", None, NaN); InputError if not a number."""
    if value is None:
        return math.nan
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
    table = _symbol_table()
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


def _crystal_from_any_record(rec: Any, where: str) -> Crystal:
    """Dispatch a record dict to the JARVIS or JSONL parser by its keys."""
    if isinstance(rec, dict):
        if rec.get("@class") in ("Structure", "IStructure"):
            return _crystal_from_pymatgen_dict(rec, where)
        if "atoms" in rec:
            return crystal_from_jarvis(rec, where)
        if "lattice" in rec or "species" in rec or "frac_coords" in rec:
            return crystal_from_record(rec, where)
        label = _label(where, _record_id(rec, _JARVIS_ID_KEYS))
        raise InputError(
            label, "record has neither 'atoms' (JARVIS format) nor 'lattice'/'species'/'frac_coords' (JSONL format)"
        )
    raise InputError(where, f"record must be a JSON object, got {type(rec).__name__}")


def _crystal_from_pymatgen_dict(rec: dict, where: str) -> Crystal:
    from pymatgen.core import Structure

    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            structure = Structure.from_dict(rec)
    except Exception as exc:
        raise InputError(where, f"cannot read pymatgen Structure dict: {_short_exc(exc)}") from None
    return _crystal_from_pymatgen(structure, id=None, source=where).validate()


# --------------------------------------------------------------------------------------------------
# Structures from objects
# --------------------------------------------------------------------------------------------------


def _crystal_from_pymatgen(structure, id: str | None, source: str, targets: dict | None = None) -> Crystal:
    where = _label(source, id) if source else (id or "pymatgen Structure")
    if len(structure) == 0:
        raise InputError(where, "structure has no atoms")
    pbc = getattr(structure.lattice, "pbc", (True, True, True))
    if not all(pbc):
        raise InputError(where, "not periodic in 3 dimensions")
    if not structure.is_ordered:
        bad = [i for i, site in enumerate(structure) if not site.is_ordered]
        occ = " ".join(f"{sp}:{amt:g}" for sp, amt in structure[bad[0]].species.items())
        raise InputError(
            where,
            f"partially occupied / disordered sites ({len(bad)} of {len(structure)} sites, e.g. site {bad[0]}: "
            f"{occ}); order the structure first",
        )
    numbers = []
    for site in structure:
        specie = site.specie
        z = getattr(specie, "Z", 0)
        if type(specie).__name__ == "DummySpecies" or not (1 <= z <= MAX_ATOMIC_NUMBER):
            symbol = getattr(specie, "symbol", str(specie))
            raise InputError(where, f"unknown element '{symbol}'")
        numbers.append(z)
    if id is None:
        id = structure.composition.reduced_formula
    crystal = Crystal(
        id=id, lattice=np.array(structure.lattice.matrix), atomic_numbers=numbers,
        frac_coords=np.array(structure.frac_coords), targets=_coerce_targets(targets, where), source=source,
    )
    return crystal


def _crystal_from_ase(atoms, id: str | None, source: str, targets: dict | None = None) -> Crystal:
    where = _label(source, id) if source else (id or "ASE Atoms")
    if len(atoms) == 0:
        raise InputError(where, "structure has no atoms")
    if not np.all(atoms.pbc) or atoms.cell.rank < 3:
        raise InputError(where, "not periodic in 3 dimensions (need a 3D cell and pbc=True on all axes)")
    occupancy = atoms.info.get("occupancy")
    if isinstance(occupancy, dict):
        bad = [(k, v) for k, v in occupancy.items() if isinstance(v, dict) and
               (len(v) > 1 or any(abs(float(o) - 1.0) > 1e-6 for o in v.values()))]
        if bad:
            k, v = bad[0]
            occ = " ".join(f"{sp}:{float(o):g}" for sp, o in v.items())
            raise InputError(
                where,
                f"partially occupied / disordered sites ({len(bad)} of {len(occupancy)} sites, e.g. site {k}: "
                f"{occ}); order the structure first",
            )
    numbers = np.asarray(atoms.numbers)
    bad_z = (numbers < 1) | (numbers > MAX_ATOMIC_NUMBER)
    if bad_z.any():
        symbol = atoms.get_chemical_symbols()[int(np.argmax(bad_z))]
        raise InputError(where, f"unknown element '{symbol}'")
    cell = np.array(atoms.cell[:], dtype=np.float64)
    frac = np.linalg.solve(cell.T, np.asarray(atoms.positions, dtype=np.float64).T).T
    crystal = Crystal(
        id=id or "", lattice=cell, atomic_numbers=numbers, frac_coords=frac,
        targets=_coerce_targets(targets, where), source=source,
    )
    if id is None:
        crystal.id = crystal.formula  # same reduced formula as for pymatgen objects
    return crystal


# --------------------------------------------------------------------------------------------------
# Structure files
# --------------------------------------------------------------------------------------------------


def _structure_format(name: str) -> str | None:
    """'cif' / 'poscar' / 'extxyz' / 'json' for a recognised structure file name, else None."""
    n = name.lower()
    if n.endswith(".gz"):
        n = n[:-3]
    if n.endswith(_CIF_SUFFIXES):
        return "cif"
    if n.endswith(_XYZ_SUFFIXES):
        return "extxyz"
    if n.endswith(_JSON_SUFFIXES):
        return "json"
    if n.endswith(_POSCAR_SUFFIXES) or n.startswith(_POSCAR_PREFIXES):
        return "poscar"
    return None


def _default_id(path: Path) -> str:
    name = path.name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    stem, dot, ext = name.rpartition(".")
    if dot and stem and ("." + ext.lower()) in _CIF_SUFFIXES + _POSCAR_SUFFIXES + _XYZ_SUFFIXES + _JSON_SUFFIXES:
        return stem
    return name


def _read_text(path: Path, where: str) -> str:
    """The file's text (gunzipped if needed); InputError for missing / empty / corrupt files."""
    if not path.exists():
        raise InputError(where, "file not found")
    if path.is_dir():
        raise InputError(where, "is a directory, not a structure file (use read_dataset for folders)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(where, f"cannot read file: {_short_exc(exc)}") from None
    if path.name.lower().endswith(".gz"):
        if not data:
            raise InputError(where, "file is empty")
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(where, f"file is truncated / corrupt gzip ({_short_exc(exc)})") from None
    text = data.decode("utf-8", errors="replace")
    if not text.strip():
        raise InputError(where, "file is empty")
    return text


def _warning_text(caught: list) -> list[str]:
    return [str(w.message).strip() for w in caught if str(w.message).strip()]


def _parse_cif_pymatgen(text: str, where: str):
    """A pymatgen Structure from CIF text. InputError for problems pymatgen found but parsed
    through (missing atoms, more than one structure); other exceptions propagate."""
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parser = CifParser.from_str(text)
        structures = parser.parse_structures(primitive=False, on_error="raise")
        problem = parser.check(structures[0]) if len(structures) == 1 and structures[0].is_ordered else None
    for message in _warning_text(caught):
        logger.debug("%s: pymatgen CIF parser: %s", where, message)
    if len(structures) != 1:
        raise InputError(where, f"CIF holds {len(structures)} structures (data blocks); expected one")
    if problem and problem.startswith(("Missing elements", "Incorrect stoichiometry")):
        if any(type(sp).__name__ == "DummySpecies" for sp in structures[0].species):
            return structures[0]  # reported as "unknown element" by _crystal_from_pymatgen
        problem = " ".join(problem.split())
        raise InputError(
            where, f"atoms do not match the CIF's chemical formula ({problem}); file truncated or atoms omitted?"
        )
    return structures[0]


def _parse_poscar_pymatgen(text: str, where: str):
    from pymatgen.io.vasp import Poscar

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        structure = Poscar.from_str(text).structure
    messages = _warning_text(caught)
    for message in messages:
        logger.debug("%s: pymatgen POSCAR parser: %s", where, message)
    if any("cannot be determined" in m or "false names" in m for m in messages):
        raise InputError(where, "POSCAR has no element symbols (VASP 4 format without a species line)")
    return structure


def _parse_ase(text: str | None, fmt: str | None, where: str, path: Path | None = None):
    import ase.io

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = io.StringIO(text) if path is None else str(path)
        images = ase.io.read(source, index=":", format=fmt)
    for message in _warning_text(caught):
        logger.debug("%s: ASE reader: %s", where, message)
    if not isinstance(images, list):
        images = [images]
    if not images:
        raise ValueError("no structure found")
    if len(images) > 1:
        raise InputError(where, f"file holds {len(images)} structures; expected one")
    return images[0]


_ASE_FORMATS = {"cif": "cif", "poscar": "vasp", "extxyz": "extxyz"}


def _read_structure_file(path: Path, where: str, id: str | None, targets: dict | None) -> Crystal:
    fmt = _structure_format(path.name)
    text = _read_text(path, where)
    explicit_id = id
    if id is None:
        id = _default_id(path)

    if fmt == "json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InputError(where, f"not valid JSON: {_short_exc(exc)}") from None
        if isinstance(data, list):
            if len(data) != 1:
                raise InputError(where, f"JSON holds {len(data)} records; use read_dataset for datasets")
            data = data[0]
        crystal = _crystal_from_any_record(data, where)
        if explicit_id is not None or not (isinstance(data, dict) and _record_id(data, _JARVIS_ID_KEYS)):
            crystal.id = id  # the record's own id wins over the file stem, not over an explicit id
        if targets is not None:
            crystal.targets.update(_coerce_targets(targets, crystal.where))
        return crystal

    if fmt is None:
        # Unknown name: guess from the content (CIF keys, else POSCAR if it parses as one).
        if "_cell_length_a" in text:
            fmt = "cif"
        else:
            try:
                structure = _parse_poscar_pymatgen(text, where)
            except Exception:
                pass
            else:
                return _crystal_from_pymatgen(structure, id, where, targets)

    if fmt in ("cif", "poscar"):
        parse = _parse_cif_pymatgen if fmt == "cif" else _parse_poscar_pymatgen
        try:
            structure = parse(text, where)
        except InputError:
            raise
        except Exception as pmg_exc:  # pymatgen failed: try ASE before giving up
            try:
                atoms = _parse_ase(text, _ASE_FORMATS[fmt], where)
            except InputError:
                raise
            except Exception:
                reason = _short_exc(pmg_exc)
                if fmt == "cif" and "no structures" in reason:
                    reason = "no crystal structure found (not a CIF file, or no cell/atom_site data)"
                hint = " (truncated or malformed file?)" if isinstance(pmg_exc, _INTERNAL_ERRORS) else ""
                raise InputError(where, f"cannot parse as {_FORMAT_NAMES[fmt]}{hint}: {reason}") from None
            return _crystal_from_ase(atoms, id, where, targets)
        return _crystal_from_pymatgen(structure, id, where, targets)

    # Extended XYZ (pymatgen reads XYZ as a non-periodic Molecule) or an unrecognised name.
    try:
        if fmt is None:  # let ASE guess the format from the file itself
            atoms = _parse_ase(None, None, where, path=path)
        else:
            atoms = _parse_ase(text, _ASE_FORMATS[fmt], where)
    except InputError:
        raise
    except Exception as exc:
        if fmt is None:
            raise InputError(
                where, "unrecognised structure file format (expected .cif, POSCAR/CONTCAR/.vasp, .xyz/.extxyz or .json)"
            ) from None
        raise InputError(where, f"cannot parse as {_FORMAT_NAMES[fmt]}: {_short_exc(exc)}") from None
    return _crystal_from_ase(atoms, id, where, targets)


def read_structure(obj: Any, id: str | None = None, targets: dict | None = None) -> Crystal:
    """One validated :class:`Crystal` from a structure file or object.

    ``obj`` is a path (``str`` / ``Path``) to a CIF, POSCAR/CONTCAR/``.vasp``, extended XYZ or JSON
    record file (optionally gzipped), a pymatgen ``Structure``, an ASE ``Atoms``, a record dict or a
    :class:`Crystal`. ``id`` defaults to the file stem (the formula for objects); ``targets`` are
    attached to the crystal. Raises :class:`InputError` naming the file and the problem.
    """
    if isinstance(obj, (str, Path)):
        where = str(obj)
    else:
        where = f"{type(obj).__module__.split('.')[0]} {type(obj).__name__}"
    try:
        return _read_structure(obj, id, targets).validate()
    except InputError:
        raise
    except Exception as exc:  # a parser bug or an unexpected failure: still one clear line
        raise InputError(where, f"cannot read structure: {_short_exc(exc)}") from None


def _read_structure(obj: Any, id: str | None, targets: dict | None) -> Crystal:
    if isinstance(obj, (str, Path)):
        return _read_structure_file(Path(obj), str(obj), id, targets)

    if isinstance(obj, Crystal):
        crystal = Crystal(
            id=id or obj.id, lattice=obj.lattice.copy(), atomic_numbers=obj.atomic_numbers.copy(),
            frac_coords=obj.frac_coords.copy(), targets=dict(obj.targets), split=obj.split, source=obj.source,
        )
        if targets is not None:
            crystal.targets.update(_coerce_targets(targets, crystal.where))
        return crystal

    if isinstance(obj, dict):
        crystal = _crystal_from_any_record(obj, id or "<record>")
        if id is not None:
            crystal.id = id
        if targets is not None:
            crystal.targets.update(_coerce_targets(targets, crystal.where))
        return crystal

    from ase import Atoms

    if isinstance(obj, Atoms):  # also pymatgen's MSONAtoms
        return _crystal_from_ase(obj, id, "ASE Atoms", targets)
    if (type(obj).__module__ or "").startswith("pymatgen"):
        from pymatgen.core import IStructure

        if isinstance(obj, IStructure):
            return _crystal_from_pymatgen(obj, id, "pymatgen Structure", targets)
        raise InputError(f"pymatgen {type(obj).__name__}", "not periodic in 3 dimensions (need a Structure)")
    raise InputError(
        f"<{type(obj).__name__}>",
        "cannot read this object; expected a file path, pymatgen Structure, ASE Atoms or record dict",
    )


# --------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------


def _safe(where: str, make) -> Crystal | InputError:
    """``make()``'s Crystal, or the InputError describing why the record is bad (never raises)."""
    try:
        return make()
    except InputError as err:
        return err
    except Exception as exc:  # a parser bug must not stop the whole dataset
        return InputError(where, f"unexpected error: {type(exc).__name__}: {_short_exc(exc)}")


def _iter_json_lines(lines: Iterator[bytes], where: str) -> Iterator[Crystal | InputError]:
    """Records of a JSONL byte stream; a truncated / corrupt gzip stream ends with one InputError."""
    lineno = 0
    pending: tuple[int, bytes] | None = None  # a last line without newline: maybe cut off
    while True:
        try:
            raw = next(lines)
        except StopIteration:
            break
        except (OSError, EOFError, zlib.error) as exc:
            note = f" after line {lineno}" if lineno else ""
            yield InputError(where, f"file is truncated / corrupt gzip{note} ({_short_exc(exc)})")
            return
        lineno += 1
        if not raw.endswith(b"\n"):
            pending = (lineno, raw)
            continue
        if raw.strip():
            yield _parse_json_line(raw, f"{where}:{lineno}")
    if pending is not None and pending[1].strip():
        yield _parse_json_line(pending[1], f"{where}:{pending[0]}")


def _parse_json_line(raw: bytes, where: str) -> Crystal | InputError:
    try:
        rec = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return InputError(where, f"not valid JSON: {_short_exc(exc)}")
    return _safe(where, lambda: _crystal_from_any_record(rec, where))


def _iter_jsonl(path: Path, where: str) -> Iterator[Crystal | InputError]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        yield from _iter_json_lines(iter(fh), where)


def _load_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(where, f"not valid JSON: {_short_exc(exc)}") from None


def _json_records(data: Any, where: str) -> list:
    if isinstance(data, dict):
        # One record, or a {"id": record} mapping is not a format we know: treat dict as one record.
        return [data]
    if isinstance(data, list):
        return data
    raise DatasetError(where, f"JSON must hold a list of records or one record, got {type(data).__name__}")


def _iter_json_list(records: list, where: str) -> Iterator[Crystal | InputError]:
    for i, rec in enumerate(records):
        rec_where = f"{where}[{i}]"
        yield _safe(rec_where, lambda: _crystal_from_any_record(rec, rec_where))


def _read_bytes_for_dataset(path: Path, where: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(where, f"cannot read file: {_short_exc(exc)}") from None
    if path.name.lower().endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(where, f"file is truncated / corrupt gzip ({_short_exc(exc)})") from None
    if not data.strip():
        raise DatasetError(where, "file is empty")
    return data


def _zip_members(path: Path, where: str) -> tuple[zipfile.ZipFile, list[str]]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DatasetError(where, f"not a readable zip archive ({_short_exc(exc)})") from None
    members = [
        n for n in archive.namelist()
        if not n.endswith("/") and not n.startswith("__MACOSX/") and not Path(n).name.startswith("._")
        and n.lower().endswith((".json", ".json.gz", ".jsonl", ".jsonl.gz"))
    ]
    if not members:
        archive.close()
        raise DatasetError(where, "zip archive holds no .json / .jsonl file")
    return archive, members


def _iter_zip(path: Path, where: str, archive: zipfile.ZipFile, members: list[str]) -> Iterator[Crystal | InputError]:
    with archive:
        for member in members:
            member_where = f"{where}:{member}"
            try:
                data = archive.read(member)
                if member.lower().endswith(".gz"):
                    data = gzip.decompress(data)
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error, KeyError) as exc:
                yield InputError(member_where, f"cannot extract from archive: {_short_exc(exc)}")
                continue
            if member.lower().endswith((".jsonl", ".jsonl.gz")):
                yield from _iter_json_lines(iter(io.BytesIO(data)), member_where)
                continue
            try:
                records = _json_records(_load_json(data, member_where), member_where)
            except DatasetError as err:
                yield err
                continue
            yield from _iter_json_list(records, member_where)


_ID_PROP = "id_prop.csv"


def _structure_candidates(folder: Path, name: str) -> list[Path]:
    names = [name]
    for ext in (".cif", ".vasp", ".poscar", ".cif.gz", ".vasp.gz", ".xyz", ".extxyz", ".json"):
        names.append(name + ext)
    for prefix in ("POSCAR-", "POSCAR_", "CONTCAR-", "CONTCAR_"):
        names += [prefix + name, prefix + name + ".vasp"]
    return [folder / n for n in names]


def _id_from_name(name: str) -> str:
    return _default_id(Path(name)) if _structure_format(name) else name


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text.strip().lower() in _MISSING_STRINGS - {""}
    return True


def _iter_id_prop(folder: Path, where: str) -> Iterator[Crystal | InputError]:
    csv_path = folder / _ID_PROP
    csv_where = str(Path(where) / _ID_PROP) if Path(where).name != _ID_PROP else where
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            rows = [(n, row) for n, row in enumerate(csv.reader(fh), start=1)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(csv_where, f"cannot read: {_short_exc(exc)}") from None
    rows = [(n, [c.strip() for c in row]) for n, row in rows if any(c.strip() for c in row)]
    if not rows:
        raise DatasetError(csv_where, "id_prop.csv has no rows")

    names: list[str] | None = None
    first = rows[0][1]
    if (
        len(first) > 1
        and not any(_is_number(c) for c in first[1:])
        and not any(p.is_file() for p in _structure_candidates(folder, first[0]))
    ):
        names = first[1:]  # a header row (the cgcnn/ALIGNN convention has none, but people add one)
        rows = rows[1:]
        if not rows:
            raise DatasetError(csv_where, "id_prop.csv has a header but no data rows")
    n_targets = len(names) if names is not None else len(rows[0][1]) - 1
    if names is None:
        names = ["target"] if n_targets == 1 else [f"target_{i}" for i in range(n_targets)]
    return _iter_id_prop_rows(folder, csv_where, rows, names)


def _iter_id_prop_rows(folder: Path, csv_where: str, rows, names: list[str]) -> Iterator[Crystal | InputError]:
    for lineno, row in rows:
        name, values = row[0], row[1:]
        record_id = _id_from_name(name)
        row_where = _label(f"{csv_where}:{lineno}", record_id)
        if len(values) != len(names):
            yield InputError(row_where, f"row has {len(values)} target values, expected {len(names)}")
            continue
        try:
            targets = {t: _coerce_target(t, v, row_where) for t, v in zip(names, values)}
        except InputError as err:
            yield err
            continue
        candidates = _structure_candidates(folder, name)
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            tried = ", ".join(repr(p.name) for p in candidates[:4])
            yield InputError(row_where, f"structure file not found in {folder} (tried {tried}, ...)")
            continue
        yield _safe(str(found), lambda: read_structure(found, id=record_id, targets=targets))


def _iter_folder(folder: Path, files: list[Path]) -> Iterator[Crystal | InputError]:
    for path in files:
        yield _safe(str(path), lambda: read_structure(path))


def _folder_structure_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and _structure_format(p.name) in ("cif", "poscar", "extxyz")
    )


def iter_records(source: str | Path) -> Iterator[Crystal | InputError]:
    """Every record of a dataset: the good :class:`Crystal` or the :class:`InputError` saying why
    that record is bad. Never raises for a single bad record.

    ``source`` is a ``.jsonl`` / ``.jsonl.gz`` file, a ``.json`` / ``.json.gz`` file holding a list
    of JARVIS records (or one record), a ``.zip`` holding such JSON (figshare archives), a folder
    with ``id_prop.csv`` (cgcnn / ALIGNN convention) or a plain folder of structure files.

    Raises :class:`DatasetError` (immediately) when the source does not exist, is of an
    unrecognised type or is unusable as a whole.
    """
    where = str(source)
    path = Path(source)
    if not path.exists():
        raise DatasetError(where, "dataset not found (no such file or folder)")
    if path.is_dir():
        if (path / _ID_PROP).is_file():
            return _iter_id_prop(path, where)
        files = _folder_structure_files(path)
        if not files:
            raise DatasetError(
                where, "folder holds neither id_prop.csv nor structure files (.cif, POSCAR/CONTCAR, .vasp, .xyz)"
            )
        return _iter_folder(path, files)

    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")):
        return _iter_jsonl(path, where)
    if name.endswith((".json", ".json.gz")):
        records = _json_records(_load_json(_read_bytes_for_dataset(path, where), where), where)
        return _iter_json_list(records, where)
    if name.endswith(".zip"):
        archive, members = _zip_members(path, where)
        return _iter_zip(path, where, archive, members)
    if name == _ID_PROP:
        return _iter_id_prop(path.parent, where)
    if _structure_format(name) in ("cif", "poscar", "extxyz"):
        return iter([_safe(where, lambda: read_structure(path))])
    raise DatasetError(
        where,
        "unrecognised dataset type (expected .jsonl[.gz], .json[.gz], .zip, a folder with id_prop.csv "
        "or a folder of structure files)",
    )


# --------------------------------------------------------------------------------------------------
# read_dataset
# --------------------------------------------------------------------------------------------------


def _problem_kind(problem: str) -> str:
    """``problem`` without its record-specific details, for grouping errors in a summary."""
    kind = re.sub(r"\s*\([^)]*\)", "", problem)
    kind = kind.split(": ", 1)[0]
    kind = re.sub(r"(?<![\w.'])\d+(?![\w.'])", "N", kind)
    return kind.strip()


@dataclass
class ReadResult:
    """The good crystals of a dataset and the errors of its bad records."""

    crystals: list[Crystal] = field(default_factory=list)
    errors: list[InputError] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.crystals)

    def summary(self) -> str:
        """A short text: counts read, and the errors grouped by problem (with one example each)."""
        head = f"{self.source}: {len(self.crystals)} crystals read, {len(self.errors)} bad records"
        if not self.errors:
            return head
        groups: dict[str, list[InputError]] = {}
        for err in self.errors:
            groups.setdefault(_problem_kind(err.problem), []).append(err)
        lines = [head + ":"]
        for kind, errs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            lines.append(f"  {len(errs):>6} x {kind}  (e.g. {errs[0]})")
        return "\n".join(lines)


def _missing_target_error(crystal: Crystal, target: str) -> InputError | None:
    if target not in crystal.targets:
        have = ", ".join(sorted(crystal.targets)) or "none"
        if len(have) > 120:
            have = have[:117] + "..."
        return InputError(crystal.where, f"missing target '{target}' (record has: {have})")
    value = crystal.targets[target]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return InputError(crystal.where, f"missing target '{target}' (no value)")
    return None


def read_dataset(source: str | Path, target: str | None = None, strict: bool = False) -> ReadResult:
    """All records of ``source`` (see :func:`iter_records`), good ones and errors separated.

    With ``target``, records without a value for it are reported as errors and dropped.
    ``strict=True`` raises the first :class:`InputError` instead of collecting it. Every bad
    record is kept in ``errors`` (``crystalframes data info`` lists them) and logged at DEBUG;
    one WARNING line on the ``crystalframes.io`` logger summarises them by problem.
    """
    result = ReadResult(source=str(source))
    for item in iter_records(source):
        if isinstance(item, Crystal) and target is not None:
            item = _missing_target_error(item, target) or item
        if isinstance(item, InputError):
            if strict:
                raise item
            logger.debug("skipping bad record: %s", item)
            result.errors.append(item)
        else:
            result.crystals.append(item)
    if result.errors:
        logger.warning("%s", result.summary())
    return result
