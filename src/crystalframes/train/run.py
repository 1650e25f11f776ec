"""One training run: data -> model -> Lightning fit -> portable model, metrics and plots in a
run folder. Every file is written atomically; a killed run resumes from ``last``."""

from __future__ import annotations

import csv
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from crystalframes import __version__
from crystalframes.atomic import atomic_write
from crystalframes.io.errors import UserError
from crystalframes.train.config import RunConfig
from crystalframes.train.metrics import metrics_of, write_json, write_predictions

log = logging.getLogger("crystalframes.train")

CHECKPOINTS = "checkpoints"


@dataclass
class RunResult:
    folder: Path
    metrics: dict


def _atomic_checkpoint_io():
    """Lightning's checkpoint writer, but through a temporary file and a rename: a run killed
    while saving keeps its previous ``last.ckpt`` intact instead of a truncated one."""
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            with atomic_write(path) as fh:
                torch.save(checkpoint, fh)

    return AtomicCheckpointIO()


def default_run_folder(cfg: RunConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = "".join(ch if ch.isalnum() else "-" for ch in cfg.model.spec).strip("-")
    return Path("runs") / f"{stamp}-{name}"


def _save_png(fig, path: Path) -> None:
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120, bbox_inches="tight")


def parity_plot(path: Path, true: np.ndarray, pred: np.ndarray, target: str, units: str, mae: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(true, pred, s=6, alpha=0.6)
    lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel(f"DFT {target} ({units})")
    ax.set_ylabel(f"predicted ({units})")
    ax.set_title(f"test MAE {mae:.4f} {units}")
    _save_png(fig, path)
    plt.close(fig)


def learning_curve(path: Path, metrics_csv: Path, units: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(metrics_csv.open())) if metrics_csv.exists() else []
    train = [(float(r["epoch"]), float(r["train_loss_epoch"])) for r in rows if r.get("train_loss_epoch")]
    val = [(float(r["epoch"]), float(r["val_mae"])) for r in rows if r.get("val_mae")]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if train:
        ax.plot(*zip(*train), label="train loss (standardised)")
    if val:
        ax.plot(*zip(*val), label=f"val MAE ({units})" if units else "val MAE")
    ax.set_xlabel("epoch")
    ax.set_yscale("log")
    ax.legend()
    _save_png(fig, path)
    plt.close(fig)


def train(cfg: RunConfig, output: str | Path | None = None, resume: bool = False) -> RunResult:
    """Train ``cfg``; write everything into ``output`` (default ``runs/<time>-<spec>``)."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint, StochasticWeightAveraging
    from lightning.pytorch.loggers import CSVLogger

    from crystalframes.api import save_model_file
    from crystalframes.data.datasets import target_units
    from crystalframes.models.specs import build_model
    from crystalframes.runtime import keep_freed_memory
    from crystalframes.train.data import ResumeDataPosition, loader, prepare_data
    from crystalframes.train.module import PropertyModule

    # Importing Lightning sets its loggers to INFO with a console handler of their own, so its
    # INFO lines (accelerators found, tips) reach stderr twice; we print our own summary.
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)

    folder = Path(output) if output else default_run_folder(cfg)
    last_ckpt = folder / CHECKPOINTS / "last.ckpt"
    if resume:
        if not last_ckpt.exists():
            raise UserError(f"{folder}: nothing to resume (no {CHECKPOINTS}/last.ckpt)")
        cfg = RunConfig.model_validate(yaml.safe_load((folder / "config.yaml").read_text()))
    elif last_ckpt.exists():
        raise UserError(f"{folder} already holds a run; use --resume to continue it or choose another --output")
    keep_freed_memory()  # also for DDP workers and library callers; see crystalframes.runtime
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    dtype = getattr(torch, cfg.trainer.dtype)

    model = build_model(cfg.model.spec, num_targets=1, **cfg.model.options)
    model.to(dtype)
    data = prepare_data(cfg.data, model.graph_settings)
    units = target_units(data.target)
    world = cfg.trainer.devices * cfg.trainer.num_nodes
    steps_per_epoch = -(-len(data.graphs["train"]) // (cfg.trainer.batch_size * world))
    module = PropertyModule(model, data.normaliser, cfg.optim, total_steps=steps_per_epoch * cfg.trainer.epochs)

    rank_zero = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))) == 0
    if rank_zero and not resume:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(folder / "config.yaml", "w") as fh:
            yaml.safe_dump(cfg.model_dump(mode="json"), fh, sort_keys=False)
        write_json(folder / "versions.json", {"crystalframes": __version__, "torch": str(torch.__version__), "python": sys.version.split()[0], "lightning": L.__version__})

    mk = dict(batch_size=cfg.trainer.batch_size, dtype=dtype, num_workers=cfg.trainer.num_workers, targets=[data.target])
    train_loader = loader(data.graphs["train"], shuffle=True, seed=cfg.trainer.seed, **mk)
    val_loader = loader(data.graphs["val"], shuffle=False, **mk)
    callbacks = [
        ModelCheckpoint(dirpath=folder / CHECKPOINTS, filename="best", monitor="val_mae", mode="min", save_top_k=1, enable_version_counter=False),
        ModelCheckpoint(dirpath=folder / CHECKPOINTS, filename="last", every_n_train_steps=cfg.trainer.checkpoint_every_n_steps, save_on_train_epoch_end=True, save_top_k=1, enable_version_counter=False),
    ]
    callbacks.append(ResumeDataPosition(train_loader.sampler, cfg.trainer.batch_size))
    swa = cfg.optim.swa_epochs > 0 and cfg.trainer.epochs > 1
    if swa:
        # average over the last swa_epochs epochs (at least the last one; Lightning counts from 1)
        start = max(cfg.trainer.epochs - cfg.optim.swa_epochs, 1)
        callbacks.append(StochasticWeightAveraging(swa_lrs=cfg.optim.lr, swa_epoch_start=start))
    loggers = [CSVLogger(folder, name="logs", version="")]
    if cfg.trainer.tensorboard:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(folder, name="tensorboard", version=""))
    multi = world > 1
    on_gpu = cfg.trainer.accelerator in ("gpu", "cuda") or (cfg.trainer.accelerator == "auto" and torch.cuda.is_available())
    trainer = L.Trainer(
        max_epochs=cfg.trainer.epochs,
        max_time={"minutes": cfg.trainer.max_time_minutes} if cfg.trainer.max_time_minutes else None,
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        num_nodes=cfg.trainer.num_nodes,
        strategy="ddp" if multi else "auto",
        use_distributed_sampler=False,  # ResumableSampler shards across ranks itself
        sync_batchnorm=multi and on_gpu,  # PyTorch's SyncBatchNorm exists for GPU modules only
        precision="64-true" if dtype == torch.float64 else "32-true",
        gradient_clip_val=cfg.optim.grad_clip,
        deterministic=cfg.trainer.deterministic,
        callbacks=callbacks,
        logger=loggers,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        enable_progress_bar=sys.stderr.isatty(),
        enable_model_summary=False,
        default_root_dir=folder,
        plugins=[_atomic_checkpoint_io()],
    )
    # ResumableSampler + ResumeDataPosition make mid-epoch resumption exact; Lightning cannot see that.
    warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
    # Lightning's own internals and a logging cadence that short runs cannot meet: not the user's concern.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    start = time.perf_counter()
    trainer.fit(module, train_loader, val_loader, ckpt_path=str(last_ckpt) if resume else None)
    wall = time.perf_counter() - start
    if not trainer.is_global_zero:
        return RunResult(folder, {})

    best = callbacks[0].best_model_path
    if best and Path(best).exists() and not swa:  # with SWA the averaged weights are the result
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    model = module.model.cpu().eval()
    model_file = save_model_file(
        folder / "model.pt", model, cfg.model.spec, {"num_targets": 1, **cfg.model.options}, data.normaliser, [data.target], [units],
        extra={"config": cfg.model_dump(mode="json")},
    )
    from crystalframes.api import load_model

    predictor = load_model(model_file)
    metrics = {"spec": cfg.model.spec, "target": data.target, "units": units, "epochs_completed": trainer.current_epoch,
               "global_step": trainer.global_step, "train_wall_seconds": round(wall, 1), "num_bad_records": data.num_bad_records,
               "num_train": len(data.splits["train"]), "params": int(sum(p.numel() for p in model.parameters()))}
    train_mean = float(data.normaliser.mean[0])
    for split in ("val", "test"):
        crystals = data.splits[split]
        if not crystals:
            continue
        true = np.array([c.target(data.target) for c in crystals])
        pred = predictor.predict_crystals(crystals)[:, 0]
        metrics[split] = metrics_of(pred, true)
        metrics[split]["mean_baseline_mae"] = float(np.abs(true - train_mean).mean())
        write_predictions(folder / f"predictions_{split}.csv", crystals, pred, data.target, units)
        if split == "test":
            parity_plot(folder / "parity.png", true, pred, data.target, units, metrics[split]["mae"])
    learning_curve(folder / "learning_curve.png", folder / "logs" / "metrics.csv", units)
    write_json(folder / "metrics.json", metrics)
    return RunResult(folder, metrics)
