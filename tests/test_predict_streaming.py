"""`crystalframes predict` streams (issue 26): batches planned as the records go by (the same
batches as planning over all inputs), each structure's graph built once for every ensemble
member and the embeddings, the numbers those of the in-memory API on the same batches, the
same bytes with graph-building workers, and an interrupted run continued to the same bytes."""

from __future__ import annotations

import gzip
import json
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch

TARGET = "mp2018_gap_pbe"  # cannot be negative: the clipped and raw columns are exercised
N = 14


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two small freshly initialised eComFormers (seeds 0 and 1): an ensemble."""
    from crystalframes.api import save_model_file
    from crystalframes.data.normalise import TargetNormaliser
    from crystalframes.models import build_model

    folder = tmp_path_factory.mktemp("models")
    options = {"hidden": 16, "scalars": 8, "vectors": 2, "rbf_bins": 16}
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model("ecomformer:none@cpu_small", **options)
        paths.append(save_model_file(folder / f"m{seed}.pt", model, model.spec, options, TargetNormaliser(0.0, 1.0), [TARGET], ["eV"]))
    return paths


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """N demo crystals with, among them, a line that is not JSON, a singular lattice (its graph
    cannot be built) and an element the model cannot encode."""
    lines = gzip.open(files("crystalframes.data") / "embedded" / "mp_2018_demo.jsonl.gz", "rt").read().splitlines()[:N]
    singular = json.loads(lines[0]) | {"id": "singular", "lattice": [[0, 0, 0], [0, 1, 0], [0, 0, 1]]}
    heavy = json.loads(lines[1])
    heavy["id"], heavy["species"] = "heavy", ["Og"] + heavy["species"][1:]
    lines[3:3] = ["{not json"]
    lines[7:7] = [json.dumps(singular)]
    lines[10:10] = [json.dumps(heavy)]
    path = tmp_path_factory.mktemp("inputs") / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def predict(*args) -> int:
    from crystalframes.cli import main

    try:
        main(["predict", *map(str, args)])
    except SystemExit as stop:
        return int(stop.code or 0)
    return 0


# ---------------------------------------------------------------- planning


def _reference_plan(atoms, batch_size, batch_atoms):
    """Chunks of the periodic attention's weight rule over all atoms, cut by batch_size."""
    from crystalframes.nn.periodic_entries import _chunks_by_weight

    out = []
    for start, stop in _chunks_by_weight(np.cumsum(atoms), batch_atoms) if len(atoms) else []:
        out.extend((s, min(s + batch_size, stop)) for s in range(start, stop, batch_size))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_streamed_plan_is_the_plan_over_all_inputs(seed):
    from crystalframes.io import InputError
    from crystalframes.predict_run import plan_batches, plan_stream

    rng = np.random.default_rng(seed)
    atoms = rng.integers(1, 60, size=int(rng.integers(0, 300))).tolist()
    batch_size, batch_atoms = int(rng.integers(1, 20)), int(rng.integers(10, 200))
    expected = _reference_plan(atoms, batch_size, batch_atoms)
    assert plan_batches(atoms, batch_size, batch_atoms) == expected

    class Rec:  # what the planner reads of a crystal
        def __init__(self, i, n):
            self.i, self.num_atoms = i, n

    records = []
    for i, n in enumerate(atoms):
        if rng.random() < 0.1:
            records.append(InputError(f"bad{i}", "unreadable"))
        records.append(Rec(i, n))
    planned = list(plan_stream(iter(records), batch_size, batch_atoms))
    got = [(p.crystals[0].i, p.crystals[-1].i + 1) for p in planned if p.crystals]
    assert got == expected
    assert [p.number for p in planned] == list(range(len(planned)))
    # every read error is kept, in order, with the batch that follows it
    assert [s for p in planned for s, _ in p.read_errors] == [r.source for r in records if isinstance(r, InputError)]


def test_the_planner_reads_no_further_than_its_batch():
    from crystalframes.predict_run import plan_stream

    read = []

    class Rec:
        num_atoms = 5

    def records():
        for i in range(10_000):
            read.append(i)
            yield Rec()

    batches = plan_stream(records(), 4, 1000)
    first = next(batches)
    assert len(first.crystals) == 4 and len(read) == 5  # the fifth tells the first batch is complete


# ---------------------------------------------------------------- graphs once, numbers as the API's


def test_graphs_are_built_once_per_structure_for_an_ensemble_and_its_embeddings(models, inputs, tmp_path, monkeypatch):
    from crystalframes.data import graph

    built = []
    original = graph.build_graph

    def counting(crystal, settings=graph.GraphSettings()):
        built.append(crystal.id)
        return original(crystal, settings)

    monkeypatch.setattr(graph, "build_graph", counting)
    code = predict(models[0], inputs, "--ensemble", models[1], "-o", tmp_path / "out.csv", "--embeddings", tmp_path / "e.npz",
                   "--atom-embeddings", "--batch-size", "4", "--workers", "0")
    assert code == 0
    # every structure that reads (the singular lattice does not) and that the model can encode, once
    readable = [json.loads(x)["id"] for x in inputs.read_text().splitlines() if x.startswith('{"')]
    assert sorted(built) == sorted(i for i in readable if i not in ("heavy", "singular")), built
    assert len(built) == len(set(built))


def test_numbers_are_the_apis_on_the_same_batches(models, inputs, tmp_path):
    """The CSV and the embeddings equal what the in-memory API (which builds its own graphs, per
    member) gives on the planned batches."""
    import csv

    from crystalframes.api import load_ensemble
    from crystalframes.data.sources import iter_input_structures
    from crystalframes.io import Crystal
    from crystalframes.predict_run import plan_batches

    out, emb = tmp_path / "out.csv", tmp_path / "e.npz"
    assert predict(models[0], inputs, "--ensemble", models[1], "-o", out, "--embeddings", emb, "--atom-embeddings",
                   "--batch-size", "4", "--workers", "0") == 0
    rows = list(csv.DictReader(open(out, newline="")))
    crystals = [c for c in iter_input_structures(str(inputs)) if isinstance(c, Crystal)]
    ensemble = load_ensemble(models)
    expected, pooled, atoms, ids = {}, [], [], []
    for start, stop in plan_batches([c.num_atoms for c in crystals], 4, 4096):
        kept, mean, std, _ = ensemble.predict_each_with_std(crystals[start:stop], stop - start)
        for c, m, s in zip(kept, mean, std):
            expected[c.id] = (f"{max(m[0], 0.0):.6g}", f"{s[0]:.6g}", f"{m[0]:.6g}")
        k, p, a, _ = ensemble.embed_each(kept, len(kept), per_atom=True)
        ids += [c.id for c in k]
        pooled.append(p)
        atoms += a
    got = {r["id"]: (r[f"{TARGET} (eV)"], r[f"{TARGET} std (eV)"], r[f"{TARGET} raw (eV)"]) for r in rows if r["id"]}
    assert got == expected
    assert {r["source"].split(":")[-1].split()[0] for r in rows if r["error"]} == {"4", "8", "11"}  # the three bad lines
    saved = np.load(emb)
    assert saved["ids"].tolist() == ids
    assert np.array_equal(saved["embeddings"], np.concatenate(pooled).astype(np.float32))
    assert np.array_equal(saved["atom_features"], np.concatenate(atoms).astype(np.float32))


def test_workers_give_the_same_bytes(models, inputs, tmp_path):
    outs = {}
    for workers in (0, 2):
        out, emb = tmp_path / f"w{workers}.csv", tmp_path / f"w{workers}.npz"
        assert predict(models[0], inputs, "--ensemble", models[1], "-o", out, "--embeddings", emb,
                       "--batch-size", "3", "--workers", workers) == 0
        outs[workers] = out.read_bytes(), emb.read_bytes()
    assert outs[0] == outs[2]


def test_an_interrupted_run_continues_to_the_same_bytes(models, inputs, tmp_path, monkeypatch):
    from crystalframes import predict_run

    whole = tmp_path / "whole.csv"
    assert predict(models[0], inputs, "--ensemble", models[1], "-o", whole, "--embeddings", tmp_path / "whole.npz",
                   "--batch-size", "3", "--workers", "0") == 0

    out = tmp_path / "out.csv"
    add = predict_run.Partial.add

    def add_then_stop(self, batch):
        add(self, batch)
        if self.count == 2:
            raise predict_run.Interrupted("SIGINT", 130)

    monkeypatch.setattr(predict_run.Partial, "add", add_then_stop)
    args = [models[0], inputs, "--ensemble", models[1], "-o", out, "--embeddings", tmp_path / "out.npz", "--batch-size", "3"]
    assert predict(*args, "--workers", "0") == 130
    assert not out.exists() and len((tmp_path / "out.csv.partial").read_text().splitlines()) == 3  # header + 2 batches
    monkeypatch.setattr(predict_run.Partial, "add", add)
    assert predict(*args, "--workers", "2") == 0  # the workers do not change the batches
    assert out.read_bytes() == whole.read_bytes()
    assert (tmp_path / "out.npz").read_bytes() == (tmp_path / "whole.npz").read_bytes()
    assert not (tmp_path / "out.csv.partial").exists()


def test_a_signal_whose_exception_a_finalizer_swallowed_still_stops_the_run():
    """A SIGTERM that arrives while Python runs a finalizer raises inside it, where Python only
    prints "Exception ignored" (vesin's NeighborList.__del__ did this in CI, and predict finished
    with exit code 0): the batch-boundary check raises it again."""
    import os
    import signal

    from crystalframes.predict_run import Interrupted, stop_on_signals

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, inside the finalizer

    with stop_on_signals() as check:
        check()  # nothing received yet
        obj = Finalized()
        del obj  # Interrupted raised in __del__ and ignored by Python
        with pytest.raises(Interrupted) as stop:
            check()
    assert (stop.value.name, stop.value.code) == ("SIGTERM", 143)


def test_a_signal_while_a_record_is_read_stops_the_run_instead_of_becoming_its_error(tmp_path):
    """The readers turn any exception of a record into that record's error (one bad structure
    never costs the others); the signal's exception must pass through them (CI: a SIGINT landing
    while record 25 was parsed became its row "unexpected error: Interrupted: SIGINT", and the
    continued run kept that row)."""
    from crystalframes.io.datasets import iter_records
    from crystalframes.predict_run import Interrupted

    lines = gzip.open(files("crystalframes.data") / "embedded" / "mp_2018_demo.jsonl.gz", "rt").read().splitlines()[:3]
    path = tmp_path / "three.jsonl"
    path.write_text("\n".join(lines) + "\n")
    import crystalframes.io.datasets as datasets

    real = datasets._crystal_from_any_record
    calls = []

    def interrupted_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Interrupted("SIGINT", 130)
        return real(*args, **kwargs)

    datasets._crystal_from_any_record = interrupted_on_the_second
    try:
        with pytest.raises(Interrupted):
            list(iter_records(path))
    finally:
        datasets._crystal_from_any_record = real
    assert len(calls) == 2
