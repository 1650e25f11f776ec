"""Stochastic weight averaging as the reference does it: every step of the last epochs, at the
schedule's own learning rate, over trainable weights only; the run reports the averaged model."""

from __future__ import annotations

import json
import types

import torch

from crystalframes.train.swa import WeightAverage


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))
        self.stats = torch.nn.Parameter(torch.zeros(2), requires_grad=False)  # like rho_stats


def test_the_average_is_over_steps_of_trainable_weights_from_the_start_epoch():
    model = Tiny()
    module = types.SimpleNamespace(model=model, device=torch.device("cpu"))
    swa = WeightAverage(start_epoch=1)
    trainer = types.SimpleNamespace(current_epoch=0, train_dataloader=None)
    seen = []
    for epoch, values in [(0, [100.0, 200.0]), (1, [1.0, 2.0, 6.0]), (2, [3.0])]:
        trainer.current_epoch = epoch
        for v in values:
            with torch.no_grad():
                model.w.fill_(v)
                model.stats.fill_(v)
            swa.on_train_batch_end(trainer, module, None, None, 0)
            if epoch >= 1:
                seen.append(v)
    swa.on_train_end(trainer, module)
    assert torch.allclose(model.w, torch.full((3,), sum(seen) / len(seen)))  # (1 + 2 + 6 + 3) / 4
    assert torch.equal(model.stats, torch.full((2,), 3.0))  # frozen: last value, not averaged
    restored = WeightAverage(0)
    restored.load_state_dict(swa.state_dict())
    assert restored.count == 4 and torch.equal(restored.average["w"], swa.average["w"])


def test_a_run_with_swa_keeps_its_learning_rate_and_reports_the_averaged_model(demo_subset, tmp_path):
    """The learning rate of a constant schedule stays at lr through the SWA epochs (Lightning's
    callback would have switched to its own SWA schedule), and model.pt holds the average."""
    from crystalframes.train.config import load_config
    from crystalframes.train.run import train

    data = demo_subset(60, 20)
    cfg = load_config(None, [f"data.source={data}", "model.spec=crystalformer:none@cpu_small", "trainer.epochs=3",
                             "trainer.batch_size=20", "trainer.threads=1", "optim.swa_epochs=2", "optim.scheduler=constant",
                             "optim.lr=0.001"])
    result = train(cfg, tmp_path / "run")
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["epochs_completed"] == 3 and result.metrics["val"]["mae"] > 0
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    lrs = [g["lr"] for g in ckpt["optimizer_states"][0]["param_groups"]]
    assert lrs == [0.001] * len(lrs)
    state = [v for k, v in ckpt["callbacks"].items() if k.startswith("WeightAverage")][0]
    assert state["count"] == 2 * 3  # two epochs of three steps (48 training records, batch 20)
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["state_dict"]
    for name, avg in state["average"].items():
        assert torch.allclose(saved[name], avg.to(saved[name].dtype), atol=1e-6), name
