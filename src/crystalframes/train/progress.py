"""What a run reports while it trains: progress lines for logs that are not a terminal, the
metrics CSV that survives kills and resumes, and what each checkpoint records beside the weights."""

from __future__ import annotations

import csv
import sys
import time
from datetime import timedelta
from pathlib import Path

import lightning as L
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

    def _line(self, trainer, end_of_epoch: bool) -> str:
        per_epoch = int(trainer.num_training_batches) if trainer.num_training_batches != float("inf") else 0
        total = per_epoch * trainer.max_epochs
        step = trainer.global_step
        elapsed = time.monotonic() - self._start
        done = step - self._first_step
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}", f"step {step}/{total}" if total else f"step {step}"]
        metrics = trainer.callback_metrics
        loss = metrics.get("train_loss_epoch" if end_of_epoch else "train_loss_step", metrics.get("train_loss"))
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
            self._emit(self._line(trainer, end_of_epoch=False))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Lightning runs the epoch's validation before this hook: val_mae is this epoch's
        if trainer.is_global_zero:
            self._emit(self._line(trainer, end_of_epoch=True))


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
