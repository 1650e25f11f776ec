"""DDP trains one model: two CPU processes (gloo) end with bit-identical parameters and buffers
(Crystalformer's width statistics included, with `running` and `first_batch` statistics), and the
validation MAE they log is the single-process one of the same model on the same structures.

The run is the real `crystalframes train` command with ``trainer.devices=2``; a small driver
script adds one callback that saves each process's parameters and buffers at the end of training
(Lightning re-runs the driver for rank 1, so both processes have it)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SRC = Path(__file__).resolve().parents[2] / "src"

DRIVER = '''
import os, sys
import lightning
import torch


class SaveState(lightning.pytorch.Callback):
    def on_train_end(self, trainer, pl_module):
        state = {**dict(pl_module.named_parameters()), **dict(pl_module.named_buffers())}
        torch.save({k: v.detach().clone() for k, v in state.items()}, os.path.join(os.environ["STATE_DIR"], f"rank{trainer.global_rank}.pt"))


class Trainer(lightning.Trainer):
    def __init__(self, *args, callbacks=(), **kwargs):
        super().__init__(*args, callbacks=[*callbacks, SaveState()], **kwargs)


lightning.Trainer = Trainer
from crystalframes.cli import main

main(sys.argv[1:])
'''

# 22 train records (2 of 24 held out as test) over 2 ranks x batch 6: 2 steps per epoch; 7 val
# records: rank 0 validates 4, rank 1 validates 3 and one repeat of padding
SPECS = {
    "crystalformer-running": ("crystalformer:none@cpu_small",
                              "{num_layers: 1, hidden: 8, num_heads: 2, ff_dim: 8, distance_bases: 8, head_hidden: 8}"),
    "crystalformer-first_batch": ("crystalformer:none@cpu_small",
                                  "{num_layers: 1, hidden: 8, num_heads: 2, ff_dim: 8, distance_bases: 8, head_hidden: 8, "
                                  "rho_statistics: first_batch}"),
    "ecomformer": ("ecomformer:none@cpu_small", "{hidden: 16, scalars: 8, vectors: 2, rbf_bins: 16}"),
}


@pytest.fixture(scope="module")
def data(demo_subset):
    return demo_subset(24, 7)


@pytest.mark.parametrize("case", list(SPECS))
def test_ddp_ranks_hold_one_model_and_log_the_single_process_val_mae(case, data, tmp_path):
    spec, options = SPECS[case]
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    (tmp_path / "states").mkdir()
    out = tmp_path / "run"
    sets = [f"model.spec={spec}", f"model.options={options}", "trainer.batch_size=6", "trainer.threads=1",
            "trainer.deterministic=true", "optim.scheduler=constant", "optim.lr=0.005", "optim.swa_epochs=0", f"data.source={data}",
            "trainer.epochs=2", "trainer.devices=2", "trainer.accelerator=cpu"]
    env = dict(os.environ, PYTHONPATH=str(SRC), CRYSTALFRAMES_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1",
               STATE_DIR=str(tmp_path / "states"))
    proc = subprocess.run([sys.executable, str(driver), "train", *[a for s in sets for a in ("--set", s)], "--output", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 4 and metrics["val"]["n"] == 7

    # every parameter and buffer bit-identical across the ranks
    rank0, rank1 = (torch.load(tmp_path / "states" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    differ = [name for name in rank0 if not torch.equal(rank0[name], rank1[name])]
    assert not differ, f"the ranks hold different {differ}"
    stats = [name for name in rank0 if name.endswith("rho_stats")]
    assert bool(stats) == spec.startswith("crystalformer")
    for name in stats:  # trained on: batches seen (running) or frozen after the first (first_batch)
        assert rank0[name][2] == (1 if "first_batch" in case else 4), name

    # the logged val MAE of the best epoch (model.pt, no weight averaging) is the single-process MAE of model.pt on
    # the 7 val structures, each counted once; the run's own metrics.json says the same
    import csv

    import crystalframes
    from crystalframes.data.sources import load_dataset
    from crystalframes.data.splits import make_split

    logged = [float(r["val_mae"]) for r in csv.DictReader(open(out / "logs" / "metrics.csv")) if r.get("val_mae")]
    assert len(logged) == 2
    val = make_split(load_dataset(str(data), target="mp2018_e_form").crystals, "field", target="mp2018_e_form")["val"]
    assert len(val) == 7
    pred = crystalframes.load_model(out).predict_crystals(val)[:, 0]
    single = float(np.abs(pred - np.array([c.target("mp2018_e_form") for c in val])).mean())
    assert min(logged) == pytest.approx(single, abs=1e-6)
    assert metrics["val"]["mae"] == pytest.approx(single, abs=1e-6)


def _moments_on_rank(rank, x, init, results):
    import torch.distributed as dist

    from crystalframes.models.periodic_attention import _batch_moments

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        mine = x[:5] if rank == 0 else x[5:]  # unequal shares, as a last batch can be
        mean, var = _batch_moments(mine)
        torch.save((mean, var), results / f"moments{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_width_statistics_are_those_of_the_global_batch(tmp_path):
    """In a distributed run the batch moments are those of all ranks' batches together."""
    import torch.multiprocessing as mp

    x = torch.randn(13, 3, generator=torch.Generator().manual_seed(0)) * 2 + 1
    mp.spawn(_moments_on_rank, args=(x, f"file://{tmp_path / 'rendezvous'}", tmp_path), nprocs=2)
    (m0, v0), (m1, v1) = (torch.load(tmp_path / f"moments{r}.pt") for r in (0, 1))
    assert torch.equal(m0, m1) and torch.equal(v0, v1)
    assert float(m0) == pytest.approx(float(x.double().mean()), abs=1e-12)
    assert float(v0) == pytest.approx(float(x.double().var(unbiased=False)), abs=1e-12)
