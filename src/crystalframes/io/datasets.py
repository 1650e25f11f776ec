"""Dataset containers: every record of a JSONL(.gz) file, a JSON list (or JARVIS figshare JSON),
a zip archive of those, a folder with ``id_prop.csv`` (cgcnn / ALIGNN convention) or a plain
folder of structure files.

* :func:`iter_records` -- the good :class:`Crystal` or the :class:`InputError` of every record.
* :func:`read_dataset` -- all of them, good ones and errors separated in a :class:`ReadResult`.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import math
import re
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crystalframes.io.coercion import _MISSING_STRINGS, _coerce_target, _label, _short_exc
from crystalframes.io.crystal import Crystal
from crystalframes.io.errors import DatasetError, InputError
from crystalframes.io.structures import (
    _crystal_from_any_record,
    _default_id,
    _structure_format,
    read_structure,
)

logger = logging.getLogger("crystalframes.io")

__all__ = ["ReadResult", "iter_records", "read_dataset"]

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
