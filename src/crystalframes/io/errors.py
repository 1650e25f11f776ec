"""Input errors: one clear message naming the file or record and the problem."""

from __future__ import annotations


class UserError(Exception):
    """An error the user can act on: the command line prints its message (no traceback) and
    exits with code 2."""


class InputError(UserError, ValueError):
    """A structure, record or dataset that cannot be used.

    Parameters
    ----------
    source
        The file path, ``path:line``, record id or object description the problem is in.
    problem
        What is wrong, in words a user can act on.
    """

    def __init__(self, source: str, problem: str):
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")


class DatasetError(InputError):
    """A whole dataset (download, archive, folder) is unusable."""


class SkippedInput(InputError):
    """A file a dataset folder holds but that is not read: not a structure file, a symlink loop,
    a named pipe. Not a bad record: it is listed (``ReadResult.skipped``, the summary, one log
    line), never dropped silently."""
