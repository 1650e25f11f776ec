"""From a dataset name or a path to a local file, and to the records read from it.

Kept apart from the registry (:mod:`crystalframes.data.datasets`) and the downloader
(:mod:`crystalframes.data.download`, which needs the registry) so that neither imports the other
both ways: this module uses both."""

from __future__ import annotations

import os
from pathlib import Path

from crystalframes.data.datasets import DATASETS, embedded_path, get_dataset_info
from crystalframes.data.download import cached_dataset, fetch_dataset
from crystalframes.io.errors import DatasetError
from crystalframes.io.datasets import ReadResult, read_dataset


def resolve_source(source: str | os.PathLike, *, download: bool = False) -> Path:
    """A local file or folder for ``source``.

    - an existing path -> itself;
    - a registered name -> the embedded file, or the cached download (fetched first when
      ``download`` is true; otherwise a :class:`DatasetError` saying how to fetch it);
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
    if download:
        return fetch_dataset(info.name)
    raise DatasetError(
        info.name,
        f"not downloaded yet: run `crystalframes data fetch {info.name}` "
        f"(or `crystalframes data fetch {info.name} --file LOCAL` if you already have the archive)",
    )


def load_dataset(
    source: str | os.PathLike, target: str | None = None, strict: bool = False, *, download: bool = False
) -> ReadResult:
    """Read a named dataset or a local file/folder: :func:`resolve_source` then
    :func:`crystalframes.io.read_dataset`."""
    # a registered archive is read through its one expected member, whatever else it holds
    member = DATASETS[str(source)].member if str(source) in DATASETS else None
    return read_dataset(resolve_source(source, download=download), target=target, strict=strict, member=member)
