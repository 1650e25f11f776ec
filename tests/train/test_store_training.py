"""Training from a graph store (issue 26): the same splits, normaliser and result as the in-memory
path, each DDP rank reading its own share of the indices, DataLoader workers opening the store
themselves, and a store chosen automatically above ``data.store_above`` records."""

import json
import logging
import pickle

import numpy as np
import pytest
import torch

from tiny import tiny_config

TARGET = "mp2018_e_form"


@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory):
    """40 demo records (30 train, 10 val by their own split) and four the training must leave
    out as the in-memory path does: a non-physical target, an element eComFormer cannot encode
    (Md, Z = 101), no value of the target (not a bad record) and an infinite target."""
    import gzip
    from importlib.resources import files

    lines = gzip.open(files("crystalframes.data") / "embedded" / "mp_2018_demo.jsonl.gz", "rt").read().splitlines()
    train = [line for line in lines if '"split":"train"' in line and TARGET in line][:34]
    val = [line for line in lines if '"split":"val"' in line and TARGET in line][:10]
    odd = [json.loads(line) for line in train[30:]]
    odd[0]["targets"][TARGET] = 1e9
    odd[1]["species"][0] = "Md"
    del odd[2]["targets"][TARGET]
    odd[3]["targets"][TARGET] = float("inf")
    # the odd records sit among the good ones, so that skipping them shifts the indices
    records = train[:10] + [json.dumps(odd[0]), json.dumps(odd[1])] + train[10:20] + val[:5] + [json.dumps(odd[2])] + train[20:30] + val[5:] + [json.dumps(odd[3])]
    path = tmp_path_factory.mktemp("data") / "mixed.jsonl"
    path.write_text("\n".join(records) + "\n")
    return path


def _model(cfg):
    from crystalframes.train.run import build_configured_model

    return build_configured_model(cfg)


@pytest.fixture(scope="module")
def built(mixed_data, tmp_path_factory):
    """(store, its path): ``mixed_data`` built with the tiny model's graph settings."""
    from crystalframes.data.store import build_store

    out = tmp_path_factory.mktemp("stores") / "mixed"
    store = build_store(str(mixed_data), out, _model(tiny_config(mixed_data)).graph_settings, workers=1, progress=False)
    return store, out


def _ids(records):
    return [r.id for r in records]


def _split_file(path, data):
    """A benchmark id-list file whose lists are not the records' own split (every third id to test)."""
    from crystalframes.data.sources import load_dataset

    ids = [c.id for c in load_dataset(str(data)).crystals]
    table = {"toy_key": {"train": ids[0::3], "val": ids[1::3], "test": ids[2::3]}}
    path.write_text(json.dumps(table))
    return path


@pytest.mark.parametrize("split", ["field", "random", "ids"])
def test_store_splits_equal_in_memory_splits(split, mixed_data, built, tmp_path):
    from crystalframes.train.data import StoreDataset, prepare_data

    sets = {"field": ["data.split=field"], "random": ["data.split=random", "data.split_seed=7"],
            "ids": ["data.split=ids", "data.split_key=toy_key", f"data.split_file={_split_file(tmp_path / 'splits.json', mixed_data)}"]}[split]
    cfg = tiny_config(mixed_data, 1, *sets)
    model = _model(cfg)
    memory = prepare_data(cfg.data, model.graph_settings, model)
    stored = prepare_data(tiny_config(mixed_data, 1, *sets, f"data.store={built[1]}").data, model.graph_settings, model)
    assert isinstance(stored.graphs["train"], StoreDataset)
    for name in ("train", "val", "test"):
        assert _ids(stored.splits[name]) == _ids(memory.splits[name]), name
        assert np.array_equal(stored.target_values(name), memory.target_values(name)), name
        assert [g.id for g in stored.graphs[name]] == _ids(memory.splits[name]), name
    assert len(memory.splits["train"]) > 0 and len(memory.splits["val"]) > 0
    # the normaliser comes from the train targets column, bit for bit the in-memory one
    assert np.array_equal(stored.normaliser.mean, memory.normaliser.mean)
    assert np.array_equal(stored.normaliser.std, memory.normaliser.std)
    # the non-physical target, the infinite one and Md are reported and skipped on both paths
    assert stored.num_bad_records == memory.num_bad_records == 3
    everything = {r.id for name in ("train", "val", "test") for r in stored.splits[name]}
    assert not everything & {c["id"] for c in map(json.loads, mixed_data.read_text().splitlines()[10:12])}


def test_store_graphs_are_the_in_memory_graphs(mixed_data, built):
    from crystalframes.train.data import prepare_data

    cfg = tiny_config(mixed_data, 1)
    model = _model(cfg)
    memory = prepare_data(cfg.data, model.graph_settings, model)
    stored = prepare_data(tiny_config(mixed_data, 1, f"data.store={built[1]}").data, model.graph_settings, model)
    for mine, theirs in zip(stored.graphs["val"], memory.graphs["val"]):
        for name in ("atomic_numbers", "frac_coords", "pos", "lattice", "edge_index", "edge_shift", "edge_vec"):
            assert np.array_equal(getattr(mine, name), getattr(theirs, name)), name
        assert mine.targets[TARGET] == theirs.targets[TARGET]


def test_a_store_built_with_other_graph_settings_is_refused(mixed_data, built):
    from dataclasses import replace

    from crystalframes.io.errors import InputError
    from crystalframes.train.data import prepare_data

    cfg = tiny_config(mixed_data, 1, f"data.store={built[1]}")
    settings = replace(_model(cfg).graph_settings, k=3)
    with pytest.raises(InputError, match="built with"):
        prepare_data(cfg.data, settings, None)


def test_train_on_a_store_equals_train_in_memory(mixed_data, built, tmp_path):
    """float64, 3 steps and a validation: the same weights, metrics and prediction files."""
    from crystalframes.train import folder as run_folder
    from crystalframes.train.run import train

    sets = ["trainer.dtype=float64", "trainer.batch_size=8"]
    memory = train(tiny_config(mixed_data, 1, *sets), tmp_path / "memory")
    stored = train(tiny_config(mixed_data, 1, *sets, f"data.store={built[1]}"), tmp_path / "store")
    a = run_folder.load_checkpoint(tmp_path / "memory" / "checkpoints" / "last.ckpt")
    b = run_folder.load_checkpoint(tmp_path / "store" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] > 0
    assert a["state_dict"].keys() == b["state_dict"].keys()
    differ = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not differ, differ
    for split in ("val", "test"):
        assert stored.metrics[split] == memory.metrics[split]
        assert (tmp_path / "store" / f"predictions_{split}.csv").read_text() == (tmp_path / "memory" / f"predictions_{split}.csv").read_text()
    assert stored.metrics["num_train"] == memory.metrics["num_train"]
    assert stored.metrics["num_bad_records"] == memory.metrics["num_bad_records"]
    assert "data" in (tmp_path / "store" / "model_card.md").read_text()


def _rank_shares(dataset, world, shuffle, monkeypatch):
    """The store indices each rank's sampler gives its DataLoader (patched rank, no processes)."""
    from crystalframes.train.data import ResumableSampler

    shares = []
    for rank in range(world):
        monkeypatch.setattr(ResumableSampler, "_rank_world", staticmethod(lambda rank=rank: (rank, world)))
        sampler = ResumableSampler(len(dataset), shuffle, seed=3)
        sampler.set_epoch(1)
        positions = list(sampler)
        shares.append((dataset.indices[positions].tolist(), sampler.counted()))
    return shares


@pytest.mark.parametrize("shuffle", [True, False])
def test_ranks_read_disjoint_store_indices_covering_the_split(shuffle, mixed_data, built, monkeypatch):
    from crystalframes.train.data import prepare_data

    cfg = tiny_config(mixed_data, 1, f"data.store={built[1]}")
    model = _model(cfg)
    data = prepare_data(cfg.data, model.graph_settings, model)
    for name in ("train", "val"):
        dataset = data.graphs[name]
        shares = _rank_shares(dataset, 2, shuffle, monkeypatch)
        counted = [share[:n] for share, n in shares]  # padding (repeats, never counted) comes last
        assert not set(counted[0]) & set(counted[1])
        assert sorted(counted[0] + counted[1]) == sorted(dataset.indices.tolist())
        assert len(shares[0][0]) == len(shares[1][0])  # every rank runs as many steps
        assert set(shares[0][0] + shares[1][0]) == set(dataset.indices.tolist())


def _read_on_rank(rank, store, indices, init, results):
    import torch.distributed as dist

    from crystalframes.train.data import StoreDataset, loader

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        batches = loader(StoreDataset(store, indices), [TARGET], batch_size=4, dtype=torch.float64, shuffle=True, seed=5)
        read = [graph_id for batch in batches for graph_id in batch.ids]
        (results / f"rank{rank}.json").write_text(json.dumps({"read": read, "counted": batches.sampler.counted()}))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_read_disjoint_shares_of_a_store_split(mixed_data, built, tmp_path):
    """Two real processes (gloo): each gets the store pickled, opens it itself and reads its own
    share of the training split; together, every record once (plus the padding)."""
    import torch.multiprocessing as mp

    from crystalframes.train.data import prepare_data

    cfg = tiny_config(mixed_data, 1, f"data.store={built[1]}")
    model = _model(cfg)
    train = prepare_data(cfg.data, model.graph_settings, model).graphs["train"]
    mp.spawn(_read_on_rank, args=(built[0], train.indices, f"file://{tmp_path / 'rendezvous'}", tmp_path), nprocs=2)
    shares = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    counted = [s["read"][: s["counted"]] for s in shares]
    ids = built[0].ids()
    assert not set(counted[0]) & set(counted[1])
    assert sorted(counted[0] + counted[1]) == sorted(ids[i] for i in train.indices)


def _graph_ids(graphs):  # a spawned worker imports it by name
    return [g.id for g in graphs]


def test_dataloader_workers_open_the_store_themselves(mixed_data, built):
    """Spawned workers (nothing inherited by fork) unpickle the store from its path and manifest."""
    from torch.utils.data import DataLoader

    from crystalframes.train.data import StoreDataset

    store = built[0]
    dataset = StoreDataset(store, np.arange(len(store))[::-1])
    # the pickle is the path, the manifest and the indices, not the graphs
    assert len(pickle.dumps(dataset)) < 4096 + 8 * len(dataset) + len(pickle.dumps(store.manifest))
    direct = [g.id for g in dataset]
    workers = DataLoader(dataset, batch_size=5, num_workers=2, multiprocessing_context="spawn", collate_fn=_graph_ids)
    assert [i for batch in workers for i in batch] == direct


def test_a_big_source_trains_from_a_store_chosen_automatically(mixed_data, monkeypatch, caplog):
    import crystalframes.data.store as store_module
    from crystalframes.train.data import StoreDataset, prepare_data

    cfg = tiny_config(mixed_data, 1)
    model = _model(cfg)
    memory = prepare_data(cfg.data, model.graph_settings, model)
    assert isinstance(memory.graphs["train"], list)  # 48 records: in memory by default
    small = tiny_config(mixed_data, 1, "data.store_above=20").data
    with caplog.at_level(logging.WARNING, logger="crystalframes.train"):
        auto = prepare_data(small, model.graph_settings, model)
    assert isinstance(auto.graphs["train"], StoreDataset)
    assert any("chosen automatically" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    for name in ("train", "val", "test"):
        assert _ids(auto.splits[name]) == _ids(memory.splits[name])
    # a second run reuses the store: nothing is built again
    monkeypatch.setattr(store_module, "build_store", lambda *a, **k: pytest.fail("the store was built again"))
    again = prepare_data(small, model.graph_settings, model)
    assert again.store.path == auto.store.path
    # graph_cache: false writes nothing next to the cache: in memory
    off = tiny_config(mixed_data, 1, "data.store_above=20", "data.graph_cache=false").data
    assert isinstance(prepare_data(off, model.graph_settings, model).graphs["train"], list)


def test_heldout_part_from_store_records(mixed_data, built):
    from crystalframes.data.sources import load_dataset
    from crystalframes.train.data import heldout_part, store_records, usable_records

    model = _model(tiny_config(mixed_data, 1))
    crystals, _ = usable_records(load_dataset(str(mixed_data), target=TARGET).crystals, TARGET, model)
    records, _ = usable_records(store_records(built[0], TARGET), TARGET, model)
    assert _ids(heldout_part(records, str(mixed_data), TARGET)) == _ids(heldout_part(crystals, str(mixed_data), TARGET))


def test_train_command_takes_a_store(mixed_data, built, tmp_path):
    import yaml

    from tiny import cli, set_args, tiny_sets

    proc = cli(tmp_path, "train", "--store", str(built[1]), "-o", str(tmp_path / "run"), *set_args(tiny_sets(mixed_data, 1)))
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["store"] == str(built[1])
    assert "val" in proc.stdout
    # the card names the data trained on: the store (hashed by its manifest), not data.source
    card = (tmp_path / "run" / "model_card.md").read_text()
    assert f"graph store `{built[1]}`" in card and "manifest sha256" in card


def test_column_checks_equal_the_per_record_checks(mixed_data, built):
    """usable_store_records (column and lookup table) skips what usable_records skips, with the same messages."""
    from crystalframes.train.data import store_records, usable_records, usable_store_records

    model = _model(tiny_config(mixed_data, 1))
    fast, fast_errors = usable_store_records(built[0], TARGET, model)
    slow, slow_errors = usable_records(store_records(built[0], TARGET), TARGET, model)
    assert _ids(fast) == _ids(slow)
    assert [str(e) for e in fast_errors] == [str(e) for e in slow_errors]
    assert len(fast_errors) == 2 and "Md" in str(fast_errors[0]) and "1e+09" in str(fast_errors[1])


def test_a_store_is_read_by_workers_unless_told_otherwise(mixed_data, built):
    """trainer.num_workers unset: 2 workers read a store (its reads overlap the step), none
    read graphs in memory; a set value is taken as it is."""
    from crystalframes.train.data import STORE_WORKERS, StoreDataset, loader_workers

    store = built[0]
    dataset = StoreDataset(store, np.arange(len(store)))
    assert loader_workers(None, dataset) == STORE_WORKERS == 2
    assert loader_workers(None, [object()]) == 0
    assert loader_workers(0, dataset) == 0 and loader_workers(3, [object()]) == 3
