"""Opening users' files safely: what a path is before it is opened, how its bytes become text, and
how its name is printed.

* Only regular files are read: opening a named pipe (FIFO) for reading blocks until someone
  writes to it, i.e. forever, and a device such as ``/dev/zero`` never ends.
* A symbolic link that loops is reported as such, not as "file not found".
* Text with a byte-order mark (UTF-8, UTF-16, UTF-32) or UTF-16 without one is decoded as what it
  is, instead of failing later as "not a CIF file" or a float parse error.
* File names that are not valid UTF-8 (``os.fsdecode`` turns their bytes into lone surrogates)
  are shown with ``\\xNN`` escapes, so messages and CSV files can always be written.
"""

from __future__ import annotations

import codecs
import errno
import os
import stat
from pathlib import Path

from crystalframes.io.errors import InputError

__all__ = ["checked_stat", "decode_text", "printable", "read_regular_file", "special_file_kind", "text_encoding"]

# Longest first: the UTF-32-LE mark starts with the UTF-16-LE one.
_BYTE_ORDER_MARKS = (
    (codecs.BOM_UTF32_LE, "utf-32", "UTF-32"),
    (codecs.BOM_UTF32_BE, "utf-32", "UTF-32"),
    (codecs.BOM_UTF8, "utf-8-sig", "UTF-8 with byte-order mark"),
    (codecs.BOM_UTF16_LE, "utf-16", "UTF-16"),
    (codecs.BOM_UTF16_BE, "utf-16", "UTF-16"),
)
_SNIFF_BYTES = 4096


def printable(text: str | os.PathLike) -> str:
    """``text`` (a path) with undecodable file-name bytes shown as ``\\xNN``: always encodable as UTF-8."""
    text = os.fspath(text)
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates that did not come from file-name bytes
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def special_file_kind(mode: int) -> str | None:
    """What a non-regular, non-directory file is ("named pipe (FIFO)", ...); ``None`` for regular files
    and directories."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return "special file"


def checked_stat(
    path: Path, where: str, error: type[InputError] = InputError, missing: str = "file not found"
) -> os.stat_result:
    """``os.stat(path)`` (following links) or ``error`` saying why the path cannot be used: not
    found, a broken or looping symbolic link, no permission, or a special file (FIFO, device,
    socket). Directories are returned; callers decide whether they accept one. ``missing`` is the
    problem reported for a path that does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise error(where, f"broken symbolic link (points to {printable(os.readlink(path))})") from None
        raise error(where, missing) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error(where, "symlink loop: the symbolic link leads back to itself") from None
        raise error(where, f"cannot read file: {exc.strerror or exc}") from None
    kind = special_file_kind(st.st_mode)
    if kind is not None:
        raise error(where, f"not a regular file but a {kind}; only regular files are read")
    return st


def read_regular_file(path: Path, where: str, error: type[InputError] = InputError) -> bytes:
    """The bytes of the regular file ``path``.

    Checked with :func:`checked_stat` first, then opened with ``O_NONBLOCK`` and checked again on
    the open descriptor: a path swapped for a FIFO between the two steps still cannot block.
    """
    st = checked_stat(path, where, error)
    if stat.S_ISDIR(st.st_mode):
        raise error(where, "is a directory, not a file")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise error(where, f"cannot read file: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        kind = special_file_kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise error(where, f"not a regular file but a {kind}; only regular files are read")
        try:
            return fh.read()
        except OSError as exc:
            raise error(where, f"cannot read file: {exc.strerror or exc}") from None


def text_encoding(data: bytes) -> tuple[str, str] | None:
    """(codec, name) of text that is not plain UTF-8: a byte-order mark, or UTF-16 without one
    (NUL bytes at every other position). ``None`` for everything else."""
    for mark, codec, name in _BYTE_ORDER_MARKS:
        if data.startswith(mark):
            return codec, name
    sample = data[:_SNIFF_BYTES]
    if len(sample) >= 4 and b"\x00" in sample:
        odd, even = sample[1::2], sample[0::2]
        # ASCII text in UTF-16: the high byte of nearly every character is zero.
        if odd.count(0) > 0.9 * len(odd) and even.count(0) < 0.1 * len(even):
            return "utf-16-le", "UTF-16 (little-endian, no byte-order mark)"
        if even.count(0) > 0.9 * len(even) and odd.count(0) < 0.1 * len(odd):
            return "utf-16-be", "UTF-16 (big-endian, no byte-order mark)"
    return None


def decode_text(data: bytes, where: str, error: type[InputError] = InputError) -> str:
    """``data`` as text: UTF-8 (undecodable bytes replaced, as most structure files are ASCII),
    or the UTF-16 / UTF-32 / BOM encoding :func:`text_encoding` finds. Other data with NUL bytes is
    binary: ``error``."""
    found = text_encoding(data)
    if found is not None:
        codec, name = found
        try:
            return data.decode(codec)
        except UnicodeDecodeError as exc:
            raise error(where, f"file looks like {name} text but does not decode as it ({exc.reason})") from None
    if b"\x00" in data[:_SNIFF_BYTES]:
        raise error(where, "binary file (NUL bytes), not a text structure file")
    return data.decode("utf-8", errors="replace")
