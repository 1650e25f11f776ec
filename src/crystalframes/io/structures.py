"""Structure files and objects: one validated :class:`Crystal` from a CIF, POSCAR/CONTCAR,
extended XYZ or JSON record file (optionally gzipped), a pymatgen ``Structure`` (or its dict), an
ASE ``Atoms`` or a record dict.

Every problem becomes an :class:`InputError` naming the file and the problem; no parser traceback
reaches the user.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import re
import stat
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from crystalframes.io.coercion import (
    _INTERNAL_ERRORS,
    _JARVIS_ID_KEYS,
    _JARVIS_NON_TARGET_KEYS,
    _coerce_target,
    _coerce_targets,
    _is_target_value,
    _label,
    _record_id,
    _short_exc,
    _split_value,
    crystal_from_jarvis,
    crystal_from_record,
)
from crystalframes.io.crystal import MAX_ATOMIC_NUMBER, Crystal, quiet_pymatgen
from crystalframes.io.errors import InputError
from crystalframes.io.files import checked_stat, decode_text, printable, read_regular_file

logger = logging.getLogger("crystalframes.io")

__all__ = ["frame_targets", "iter_frames", "read_structure"]

# Structure file formats recognised by name (the ".gz" suffix is stripped first).
_CIF_SUFFIXES = (".cif",)
_POSCAR_SUFFIXES = (".vasp", ".poscar")
_POSCAR_PREFIXES = ("poscar", "contcar")
_XYZ_SUFFIXES = (".xyz", ".extxyz")
_JSON_SUFFIXES = (".json",)
_TRAJ_SUFFIXES = (".traj",)
_FORMAT_NAMES = {"cif": "CIF", "poscar": "POSCAR", "extxyz": "extended XYZ", "json": "JSON", "traj": "ASE trajectory"}
# Formats whose files may hold many structures (frames), read one record per frame by the datasets.
MULTI_FRAME_FORMATS = ("extxyz", "traj")


def _crystal_from_any_record(rec: Any, where: str) -> Crystal:
    """Dispatch a record dict to the JARVIS or JSONL parser by its keys."""
    if isinstance(rec, dict):
        if rec.get("@class") in ("Structure", "IStructure"):
            return _crystal_from_pymatgen_dict(rec, where)
        if isinstance(rec.get("structure"), dict) and rec["structure"].get("@class") in ("Structure", "IStructure"):
            return _crystal_from_structure_record(rec, where)
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


# Where records that wrap a Structure dict keep their id (Materials Project / matminer first).
_STRUCTURE_RECORD_ID_KEYS = ("material_id", "mpid", "jid", "id")


def _crystal_from_structure_record(rec: dict, where: str) -> Crystal:
    """A record holding a pymatgen ``Structure.as_dict()`` under ``"structure"``, as Materials
    Project API and matminer exports are (``{"material_id": "mp-149", "structure": {...},
    "band_gap": 0.6}``): the id from its id key, every other top-level number a target."""
    record_id = _record_id(rec, _STRUCTURE_RECORD_ID_KEYS)
    label = _label(where, record_id)
    crystal = _crystal_from_pymatgen_dict(rec["structure"], label)
    crystal.id = record_id or crystal.id
    crystal.source = where
    crystal.split = _split_value(rec.get("split"), label)
    crystal.targets = {
        str(k): _coerce_target(str(k), v, label)
        for k, v in rec.items()
        if k not in _JARVIS_NON_TARGET_KEYS and k != "structure" and _is_target_value(v)
    }
    return crystal.validate()


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
    """'cif' / 'poscar' / 'extxyz' / 'json' / 'traj' for a recognised structure file name, else None."""
    n = name.lower()
    if n.endswith(".gz"):
        n = n[:-3]
    if n.endswith(_CIF_SUFFIXES):
        return "cif"
    if n.endswith(_XYZ_SUFFIXES):
        return "extxyz"
    if n.endswith(_JSON_SUFFIXES):
        return "json"
    if n.endswith(_TRAJ_SUFFIXES):
        return "traj"
    if n.endswith(_POSCAR_SUFFIXES) or n.startswith(_POSCAR_PREFIXES):
        return "poscar"
    return None


def _default_id(path: Path) -> str:
    name = printable(path.name)
    if name.lower().endswith(".gz"):
        name = name[:-3]
    stem, dot, ext = name.rpartition(".")
    if dot and stem and ("." + ext.lower()) in _CIF_SUFFIXES + _POSCAR_SUFFIXES + _XYZ_SUFFIXES + _JSON_SUFFIXES + _TRAJ_SUFFIXES:
        return stem
    return name


def gunzip(data: bytes, where: str, problem: str) -> bytes:
    """``data`` decompressed; an :class:`InputError` (``problem`` and the cause) if it is not gzip."""
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(where, f"{problem} ({_short_exc(exc)})") from None


def _read_text(path: Path, where: str) -> str:
    """The file's text (gunzipped if needed); InputError for missing / empty / corrupt / special files."""
    st = checked_stat(path, where)
    if stat.S_ISDIR(st.st_mode):
        raise InputError(where, "is a directory, not a structure file (use read_dataset for folders)")
    data = read_regular_file(path, where)
    if path.name.lower().endswith(".gz"):
        if not data:
            raise InputError(where, "file is empty")
        data = gunzip(data, where, "file is truncated / corrupt gzip")
    text = decode_text(data, where)
    if not text.strip():
        raise InputError(where, "file is empty")
    return text


def _warning_text(caught: list) -> list[str]:
    return [str(w.message).strip() for w in caught if str(w.message).strip()]


_CIF_CELL = re.compile(r"^[ \t]*(_cell_(?:length|angle)_(?:a|b|c|alpha|beta|gamma))[ \t]+([^\s#]+)", re.M | re.I)


def _check_cif_cell(text: str, where: str) -> None:
    """Cell parameters the CIF dictionary forbids (lengths <= 0, angles outside (0, 180) degrees).
    pymatgen builds a lattice from them anyway (a = -5 gives a valid left-handed cell), so the
    file would be read as a crystal it does not describe."""
    for name, raw in _CIF_CELL.findall(text):
        try:
            value = float(raw.split("(")[0])  # 5.431(2): value with its standard uncertainty
        except ValueError:
            continue  # '?' or '.' (unknown): pymatgen reports the missing cell itself
        if name.lower().startswith("_cell_length") and not value > 0:
            raise InputError(where, f"{name} = {raw}: a cell length must be positive")
        if name.lower().startswith("_cell_angle") and not 0 < value < 180:
            raise InputError(where, f"{name} = {raw}: a cell angle must lie strictly between 0 and 180 degrees")


def _parse_cif_pymatgen(text: str, where: str):
    """A pymatgen Structure from CIF text. InputError for problems pymatgen found but parsed
    through (missing atoms, more than one structure); other exceptions propagate."""
    from pymatgen.io.cif import CifParser

    _check_cif_cell(text, where)

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
        raise InputError(
            where, f"file holds {len(images)} structures; expected one (read it as a dataset: one record per frame)"
        )
    return images[0]


_ASE_FORMATS = {"cif": "cif", "poscar": "vasp", "extxyz": "extxyz"}


def _read_structure_file(path: Path, where: str, id: str | None, targets: dict | None) -> Crystal:
    fmt = _structure_format(path.name)
    explicit_id = id
    if id is None:
        id = _default_id(path)
    if fmt == "traj":  # binary: ASE reads it from the path
        if stat.S_ISDIR(checked_stat(path, where).st_mode):
            raise InputError(where, "is a directory, not a structure file (use read_dataset for folders)")
        try:
            atoms = _parse_ase(None, "traj", where, path=path)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(where, f"cannot parse as {_FORMAT_NAMES[fmt]}: {_short_exc(exc)}") from None
        return _crystal_from_ase(atoms, id, where, targets)
    text = _read_text(path, where)
    return _structure_from_text(text, fmt, where, id, explicit_id, targets, path)


def _structure_from_text(text: str, fmt: str | None, where: str, id: str | None, explicit_id: str | None,
                         targets: dict | None, path: Path | None = None) -> Crystal:
    """One crystal from a structure file's text; ``fmt`` as :func:`_structure_format` names it,
    ``None`` to guess from the content (``path`` lets ASE guess by itself as a last resort).
    Shared by files and standard input."""
    if fmt == "json":
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
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


def frame_targets(atoms) -> dict[str, float]:
    """The numbers a frame carries as properties: scalar ``atoms.info`` values (extended XYZ
    ``key=value`` pairs) and the calculator's scalar results (``energy`` of an extxyz comment line
    or an ASE trajectory)."""
    found: dict[str, Any] = {}
    calc = getattr(atoms, "calc", None)
    results = getattr(calc, "results", None) or {}
    for source in (results, atoms.info):
        for key, value in source.items():
            if isinstance(value, np.generic):
                value = value.item()
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                found[str(key)] = value
    return found


def iter_frames(path: Path, where: str) -> Iterator[Crystal | InputError]:
    """Every structure of a multi-frame file (extended XYZ, ASE trajectory), read lazily with
    ``ase.io.iread``: one validated :class:`Crystal` (or the :class:`InputError` saying why not) per
    frame, with id ``<stem>@<index>`` and the frame's numbers (:func:`frame_targets`) as targets.
    A file holding a single frame reads as :func:`read_structure` reads it (id ``<stem>``). A file
    that breaks off ends with one error naming the frame."""
    import ase.io

    fmt = _structure_format(path.name)
    stem = _default_id(path)
    try:
        if fmt not in MULTI_FRAME_FORMATS:
            raise InputError(where, "not a multi-frame structure file (.xyz, .extxyz, .traj)")
        if fmt == "traj":
            if stat.S_ISDIR(checked_stat(path, where).st_mode):
                raise InputError(where, "is a directory, not a structure file")
            source: Any = str(path)
        else:  # text: decoded by our reader (gzip, byte-order marks), parsed by ASE
            source = io.StringIO(_read_text(path, where))
    except InputError as err:
        yield err
        return

    def crystal(atoms, index: int | None) -> Crystal | InputError:
        frame_id = stem if index is None else f"{stem}@{index}"
        try:
            return _crystal_from_ase(atoms, frame_id, where, frame_targets(atoms)).validate()
        except InputError as err:
            return err
        except Exception as exc:  # a converter bug must not stop the other frames
            return InputError(_label(where, frame_id), f"cannot read frame: {_short_exc(exc)}")

    frames = ase.io.iread(source, index=":", format=fmt)
    first = None
    index = 0
    while True:
        try:
            with warnings.catch_warnings():  # only around ASE: this generator yields to the caller
                warnings.simplefilter("ignore")
                atoms = next(frames)
        except StopIteration:
            break
        except Exception as exc:  # a frame that breaks off ends the file
            if index == 1:
                yield crystal(first, 0)
            yield InputError(_label(where, f"{stem}@{index}"), f"cannot parse as {_FORMAT_NAMES[fmt]}: {_short_exc(exc)}")
            return
        if index == 0:
            first = atoms  # its id depends on whether a second frame follows
        else:
            if index == 1:
                yield crystal(first, 0)
            yield crystal(atoms, index)
        index += 1
    if index == 1:
        yield crystal(first, None)
    elif index == 0:
        yield InputError(where, "no structure found")


def read_structure(obj: Any, id: str | None = None, targets: dict | None = None) -> Crystal:
    """One validated :class:`Crystal` from a structure file or object.

    ``obj`` is a path (``str`` / ``Path``) to a CIF, POSCAR/CONTCAR/``.vasp``, extended XYZ or JSON
    record file (optionally gzipped), a pymatgen ``Structure``, an ASE ``Atoms``, a record dict or a
    :class:`Crystal`. ``id`` defaults to the file stem (the formula for objects); ``targets`` are
    attached to the crystal. Raises :class:`InputError` naming the file and the problem.
    """
    if isinstance(obj, (str, Path)):
        where = printable(obj)
    else:
        where = f"{type(obj).__module__.split('.')[0]} {type(obj).__name__}"
    try:
        with quiet_pymatgen():
            return _read_structure(obj, id, targets).validate()
    except InputError:
        raise
    except Exception as exc:  # a parser bug or an unexpected failure: still one clear line
        raise InputError(where, f"cannot read structure: {_short_exc(exc)}") from None


def _read_structure(obj: Any, id: str | None, targets: dict | None) -> Crystal:
    if isinstance(obj, (str, Path)):
        return _read_structure_file(Path(obj), printable(obj), id, targets)

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
