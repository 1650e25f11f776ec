"""Atomic file output: readers see the old file or the complete new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


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


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Write to a temporary file beside ``path`` and rename it over ``path`` when the block ends
    without an exception; on any exception the temporary file is removed and ``path`` untouched.

    Text modes write UTF-8, and a character UTF-8 cannot hold (the lone surrogates by which
    Python spells the bytes of a non-UTF-8 file name) is written as a backslash escape, so
    such a name never costs the rest of the output. ``path`` must not be a folder.

    The handle's ``.name`` is the temporary path, so the block can validate what it wrote
    (after ``flush()``) before it is published.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX)
    os.close(fd)
    # mkstemp makes the file private (0600); give it the permissions a plain open() would
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        text = {} if "b" in mode else {"encoding": "utf-8", "errors": "backslashreplace"}
        with open(tmp, mode, **text) as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
