"""From a dataset source to batched graphs for training: read, split, normalise, graph."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from functools import partial

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
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(self.n))
        rank, world = self._rank_world()
        per_rank = -(-self.n // world)
        order = (order * (1 + (per_rank * world) // max(self.n, 1)))[: per_rank * world]
        mine = order[rank::world]
        skip, self.skip = self.skip, 0
        return iter(mine[skip:])


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


def loader(graphs, targets, batch_size, dtype, shuffle, seed=0, num_workers=0) -> DataLoader:
    """A DataLoader of :class:`GraphBatch` objects over a :class:`ResumableSampler`."""
    return DataLoader(
        GraphDataset(graphs),
        batch_size=batch_size,
        sampler=ResumableSampler(len(graphs), shuffle, seed),
        num_workers=num_workers,
        collate_fn=partial(collate, target_names=list(targets), dtype=dtype),
        drop_last=False,
    )


@dataclass
class PreparedData:
    splits: dict[str, list[Crystal]]
    graphs: dict[str, list[CrystalGraph]]
    normaliser: TargetNormaliser
    target: str
    num_bad_records: int


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
    the zoo's cards and the calibration figures all mean this part."""
    from crystalframes.train.config import DataConfig

    return split_crystals(crystals, DataConfig(source=source, target=target))["test"]


# Larger than any physical property the datasets hold (eV/atom, eV, GPa, K, ...) by orders of
# magnitude, and small enough that standardising (squares of deviations) cannot overflow.
MAX_TARGET_MAGNITUDE = 1e6


def unusable_target_error(crystal: Crystal, target: str) -> InputError | None:
    """An :class:`InputError` naming the record if its target is infinite or of non-physical size."""
    value = crystal.target(target)
    if not np.isfinite(value) or abs(value) > MAX_TARGET_MAGNITUDE:
        return InputError(
            crystal.where, f"target '{target}' = {value:g} is not a physical value (|value| > {MAX_TARGET_MAGNITUDE:g})"
        )
    return None


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
    (cached) graphs for each split."""
    from crystalframes.data.sources import load_dataset

    result = load_dataset(cfg.source, target=cfg.target)
    crystals, skipped = usable_records(result.crystals, cfg.target, model)
    _report_skipped(skipped, cfg.source)
    if not crystals:
        raise InputError(cfg.source, f"no usable records with target '{cfg.target}'")
    splits = split_crystals(crystals, cfg)
    values = np.array([c.target(cfg.target) for c in splits["train"]])
    normaliser = TargetNormaliser().fit(values[:, None], names=[cfg.target])
    graphs = _build_split_graphs(splits, graph_settings, cfg.graph_cache)
    return PreparedData(splits, graphs, normaliser, cfg.target, len(result.errors) + len(skipped))
