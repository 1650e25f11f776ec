"""From a dataset source to batched graphs for training: read, split, normalise, graph."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

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


def loader(graphs, targets, batch_size, dtype, shuffle, seed=0, num_workers=0) -> DataLoader:
    """A DataLoader yielding :class:`GraphBatch` objects; the shuffle order depends only on
    ``seed`` and the epoch (reproducible; Lightning swaps in a DistributedSampler under DDP)."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        GraphDataset(graphs),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=gen if shuffle else None,
        num_workers=num_workers,
        collate_fn=lambda items: collate(items, target_names=targets, dtype=dtype),
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
    from crystalframes.data.splits import make_split

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


def prepare_data(cfg: DataConfig, graph_settings: GraphSettings) -> PreparedData:
    """Read the source (bad records reported and skipped), split, fit the normaliser on train
    only, and build (cached) graphs for each split."""
    from crystalframes.data.datasets import load_dataset

    result = load_dataset(cfg.source, target=cfg.target)
    if not result.crystals:
        raise InputError(cfg.source, f"no usable records with target '{cfg.target}'")
    splits = split_crystals(result.crystals, cfg)
    values = np.array([c.target(cfg.target) for c in splits["train"]])
    normaliser = TargetNormaliser().fit(values[:, None], names=[cfg.target])
    graphs = {name: build_graphs(items, graph_settings, use_cache=cfg.graph_cache) for name, items in splits.items()}
    return PreparedData(splits, graphs, normaliser, cfg.target, len(result.errors))
