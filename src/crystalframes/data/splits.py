"""Train/validation/test splits.

Three ways to split, behind one entry point :func:`make_split`:

``random``
    The ALIGNN / Matformer / ComFormer / Crystalformer convention (:func:`random_split`): drop the
    records whose target is missing, *then* shuffle ``range(N)`` with Python's ``random`` seeded
    with 123 and cut train from the front, val and test from the back.
``ids``
    The official id lists of a benchmark (:func:`load_benchmark_split` + :func:`split_by_ids`).
``field``
    Each record's own ``split`` label (:func:`split_by_field`). In the shared samples that label is
    the benchmark split of the dataset's main targets (JARVIS formation energy / total energy /
    OptB88vdW gap; MEGNet e_form / gap); other JARVIS targets (mbj_bandgap, ehull, moduli) have
    their own benchmark splits, so use ``ids`` for those.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import random
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from crystalframes.io.crystal import Crystal
from crystalframes.io.errors import DatasetError

__all__ = [
    "SPLIT_NAMES",
    "MEGNET_SPLIT_SIZES",
    "SPLITS_ENV_VAR",
    "random_split",
    "split_by_ids",
    "split_by_field",
    "load_benchmark_split",
    "make_split",
    "drop_missing_target",
]

SPLIT_NAMES = ("train", "val", "test")
# MEGNet mp.2018.6.1 benchmark: 60000 / 5000 / 4239 out of 69239.
MEGNET_SPLIT_SIZES = {"n_train": 60000, "n_val": 5000, "n_test": 4239}
SPLIT_PRESETS = {"megnet": MEGNET_SPLIT_SIZES}
SPLITS_ENV_VAR = "CRYSTALFRAMES_SPLITS_FILE"

_LABEL_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}


def random_split(
    n: int,
    *,
    train_ratio: float | None = None,
    val_ratio: float = 0.1,
    test_ratio: float = 0.1,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    seed: int = 123,
) -> tuple[list[int], list[int], list[int]]:
    """Indices ``(train, val, test)`` of a random split of ``n`` records, benchmark convention.

    ``train_ratio`` defaults to ``1 - val_ratio - test_ratio`` (computed in that order, in floats,
    so counts agree with the published splits to the record); each count defaults to
    ``int(ratio * n)``. With ``ids = list(range(n))`` shuffled by ``random.Random(seed)`` (the same
    sequence as ``random.seed(seed); random.shuffle(ids)``, without touching the global generator)::

        train = ids[:n_train]
        val   = ids[-(n_val + n_test):-n_test]
        test  = ids[-n_test:]

    so with the default ratios a few records (the rounding remainder) sit between train and val and
    belong to no split. ``n_test = 0`` gives an empty test set (the slice formula above would give
    every record); other counts are unaffected.

    The convention drops records with a missing target *before* splitting: ``n`` is the number of
    records that have the target (:func:`make_split` with ``target=`` does this).
    """
    if n < 0:
        raise ValueError(f"number of records must be >= 0, got {n}")
    if train_ratio is None:
        train_ratio = 1 - val_ratio - test_ratio
    for label, ratio in (("train", train_ratio), ("val", val_ratio), ("test", test_ratio)):
        if not (0.0 <= ratio <= 1.0) or math.isnan(ratio):
            raise ValueError(f"{label}_ratio must be within [0, 1], got {ratio}")
    if n_train is None:
        n_train = int(train_ratio * n)
    if n_val is None:
        n_val = int(val_ratio * n)
    if n_test is None:
        n_test = int(test_ratio * n)
    for label, count in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if count < 0:
            raise ValueError(f"{label} must be >= 0, got {count}")
    if n_train + n_val + n_test > n:
        raise ValueError(
            f"split sizes {n_train} + {n_val} + {n_test} = {n_train + n_val + n_test} exceed the {n} records"
        )
    ids = list(range(n))
    random.Random(seed).shuffle(ids)
    train = ids[:n_train]
    if n_test == 0:
        val = ids[n - n_val :] if n_val else []
        test: list[int] = []
    else:
        val = ids[-(n_val + n_test) : -n_test]
        test = ids[-n_test:]
    return train, val, test


def _has_target(crystal: Crystal, target: str) -> bool:
    value = crystal.targets.get(target)
    if value is None or isinstance(value, bool):
        return False
    if isinstance(value, np.ndarray):  # a tensor target (Crystal.tensor_target): present when no entry is NaN
        return value.size > 0 and not bool(np.isnan(value).any())
    try:
        return not math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def drop_missing_target(crystals: Iterable[Crystal], target: str) -> list[Crystal]:
    """The crystals that have a numeric, non-NaN value for ``target`` (order kept)."""
    return [c for c in crystals if _has_target(c, target)]


def split_by_ids(
    crystals: Sequence[Crystal], id_lists: dict[str, Sequence[str]]
) -> dict[str, list[Crystal]]:
    """Split by id lists ``{"train": [...], "val": [...], "test": [...]}``.

    Crystals whose id is in no list are left out; ids with no crystal are ignored (a sample holds
    a subset of a benchmark). The order of each split follows ``crystals``.

    An id listed in two splits is ambiguous: the official JARVIS ``dft_3d_2021`` lists contain a
    few (the dataset holds some jids twice and was split by record index, e.g. ``JVASP-113961``
    is in both train and test). Crystals with such an id are left out of every split, with a
    warning, rather than risk the same structure in train and test.
    """
    where: dict[str, str] = {}
    ambiguous: set[str] = set()
    for raw_label, ids in id_lists.items():
        label = _normalise_label(raw_label, "benchmark id lists")
        for cid in ids:
            cid = str(cid)
            previous = where.setdefault(cid, label)
            if previous != label:
                ambiguous.add(cid)
    out: dict[str, list[Crystal]] = {name: [] for name in SPLIT_NAMES}
    left_out: list[str] = []
    for crystal in crystals:
        cid = str(crystal.id)
        if cid in ambiguous:
            left_out.append(cid)
            continue
        label = where.get(cid)
        if label is not None:
            out[label].append(crystal)
    if left_out:
        shown = ", ".join(sorted(set(left_out))[:5])
        warnings.warn(
            f"{len(left_out)} crystal(s) left out of every split: their id is listed in more than one "
            f"split ({shown})"
        )
    return out


def has_split_field(crystal: Crystal) -> bool:
    """True when the record carries its own split label (train/val/test)."""
    return crystal.split is not None and str(crystal.split).strip() != ""


def split_by_field(crystals: Sequence[Crystal]) -> dict[str, list[Crystal]]:
    """Split by each crystal's own ``split`` label; crystals without one are left out.

    Accepted labels: train/training, val/valid/validation/dev, test/testing (any case).
    """
    out: dict[str, list[Crystal]] = {name: [] for name in SPLIT_NAMES}
    for crystal in crystals:
        if not has_split_field(crystal):
            continue
        out[_normalise_label(crystal.split, crystal.where)].append(crystal)
    return out


def _normalise_label(label: object, where: str) -> str:
    key = str(label).strip().lower()
    if key not in _LABEL_ALIASES:
        raise DatasetError(where, f"unknown split label {label!r} (expected train, val or test)")
    return _LABEL_ALIASES[key]


def _read_json_maybe_gz(path: Path) -> object:
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(str(path), f"cannot read benchmark splits: {exc}") from None


_SPLITS_CACHE: dict[tuple[str, int, int], dict] = {}


def load_benchmark_split(key: str, path: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """The official ``{"train": ids, "val": ids, "test": ids}`` for ``key`` (e.g.
    ``dft_3d_formation_energy_peratom``, ``megnet_e_form``, ``megnet_gappbe``).

    ``path`` is a ``benchmark_splits.json.gz`` file (gzipped or plain JSON,
    ``{"<dataset>_<target>": {"train": [...], "val": [...], "test": [...]}}``); when omitted the
    environment variable ``CRYSTALFRAMES_SPLITS_FILE`` names it. The file is not shipped with the
    package.
    """
    if path is None:
        env = os.environ.get(SPLITS_ENV_VAR)
        if not env:
            raise DatasetError(
                "benchmark splits",
                f"no splits file given: pass its path or set {SPLITS_ENV_VAR} to a benchmark_splits.json.gz",
            )
        path = env
    path = Path(os.path.expanduser(os.fspath(path)))
    if not path.is_file():
        raise DatasetError(str(path), "benchmark splits file not found")
    stat = path.stat()
    cache_key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    table = _SPLITS_CACHE.get(cache_key)
    if table is None:
        table = _read_json_maybe_gz(path)
        if not isinstance(table, dict):
            raise DatasetError(str(path), "benchmark splits file is not a JSON object of id lists")
        _SPLITS_CACHE.clear()
        _SPLITS_CACHE[cache_key] = table
    if key not in table:
        raise DatasetError(str(path), f"no split '{key}'; available: {', '.join(sorted(table))}")
    entry = table[key]
    if not isinstance(entry, dict):
        raise DatasetError(str(path), f"split '{key}' is not a {{train, val, test}} object")
    out: dict[str, list[str]] = {}
    for raw_label, ids in entry.items():
        label = _normalise_label(raw_label, f"{path} [{key}]")
        out[label] = [str(i) for i in ids]
    for label in SPLIT_NAMES:
        out.setdefault(label, [])
    return out


def make_split(
    crystals: Sequence[Crystal],
    method: str = "random",
    *,
    target: str | None = None,
    **kw,
) -> dict[str, list[Crystal]]:
    """Split ``crystals`` into ``{"train": [...], "val": [...], "test": [...]}``.

    Parameters
    ----------
    method
        ``"random"``: :func:`random_split` on the crystals; keywords ``seed``, ``train_ratio``,
        ``val_ratio``, ``test_ratio``, ``n_train``, ``n_val``, ``n_test`` and ``preset="megnet"``
        (60000/5000/4239). ``"ids"``: :func:`split_by_ids` with ``id_lists=`` or with ``key=``
        (and ``path=``) for :func:`load_benchmark_split`. ``"field"``: :func:`split_by_field`.
    target
        If given, crystals with a missing value of this target are dropped first (before the
        shuffle, as the benchmark convention does).
    """
    pool = list(crystals) if target is None else drop_missing_target(crystals, target)
    if method == "random":
        preset = kw.pop("preset", None)
        if preset is not None:
            if preset not in SPLIT_PRESETS:
                raise ValueError(f"unknown split preset {preset!r}; known: {', '.join(SPLIT_PRESETS)}")
            kw = {**SPLIT_PRESETS[preset], **kw}
        allowed = {"seed", "train_ratio", "val_ratio", "test_ratio", "n_train", "n_val", "n_test"}
        _check_keywords(method, kw, allowed)
        train, val, test = random_split(len(pool), **kw)
        return {
            "train": [pool[i] for i in train],
            "val": [pool[i] for i in val],
            "test": [pool[i] for i in test],
        }
    if method == "ids":
        _check_keywords(method, kw, {"id_lists", "key", "path"})
        id_lists = kw.get("id_lists")
        if id_lists is None:
            if "key" not in kw:
                raise ValueError("method 'ids' needs id_lists= or key= (benchmark split key)")
            id_lists = load_benchmark_split(kw["key"], kw.get("path"))
        return split_by_ids(pool, id_lists)
    if method == "field":
        _check_keywords(method, kw, set())
        return split_by_field(pool)
    raise ValueError(f"unknown split method {method!r}; use 'random', 'ids' or 'field'")


def _check_keywords(method: str, kw: dict, allowed: set[str]) -> None:
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise TypeError(
            f"split method {method!r} does not take {', '.join(unknown)}"
            + (f" (it takes {', '.join(sorted(allowed))})" if allowed else "")
        )
