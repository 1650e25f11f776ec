"""Atomic file output: readers see the old file or the complete new one, never half of one, and
nothing that is not a regular file (a device, a named pipe, a symlink) is ever replaced."""

from __future__ import annotations

import errno
import io
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from crystalframes.io.errors import UserError


def _umask() -> int:
    # os.umask can only be read by setting it; done per call, not cached, so a umask the
    # program sets later is honoured.
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


# Temporary files are named ``.cf-XXXXXXXX.part`` whatever the final name: a name built from
# the final one (``.{name}.XXXXXXXX.part``) passed the 255-byte limit of a file name for legal
# final names of 241+ characters.
TEMP_PREFIX, TEMP_SUFFIX = ".cf-", ".part"


def output_target(path: str | os.PathLike) -> tuple[Path, str]:
    """Where a write to ``path`` lands and how: ``(target, kind)`` with kind ``"file"`` (a
    regular file or a new name: replaced atomically), ``"stream"`` (a character device or a
    named pipe: written in place, as a shell's ``>`` would). A symlink is followed, so its
    target is replaced and the link stays a link. Folders, block devices and sockets are refused
    (:class:`UserError` naming the path)."""
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:  # other OS errors (ENOTDIR, ELOOP ...) are the caller's to word
        return target, "file"
    if stat.S_ISREG(mode):
        return target, "file"
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, f"{path} is a folder, not a file name", str(path))
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return target, "stream"
    what = "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file"
    raise UserError(f"{path}: is {what}; refusing to write there (give a file name)")


def _stream_into(target: Path, source: str) -> None:
    """Copy the finished temporary file ``source`` into a device or named pipe. A pipe nobody
    reads is refused at once (O_NONBLOCK: ENXIO) instead of hanging."""
    try:
        fd = os.open(target, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise UserError(f"{target}: is a named pipe that no process is reading; start the reader first") from None
        raise
    os.set_blocking(fd, True)  # a reader is there: wait for it to drain the pipe as it reads
    with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
        shutil.copyfileobj(src, out)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Write to a temporary file and publish it as ``path`` when the block ends without an
    exception; on any exception the temporary file is removed and ``path`` untouched.

    A regular file (or new name) is replaced by a rename from beside it; a symlink's target is
    replaced (the link stays); a character device or named pipe (``/dev/null``, ``/dev/stdout``,
    a FIFO) receives the complete output once it is written, never a rename over it; folders,
    block devices and sockets are refused.

    Text modes write UTF-8, and a character UTF-8 cannot hold (the lone surrogates by which
    Python spells the bytes of a non-UTF-8 file name) is written as a backslash escape, so
    such a name never costs the rest of the output.

    The handle's ``.name`` is the temporary path, so the block can validate what it wrote
    (after ``flush()``) before it is published.
    """
    target, kind = output_target(path)
    if kind == "file":
        target.parent.mkdir(parents=True, exist_ok=True)
    # a stream's temporary file lives in the temporary folder: /dev is no place for it
    fd, tmp = tempfile.mkstemp(dir=target.parent if kind == "file" else None, prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX)
    os.close(fd)
    # mkstemp makes the file private (0600); give it the permissions a plain open() would
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        text = {} if "b" in mode else {"encoding": "utf-8", "errors": "backslashreplace"}
        with open(tmp, mode, **text) as fh:
            yield fh
        if kind == "file":
            os.replace(tmp, target)
        else:
            _stream_into(target, tmp)
    except OSError as exc:
        # a failed write() names no file, a failed rename the temporary one: name the output
        if exc.filename is None or exc.filename == tmp:
            exc.filename = str(path)
        raise
    finally:
        Path(tmp).unlink(missing_ok=True)


def save_torch(obj, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_write`. Serialised in memory first: torch reports a
    failed write on a file object as a ``RuntimeError`` from its zip writer that never names the
    cause, while a plain write raises the ``OSError`` (ENOSPC, EDQUOT ...) a user can act on."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_write(path) as fh:
        fh.write(buffer.getbuffer())


# errno -> words; os.strerror's text is kept beside the symbol for the rest
_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EEXIST: "a file of that name exists",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "is a folder",
    errno.ENAMETOOLONG: "the name is too long",
    errno.ELOOP: "a symlink loop",
    errno.ENOENT: "no such file or folder",
}


def os_reason(exc: OSError) -> str:
    """The reason of an OS error in words with its errno symbol, e.g. ``no space left on the
    device (ENOSPC)``."""
    code = exc.errno
    symbol = errno.errorcode.get(code, "") if code is not None else ""
    reason = _REASONS.get(code) or exc.strerror or str(exc) or type(exc).__name__
    return reason + (f" ({symbol})" if symbol else "")


def describe_os_error(exc: OSError, path: str | os.PathLike | None = None) -> str:
    """One line for an OS error: the path, then :func:`os_reason`, e.g.
    ``runs/x: no space left on the device (ENOSPC)``."""
    where = path if path is not None else (exc.filename or "")
    return f"{where}: {os_reason(exc)}"


def write_error(exc: OSError, path: str | os.PathLike, what: str = "") -> UserError:
    """The :class:`UserError` a command raises when writing ``what`` to ``path`` failed."""
    if not what:
        return UserError(describe_os_error(exc, path))
    return UserError(f"{path}: cannot write {what}: {os_reason(exc)}")
