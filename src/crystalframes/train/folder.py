"""A run folder's safety: what counts as a run, the lock that keeps two trainings apart, which
settings a resumed run may change, and checkpoints loaded without running their pickles."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from crystalframes.io.errors import UserError
from crystalframes.train.config import RunConfig, load_config

CHECKPOINTS = "checkpoints"
LOCK = ".lock"

# Everything a started or finished run writes; any of them means the folder holds a run.
RUN_FILES = ("config.yaml", "versions.json", "model.pt", "model_card.md", "metrics.json", "predictions_val.csv", "predictions_test.csv",
             "parity.png", "learning_curve.png")
RUN_FOLDERS = (CHECKPOINTS, "logs", "tensorboard", "wandb")
# Lightning's SLURM requeue snapshots (hpc_ckpt_N.ckpt in the run folder); ours is last.ckpt
HPC_CHECKPOINTS = "hpc_ckpt_*.ckpt"

# Settings a resumed run may change: how and where it runs, not what it learns. trainer.epochs
# is checked separately (it may grow only where the schedule does not depend on it).
RESUMABLE_CHANGES = frozenset({
    "trainer.epochs", "trainer.max_time_minutes", "trainer.accelerator", "trainer.deterministic", "trainer.num_workers",
    "trainer.threads", "trainer.checkpoint_every_n_steps", "trainer.log_every_n_steps", "trainer.logger",
    "trainer.progress_seconds", "data.graph_cache",
})
LENGTH_DEPENDENT_SCHEDULES = ("onecycle", "polynomial")


def global_rank(devices_per_node: int = 1) -> int:
    """This process's rank among all training processes, before Lightning starts any: read
    from the launcher's environment by Lightning's own cluster environments, chosen in
    Lightning's order (torchrun: ``RANK``; SLURM: ``SLURM_PROCID``; LSF; MPI), else Lightning's
    launcher, which sets only ``NODE_RANK`` and ``LOCAL_RANK``: ``NODE_RANK x devices per node
    + LOCAL_RANK`` (0 in the process a user started)."""
    from lightning.fabric.plugins.environments import (
        LightningEnvironment, LSFEnvironment, MPIEnvironment, SLURMEnvironment, TorchElasticEnvironment,
    )

    for kind in (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment):
        if kind.detect():
            try:
                return kind().global_rank()
            except RuntimeError as exc:  # e.g. SLURM's --ntasks without --ntasks-per-node (Lightning's check)
                raise UserError(f"cannot start a distributed training: {exc}") from None
    env = LightningEnvironment()
    return env.node_rank() * devices_per_node + env.local_rank()


def is_rank_zero() -> bool:
    """True in the one process that guards, locks and writes the run folder's files; False in
    every other training process, on this node or another (they re-run the same command).
    Global rank 0 is node 0's local rank 0 whatever the devices per node."""
    return global_rank() == 0


def run_contents(folder: Path) -> list[str]:
    """The run files and folders ``folder`` holds (empty if none)."""
    return [name for name in (*RUN_FILES, *RUN_FOLDERS) if (folder / name).exists()]


def guard_new_run(folder: Path, overwrite: bool) -> None:
    """Refuse to start a new run in a folder that holds one, unless ``overwrite``."""
    found = run_contents(folder)
    if found and not overwrite:
        raise UserError(
            f"{folder} already holds a run ({', '.join(found)}); use --resume to continue it, "
            "--overwrite to replace it, or choose another --output"
        )


def remove_run(folder: Path) -> None:
    """Delete the files of the run in ``folder`` (nothing else the user keeps there)."""
    for name in RUN_FILES:
        (folder / name).unlink(missing_ok=True)
    for name in RUN_FOLDERS:
        if (folder / name).is_dir():
            shutil.rmtree(folder / name)
    for path in folder.glob(HPC_CHECKPOINTS):
        path.unlink(missing_ok=True)


@contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive, non-blocking lock on ``folder/.lock`` while the block runs: a second
    training into the same folder stops at once instead of mixing its files with ours."""
    import fcntl

    path = folder / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # the lock file may have been removed and recreated between our open and flock
            # (a failed run cleaning up the folder it created): then we hold a stale lock
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                raise BlockingIOError
        except (BlockingIOError, FileNotFoundError):
            raise UserError(f"another training is writing to {folder}; wait for it to end or choose another --output") from None
        yield
    finally:
        os.close(fd)


def stored_config(folder: Path) -> RunConfig:
    """The config a run was started with (``folder/config.yaml``); clean errors if missing or invalid."""
    path = folder / "config.yaml"
    if not path.is_file():
        raise UserError(f"{folder}: cannot resume: config.yaml is missing (it records how the run was started)")
    return load_config(path)


def resume_config(folder: Path, overrides: list[str]) -> RunConfig:
    """The stored config with ``overrides`` applied, refusing changes a resumed run cannot take."""
    if not (folder / CHECKPOINTS / "last.ckpt").exists():
        raise UserError(f"{folder}: nothing to resume (no {CHECKPOINTS}/last.ckpt)")
    stored = stored_config(folder)
    wanted = load_config(folder / "config.yaml", list(overrides)) if overrides else stored
    check_resume_changes(stored, wanted, folder)
    return wanted


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and not (prefix == "model." and key == "options"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_resume_changes(stored: RunConfig, wanted: RunConfig, folder: Path) -> None:
    """Refuse settings that cannot change on resume (model, data, split, seed, optimiser and
    schedule, batch size, precision, world size); a longer or shorter run only where the
    learning-rate schedule does not depend on the run's total length."""
    old, new = _flat(stored.model_dump(mode="json")), _flat(wanted.model_dump(mode="json"))
    fixed = sorted(k for k in old if old[k] != new[k] and k not in RESUMABLE_CHANGES)
    if fixed:
        changes = ", ".join(f"{k} ({old[k]!r} -> {new[k]!r})" for k in fixed)
        raise UserError(
            f"{folder}: cannot change {changes} when resuming: the checkpoint was trained with the old value(s). "
            "Start a new run (another --output, or --overwrite) to use them"
        )
    if old["trainer.epochs"] != new["trainer.epochs"]:
        sched = stored.optim.scheduler
        if sched in LENGTH_DEPENDENT_SCHEDULES:
            raise UserError(
                f"{folder}: cannot change trainer.epochs from {old['trainer.epochs']} to {new['trainer.epochs']} when resuming: "
                f"the {sched} learning-rate schedule is laid out over the run's total length. Start a new run, or use "
                "optim.scheduler=inverse_sqrt or constant, whose runs can be extended"
            )
        if stored.optim.swa_epochs > 0:
            raise UserError(
                f"{folder}: cannot change trainer.epochs when resuming a run with weight averaging "
                "(optim.swa_epochs counts back from the last epoch)"
            )


def load_checkpoint(path: Path) -> dict:
    """A Lightning checkpoint loaded with ``weights_only=True`` (tensors and plain Python values
    only: a pickle that would run code is refused, never executed); clean errors for missing,
    truncated or foreign files."""
    import pickle
    import zipfile

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: checkpoint not found") from None
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: refused to load this checkpoint: it holds objects other than tensors and plain values ({first[:200]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise UserError(f"{path}: not a readable checkpoint (truncated or damaged: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        raise UserError(f"{path}: not a training checkpoint (no state_dict / global_step)")
    return ckpt


def check_checkpoint_matches(ckpt: dict, module: torch.nn.Module, cfg: RunConfig, path: Path) -> None:
    """The checkpoint must hold the weights of the model ``cfg`` builds and have been written
    under the same fixed settings (the config it stores, when present)."""
    saved = ckpt.get(CONFIG_KEY)
    if isinstance(saved, dict):
        old, new = _flat(saved), _flat(cfg.model_dump(mode="json"))
        differ = sorted(k for k in new if k in old and old[k] != new[k] and k not in RESUMABLE_CHANGES)
        if differ:
            changes = ", ".join(f"{k} ({old[k]!r} in the checkpoint, {new[k]!r} in config.yaml)" for k in differ)
            raise UserError(f"{path}: does not match the run's config.yaml (was it edited?): {changes}")
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items() if isinstance(v, torch.Tensor)}
    if expected != got:
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        shapes = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        detail = "; ".join(
            f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for what, keys in (("missing", missing), ("unexpected", extra), ("other shape", shapes)) if keys
        )
        raise UserError(f"{path}: its weights do not fit the model of config.yaml ({cfg.model.spec}); was it edited? {detail}")


# The resolved config a checkpoint was written under (plain values: loads with weights_only).
CONFIG_KEY = "crystalframes_config"
