"""What a run reports while it trains: progress lines for logs that are not a terminal, the
metrics CSV that survives kills and resumes, and what each checkpoint records beside the weights."""

from __future__ import annotations

import contextlib
import csv
import logging
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from crystalframes.atomic import atomic_write


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=int(round(seconds))))


class ProgressLines(L.Callback):
    """One line per epoch (and at most every ``every_seconds`` within a long epoch) on
    ``stream``: epoch, step, train loss, val MAE, elapsed and estimated remaining time. Used
    when output goes to a file or a pipe (SLURM logs), where a progress bar shows nothing useful."""

    def __init__(self, every_seconds: float, units: str = "", stream=None):
        self.every_seconds, self.units, self.stream = every_seconds, units, stream
        self._start = self._last = 0.0
        self._first_step = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = self._last = time.monotonic()
        self._first_step = trainer.global_step

    def _line(self, trainer, pl_module, end_of_epoch: bool) -> str:
        per_epoch = int(trainer.num_training_batches) if trainer.num_training_batches != float("inf") else 0
        total = per_epoch * trainer.max_epochs
        step = trainer.global_step
        elapsed = time.monotonic() - self._start
        done = step - self._first_step
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}", f"step {step}/{total}" if total else f"step {step}"]
        metrics = trainer.callback_metrics
        # within an epoch, the loss the module last read (at its finiteness check): reading the
        # logged tensor here would make a GPU step wait for the device
        loss = metrics.get("train_loss_epoch") if end_of_epoch else getattr(pl_module, "last_train_loss", None)
        if loss is not None:
            parts.append(f"train_loss {float(loss):.4g}")
        if end_of_epoch and "val_mae" in metrics:
            parts.append(f"val_mae {float(metrics['val_mae']):.4g}" + (f" {self.units}" if self.units else ""))
        parts.append(f"elapsed {_clock(elapsed)}")
        if done > 0 and total:
            parts.append(f"eta {_clock(elapsed / done * max(total - step, 0))}")
        return "  ".join(parts)

    def _emit(self, text: str) -> None:
        stream = self.stream or sys.stdout
        print(text, file=stream, flush=True)
        self._last = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.is_global_zero and time.monotonic() - self._last >= self.every_seconds:
            self._emit(self._line(trainer, pl_module, end_of_epoch=False))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Lightning runs the epoch's validation before this hook: val_mae is this epoch's
        if trainer.is_global_zero:
            self._emit(self._line(trainer, pl_module, end_of_epoch=True))


class EpochBar(RichProgressBar):
    """Lightning's progress bar for a terminal (rich's: typer installs rich, and Lightning picks
    it then), but counting epochs as people do and as the progress lines do: "Epoch 1/300" ...
    "Epoch 300/300" (Lightning shows "Epoch 0/299" ... "Epoch 299/299")."""

    def _get_train_description(self, current_epoch: int) -> str:
        return f"Epoch {current_epoch + 1}/{self.trainer.max_epochs}"

    def get_metrics(self, trainer, pl_module) -> dict:
        # the bar refreshes after every batch: it shows the training loss of the module's last
        # check (every log_every_n_steps), a number already on the host, not the step's tensor
        items = super().get_metrics(trainer, pl_module)
        loss = getattr(pl_module, "last_train_loss", None)
        if loss is not None:
            items["train_loss"] = loss
        return items


class TrainingInterrupted(SystemExit):
    """Training stopped by SIGTERM or SIGINT; the exit code is the shell's 128 + signal number
    (143, 130), so a killed batch job never looks finished. ``checkpoint`` is the run's
    ``last.ckpt`` (None if the run stopped before its first one), at ``epoch`` (1-based) and ``step``."""

    def __init__(self, signum: int, folder: Path, epoch: int, step: int, checkpoint: Path | None, rank_zero: bool = True,
                 requeued: bool | None = None):
        super().__init__(128 + signum)
        self.signum, self.folder, self.epoch, self.step, self.checkpoint = signum, folder, epoch, step, checkpoint
        self.rank_zero = rank_zero  # under DDP every rank stops; only rank zero should say so
        self.requeued = requeued  # SLURM pre-emption (SIGUSR1): did `scontrol requeue` succeed

    def message(self) -> str:
        head = f"train: interrupted by {signal.Signals(self.signum).name} at epoch {self.epoch} step {self.step}"
        if self.checkpoint is None:
            return f"{head}; no checkpoint yet: start again with crystalframes train ... --output {self.folder} --overwrite"
        resume = f"crystalframes train --output {self.folder} --resume"
        if self.requeued is True:
            return f"{head}; last checkpoint: {self.checkpoint}; SLURM requeued the job: its script continues with {resume}"
        if self.requeued is False:
            return f"{head}; last checkpoint: {self.checkpoint}; requeue failed: resubmit with {resume}"
        return f"{head}; last checkpoint: {self.checkpoint}; continue with {resume}"


class Interruption(L.Callback):
    """A stop by SIGTERM (SLURM, Kubernetes, `timeout`) or SIGINT (Ctrl+C) that loses nothing:
    training ends after the batch in progress and ``last.ckpt`` is saved at that exact step.

    Lightning sets ``trainer.received_sigterm`` on SIGTERM and stops the loops at the next batch
    end by raising its SIGTERMException, a SystemExit without code (so the process used to exit 0).
    SIGINT is routed through Lightning's SIGTERM handler too (see :meth:`sigint_stops_cleanly`)
    instead of a KeyboardInterrupt thrown into the middle of an optimiser step."""

    def __init__(self, folder: Path, last: Path):
        self.folder, self.last = folder, last
        self.signum: int | None = None
        self.saved: tuple[int, int] | None = None  # (epoch, step) of the last checkpoint this session saved
        self._held = False
        self.requeued: bool | None = None

    @contextlib.contextmanager
    def sigint_stops_cleanly(self):
        def on_sigint(signum, frame):
            lightning_sigterm = signal.getsignal(signal.SIGTERM)
            if self.signum is not None or not callable(lightning_sigterm):
                raise KeyboardInterrupt  # a second Ctrl+C, or before Lightning's loops run: stop now
            self.signum = signal.SIGINT
            lightning_sigterm(signal.SIGTERM, frame)

        previous = signal.getsignal(signal.SIGINT)
        if previous == signal.SIG_IGN:  # started in the background (`cmd &`, nohup): Ctrl+C is not for us
            yield
            return
        signal.signal(signal.SIGINT, on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def on_train_start(self, trainer, pl_module) -> None:
        """Under SLURM, Lightning handles the pre-emption signal (SIGUSR1): it saves hpc_ckpt_N.ckpt
        (a snapshot taken wherever the signal lands) and runs ``scontrol requeue``, then trains on
        until SLURM's SIGTERM. Its handler is in place by now; wrap it so that the run also stops at
        the batch end with ``last`` saved, and learns whether the requeue worked (Lightning only
        logs a failure, and a job that failed to requeue would be killed at its time limit)."""
        from lightning.pytorch.plugins.environments import SLURMEnvironment

        lightning_sigusr = signal.getsignal(signal.SIGUSR1)
        if not (SLURMEnvironment.detect() and callable(lightning_sigusr)):
            return
        connector_log = logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector")

        def on_preemption(signum, frame):
            failures = _Failures()
            connector_log.addHandler(failures)
            connector_log.propagate = False  # its warning becomes part of our one line
            try:
                lightning_sigusr(signum, frame)
            finally:
                connector_log.removeHandler(failures)
                connector_log.propagate = True
            self.requeued = not failures.seen
            if self.signum is None:
                self.signum = signum
            lightning_sigterm = signal.getsignal(signal.SIGTERM)
            if callable(lightning_sigterm):
                lightning_sigterm(signal.SIGTERM, frame)  # stop at the batch end, as on SIGTERM

        signal.signal(signal.SIGUSR1, on_preemption)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.saved = (checkpoint["epoch"] + 1, checkpoint["global_step"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Lightning stops right after this batch: save `last` here, where the step checkpoints are
        # saved (and resume exactly). Not after the epoch's last batch: the epoch-end checkpoint
        # follows its validation. Not under DDP: a save waits for every rank, and a signal may
        # reach one rank only (a rank that waits alone would hang); the periodic `last` serves there.
        if (trainer.received_sigterm and trainer.world_size == 1 and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
                and (self.saved is None or self.saved[1] != trainer.global_step)):
            trainer.save_checkpoint(self.last)

    # A signal during validation would stop it part-way (Lightning checks after each batch) and
    # lose the epoch: let the epoch's validation and its checkpoint finish, then stop.
    def on_validation_batch_end(self, trainer, *args) -> None:
        if trainer.received_sigterm and not trainer.sanity_checking:
            self._held = True
            trainer._signal_connector.received_sigterm = False

    def on_validation_end(self, trainer, pl_module) -> None:
        self._release(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._release(trainer)

    def _release(self, trainer) -> None:
        if self._held:
            self._held = False
            trainer._signal_connector.received_sigterm = True

    def error(self, exc: BaseException, trainer) -> TrainingInterrupted | None:
        """The :class:`TrainingInterrupted` for what ended ``trainer.fit`` with ``exc``, or None if
        it was not a signal (Lightning's SIGTERMException, or its exit(1) after a KeyboardInterrupt)."""
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exc, SIGTERMException):
            signum = self.signum or signal.SIGTERM
        elif isinstance(exc, SystemExit) and isinstance(exc.__context__, KeyboardInterrupt):
            signum = signal.SIGINT
        else:
            return None
        checkpoint = self.last if self.last.exists() else None
        epoch, step = min(trainer.current_epoch + 1, trainer.max_epochs), trainer.global_step
        if self.saved is not None and self.saved[1] == step:
            epoch = self.saved[0]
        return TrainingInterrupted(signum, self.folder, epoch, step, checkpoint, trainer.is_global_zero, self.requeued)


class _Failures(logging.Handler):
    """Notes Lightning's "Requeuing SLURM job ... failed" warning."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.seen = False

    def emit(self, record) -> None:
        self.seen = True


def read_log_rows(path: Path, up_to_step: int) -> list[dict]:
    """Rows of a metrics CSV logged before global step ``up_to_step`` (a resumed run logs the later
    ones again); empty if there is no readable file."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []
    kept = []
    for row in rows:
        try:
            step = int(float(row.get("step") or "nan"))
        except ValueError:
            continue
        if step < up_to_step:  # a row logged at step s is covered by checkpoints after step s
            kept.append({k: v for k, v in row.items() if k is not None and v not in ("", None)})
    return kept


class _RunLogWriter(ExperimentWriter):
    """Lightning's CSV writer, except that it never deletes an existing metrics.csv (Lightning's
    does as soon as a logger starts, so a failed resume lost the history), and each save
    rewrites the file atomically: the rows kept from before a resume, then this session's."""

    def __init__(self, log_dir: str, kept: list[dict]):
        self.kept, self.session = list(kept), []
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        pass

    def save(self) -> None:
        if not self.metrics:
            return
        self.session.extend(self.metrics)
        self.metrics = []
        rows = self.kept + self.session
        keys = sorted(set().union(*rows))
        with atomic_write(self.metrics_file_path, "w") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)


class RunCSVLogger(CSVLogger):
    """``folder/logs/metrics.csv`` that keeps the rows of the run before a resume (see
    :class:`_RunLogWriter`)."""

    def __init__(self, folder: Path, kept: list[dict] = ()):
        super().__init__(folder, name="logs", version="")
        self._kept = list(kept)

    @property
    @rank_zero_experiment
    def experiment(self) -> _RunLogWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _RunLogWriter(self.log_dir, self._kept)
        return self._experiment


class CheckpointExtras(L.Callback):
    """Each checkpoint records the resolved config (so a resume can tell an edited config.yaml)
    and flushes the metrics logged so far (so a run killed later keeps its rows up to there)."""

    def __init__(self, config: dict, key: str):
        self.config, self.key = config, key

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        checkpoint[self.key] = self.config
        for logger in trainer.loggers:
            logger.save()
