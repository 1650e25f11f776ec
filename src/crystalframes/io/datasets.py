"""Dataset containers: every record of a JSONL(.gz) file, a JSON list (or JARVIS figshare JSON),
a matbench-style JSON table (pandas ``orient="split"`` with pymatgen ``Structure`` dicts), a CSV
table with one CIF per row (the CDVAE benchmark files), a zip archive of JSON, a multi-frame structure file (extended XYZ, ASE trajectory), a folder with
``id_prop.csv`` (cgcnn / ALIGNN convention) or a plain folder of structure files.

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
import os
import stat
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crystalframes.io.coercion import _MISSING_STRINGS, _coerce_target, _label, _short_exc
from crystalframes.io.crystal import Crystal, quiet_pymatgen
from crystalframes.io.errors import DatasetError, InputError, SkippedInput
from crystalframes.io.files import checked_stat, decode_text, printable, read_regular_file, text_encoding
from crystalframes.io.structures import (
    MULTI_FRAME_FORMATS,
    _crystal_from_any_record,
    _default_id,
    _structure_format,
    _structure_from_text,
    iter_frames,
    read_structure,
)
from crystalframes.io.tensor_tables import TENSOR_SETS, iter_tensor_set

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
    # RecursionError: nesting deeper than the interpreter's stack ("[[[[..." as a hostile line)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return InputError(where, f"not valid JSON: {_short_exc(exc)}")
    return _safe(where, lambda: _crystal_from_any_record(rec, where))


def _iter_jsonl(path: Path, where: str) -> Iterator[Crystal | InputError]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        try:
            found = text_encoding(fh.peek(4096))
        except (OSError, EOFError, zlib.error) as exc:
            yield InputError(where, f"file is truncated / corrupt gzip ({_short_exc(exc)})")
            return
        if found is None or found[0] == "utf-8-sig":  # json.loads skips a UTF-8 byte-order mark itself
            yield from _iter_json_lines(iter(fh), where)
            return
        try:  # UTF-16 / UTF-32: lines are not split at b"\n", so decode the whole text first
            text = decode_text(fh.read(), where)
        except (OSError, EOFError, zlib.error) as exc:
            yield InputError(where, f"file is truncated / corrupt gzip ({_short_exc(exc)})")
            return
        except InputError as err:
            yield err
            return
    yield from _iter_json_lines(iter(io.BytesIO(text.encode("utf-8"))), where)


def _load_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise DatasetError(where, f"not valid JSON: {_short_exc(exc)}") from None


def _json_records(data: Any, where: str) -> list:
    if isinstance(data, dict):
        # One record, or a {"id": record} mapping is not a format we know: treat dict as one record.
        return [data]
    if isinstance(data, list):
        return data
    raise DatasetError(where, f"JSON must hold a list of records or one record, got {type(data).__name__}")


def _is_split_table(data: Any) -> bool:
    """A pandas ``DataFrame.to_json(orient="split")`` table, as matbench ships its datasets."""
    return isinstance(data, dict) and "columns" in data and "data" in data and "atoms" not in data


def _iter_json(data: Any, where: str) -> Iterator[Crystal | InputError]:
    """Records of a parsed JSON document: a split table, a list of records or one record."""
    if _is_split_table(data):
        return _iter_split_table(data, where)
    return _iter_json_list(_json_records(data, where), where)


def _iter_json_list(records: list, where: str) -> Iterator[Crystal | InputError]:
    for i, rec in enumerate(records):
        rec_where = f"{where}[{i}]"
        yield _safe(rec_where, lambda: _crystal_from_any_record(rec, rec_where))


_STRUCTURE_COLUMN = "structure"


def _iter_split_table(table: dict, where: str) -> Iterator[Crystal | InputError]:
    """Rows of a matbench-style table ``{"index": [ids], "columns": ["structure", <target>...],
    "data": [[Structure dict, value...], ...]}``: the row's index is the id, every other column a
    target (a boolean class label becomes 0 / 1). No pandas needed: the layout is plain JSON."""
    columns, rows, index = table["columns"], table["data"], table.get("index")
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise DatasetError(where, "table 'columns' must be a list of names")
    if _STRUCTURE_COLUMN not in columns:
        raise DatasetError(where, f"table has no '{_STRUCTURE_COLUMN}' column (columns: {', '.join(columns)})")
    if not isinstance(rows, list):
        raise DatasetError(where, f"table 'data' must be a list of rows, got {type(rows).__name__}")
    if index is not None and (not isinstance(index, list) or len(index) != len(rows)):
        raise DatasetError(where, "table 'index' must list one id per row of 'data'")
    column = columns.index(_STRUCTURE_COLUMN)
    target_names = [(j, c) for j, c in enumerate(columns) if j != column]

    def row_crystal(row: Any, row_where: str, row_id: str | None) -> Crystal:
        label = _label(row_where, row_id)
        if not isinstance(row, list) or len(row) != len(columns):
            raise InputError(label, f"row must be a list of {len(columns)} values ({', '.join(columns)})")
        structure = row[column]
        if not isinstance(structure, dict) or structure.get("@class") not in ("Structure", "IStructure"):
            raise InputError(label, f"'{_STRUCTURE_COLUMN}' is not a pymatgen Structure dict")
        crystal = _crystal_from_any_record(structure, label)
        values = {name: float(row[j]) if isinstance(row[j], bool) else row[j] for j, name in target_names}
        crystal.targets = {name: _coerce_target(name, value, label) for name, value in values.items()}
        crystal.id = row_id or crystal.id
        crystal.source = row_where
        return crystal.validate()

    for i, row in enumerate(rows):
        row_where = f"{where}[{i}]"
        row_id = None if index is None or index[i] in (None, "") else str(index[i])
        yield _safe(_label(row_where, row_id), lambda: row_crystal(row, row_where, row_id))


# A JSON file's top-level array is judged by its first elements before the whole file is parsed:
# a file of a million numbers was parsed whole and reported as a million bad records (12 s, 2 GB).
_PEEK_BYTES = 1 << 16
_PEEK_ELEMENTS = 8
_JSON_KINDS = {"int": "numbers", "float": "numbers", "str": "strings", "list": "arrays", "bool": "booleans",
               "NoneType": "nulls"}
_JSON_SPACE = re.compile(r"[ \t\r\n]*")


def _not_records_problem(head: bytes) -> str | None:
    """Why a JSON text beginning with ``head`` is not a list of records, judged from the first
    elements of its top-level array; None when one of them is a record (an object) or when
    ``head`` does not tell (no array, or a first element longer than ``head``)."""
    found = text_encoding(head)
    text = head.decode(found[0] if found else "utf-8", errors="ignore").lstrip("\ufeff \t\r\n")
    if not text.startswith("["):
        return None
    decoder, pos, kinds, closed = json.JSONDecoder(), 1, [], False
    while len(kinds) < _PEEK_ELEMENTS:
        pos = _JSON_SPACE.match(text, pos).end()
        try:
            value, pos = decoder.raw_decode(text, pos)
        except (ValueError, RecursionError):
            break
        if isinstance(value, dict):
            return None
        kinds.append(_JSON_KINDS.get(type(value).__name__, type(value).__name__))
        pos = _JSON_SPACE.match(text, pos).end()
        if text[pos : pos + 1] != ",":
            closed = text[pos : pos + 1] == "]"
            break
        pos += 1
    if not kinds:
        return None
    which = f"{len(kinds)} elements" if closed else f"first {len(kinds)} elements"
    return (f"a JSON array whose {which} are {' / '.join(sorted(set(kinds)))}, not structure records "
            "(JSON objects); nothing read")


def _peek(path: Path) -> bytes:
    """The first bytes of ``path`` (decompressed for .gz), or b"" when it is no regular file or
    cannot be read: :func:`read_regular_file` then says why. Opened non-blocking and checked on
    the descriptor, so a FIFO is never waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError:
        return b""
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        try:
            return (gzip.GzipFile(fileobj=fh) if path.name.lower().endswith(".gz") else fh).read(_PEEK_BYTES)
        except (OSError, EOFError, zlib.error):
            return b""


def _read_bytes_for_dataset(path: Path, where: str) -> bytes:
    problem = _not_records_problem(_peek(path))
    if problem is not None:
        raise DatasetError(where, problem)
    data = read_regular_file(path, where, DatasetError)
    if path.name.lower().endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(where, f"file is truncated / corrupt gzip ({_short_exc(exc)})") from None
    if not data.strip():
        raise DatasetError(where, "file is empty")
    return data


def _escapes(member: str) -> bool:
    """True for a member name that is absolute or climbs out of the archive (``..``): no honest
    dataset archive has one, and extracting it anywhere would write outside the target folder."""
    name = member.replace("\\", "/")
    return name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in name.split("/")


def _zip_members(path: Path, where: str, member: str | None) -> tuple[zipfile.ZipFile, list[str]]:
    """The open archive and the member(s) to read: ``member`` (by full name or file name) when
    given, else every JSON / JSONL member. The whole archive is refused when a member name is
    absolute, climbs with ``..`` or appears twice (records that would be read twice)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DatasetError(where, f"not a readable zip archive ({_short_exc(exc)})") from None
    names = archive.namelist()
    problem = None
    escaping = [n for n in names if _escapes(n)]
    twice = [n for n, count in Counter(names).items() if count > 1]
    if escaping:
        problem = f"archive member {escaping[0]!r} has an absolute or '..' path; the archive is refused"
    elif twice:
        problem = f"archive member {twice[0]!r} appears more than once; the archive is refused"
    elif member is not None:
        members = [n for n in names if n == member or n.rsplit("/", 1)[-1] == member]
        if not members:
            held = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            problem = f"archive does not contain {member} (it holds: {held or 'nothing'})"
        elif len(members) > 1:
            problem = f"archive holds {member} more than once ({', '.join(members)})"
    else:
        members = [
            n for n in names
            if not n.endswith("/") and not n.startswith("__MACOSX/") and not Path(n).name.startswith("._")
            and n.lower().endswith((".json", ".json.gz", ".jsonl", ".jsonl.gz"))
        ]
        if not members:
            problem = "zip archive holds no .json / .jsonl file"
    if problem is not None:
        archive.close()
        raise DatasetError(where, problem)
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
            problem = _not_records_problem(data[:_PEEK_BYTES])
            if problem is not None:
                yield InputError(member_where, problem)
                continue
            try:
                records = _iter_json(_load_json(data, member_where), member_where)
            except DatasetError as err:
                yield err
                continue
            yield from records


_ID_PROP = "id_prop.csv"
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")


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
    text = decode_text(read_regular_file(csv_path, csv_where, DatasetError), csv_where, DatasetError)
    try:
        rows = [(n, row) for n, row in enumerate(csv.reader(io.StringIO(text, newline="")), start=1)]
    except csv.Error as exc:
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
        yield _safe(printable(found), lambda: read_structure(found, id=record_id, targets=targets))


# Structure formats a plain folder is searched for (a .json there may be anything: a record, a
# dataset, metadata; it is listed as skipped rather than guessed at).
_FOLDER_FORMATS = ("cif", "poscar") + MULTI_FRAME_FORMATS
_FOLDER_FORMATS_TEXT = ".cif, POSCAR/CONTCAR, .vasp, .xyz/.extxyz, .traj"


def _iter_structure_file(path: Path, where: str) -> Iterator[Crystal | InputError]:
    """The crystal(s) of one structure file: every frame of a multi-frame format, else one."""
    if _structure_format(path.name) in MULTI_FRAME_FORMATS:
        return iter_frames(path, where)
    return iter([_safe(where, lambda: read_structure(path))])


def _scan_folder(folder: Path, where: str) -> tuple[list[Path], list[SkippedInput]]:
    """The structure files of a plain folder (sorted by name) and every other entry, each with
    why it is not read. Nothing is opened here: special files are recognised by ``stat``."""
    files: list[Path] = []
    skipped: list[SkippedInput] = []
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise DatasetError(where, f"cannot list folder: {exc.strerror or exc}") from None
    for name in names:
        path = folder / name
        shown = printable(path)
        if name.startswith("."):
            skipped.append(SkippedInput(shown, "hidden file"))
            continue
        try:
            st = checked_stat(path, shown, SkippedInput)
        except SkippedInput as err:
            skipped.append(err)
            continue
        fmt = _structure_format(name)
        if stat.S_ISDIR(st.st_mode):
            skipped.append(SkippedInput(shown, "a sub-folder (sub-folders are not searched)"))
        elif fmt not in _FOLDER_FORMATS:
            hint = "; a JSON dataset or record is read when given by its own name" if fmt == "json" else ""
            skipped.append(SkippedInput(
                shown, f"not a structure file: a folder is searched for {_FOLDER_FORMATS_TEXT}{hint}"
            ))
        else:
            files.append(path)
    return files, skipped


def _iter_folder(folder: Path, where: str) -> Iterator[Crystal | InputError]:
    files, skipped = _scan_folder(folder, where)
    if not files:
        held = ", ".join(printable(e.source).rsplit("/", 1)[-1] for e in skipped[:5])
        raise DatasetError(
            where,
            f"folder holds neither id_prop.csv nor structure files ({_FOLDER_FORMATS_TEXT})"
            + (f"; it holds: {held}{', ...' if len(skipped) > 5 else ''}" if held else "; it is empty"),
        )
    return _chain_folder(files, skipped)


def _chain_folder(files: list[Path], skipped: list[SkippedInput]) -> Iterator[Crystal | InputError]:
    yield from skipped
    for path in files:
        yield from _iter_structure_file(path, printable(path))


# --------------------------------------------------------------------------------------------------
# CSV tables of CIFs (one crystal per row), as the CDVAE benchmark publishes perov_5 / carbon_24
# --------------------------------------------------------------------------------------------------

_CIF_TABLE_SUFFIXES = (".csv", ".csv.gz")
_CIF_COLUMN = "cif"
_TABLE_ID_COLUMNS = ("material_id", "id", "mpid", "jid")
# Columns of such tables that hold text, not targets (CDVAE's mp_20 has pretty_formula, elements).
_TABLE_TEXT_COLUMNS = frozenset({
    "formula", "pretty_formula", "reduced_formula", "full_formula", "composition", "elements",
    "spacegroup", "space_group", "spacegroup_symbol", "split", "unnamed: 0",
})
_TABLE_SPLIT_WORDS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                      "test": "test", "testing": "test"}


def _is_cif_table(name: str) -> bool:
    return name.lower().endswith(_CIF_TABLE_SUFFIXES) and name.lower() != _ID_PROP


def _table_split(name: str) -> str | None:
    """The split a table of a set stands for, from the last word of its name: ``val.csv``,
    ``perov_5_test.csv.gz``, ``perov_5_dev_train.csv.gz`` (-> train); ``None`` when it names none."""
    stem = name.lower()
    for suffix in (".gz", ".csv"):
        stem = stem.removesuffix(suffix)
    return _TABLE_SPLIT_WORDS.get(re.split(r"[_\-. ]", stem)[-1])


def _iter_cif_table(path: Path, where: str, split: str | None = None) -> Iterator[Crystal | InputError]:
    """The rows of a CSV table with a ``cif`` column: each row one crystal (its CIF parsed with
    pymatgen, as a .cif file is), id from ``material_id`` (or ``id``), every other column that
    is not text a target; ``split`` from a ``split`` column, else the ``split`` given (the table's
    split in its set). The header is read at once (DatasetError for a table without a ``cif``
    column); a bad row (unparseable CIF, non-numeric target) is one InputError, and a truncated
    file ends with one."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        fh = opener(path, "rt", encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise DatasetError(where, f"cannot open: {exc.strerror or _short_exc(exc)}") from None
    try:
        reader = csv.reader(fh)
        try:
            header = next(reader, None)
        except (OSError, EOFError, zlib.error, UnicodeDecodeError, csv.Error) as exc:
            raise DatasetError(where, f"cannot read the table header ({_short_exc(exc)})") from None
        if header is None:
            raise DatasetError(where, "file is empty")
        header = [h.strip() for h in header]
        if _CIF_COLUMN not in header:
            raise DatasetError(where, f"CSV table has no '{_CIF_COLUMN}' column (columns: {', '.join(header) or 'none'})")
    except BaseException:
        fh.close()
        raise
    return _cif_table_rows(fh, reader, header, where, split)


def _cif_table_rows(fh, reader, header: list[str], where: str, split: str | None) -> Iterator[Crystal | InputError]:
    cif_at = header.index(_CIF_COLUMN)
    id_at = next((header.index(c) for c in _TABLE_ID_COLUMNS if c in header), None)
    split_at = header.index("split") if "split" in header else None
    # an unnamed first column is the index pandas writes (the row number in the full set)
    index_at = 0 if header[0] == "" else None
    targets_at = [(j, name) for j, name in enumerate(header)
                  if j not in (cif_at, id_at, split_at, index_at) and name and name.lower() not in _TABLE_TEXT_COLUMNS]
    row_number = 0
    with fh:
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except (OSError, EOFError, zlib.error) as exc:
                yield InputError(where, f"file is truncated / corrupt gzip after row {row_number} ({_short_exc(exc)})")
                return
            except (UnicodeDecodeError, csv.Error) as exc:
                yield InputError(f"{where}[{row_number}]", f"unreadable CSV, rest of the file not read ({_short_exc(exc)})")
                return
            if not any(cell.strip() for cell in row):
                continue
            row_where = f"{where}[{row_number}]"
            row_number += 1
            yield _safe(row_where, lambda: _table_row_crystal(row, header, row_where, cif_at, id_at, split_at,
                                                               index_at, targets_at, split))


def _table_row_crystal(row: list[str], header: list[str], where: str, cif_at: int, id_at: int | None,
                       split_at: int | None, index_at: int | None, targets_at: list[tuple[int, str]],
                       split: str | None) -> Crystal:
    record_id = None
    for at in (id_at, index_at):
        if at is not None and at < len(row) and row[at].strip():
            record_id = row[at].strip()
            break
    label = _label(where, record_id)
    if len(row) != len(header):
        raise InputError(label, f"row has {len(row)} fields, the header names {len(header)}")
    cif = row[cif_at]
    if not cif.strip():
        raise InputError(label, f"empty '{_CIF_COLUMN}' field")
    targets = {name: _coerce_target(name, row[j], label) for j, name in targets_at}
    with quiet_pymatgen():
        crystal = _structure_from_text(cif, "cif", label, record_id, record_id, targets)
    if record_id is None:
        crystal.id = label
    crystal.source = where
    row_split = row[split_at].strip() if split_at is not None else ""
    crystal.split = row_split or split
    return crystal.validate()


def _iter_table_set(folder: Path, where: str, pattern: str) -> Iterator[Crystal | InputError]:
    """The tables of one dataset in ``folder`` (files matching the glob ``pattern``; the folder
    may hold other datasets' tables too), train before val before test, each row with its
    table's split."""
    try:
        tables = [p for p in folder.glob(pattern) if _is_cif_table(p.name) and p.is_file()]
    except OSError as exc:
        raise DatasetError(where, f"cannot list folder: {exc.strerror or exc}") from None
    if not tables:
        raise DatasetError(where, f"folder holds no CSV table matching {pattern!r}")
    order = {"train": 0, "val": 1, "test": 2}
    tables.sort(key=lambda p: (order.get(_table_split(p.name) or "", 3), p.name))
    return _chain_tables(tables)


def _chain_tables(tables: list[Path]) -> Iterator[Crystal | InputError]:
    for table in tables:
        table_where = printable(table)
        try:
            yield from _iter_cif_table(table, table_where, _table_split(table.name))
        except DatasetError as err:  # one unusable table is one error, not the end of the set
            yield err



def iter_records(source: str | Path, member: str | None = None) -> Iterator[Crystal | InputError]:
    """Every record of a dataset: the good :class:`Crystal` or the :class:`InputError` saying why
    that record is bad. Never raises for a single bad record.

    ``source`` is a ``.jsonl`` / ``.jsonl.gz`` file, a ``.json`` / ``.json.gz`` file holding a list
    of JARVIS records (or one record, or a matbench-style ``orient="split"`` table), a ``.zip``
    holding such JSON (figshare archives; ``member`` names the one JSON to read), a multi-frame
    ``.xyz`` / ``.extxyz`` / ``.traj`` file (one record per frame, id ``<stem>@<index>``), a folder
    with ``id_prop.csv`` (cgcnn / ALIGNN convention) or a plain folder of structure files. In a
    plain folder every entry that is not read is yielded as a :class:`SkippedInput` first.
    A ``.csv`` / ``.csv.gz`` table with a ``cif`` column gives one record per row; a folder with
    ``member`` (a glob such as ``perov_5_*.csv*``) gives the rows of the tables matching it, each
    with the split its table's name ends with (``..._train.csv``, ``val.csv``...); a folder with
    ``member`` naming a tensor set (``mp_dielectric``, ``mp_elastic``, ``mp_piezo``) gives that
    set's symmetry-checked records (:mod:`crystalframes.io.tensor_tables`).

    Raises :class:`DatasetError` (immediately) when the source does not exist, is not a regular
    file or folder, is of an unrecognised type or is unusable as a whole.
    """
    where = printable(source)
    path = Path(source)
    st = checked_stat(path, where, DatasetError, missing="dataset not found (no such file or folder)")
    if stat.S_ISDIR(st.st_mode):
        if member in TENSOR_SETS:
            return iter_tensor_set(path, member)
        if member is not None:
            return _iter_table_set(path, where, member)
        if (path / _ID_PROP).is_file():
            return _iter_id_prop(path, where)
        return _iter_folder(path, where)

    name = path.name.lower()
    if name.endswith(_JSONL_SUFFIXES):
        return _iter_jsonl(path, where)
    if name.endswith((".json", ".json.gz")):
        return _iter_json(_load_json(_read_bytes_for_dataset(path, where), where), where)
    if name.endswith(".zip"):
        archive, members = _zip_members(path, where, member)
        return _iter_zip(path, where, archive, members)
    if name == _ID_PROP:
        return _iter_id_prop(path.parent, where)
    if _is_cif_table(name):
        return _iter_cif_table(path, where)
    if _structure_format(name) in _FOLDER_FORMATS:
        return _iter_structure_file(path, where)
    raise DatasetError(
        where,
        "unrecognised dataset type (expected .jsonl[.gz], .json[.gz], .zip, .csv[.gz] with a 'cif' column, "
        ".xyz/.extxyz/.traj, a folder with id_prop.csv or a folder of structure files)",
    )




def iter_structures(source: str | os.PathLike) -> Iterator[Crystal | InputError]:
    """Every structure one input a user names holds, for prediction and checks: a structure file
    gives its structure (id = file stem), a container (folder, ``id_prop.csv``, JSONL, zip, a JSON
    list or matbench table, a multi-frame extxyz / trajectory) each of its records. Never raises:
    an input that is missing, unreadable or holds nothing at all is yielded as an
    :class:`InputError`, so every input the user named is accounted for."""
    where = printable(source)
    path = Path(source)
    name = path.name.lower()
    count = 0
    try:
        if name.endswith((".json", ".json.gz")) and not path.is_dir():
            data = _load_json(_read_bytes_for_dataset(path, where), where)
            if not (_is_split_table(data) or (isinstance(data, list) and len(data) != 1)):
                yield read_structure(path)  # one record: named like any structure file
                return
            records = _iter_json(data, where)
        elif (path.is_dir() or name.endswith(_JSONL_SUFFIXES + (".zip",) + _CIF_TABLE_SUFFIXES)
              or _structure_format(name) in MULTI_FRAME_FORMATS):
            records = iter_records(path)
        else:
            yield read_structure(path)
            return
        for record in records:
            count += 1
            yield record
    except InputError as exc:
        count += 1
        yield exc
    if count == 0:
        yield InputError(where, "empty: holds no structures")


# --------------------------------------------------------------------------------------------------
# read_dataset
# --------------------------------------------------------------------------------------------------


def _problem_kind(problem: str) -> str:
    """``problem`` without its record-specific details, for grouping errors in a summary."""
    kind = re.sub(r"\s*\([^)]*\)", "", problem)
    kind = kind.split(": ", 1)[0]
    kind = re.sub(r"(?<![\w.'])\d+(?![\w.'])", "N", kind)
    return kind.strip()


# Files named in a summary's "skipped" line before it says "and N more".
_MAX_SKIPPED_NAMED = 20


@dataclass
class ReadResult:
    """The good crystals of a dataset and the errors of its bad records.

    ``missing_target`` holds the records that are fine but have no value for the requested
    ``target`` (not bad records: many datasets label only some records), ``skipped`` the files of
    a folder that were not read (:class:`SkippedInput`).
    """

    crystals: list[Crystal] = field(default_factory=list)
    errors: list[InputError] = field(default_factory=list)
    source: str = ""
    target: str | None = None
    missing_target: list[InputError] = field(default_factory=list)
    skipped: list[SkippedInput] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.crystals)

    def errors_text(self) -> str:
        """Counts read and the bad records grouped by problem (with one example each)."""
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

    def missing_target_text(self) -> str:
        return f"{len(self.missing_target)} records have no {self.target} value; skipped"

    def skipped_text(self) -> str:
        """One line naming every skipped file (up to a limit) and why."""
        named = [f"{Path(e.source).name} [{e.problem}]" for e in self.skipped[:_MAX_SKIPPED_NAMED]]
        more = len(self.skipped) - len(named)
        return f"{self.source}: {len(self.skipped)} files skipped (not read): " + "; ".join(named) + (
            f"; and {more} more" if more else ""
        )

    def summary(self) -> str:
        """A short text: counts read, the errors grouped by problem, the records without the
        target and the files skipped."""
        lines = [self.errors_text()]
        if self.missing_target:
            lines.append("  " + self.missing_target_text())
        if self.skipped:
            lines.append("  " + self.skipped_text())
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


def _progress(items: Iterator, source: str | Path) -> Iterator:
    """``items`` with a tqdm progress bar on a terminal; ``disable=None`` turns it off when stderr
    is not a TTY (logs, pipes, tests)."""
    from tqdm import tqdm

    name = printable(Path(source).name) or printable(source)
    return tqdm(items, desc=f"reading {name}", unit=" records", disable=None, leave=False, mininterval=0.5)


def read_dataset(
    source: str | Path, target: str | None = None, strict: bool = False, member: str | None = None
) -> ReadResult:
    """All records of ``source`` (see :func:`iter_records`), good ones and errors separated.

    With ``target``, records without a value for it are set aside in ``missing_target`` (counted
    in one INFO line) rather than reported as bad. ``strict=True`` raises the first
    :class:`InputError` of a bad record instead of collecting it. Every bad record is kept in
    ``errors`` (``crystalframes data info`` lists them) and logged at DEBUG; one WARNING line on the
    ``crystalframes.io`` logger summarises them by problem, another names the files a folder
    holds that were skipped. Shows a progress bar on a terminal.
    """
    result = ReadResult(source=printable(source), target=target)
    for item in _progress(iter_records(source, member=member), source):
        if isinstance(item, SkippedInput):
            result.skipped.append(item)
            continue
        if isinstance(item, Crystal) and target is not None:
            missing = _missing_target_error(item, target)
            if missing is not None:
                result.missing_target.append(missing)
                continue
        if isinstance(item, InputError):
            if strict:
                raise item
            logger.debug("skipping bad record: %s", item)
            result.errors.append(item)
        else:
            result.crystals.append(item)
    if result.errors:
        logger.warning("%s", result.errors_text())
    if result.missing_target:
        if result.crystals:
            logger.info("%s: %s", result.source, result.missing_target_text())
        else:  # not one record has it: most likely a misspelt target name
            logger.warning("%s: no record has a value for target '%s' (e.g. %s)",
                           result.source, target, result.missing_target[0])
    if result.skipped:
        logger.warning("%s", result.skipped_text())
    return result
