"""Datasets (registry, downloads), train/val/test splits and target standardisation."""

from crystalframes.data.datasets import (
    DATASETS,
    DatasetInfo,
    benchmark_split_key,
    get_dataset_info,
    list_datasets,
    target_is_nonnegative,
    target_units,
)
from crystalframes.data.download import cached_dataset, fetch_dataset, validate_archive
from crystalframes.data.paths import cache_dir
from crystalframes.data.sources import load_dataset, resolve_source
from crystalframes.data.normalise import TargetNormaliser
from crystalframes.data.splits import (
    MEGNET_SPLIT_SIZES,
    drop_missing_target,
    load_benchmark_split,
    make_split,
    random_split,
    split_by_field,
    split_by_ids,
)

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "MEGNET_SPLIT_SIZES",
    "TargetNormaliser",
    "benchmark_split_key",
    "cache_dir",
    "cached_dataset",
    "drop_missing_target",
    "fetch_dataset",
    "get_dataset_info",
    "list_datasets",
    "load_benchmark_split",
    "load_dataset",
    "make_split",
    "random_split",
    "resolve_source",
    "split_by_field",
    "split_by_ids",
    "target_is_nonnegative",
    "target_units",
    "validate_archive",
]
