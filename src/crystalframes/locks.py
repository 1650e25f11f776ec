"""Advisory file locks between processes (``fcntl.flock``), one helper for every lock file the
package takes: processes that share a results file, a run or a graph store being built.

The operating system releases the lock of a process that dies, so a killed holder never leaves
a lock behind. The lock file is created if absent and never truncated (its content is nobody's).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def file_lock(path: str | Path, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` while the block runs. Blocking (the default): wait for
    it and yield True. Non-blocking: yield False at once if another process holds it (the block
    then runs without the lock and should leave the resource to that process)."""
    import fcntl

    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
