"""From a dataset name or a path to a local file, and to the records read from it.

Kept apart from the registry (:mod:`crystalframes.data.datasets`) and the downloader
(:mod:`crystalframes.data.download`, which needs the registry) so that neither imports the other
both ways: this module uses both."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from crystalframes.data.datasets import DATASETS, SHARED_DATA_ENV, embedded_path, find_local_tables, get_dataset_info
from crystalframes.data.download import cached_dataset, fetch_dataset
from crystalframes.io.crystal import Crystal
from crystalframes.io.errors import DatasetError, InputError
from crystalframes.io.datasets import ReadResult, iter_records, iter_structures, read_dataset


def resolve_source(source: str | os.PathLike, *, download: bool = False) -> Path:
    """A local file or folder for ``source``.

    - an existing path -> itself;
    - a registered name -> the embedded file, or the cached download (fetched first when
      ``download`` is true; otherwise a :class:`DatasetError` saying how to fetch it); for a
      dataset published as tables (``perov_5``, ``carbon_24``) the cached download, else a local
      copy of the tables read in place (:func:`~crystalframes.data.datasets.find_local_tables`):
      the folder holding them, read with the dataset's ``member`` pattern;
    - anything else -> a :class:`DatasetError` listing the known datasets.

    A path wins over a registered name, so a local folder called ``mp_2018`` is read as a folder.
    """
    path = Path(os.path.expanduser(os.fspath(source)))
    if path.exists():
        return path
    try:
        info = get_dataset_info(os.fspath(source))
    except DatasetError:
        raise DatasetError(
            os.fspath(source), f"no such dataset or file; known datasets: {', '.join(DATASETS)}"
        ) from None
    if info.is_embedded:
        return embedded_path(info)
    cached = cached_dataset(info.name)
    if cached is not None:
        return cached
    if info.is_table_set:
        # a downloaded copy wins: it is the full public set, a local copy may be a part of it
        local = find_local_tables(info)
        if local is not None:
            return local
    if download:
        return fetch_dataset(info.name)
    if info.is_table_set:
        raise DatasetError(
            info.name,
            f"not downloaded yet: run `crystalframes data fetch {info.name}`, or set {SHARED_DATA_ENV} to a folder "
            f"holding its tables ({info.member}, e.g. {info.name}_val.csv.gz)",
        )
    raise DatasetError(
        info.name,
        f"not downloaded yet: run `crystalframes data fetch {info.name}` "
        f"(or `crystalframes data fetch {info.name} --file LOCAL` if you already have the archive)",
    )


def iter_input_structures(item: str | os.PathLike, stdin: bytes | None = None) -> Iterator[Crystal | InputError]:
    """Every structure one input of ``predict`` / ``check`` names, each a :class:`Crystal` or the
    :class:`InputError` saying why it is bad; never raises.

    - ``-``: standard input (``stdin``: its bytes, read by the caller once), see
      :mod:`crystalframes.io.stdin`;
    - an existing path: :func:`crystalframes.io.iter_structures` (a structure file, folder or container);
    - a registered dataset name (as ``eval`` resolves it: :func:`resolve_source`): its records; one
      not downloaded yet is one error saying how to fetch it.
    """
    from crystalframes.io.stdin import STDIN, iter_stream_structures

    if os.fspath(item) == STDIN:
        yield from iter_stream_structures(stdin if stdin is not None else b"")
        return
    if not Path(os.path.expanduser(os.fspath(item))).exists():
        name = os.fspath(item)
        try:
            info = get_dataset_info(name)
        except DatasetError:
            info = None
            if not Path(name).suffix and os.sep not in name:  # looks like a name, not a file
                yield DatasetError(name, f"no such file, folder or dataset; known datasets: {', '.join(DATASETS)}")
                return
        if info is not None:
            try:
                yield from iter_records(resolve_source(item), member=info.member)
            except InputError as exc:  # not downloaded yet, a corrupt cache...
                yield exc
            return
    yield from iter_structures(item)


def load_dataset(
    source: str | os.PathLike, target: str | None = None, strict: bool = False, *, download: bool = False
) -> ReadResult:
    """Read a named dataset or a local file/folder: :func:`resolve_source` then
    :func:`crystalframes.io.read_dataset`."""
    return read_dataset(resolve_source(source, download=download), target=target, strict=strict,
                        member=dataset_member(source))


def dataset_member(source: str | os.PathLike) -> str | None:
    """What the reader picks out of the file or folder a registered name resolves to: a
    registered archive is read through its one expected member, whatever else it holds, and a
    set of tables through its file-name pattern (its folder may hold other datasets' tables).
    ``None`` for a path (an existing path wins over a name, as in :func:`resolve_source`)."""
    if Path(os.path.expanduser(os.fspath(source))).exists():
        return None
    try:
        return get_dataset_info(os.fspath(source)).member
    except DatasetError:
        return None
