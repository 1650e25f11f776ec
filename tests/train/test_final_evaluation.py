"""The evaluation at the end of a training runs on the graphs the training built (no structure's
graph is built twice: 16-19 ms each for Crystalformer, an hour for 200k structures), and gives the
figures a predict of the saved model.pt gives."""

import json

import numpy as np
import pytest

from tiny import tiny_config


def test_final_evaluation_builds_no_graph_again_and_matches_model_pt(tiny_data, tmp_path, monkeypatch):
    import crystalframes
    import crystalframes.data.cache as cache
    import crystalframes.data.graph as graph
    from crystalframes.data.sources import load_dataset
    from crystalframes.data.splits import make_split
    from crystalframes.train.run import train

    built = []

    def counting(crystal, settings):
        built.append(crystal.id)
        return original(crystal, settings)

    original = graph.build_graph
    monkeypatch.setattr(graph, "build_graph", counting)
    monkeypatch.setattr(cache, "build_graph", counting)
    train(tiny_config(tiny_data, 1, "data.graph_cache=false"), tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    n = metrics["num_train"] + metrics["val"]["n"] + metrics["test"]["n"]
    assert n == 40 and len(built) == n and len(set(built)) == n

    monkeypatch.undo()
    val = make_split(load_dataset(str(tiny_data), target="mp2018_e_form").crystals, "field", target="mp2018_e_form")["val"]
    pred = crystalframes.load_model(tmp_path / "run").predict_crystals(val)[:, 0]
    assert metrics["val"]["mae"] == pytest.approx(float(np.abs(pred - [c.target("mp2018_e_form") for c in val]).mean()), abs=1e-6)
