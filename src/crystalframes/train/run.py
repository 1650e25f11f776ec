"""One training run: data -> model -> Lightning fit -> portable model, metrics and plots in a
run folder. Every file is written atomically; a killed run resumes from ``last``."""

from __future__ import annotations

import contextlib
import csv
import errno
import logging
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from crystalframes.version import __version__
from crystalframes.atomic import atomic_write, os_reason, save_torch, write_error
from crystalframes.io.errors import UserError
from crystalframes.train.config import RunConfig, config_yaml
from crystalframes.train import folder as run_folder
from crystalframes.train.folder import CHECKPOINTS
from crystalframes.train.metrics import metrics_of, write_json, write_predictions

log = logging.getLogger("crystalframes.train")


@dataclass
class RunResult:
    folder: Path
    metrics: dict


def _atomic_checkpoint_io(folder: Path):
    """Lightning's checkpoint writer, but through a temporary file and a rename: a run killed
    while saving keeps its previous ``last.ckpt`` intact instead of a truncated one.

    A failed save (full disk, read-only folder) is the one place an OS error surfaces from inside
    Lightning's loop, which re-raises what the plugin raises: it becomes one line naming the
    file and the reason, and what the run keeps (see :func:`_checkpoint_failed`)."""
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        saved_step: int | None = None  # the global step of the last.ckpt this process wrote

        def save_checkpoint(self, checkpoint, path, storage_options=None):
            try:
                save_torch(checkpoint, path)
            except OSError as exc:
                raise _checkpoint_failed(exc, Path(path), folder, self.saved_step) from None
            if Path(path).name == "last.ckpt":
                self.saved_step = checkpoint.get("global_step")

        def load_checkpoint(self, path, map_location=None, weights_only=None):
            # tensors and plain values only, whatever the caller asks: a checkpoint is a pickle
            from crystalframes.train.folder import load_checkpoint

            return load_checkpoint(Path(path))

    return AtomicCheckpointIO()


def _checkpoint_failed(exc: OSError, path: Path, folder: Path, saved_step: int | None) -> UserError:
    """The error of a checkpoint that could not be written, saying what the run keeps: the
    previous ``last.ckpt`` is untouched (checkpoints are replaced atomically), so the run can
    be continued once the cause is gone."""
    last = folder / CHECKPOINTS / "last.ckpt"
    if saved_step is not None or last.exists():
        at = f" (step {saved_step})" if saved_step is not None else ""
        kept = f"{last}{at} is intact: fix that and continue with `crystalframes train --output {folder} --resume`"
    else:
        kept = f"no checkpoint was saved yet: fix that and start again with `--output {folder} --overwrite`"
    return UserError(f"{write_error(exc, path, 'a checkpoint')}; training stopped; {kept}")


@contextlib.contextmanager
def _final_file(path: Path, what: str, folder: Path):
    """Writing one of the files made after training: a failed write is one line naming the
    file and the reason; the checkpoints are complete, so ``--resume`` writes the files again."""
    try:
        yield
    except OSError as exc:
        raise UserError(f"{write_error(exc, path, what)}; training finished and {folder / CHECKPOINTS} is intact: "
                        f"fix that and run `crystalframes train --output {folder} --resume` to write the final files") from None


def _folder_error(exc: OSError, folder: Path) -> UserError:
    """The run folder cannot be made (a file of that name, a read-only or full file system)."""
    where, reason = exc.filename or folder, os_reason(exc)
    hint = "; --output names a folder" if exc.errno in (errno.EEXIST, errno.ENOTDIR) else ""
    action = "cannot write in the run folder" if folder.is_dir() else "cannot create the run folder"
    return UserError(f"{where}: {action}: {reason}{hint}; nothing was written")


def _slurm_requeue() -> list:
    """Under SLURM, Lightning's pre-emption handling: on SIGUSR1 (``#SBATCH --signal=SIGUSR1@90``)
    it saves ``hpc_ckpt_N.ckpt`` in the run folder and runs ``scontrol requeue``; SLURM then sends
    SIGTERM, which stops the run at the batch end with ``last.ckpt`` saved (see Interruption); the
    requeued job continues it with ``--resume`` (docs: README, "Interrupted runs")."""
    import signal

    from lightning.pytorch.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=True, requeue_signal=signal.SIGUSR1)] if SLURMEnvironment.detect() else []


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


def learning_curve(path: Path, metrics_csv: Path, units: str = "", val_label: str = "val MAE") -> None:
    """Training loss and ``val_mae`` per epoch (``val_label`` names it: for a tensor target it
    is the mean Frobenius error)."""
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
        ax.plot(*zip(*val), label=f"{val_label} ({units})" if units else val_label)
    ax.set_xlabel("epoch")
    ax.set_yscale("log")
    ax.legend()
    _save_png(fig, path)
    plt.close(fig)


def check_logger(cfg: RunConfig) -> None:
    """trainer.logger=tensorboard / wandb needs its package: say so before
    anything is written, not when Lightning creates its logger mid-setup."""
    import importlib.util

    if cfg.trainer.logger == "tensorboard" and not any(importlib.util.find_spec(name) for name in ("tensorboard", "tensorboardX")):
        raise UserError("trainer.logger=tensorboard (or trainer.tensorboard=true) needs the tensorboard package: "
                        "pip install tensorboard (or set trainer.logger=csv)")
    if cfg.trainer.logger == "wandb" and importlib.util.find_spec("wandb") is None:
        raise UserError("trainer.logger=wandb needs the wandb package: pip install wandb (or set trainer.logger=csv)")


def build_configured_model(cfg: RunConfig):
    """The model of ``cfg.model``; unknown or bad options become a clean error naming the known
    options (with the closest match)."""
    import dataclasses
    import difflib

    from crystalframes.models.specs import build_model

    try:
        return build_model(cfg.model.spec, num_targets=1, **cfg.model.options)
    except (TypeError, ValueError) as exc:
        if not cfg.model.options:
            raise UserError(f"model.spec {cfg.model.spec}: {exc}") from None
        try:
            config = build_model(cfg.model.spec, num_targets=1).config
            known = sorted(f.name for f in dataclasses.fields(config))
        except Exception:  # the spec itself cannot be built: report the original problem
            raise UserError(f"model.options: {exc}") from None
        unknown = [k for k in cfg.model.options if k not in known]
        if not unknown:
            raise UserError(f"model.options {cfg.model.options}: {exc}") from None
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=1)
            hints.append(f"model.options.{key}" + (f" (did you mean {close[0]}?)" if close else ""))
        raise UserError(f"unknown model option {', '.join(hints)} for {cfg.model.spec}; known options: {', '.join(known)}") from None


def train(cfg: RunConfig | None, output: str | Path | None = None, resume: bool = False, overwrite: bool = False) -> RunResult:
    """Train ``cfg``; write everything into ``output`` (default ``runs/<time>-<spec>``).

    A new run refuses a folder that already holds one unless ``overwrite``. ``resume``
    continues the run in ``output`` from its last checkpoint; ``cfg`` (default: the run's
    config.yaml) may differ from the stored config only in what a resumed run can change.
    """
    _quiet_lightning()
    cfg, folder, ckpt = _run_request(cfg, output, resume, overwrite)
    model = _initial_model(cfg, resume)  # everything that can be checked without the data, before the folder exists
    rank_zero = run_folder.is_rank_zero()
    with contextlib.ExitStack() as stack:
        data, model = _open_folder_and_prepare_data(stack, cfg, model, folder, rank_zero, resume, overwrite)
        module = _training_module(cfg, model, data, ckpt, folder)
        if rank_zero:
            _write_run_settings(cfg, folder, resume, overwrite)
        fit = _fit_setup(cfg, folder, data, ckpt)
        wall = _fit(fit, module, folder, resume)
        if not fit.trainer.is_global_zero:
            return RunResult(folder, {})
        return RunResult(folder, _final_evaluation(cfg, folder, module, data, fit, wall))


def _quiet_lightning() -> None:
    """Import Lightning and quiet it: the import sets its loggers to INFO with a console handler
    of their own, so its INFO lines (accelerators found, tips) reach stderr twice; we print our
    own summary."""
    import importlib

    importlib.import_module("lightning")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _run_request(cfg: RunConfig | None, output: str | Path | None, resume: bool, overwrite: bool) -> tuple[RunConfig, Path, dict | None]:
    """The config, run folder and (when resuming) last checkpoint of a call to :func:`train`;
    a contradictory request or a resumed run whose config changed what it cannot is a UserError."""
    if resume and output is None:
        raise UserError("--resume needs --output RUN_FOLDER (the run to continue)")
    if resume and overwrite:
        raise UserError("--resume continues a run and --overwrite replaces it: give one of them")
    if cfg is None and not resume:
        raise UserError("a new run needs a config")
    folder = Path(output) if output else default_run_folder(cfg)
    last_ckpt = folder / CHECKPOINTS / "last.ckpt"
    ckpt = None
    if resume:
        if not last_ckpt.exists():
            raise UserError(f"{folder}: nothing to resume (no {CHECKPOINTS}/last.ckpt)")
        stored = run_folder.stored_config(folder)
        cfg = stored if cfg is None else cfg
        run_folder.check_resume_changes(stored, cfg, folder)
        ckpt = run_folder.load_checkpoint(last_ckpt)
    return cfg, folder, ckpt


def _initial_model(cfg: RunConfig, resume: bool):
    """The process set up (logger packages, allocator, threads, seeds) and the model with its
    initial weights in the run's dtype (a fine-tuning run's from ``model.init``)."""
    import lightning as L

    from crystalframes.runtime import keep_freed_memory

    check_logger(cfg)
    keep_freed_memory()  # also for DDP workers and library callers; see crystalframes.runtime
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)  # before the model's initial weights
    model = build_configured_model(cfg)
    if cfg.model.init and not resume:  # a resumed run has its weights in the checkpoint
        from crystalframes.train.finetune import initialise_from

        log.info("fine-tuning: %s", initialise_from(model, cfg))
    model.to(getattr(torch, cfg.trainer.dtype))
    return model


def _open_folder_and_prepare_data(stack: contextlib.ExitStack, cfg: RunConfig, model, folder: Path, rank_zero: bool, resume: bool,
                                  overwrite: bool):
    """Rank zero creates and locks the run folder (the lock held until ``stack`` closes) and
    refuses a folder holding another run; every rank then reads the data and builds its graphs
    (:func:`crystalframes.train.data.prepare_data`). A run that never started leaves no folder.
    Returns the data and the model: for a tensor target, the backbone with the tensor read-out
    the target's rank asks for (:func:`tensor_model`)."""
    from crystalframes.train.data import prepare_data

    created = False
    if rank_zero:
        created = not folder.exists()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            stack.enter_context(run_folder.run_lock(folder))
        except BaseException as exc:
            if created:
                _remove_empty_folder(folder)
            if isinstance(exc, OSError):
                raise _folder_error(exc, folder) from None
            raise
    try:
        if rank_zero and not resume:
            run_folder.guard_new_run(folder, overwrite)
        data = prepare_data(cfg.data, model.graph_settings, model)
        return data, tensor_model(cfg, model, data.tensor_rank)
    except BaseException:
        if created:  # a run that never started leaves no folder behind
            _remove_empty_folder(folder)
        raise


def tensor_model(cfg: RunConfig, backbone, rank: int | None):
    """``backbone`` itself for a scalar target; for a tensor target of ``rank`` the
    :class:`~crystalframes.models.tensor_heads.TensorModel` of ``model.readout`` and
    ``model.tensor_frame`` on it (its read-out weights drawn here, in the run's dtype)."""
    if rank is None:
        return backbone
    from crystalframes.models.tensor_heads import TensorModel
    from crystalframes.nn.cartesian import kind_of_rank

    try:
        model = TensorModel(backbone, kind_of_rank(rank), readout=cfg.model.readout, frame=cfg.model.tensor_frame)
    except ValueError as exc:
        raise UserError(f"model.readout={cfg.model.readout} on {cfg.model.spec} for tensor target {cfg.data.target}: {exc}") from None
    # The read-out replaces the backbone's scalar head, which stays in the model file (the
    # backbone is rebuilt from its spec) but never gets a gradient: frozen, so that DDP does not
    # wait for its gradients and the trainable parameter count is that of the model that runs.
    for p in backbone.head.parameters():
        p.requires_grad_(False)
    return model.to(getattr(torch, cfg.trainer.dtype))


def _training_module(cfg: RunConfig, model, data, ckpt: dict | None, folder: Path):
    """The Lightning module that trains ``model`` (compiled if asked), its schedule as long as
    the run; a resumed run's checkpoint must match it."""
    from crystalframes.train.module import PropertyModule

    world = cfg.trainer.devices * cfg.trainer.num_nodes
    steps_per_epoch = -(-len(data.graphs["train"]) // (cfg.trainer.batch_size * world))
    if cfg.trainer.compile:
        # in place (nn.Module.compile): the state_dict keeps its keys, so checkpoints and
        # model files are those of an eager run
        model.compile()
    module = PropertyModule(model, data.normaliser, cfg.optim, total_steps=steps_per_epoch * cfg.trainer.epochs)
    if ckpt is not None:
        run_folder.check_checkpoint_matches(ckpt, module, cfg, folder / CHECKPOINTS / "last.ckpt")
    return module


def _write_run_settings(cfg: RunConfig, folder: Path, resume: bool, overwrite: bool) -> None:
    """Rank zero: clear a run being overwritten, then write config.yaml (and, for a new run,
    versions.json); a failed write stops the run before training starts."""
    import lightning as L

    if overwrite:
        run_folder.remove_run(folder)
    written = folder / "config.yaml"
    try:
        with atomic_write(written, "w") as fh:
            fh.write(config_yaml(cfg))
        if not resume:
            written = folder / "versions.json"
            write_json(written, {"crystalframes": __version__, "torch": str(torch.__version__), "python": sys.version.split()[0], "lightning": L.__version__})
    except OSError as exc:
        raise UserError(f"{write_error(exc, written, 'the run settings')}; training did not start") from None


@dataclass
class _Fit:
    """What :func:`_fit_setup` makes for one fit: the Lightning trainer, the data loaders, the
    checkpoint callback that keeps the best validation MAE, whether weights are averaged (SWA)
    and the handler of SIGTERM / SIGINT."""

    trainer: object
    train_loader: object
    val_loader: object
    best: object
    swa: bool
    interruption: object


def _fit_setup(cfg: RunConfig, folder: Path, data, ckpt: dict | None) -> _Fit:
    """Loaders, callbacks (checkpoints, SWA, progress, interruption), loggers and the Lightning
    trainer of the run."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from crystalframes.data.datasets import target_units
    from crystalframes.train.data import ResumeDataPosition, loader, loader_workers
    from crystalframes.train.progress import CheckpointExtras, EpochBar, Interruption, ProgressLines, RunCSVLogger, read_log_rows
    from crystalframes.train.swa import WeightAverage

    dtype = getattr(torch, cfg.trainer.dtype)
    mk = dict(batch_size=cfg.trainer.batch_size, dtype=dtype, num_workers=loader_workers(cfg.trainer.num_workers, data.graphs["train"]),
              targets=[data.target])
    train_loader = loader(data.graphs["train"], shuffle=True, seed=cfg.trainer.seed, **mk)
    val_loader = loader(data.graphs["val"], shuffle=False, **mk)
    checkpoint_dir = folder / CHECKPOINTS
    best = ModelCheckpoint(dirpath=checkpoint_dir, filename="best", monitor="val_mae", mode="min", save_top_k=1, enable_version_counter=False)
    callbacks = [
        best,
        # `last` every N steps and at every epoch end (Lightning takes one trigger per callback),
        # so even a run shorter than N steps can be resumed
        ModelCheckpoint(dirpath=checkpoint_dir, filename="last", every_n_train_steps=cfg.trainer.checkpoint_every_n_steps, save_top_k=1, enable_version_counter=False),
        ModelCheckpoint(dirpath=checkpoint_dir, filename="last", every_n_epochs=1, save_on_train_epoch_end=True, save_top_k=1, enable_version_counter=False),
        CheckpointExtras(cfg.model_dump(mode="json"), run_folder.CONFIG_KEY),
        ResumeDataPosition(train_loader.sampler, cfg.trainer.batch_size),
    ]
    swa = cfg.optim.swa_epochs > 0 and cfg.trainer.epochs > 1
    if swa:
        # average every step of the last swa_epochs epochs (at least the last one), at the
        # schedule's own learning rate, as the reference code does (train/swa.py)
        callbacks.append(WeightAverage(start_epoch=max(cfg.trainer.epochs - cfg.optim.swa_epochs, 1)))
    # a resumed run keeps the log rows up to its checkpoint and logs the rest again
    kept = read_log_rows(folder / "logs" / "metrics.csv", ckpt["global_step"]) if ckpt is not None else []
    loggers = [RunCSVLogger(folder, kept)]
    if cfg.trainer.logger == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(folder, name="tensorboard", version=""))
    elif cfg.trainer.logger == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(save_dir=str(folder), name=folder.name))
    # a progress bar on a terminal; periodic lines where output goes to a file or a pipe
    progress_bar = sys.stdout.isatty() and sys.stderr.isatty()
    callbacks.append(EpochBar() if progress_bar else ProgressLines(cfg.trainer.progress_seconds, target_units(data.target)))
    interruption = Interruption(folder, checkpoint_dir / "last.ckpt")  # SIGTERM / SIGINT: save `last` at the step, exit 143 / 130
    callbacks.append(interruption)
    multi = cfg.trainer.devices * cfg.trainer.num_nodes > 1
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
        precision={"32": "32-true", "64": "64-true"}.get(cfg.trainer.precision, cfg.trainer.precision),  # mixed: crystalframes.precision
        gradient_clip_val=cfg.optim.grad_clip,
        deterministic=cfg.trainer.deterministic,
        callbacks=callbacks,
        logger=loggers,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        default_root_dir=folder,
        plugins=[_atomic_checkpoint_io(folder), *_slurm_requeue()],
    )
    return _Fit(trainer, train_loader, val_loader, best, swa, interruption)


def _fit(fit: _Fit, module, folder: Path, resume: bool) -> float:
    """Train (from ``last.ckpt`` when resuming); the wall time in seconds. A run stopped by
    SIGTERM or Ctrl+C ends with the error :class:`~crystalframes.train.progress.Interruption` words."""
    # ResumableSampler + ResumeDataPosition make mid-epoch resumption exact; Lightning cannot see that.
    warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
    # Lightning's own internals and a logging cadence that short runs cannot meet: not the user's concern.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    # two callbacks write `last` (by step and by epoch); Lightning warns that they share the folder
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
    last_ckpt = folder / CHECKPOINTS / "last.ckpt"
    start = time.perf_counter()
    try:
        with fit.interruption.sigint_stops_cleanly():
            fit.trainer.fit(module, fit.train_loader, fit.val_loader, ckpt_path=str(last_ckpt) if resume else None, weights_only=True)
    except SystemExit as exc:  # how Lightning ends fit on SIGTERM (SIGTERMException) and on Ctrl+C (exit 1)
        stopped = fit.interruption.error(exc, fit.trainer)
        if stopped is None:
            raise
        raise stopped from None
    return time.perf_counter() - start


def _final_evaluation(cfg: RunConfig, folder: Path, module, data, fit: _Fit, wall: float) -> dict:
    """After training (rank zero): the result weights (best validation MAE, or the averaged ones
    with SWA) saved as model.pt, the val and test predictions, plots, model card and
    metrics.json; returns the metrics."""
    from crystalframes.api import save_model_file
    from crystalframes.data.datasets import target_units
    from crystalframes.models.parameters import num_parameters
    from crystalframes.train.card import model_card

    units = target_units(data.target)
    trainer = fit.trainer
    best = fit.best.best_model_path
    if best and Path(best).exists() and not fit.swa:  # with SWA the averaged weights are the result
        state = run_folder.load_checkpoint(Path(best))["state_dict"]
        module.load_state_dict(state)
    # Evaluated where it trained (Lightning's teardown moved it to the CPU), on the graphs
    # already built; the model file gets CPU copies of the weights.
    module.to(trainer.strategy.root_device).eval()
    model = module.model
    with _final_file(folder / "model.pt", "the model", folder):
        model_file = save_model_file(
            folder / "model.pt", model, cfg.model.spec, {"num_targets": 1, **cfg.model.options}, data.normaliser, [data.target], [units],
            extra={"config": cfg.model_dump(mode="json")},
        )
    metrics = {"spec": cfg.model.spec, "target": data.target, "units": units, "epochs_completed": trainer.current_epoch,
               "global_step": trainer.global_step, "train_wall_seconds": round(wall, 1), "num_bad_records": data.num_bad_records,
               "num_train": len(data.splits["train"]), "params": num_parameters(model)}
    if cfg.model.init:
        from crystalframes.train.finetune import init_identity

        metrics["init"] = init_identity(cfg)
    if data.tensor_rank is not None:
        _tensor_evaluation(cfg, folder, module, data, metrics, units)
    train_mean = float(np.atleast_1d(data.normaliser.mean)[0])  # a tensor target's scale has no shift: 0
    for split in ("val", "test") if data.tensor_rank is None else ():
        crystals = data.splits[split]
        if not crystals:
            continue
        true = data.target_values(split)
        # a list of graphs, or a StoreDataset read batch by batch (its slices are lists)
        pred = module.predict_graphs(data.graphs[split], crystals, cfg.trainer.batch_size)[:, 0]
        metrics[split] = metrics_of(pred, true)
        metrics[split]["mean_baseline_mae"] = float(np.abs(true - train_mean).mean())
        with _final_file(folder / f"predictions_{split}.csv", "the predictions", folder):
            write_predictions(folder / f"predictions_{split}.csv", crystals, pred, data.target, units)
        if split == "test":
            with _final_file(folder / "parity.png", "the parity plot", folder):
                parity_plot(folder / "parity.png", true, pred, data.target, units, metrics[split]["mae"])
    with _final_file(folder / "learning_curve.png", "the learning curve", folder):
        learning_curve(folder / "learning_curve.png", folder / "logs" / "metrics.csv", units,
                       "val MAE" if data.tensor_rank is None else "val mean Frobenius error")
    with _final_file(folder / "model_card.md", "the model card", folder), atomic_write(folder / "model_card.md", "w") as fh:
        fh.write(model_card(folder, cfg, metrics, model_file))
    with _final_file(folder / "metrics.json", "the metrics", folder):
        write_json(folder / "metrics.json", metrics)
    return metrics


def _tensor_evaluation(cfg: RunConfig, folder: Path, module, data, metrics: dict, units: str) -> None:
    """The val and test metrics of a tensor target (:func:`crystalframes.train.tensor_metrics.tensor_metrics`,
    with the isotropic baseline of the training tensors), its prediction files (Voigt components)
    and a parity plot of the test components, into ``metrics``."""
    from crystalframes.io.tensors import voigt_components
    from crystalframes.train.tensor_metrics import tensor_metrics, write_tensor_predictions

    rank = data.tensor_rank
    train_tensors = data.target_values("train")
    for split in ("val", "test"):
        crystals = data.splits[split]
        if not crystals:
            continue
        true = data.target_values(split)
        pred = module.predict_graphs(data.graphs[split], crystals, cfg.trainer.batch_size)
        metrics[split] = tensor_metrics(pred, true, rank, train_tensors)
        with _final_file(folder / f"predictions_{split}.csv", "the predictions", folder):
            write_tensor_predictions(folder / f"predictions_{split}.csv", crystals, true, pred, data.target, rank, units)
        if split == "test":
            with _final_file(folder / "parity.png", "the parity plot", folder):
                parity_plot(folder / "parity.png", voigt_components(true, rank).ravel(), voigt_components(pred, rank).ravel(),
                            f"{data.target} components", units, metrics[split]["mae"])


def _remove_empty_folder(folder: Path) -> None:
    """Remove a run folder this call created, if it holds nothing but our lock file."""
    try:
        if {p.name for p in folder.iterdir()} <= {".lock"}:
            (folder / ".lock").unlink(missing_ok=True)
            folder.rmdir()
    except OSError:
        pass
