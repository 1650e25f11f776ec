"""Structures piped into standard input (the input ``-``: ``cat x.cif | crystalframes predict MODEL -``).

The format is told from the content, as a pipe has no file name: JSON (one record or Structure
dict, a list of them, a matbench table), JSON lines (one record or pymatgen ``Structure.as_dict()``
per line), else one CIF, extended XYZ or POSCAR structure. Gzipped input is unpacked.
"""

from __future__ import annotations

import io
import json
import re
import sys
from typing import BinaryIO, Iterator

from crystalframes.io.coercion import _short_exc
from crystalframes.io.crystal import Crystal, quiet_pymatgen
from crystalframes.io.datasets import _iter_json, _iter_json_lines, _safe
from crystalframes.io.errors import InputError
from crystalframes.io.files import decode_text
from crystalframes.io.structures import _crystal_from_any_record, _structure_from_text, gunzip

__all__ = ["STDIN", "STDIN_WHERE", "iter_stream_structures", "read_stdin"]

STDIN = "-"  # the input name that means standard input
STDIN_WHERE = "<stdin>"  # how errors name it
STDIN_ID = "stdin"  # the id of a single structure read from it
_FORMATS_TEXT = "JSON lines, a JSON document, a CIF, an extended XYZ or a POSCAR"
_CIF = re.compile(r"^[ \t]*(data_|_cell_length_a)", re.M)


def read_stdin(stream: BinaryIO | None = None) -> bytes:
    """Everything on standard input (or ``stream``). On a terminal, first says on stderr how to end
    the input: the user typed ``-`` and would otherwise face a silent wait."""
    if stream is None:
        if sys.stdin is None:  # started with standard input closed
            raise InputError(STDIN_WHERE, "there is no standard input to read (it is closed)")
        if sys.stdin.isatty():
            print("reading structures from standard input (Ctrl-D to end)", file=sys.stderr, flush=True)
        stream = sys.stdin.buffer
    try:
        return stream.read()
    except OSError as exc:
        raise InputError(STDIN_WHERE, f"cannot read standard input: {exc.strerror or exc}") from None


def _text(data: bytes, where: str) -> str:
    if data[:2] == b"\x1f\x8b":
        data = gunzip(data, where, "truncated / corrupt gzip")
    text = decode_text(data, where)
    if not text.strip():
        raise InputError(where, f"standard input is empty; pipe in {_FORMATS_TEXT}")
    return text


def _first_line_is_json(text: str) -> bool:
    line = next(line for line in text.splitlines() if line.strip())
    try:
        json.loads(line)
    except (ValueError, RecursionError):
        return False
    return True


def _text_format(text: str) -> str:
    """'cif', 'extxyz' or 'poscar' for one structure's text."""
    if _CIF.search(text):
        return "cif"
    if text.lstrip().split("\n", 1)[0].strip().isdigit():  # XYZ: the atom count comes first
        return "extxyz"
    return "poscar"


def iter_stream_structures(data: bytes, where: str = STDIN_WHERE) -> Iterator[Crystal | InputError]:
    """The structures in ``data`` (standard input's bytes), each a :class:`Crystal` or the
    :class:`InputError` saying why it is bad (JSON lines are named ``<stdin>:LINE``). Never
    raises: empty or unreadable input is one InputError."""
    try:
        text = _text(data, where)
    except InputError as exc:
        yield exc
        return
    if text.lstrip()[:1] in ("{", "["):
        try:
            document = json.loads(text)
        except (ValueError, RecursionError) as exc:
            if not _first_line_is_json(text):  # neither one JSON document nor JSON lines
                yield InputError(where, f"not valid JSON: {_short_exc(exc)}")
                return
            yield from _iter_json_lines(iter(io.BytesIO(text.encode("utf-8"))), where)
            return
        if isinstance(document, dict) and not ("columns" in document and "data" in document):
            with quiet_pymatgen():  # not around a yield: the filter would leak to the caller
                one = _safe(where, lambda: _crystal_from_any_record(document, where))  # one record
            yield one
            return
        try:
            yield from _iter_json(document, where)
        except InputError as exc:
            yield exc
        return
    fmt = _text_format(text)
    with quiet_pymatgen():
        one = _safe(where, lambda: _structure_from_text(text, fmt, where, STDIN_ID, None, None).validate())
    yield one
