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


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Write to a temporary file beside ``path`` and rename it over ``path`` when the block ends
    without an exception; on any exception the temporary file is removed and ``path`` untouched.

    The handle's ``.name`` is the temporary path, so the block can validate what it wrote
    (after ``flush()``) before it is published.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    # mkstemp makes the file private (0600); give it the permissions a plain open() would
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        with open(tmp, mode) as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
