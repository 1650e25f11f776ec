"""From a dataset source to batched graphs for training: read, split, normalise, graph.

Two paths behind one :class:`PreparedData`: small sources are read whole and their graphs built
(and cached) in memory; a graph store (``data.store``, or one built automatically for sources of
more than ``data.store_above`` records) is never read whole: the splits are index lists computed
from its columns, and each DataLoader worker and DDP rank reads only the graphs it is given."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from crystalframes.data.batch import collate
from crystalframes.data.cache import build_graphs
from crystalframes.data.graph import CrystalGraph, GraphSettings
from crystalframes.data.normalise import TargetNormaliser
from crystalframes.io.crystal import Crystal
from crystalframes.io.errors import InputError
from crystalframes.train.config import DataConfig

log = logging.getLogger("crystalframes.train")


class GraphDataset(Dataset):
    """A list of graphs; each item is one :class:`CrystalGraph` (collated by :func:`loader`)."""

    def __init__(self, graphs: list[CrystalGraph]):
        self.graphs = graphs

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, idx: int) -> CrystalGraph:
        return self.graphs[idx]


class StoreDataset(Dataset):
    """The graphs ``indices`` of a graph store: item ``i`` is ``store.graph(indices[i])``, read when
    asked for. The store pickles as its path and manifest, so each DataLoader worker and DDP rank
    opens (memory-maps) only what it reads. A slice gives a list of graphs, so the end-of-training
    evaluation (:meth:`PropertyModule.predict_graphs`) reads it batch by batch as it would a list."""

    def __init__(self, store, indices):
        self.store = store
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return [self.store.graph(int(i)) for i in self.indices[idx]]
        return self.store.graph(int(self.indices[idx]))


class StoreRecord:
    """One record of a graph store without its structure: what splitting, the usable-record
    checks and the prediction files read (id, target value, own split label, elements), as a
    :class:`Crystal` would give it. Elements are read from the store when asked for."""

    __slots__ = ("store", "index", "id", "split", "target_name", "value")

    def __init__(self, store, index: int, id: str, split, target_name: str, value: float):
        self.store, self.index, self.id, self.split = store, int(index), id, split
        self.target_name, self.value = target_name, float(value)

    @property
    def targets(self) -> dict:
        return {self.target_name: self.value}

    def target(self, name: str) -> float:
        if name != self.target_name or np.isnan(self.value):
            raise InputError(self.where, f"missing target '{name}'")
        return self.value

    @property
    def where(self) -> str:
        from crystalframes.io.crystal import location

        return location(str(self.store.path), self.id)

    @property
    def atomic_numbers(self) -> np.ndarray:
        return np.asarray(self.store.elements(self.index), dtype=np.int64)

    @property
    def num_atoms(self) -> int:
        return int(self.atomic_numbers.shape[0])

    @property
    def formula(self) -> str:
        # Crystal's own formula (one place for it); the geometry plays no part in it
        z = self.atomic_numbers
        return Crystal(self.id, np.eye(3), z, np.zeros((len(z), 3))).formula


class StoreRecords(Sequence):
    """The records ``indices`` of a store as a sequence of :class:`StoreRecord`, made when read:
    a split of a million records costs its index and target arrays, not a million objects (an
    id is read from the store when its record is: the end-of-training prediction files)."""

    def __init__(self, store, indices, target: str, values: np.ndarray | None = None):
        self.store, self.target = store, target
        self.indices = np.asarray(indices, dtype=np.int64)
        column = store.targets(target) if values is None else values
        self.values = np.asarray(column, dtype=np.float64)[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        index = int(self.indices[i])
        return StoreRecord(self.store, index, self.store.id(index), None, self.target, self.values[i])

    def target_values(self) -> np.ndarray:
        return self.values


class ResumableSampler(Sampler):
    """Epoch-seeded order that can start part-way through an epoch, on one or many processes.

    The order of epoch e is a permutation drawn from ``seed + e`` (or the natural order), split
    across DDP ranks like a DistributedSampler (padded to equal length, so that every rank runs
    as many steps; validation counts only the first :meth:`counted` items). ``skip`` items are
    dropped from the start of the next epoch's order: a resumed run continues with exactly the
    batches an uninterrupted run would have seen (:class:`ResumeDataPosition` sets it).
    """

    def __init__(self, n: int, shuffle: bool, seed: int = 0):
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @staticmethod
    def _rank_world() -> tuple[int, int]:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        return -(-self.n // self._rank_world()[1])

    def counted(self) -> int:
        """How many of this rank's items are not padding. The padding repeats the first items of
        the order and comes last in every rank's share (global positions past ``n``)."""
        rank, world = self._rank_world()
        return max(0, -(-(self.n - rank) // world))

    def __iter__(self):
        # int64 arrays, not lists of Python ints (36 bytes per item): an epoch of a
        # million-structure store would otherwise hold ~100 MB of order lists per rank
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).numpy()
        else:
            order = np.arange(self.n, dtype=np.int64)
        rank, world = self._rank_world()
        per_rank = -(-self.n // world)
        order = np.resize(order, per_rank * world)  # padding repeats the order from its start
        mine = order[rank::world]
        skip, self.skip = self.skip, 0
        return (int(i) for i in mine[skip:])


class ResumeDataPosition(L.Callback):
    """When training starts (after Lightning has restored a checkpoint, before the first
    epoch's data iterator exists), skip the batches the current epoch already trained on:
    global_step - epoch * batches per epoch (zero unless resuming from a mid-epoch checkpoint)."""

    def __init__(self, sampler: ResumableSampler, batch_size: int):
        self.sampler, self.batch_size = sampler, batch_size

    def on_train_start(self, trainer, pl_module) -> None:
        per_epoch = -(-len(self.sampler) // self.batch_size)
        done = trainer.global_step - trainer.current_epoch * per_epoch
        self.sampler.skip = max(done, 0) * self.batch_size


# DataLoader workers of a training that reads a graph store, unless trainer.num_workers says
# otherwise: a store read from disk costs ~0.7 ms per structure (45-55 ms per batch of 64 on a
# 600k store, docs/store.md), which workers overlap with the step; in memory a batch costs ~1 ms
# and a worker would only add the transfer of the batch between processes.
STORE_WORKERS = 2


def loader_workers(configured: int | None, graphs) -> int:
    """``trainer.num_workers``, or by default :data:`STORE_WORKERS` for a graph store and 0 for
    graphs in memory."""
    if configured is not None:
        return configured
    return STORE_WORKERS if isinstance(graphs, StoreDataset) else 0


def loader(graphs, targets, batch_size, dtype, shuffle, seed=0, num_workers=0) -> DataLoader:
    """A DataLoader of :class:`GraphBatch` objects over a :class:`ResumableSampler`; ``graphs`` is
    a list of graphs or a Dataset of them (:class:`StoreDataset`). Workers are kept from epoch to
    epoch (no new processes, no reopened store files at every epoch)."""
    dataset = graphs if isinstance(graphs, Dataset) else GraphDataset(graphs)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ResumableSampler(len(dataset), shuffle, seed),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        collate_fn=partial(collate, target_names=list(targets), dtype=dtype),
        drop_last=False,
    )


@dataclass
class PreparedData:
    """The records and graphs of each split: lists of :class:`Crystal` and of graphs (in memory),
    or :class:`StoreRecords` and :class:`StoreDataset` over ``store`` (read when used)."""

    splits: dict[str, Sequence]
    graphs: dict[str, Sequence[CrystalGraph]]
    normaliser: TargetNormaliser
    target: str
    num_bad_records: int
    store: object | None = field(default=None, repr=False)
    tensor_rank: int | None = None  # the Cartesian rank of a tensor target, None for a scalar one

    def target_values(self, split: str) -> np.ndarray:
        """The target of every record of ``split`` (float64), from the column when there is a
        store; for a tensor target the full Cartesian tensors (n, 3, ..., 3)."""
        records = self.splits[split]
        if isinstance(records, StoreRecords):
            return records.target_values()
        if self.tensor_rank is not None:
            return np.stack([full_tensor_target(c, self.target) for c in records])
        return np.array([c.target(self.target) for c in records], dtype=np.float64)


def split_crystals(crystals: list[Crystal], cfg: DataConfig) -> dict[str, list[Crystal]]:
    from crystalframes.data.splits import has_split_field, make_split

    if cfg.split == "field" and crystals and not any(has_split_field(c) for c in crystals):
        # one's own data (an id_prop.csv folder, structure files) has no split labels: the
        # random split is the only one that can work. Said at WARNING level because the CLI
        # shows no INFO lines, and a user must know which records were held out.
        # Set on the run's own config (not a copy): its model card and saved config then name
        # the split the run used, and training again from that config draws the same one.
        cfg.split = "random"
        log.warning("%s: the records have no split field (train/val/test); split at random instead: val %g, test %g, "
                 "seed %d (data.split_seed)", cfg.source, cfg.val_ratio, cfg.test_ratio, cfg.split_seed)
    if cfg.split == "random":
        kw = {"seed": cfg.split_seed, "val_ratio": cfg.val_ratio, "test_ratio": cfg.test_ratio}
        if cfg.train_ratio is not None:
            kw["train_ratio"] = cfg.train_ratio
        splits = make_split(crystals, "random", target=cfg.target, **kw)
    elif cfg.split == "ids":
        if not cfg.split_key:
            raise InputError("data.split_key", "split=ids needs data.split_key (e.g. dft_3d_formation_energy_peratom)")
        splits = make_split(crystals, "ids", target=cfg.target, key=cfg.split_key, path=cfg.split_file)
    else:
        splits = make_split(crystals, "field", target=cfg.target)
    if not splits["test"] and cfg.test_from_train > 0:
        # e.g. mp_2018_demo ships train/val only (its benchmark test records are kept aside)
        train = list(splits["train"])
        random.Random(cfg.split_seed).shuffle(train)
        n_test = int(round(cfg.test_from_train * len(train)))
        splits["test"], splits["train"] = train[:n_test], train[n_test:]
        log.info("no test records in %s: held out %d training records as test (seed %d)", cfg.source, n_test, cfg.split_seed)
    if cfg.max_train is not None:
        splits["train"] = splits["train"][: cfg.max_train]
    for name in ("train", "val"):
        if not splits[name]:
            raise InputError(cfg.source, f"the {name} split is empty for target '{cfg.target}' (split={cfg.split})")
    return splits


def heldout_part(crystals: list[Crystal], source: str, target: str) -> list[Crystal]:
    """The test part a default training of ``target`` on ``source`` uses: the records' own test
    split, or, for data with train/val only (``mp_2018_demo``), the train records it holds out
    (``data.test_from_train`` with ``data.split_seed``). ``crystalframes eval --split heldout``,
    the zoo's cards and the calibration figures all mean this part. ``crystals`` may be the
    light records of a graph store (:func:`store_records`): the part is then a list of them."""
    from crystalframes.train.config import DataConfig

    return split_crystals(crystals, DataConfig(source=source, target=target))["test"]


# Larger than any physical property the datasets hold (eV/atom, eV, GPa, K, ...) by orders of
# magnitude, and small enough that standardising (squares of deviations) cannot overflow.
MAX_TARGET_MAGNITUDE = 1e6


def unusable_target_error(crystal: Crystal, target: str) -> InputError | None:
    """An :class:`InputError` naming the record if its target (any entry of a tensor target) is
    infinite or of non-physical size."""
    value = crystal.targets.get(target)
    if isinstance(value, np.ndarray):
        worst = float(np.abs(value).max()) if np.isfinite(value).all() else float("inf")
        if worst > MAX_TARGET_MAGNITUDE:
            return InputError(crystal.where, f"tensor target '{target}' has an entry of magnitude {worst:g}, not a physical "
                                             f"value (> {MAX_TARGET_MAGNITUDE:g})")
        return None
    value = crystal.target(target)
    if not np.isfinite(value) or abs(value) > MAX_TARGET_MAGNITUDE:
        return InputError(
            crystal.where, f"target '{target}' = {value:g} is not a physical value (|value| > {MAX_TARGET_MAGNITUDE:g})"
        )
    return None


def is_tensor_target(target: str) -> bool:
    """Whether ``target`` is a tensor target of the registry's tensor sets (e_electronic,
    elastic_tensor, ...): known by name, before any record is read."""
    from crystalframes.io.tensor_tables import TENSOR_SETS

    return any(target in spec.tensors for files in TENSOR_SETS.values() for spec in files)


def full_tensor_target(crystal: Crystal, target: str) -> np.ndarray:
    """The full Cartesian tensor (3, ..., 3) of a record's tensor target (stored in Voigt form)."""
    from crystalframes.io.tensors import voigt_to_full

    return voigt_to_full(crystal.tensor_target(target))


def tensor_target_rank(crystals: Sequence[Crystal], target: str) -> int | None:
    """The Cartesian rank of ``target`` in these records (from the first record's Voigt shape),
    or None when it is a scalar target; records of one target with two shapes are an error."""
    from crystalframes.io.tensors import tensor_rank

    shapes = {c.targets[target].shape for c in crystals if isinstance(c.targets.get(target), np.ndarray)}
    if not shapes:
        return None
    if len(shapes) > 1:
        raise InputError(target, f"the records hold tensor target '{target}' with several shapes: {sorted(shapes)}")
    return tensor_rank(shapes.pop())


def tensor_scale(tensors: np.ndarray) -> TargetNormaliser:
    """The standardisation of a tensor target: one scale, the RMS of the training tensors'
    entries, and no shift. A shift (a mean tensor) would be a fixed, frame-independent tensor
    added to every prediction and break the read-out's equivariance; a scalar scale keeps it."""
    rms = float(np.sqrt(np.mean(np.square(tensors)))) if np.size(tensors) else 0.0
    return TargetNormaliser(0.0, rms if rms > 0 else 1.0)


def store_refuses_tensor(target: str, where: str) -> None:
    """A graph store holds one float per target and structure: tensor targets train in memory."""
    if is_tensor_target(target):
        raise InputError(where, f"target '{target}' is a tensor: a graph store (data.store) holds scalar targets only; "
                                f"train tensor targets without data.store (in memory)")


def usable_records(crystals: list[Crystal], target: str, model) -> tuple[list[Crystal], list[InputError]]:
    """``(usable, errors)``: records with elements ``model`` cannot encode or a non-physical
    target value are errors (reported, skipped), so they never reach a batch."""
    from crystalframes.models.elements import split_supported

    good, errors = split_supported(model, crystals) if model is not None else (list(crystals), [])
    usable = []
    for crystal in good:
        error = unusable_target_error(crystal, target)
        (usable if error is None else errors).append(crystal if error is None else error)
    return usable, errors


def _report_skipped(errors: list[InputError], source: str) -> None:
    if not errors:
        return
    shown = "\n".join(f"  {e}" for e in errors[:10])
    more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
    log.warning("%s: skipped %d records the model cannot train on:\n%s%s", source, len(errors), shown, more)


def _build_split_graphs(splits: dict[str, list[Crystal]], graph_settings: GraphSettings, use_cache: bool) -> dict:
    # build_graphs treats the cache as best effort (an unwritable folder costs one warning)
    return {name: build_graphs(items, graph_settings, use_cache=use_cache) for name, items in splits.items()}


def prepare_data(cfg: DataConfig, graph_settings: GraphSettings, model=None) -> PreparedData:
    """Read the source, skip (and report) bad records -- unreadable ones, elements ``model``
    cannot encode, non-physical targets --, split, fit the normaliser on train only, and build
    (cached) graphs for each split. With ``cfg.store`` (or a source of more than
    ``cfg.store_above`` records, see :func:`auto_store`) the same from a graph store, without
    reading it whole."""
    from crystalframes.data.sources import load_dataset

    if cfg.store:
        store_refuses_tensor(cfg.target, cfg.store)
        return prepare_store_data(cfg, open_store(cfg.store, graph_settings), model)
    store = None if is_tensor_target(cfg.target) else auto_store(cfg, graph_settings)
    if store is not None:
        return prepare_store_data(cfg, store, model)
    result = load_dataset(cfg.source, target=cfg.target)
    crystals, skipped = usable_records(result.crystals, cfg.target, model)
    _report_skipped(skipped, cfg.source)
    if not crystals:
        raise InputError(cfg.source, f"no usable records with target '{cfg.target}'")
    splits = split_crystals(crystals, cfg)
    rank = tensor_target_rank(crystals, cfg.target)
    graphs = _build_split_graphs(splits, graph_settings, cfg.graph_cache)
    if rank is None:
        values = np.array([c.target(cfg.target) for c in splits["train"]])
        normaliser = TargetNormaliser().fit(values[:, None], names=[cfg.target])
    else:
        normaliser = tensor_scale(np.stack([full_tensor_target(c, cfg.target) for c in splits["train"]]))
        # graphs hold scalar targets (the graph cache, the store); the full Cartesian tensor is
        # added to the in-memory graphs here, after the cache is read or written
        for name, part in splits.items():
            for crystal, graph in zip(part, graphs[name]):
                graph.targets[cfg.target] = full_tensor_target(crystal, cfg.target)
    return PreparedData(splits, graphs, normaliser, cfg.target, len(result.errors) + len(skipped), tensor_rank=rank)


def open_store(path, graph_settings: GraphSettings):
    """The graph store at ``path``, refused when its graphs were built with other settings than
    the model's (another k, lattice edges): training would silently see other neighbourhoods."""
    from crystalframes.data.store import GraphStore

    store = GraphStore.open(Path(path).expanduser())
    if store.settings != graph_settings:
        flags = "--crystalformer" if graph_settings.k is None else f"--k {graph_settings.k}"
        flags += " --lattice-edges" if graph_settings.lattice_edges else ""
        raise InputError(str(path), f"the store's graphs were built with {store.settings.as_dict()}, the model needs "
                                    f"{graph_settings.as_dict()}: build a store for it with `crystalframes data build SOURCE -o STORE {flags}`")
    return store


def store_records(store, target: str) -> list[StoreRecord]:
    """A light record (id, target, own split label, elements on demand) of every structure of
    ``store`` that has a value of ``target``, in store order: what :func:`split_crystals`,
    :func:`heldout_part` and :func:`usable_records` take in place of crystals."""
    if target not in store.target_names():
        raise InputError(str(store.path), f"the store holds no target '{target}'; it holds: {', '.join(store.target_names()) or 'none'}")
    values = np.asarray(store.targets(target), dtype=np.float64)
    ids, labels = store.ids(), store.record_splits()
    # records without the value are left out, as load_dataset(target=...) leaves them out: not bad records
    return [StoreRecord(store, i, ids[i], labels[i], target, values[i]) for i in np.flatnonzero(~np.isnan(values))]


def usable_store_records(store, target: str, model) -> tuple[list[StoreRecord], list[InputError]]:
    """:func:`usable_records` of :func:`store_records`, at column speed: the target checks on the
    whole column at once, the element check one table lookup per structure (a million records in
    seconds, not minutes); the same records, and the same errors in the same order."""
    records = store_records(store, target)
    values = np.array([r.value for r in records], dtype=np.float64)
    if model is not None:
        from crystalframes.models.elements import supported_atomic_numbers, unsupported_elements_error

        supported = supported_atomic_numbers(model)
        encodable = np.zeros(max(256, max(supported) + 1), dtype=bool)  # the store keeps Z in one byte
        encodable[list(supported)] = True
        fits = np.array([encodable[store.elements(r.index)].all() for r in records], dtype=bool)
    else:
        fits = np.ones(len(records), dtype=bool)
    physical = np.isfinite(values) & (np.abs(values) <= MAX_TARGET_MAGNITUDE)
    errors = [unsupported_elements_error(model, records[i]) for i in np.flatnonzero(~fits)]
    errors += [unusable_target_error(records[i], target) for i in np.flatnonzero(fits & ~physical)]
    return [records[i] for i in np.flatnonzero(fits & physical)], errors


def prepare_store_data(cfg: DataConfig, store, model=None) -> PreparedData:
    """:func:`prepare_data` over a graph store: the same checks, split and normaliser from its
    columns (ids, targets, record splits) and each structure's elements, no graph read."""
    where = str(store.path)
    usable, skipped = usable_store_records(store, cfg.target, model)
    _report_skipped(skipped, where)
    if not usable:
        raise InputError(where, f"no usable records with target '{cfg.target}'")
    splits = split_crystals(usable, cfg)
    # what the run keeps is index arrays; the one object per record goes with this call
    values = np.asarray(store.targets(cfg.target), dtype=np.float64)
    parts = {name: StoreRecords(store, [r.index for r in part], cfg.target, values) for name, part in splits.items()}
    normaliser = TargetNormaliser().fit(parts["train"].target_values()[:, None], names=[cfg.target])
    graphs = {name: StoreDataset(store, part.indices) for name, part in parts.items()}
    return PreparedData(parts, graphs, normaliser, cfg.target, len(store.errors()) + len(skipped), store)


def auto_store_path(source: str, graph_settings: GraphSettings) -> Path | None:
    """Where the store built automatically for ``source`` lives: next to the graph cache, named by
    the source file's path, size and modification time, the graph settings and the package
    version (as the graph cache's key); None for a source that is not a file or folder here."""
    from crystalframes.data.paths import cache_root
    from crystalframes.data.sources import resolve_source
    from crystalframes.version import __version__

    try:
        path = resolve_source(source).resolve()
        stat = path.stat()
    except (InputError, OSError):
        return None
    key = json.dumps({"source": str(path), "size": stat.st_size, "mtime": stat.st_mtime_ns,
                      "settings": graph_settings.as_dict(), "version": __version__}, sort_keys=True)
    return cache_root() / "stores" / f"{path.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


# Fewer bytes than any record of a crystal takes in a file, even gzipped (the MP demo: 170 per
# record gzipped, 730 plain): a file smaller than this per record cannot hold more records, and
# is not read twice (once to count, once to train in memory).
MIN_RECORD_BYTES = 32


def _more_records_than(source: str, limit: int) -> bool:
    """True when ``source`` holds more than ``limit`` readable records; reads records one by one
    and stops at ``limit + 1``, so a big source is never held in memory to be counted."""
    from crystalframes.data.datasets import DATASETS
    from crystalframes.data.sources import resolve_source
    from crystalframes.io.datasets import iter_records

    path = resolve_source(source)
    if path.is_file() and path.stat().st_size <= limit * MIN_RECORD_BYTES:
        return False
    member = DATASETS[str(source)].member if str(source) in DATASETS else None
    count = 0
    for record in iter_records(path, member=member):
        count += isinstance(record, Crystal)
        if count > limit:
            return True
    return False


def auto_store(cfg: DataConfig, graph_settings: GraphSettings):
    """The graph store to train from when ``data.store`` is not set: for a source of more than
    ``data.store_above`` records, one built once next to the graph cache (``data build``'s store,
    reused by later runs), else None (the in-memory path, faster for small data). Off with
    ``data.graph_cache: false``. Ranks started together (torchrun, srun) build it once: the others
    wait on a lock and open it."""
    if not cfg.graph_cache:
        return None
    out = auto_store_path(cfg.source, graph_settings)
    if out is None:
        return None
    store = _open_if_complete(out, graph_settings)
    if store is None:
        try:
            big = _more_records_than(cfg.source, cfg.store_above)
        except InputError:
            return None  # the in-memory path reports an unreadable source as it always has
        if not big:
            return None
        store = _build_auto_store(cfg.source, out, graph_settings)
    # WARNING: the CLI shows no INFO lines, and a user must know where the graphs come from
    log.warning("%s holds more than %d records (data.store_above): training from the graph store %s, chosen "
                "automatically (built once, reused by later runs; set data.store to choose one)", cfg.source, cfg.store_above, out)
    return store


def _open_if_complete(path: Path, graph_settings: GraphSettings):
    from crystalframes.data.store import GraphStore

    if not path.exists():
        return None
    try:
        store = GraphStore.open(path)
    except Exception:  # absent, unfinished or damaged: (re)built by build_store, which resumes
        return None
    return store if store.settings == graph_settings else None


def _build_auto_store(source: str, out: Path, graph_settings: GraphSettings):
    from crystalframes.data.store import build_store
    from crystalframes.locks import file_lock

    out.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(out.parent / f"{out.name}.lock"):
        store = _open_if_complete(out, graph_settings)  # another rank built it while we waited
        if store is None:
            log.warning("%s: building a graph store at %s (once; later runs reuse it)", source, out)
            store = build_store(source, out, graph_settings, workers=os.cpu_count() or 1, progress=sys.stderr.isatty())
    return store
