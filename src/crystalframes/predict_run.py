"""The work of ``crystalframes predict`` over many structures: batches bounded by a memory
budget, a partial file that keeps finished batches so an interrupted run continues, progress on
a terminal or in a log, and SIGINT/SIGTERM turned into a clean stop.

The partial file (``OUTPUT.partial`` beside the CSV) is JSON lines: a header holding a
fingerprint of the run (model files, inputs, batch settings, device), then one line per finished
batch. A run whose fingerprint differs never continues it. The batches are planned from the
inputs and settings alone, so the continued run computes exactly the batches the interrupted
one would have, and the CSV is the same byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from crystalframes.io.errors import UserError

PARTIAL_FORMAT = "crystalframes-predict-partial"
PARTIAL_VERSION = 1
# Atoms per batch. Memory of a forward pass follows the atoms (and their edges) of the batch, not
# the number of structures: measured on the mp_gap ensemble, ~75 kB per atom, so 4096 atoms keep
# the temporaries near 0.3 GB on top of the model (64 demo structures hold ~660 atoms).
DEFAULT_BATCH_ATOMS = 4096
PROGRESS_SECONDS = float(os.environ.get("CRYSTALFRAMES_PROGRESS_SECONDS", "30"))


def plan_batches(atoms: list[int], batch_size: int, batch_atoms: int) -> list[tuple[int, int]]:
    """Consecutive ``(start, stop)`` batches of at most ``batch_size`` structures and at most
    ``batch_atoms`` atoms (a structure larger than the budget is a batch of its own). The atom
    bound is the chunking the periodic attention uses for its memory budget (one function)."""
    import torch

    from crystalframes.nn.periodic_entries import _chunks_by_weight

    out = []
    for start, stop in _chunks_by_weight(torch.tensor(atoms, dtype=torch.long), batch_atoms) if atoms else []:
        out.extend((s, min(s + batch_size, stop)) for s in range(start, stop, batch_size))
    return out


def budget_cap(atoms: list[int], batch_size: int, batch_atoms: int) -> Optional[int]:
    """The structures per batch the atom budget allows for a typical (median) structure of these
    inputs, when ``batch_size`` asks for more; else None."""
    if not atoms:
        return None
    cap = max(1, int(batch_atoms // max(1.0, float(np.median(atoms)))))
    return cap if batch_size > cap else None


# ---------------------------------------------------------------- the partial file

def partial_path(output: Path) -> Optional[Path]:
    """Where the finished batches of a run writing ``output`` are kept: beside it; None for a
    device or named pipe (nothing beside /dev/stdout is ours to write)."""
    from crystalframes.atomic import output_target

    try:
        _, kind = output_target(output)
    except (OSError, UserError):
        return None
    if kind == "stream":
        return None
    name = f"{output.name}.partial"
    if len(os.fsencode(name)) > 255:  # a file name's limit: a long output name gets a hashed partial name
        name = f"predict-{hashlib.sha256(os.fsencode(output.name)).hexdigest()[:16]}.partial"
    return output.parent / name


def crystals_digest(crystals, errors) -> str:
    """What the inputs hold (ids, sources, structures, and the inputs that failed to read)."""
    h = hashlib.sha256()
    for c in crystals:
        h.update(f"{c.id}\0{c.source}\0".encode("utf-8", "backslashreplace"))
        for a in (c.lattice, c.atomic_numbers, c.frac_coords):
            h.update(np.ascontiguousarray(a).tobytes())
    for e in errors:
        h.update(f"{e.source}\0{e.problem}\0".encode("utf-8", "backslashreplace"))
    return h.hexdigest()


# what each fingerprint field means, for the refusal message
_FIELDS = {"model": "the model", "model_sha256": "the model files", "std_scale": "the std scale",
           "inputs": "the inputs", "inputs_sha256": "the structures the inputs hold", "batch_size": "--batch-size",
           "batch_atoms": "--batch-atoms", "device": "--device", "crystalframes": "the crystalframes version"}


class Partial:
    """The finished batches of a run, appended one JSON line each (one ``os.write`` per line, so
    an interruption leaves whole lines; a torn last line, from a full disk, is dropped)."""

    def __init__(self, path: Optional[Path], fingerprint: dict):
        self.path, self.fingerprint = path, fingerprint
        self.batches: list[dict] = []  # the finished ones, in order
        self.fd: Optional[int] = None
        self.failed: Optional[str] = None  # why it could not be written (the run goes on)

    def load(self, restart: bool) -> str:
        """Read the batches a previous run of the same command finished. Returns a note for the
        user ("" when there was nothing to continue). A partial file of another command is
        refused (UserError) unless ``restart``; a file that is not a partial file never is replaced."""
        if self.path is None:
            return ""
        try:
            if not stat.S_ISREG(os.lstat(self.path).st_mode):  # a FIFO would hang the read, a link is not ours
                raise UserError(f"{self.path}: is not a crystalframes predict partial file (not a regular file); "
                                f"refusing to read or replace it (move it away, or give another -o)")
            data = self.path.read_bytes()
        except FileNotFoundError:
            return ""
        except OSError as exc:
            from crystalframes.atomic import describe_os_error

            raise UserError(f"{describe_os_error(exc, self.path)}; cannot read the partial file of an earlier run "
                            f"(move it away, or give another -o)") from None
        # ours (even a header torn by a full disk) or a file of the user's, which is never touched
        if not data.startswith(b'{"format": "%s"' % PARTIAL_FORMAT.encode()):
            raise UserError(f"{self.path}: is not a crystalframes predict partial file; refusing to continue from or "
                            f"replace it (move it away, or give another -o)")
        if restart:
            self.path.unlink()
            return f"predict: --restart: {self.path} discarded"
        lines = data.split(b"\n")
        try:
            header = json.loads(lines[0])
        except ValueError:  # torn while its header was written (a full disk): no batch in it
            self.path.unlink()
            return f"predict: {self.path} held no finished batch; starting afresh"
        old = header.get("fingerprint", {})
        differ = [_FIELDS.get(k, k) for k in sorted(set(old) | set(self.fingerprint)) if old.get(k) != self.fingerprint.get(k)]
        if header.get("version") != PARTIAL_VERSION or differ:
            raise UserError(f"{self.path}: holds the finished batches of a different predict command "
                            f"({', '.join(differ) or 'another format version'} differ); not continued. Run the "
                            f"command that wrote it again to finish it, or give --restart to discard it")
        good = len(lines[0]) + 1
        for line in lines[1:]:
            try:
                batch = json.loads(line)
                assert batch["batch"] == len(self.batches)
            except Exception:
                break  # a torn last line: the batch is computed again
            self.batches.append(batch)
            good += len(line) + 1
        if good < len(data):
            os.truncate(self.path, good)
        if not self.batches:
            return ""
        done = sum(len(b["kept"]) + len(b["errors"]) for b in self.batches)
        return f"predict: continuing from {self.path}: {len(self.batches)} batch(es), {done} structure(s) already done"

    def _append(self, record: dict) -> None:
        if self.path is None or self.failed:
            return
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8", "backslashreplace")
        try:
            if self.fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
                if os.fstat(self.fd).st_size == 0:
                    header = {"format": PARTIAL_FORMAT, "version": PARTIAL_VERSION, "fingerprint": self.fingerprint}
                    self._write(json.dumps(header).encode() + b"\n")
            self._write(line)
        except OSError as exc:
            from crystalframes.atomic import write_error

            self.failed = str(write_error(exc, self.path, "the partial file"))
            print(f"warning: {self.failed}; predicting on without it (an interruption now loses the work)",
                  file=sys.stderr, flush=True)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def add(self, batch: dict) -> None:
        batch["batch"] = len(self.batches)
        self.batches.append(batch)
        self._append(batch)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def remove(self) -> None:
        self.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def kept(self) -> bool:
        """Whether the finished batches are on disk."""
        return self.path is not None and not self.failed and self.path.exists()


# ---------------------------------------------------------------- signals and progress

class Interrupted(Exception):
    def __init__(self, name: str, code: int):
        super().__init__(name)
        self.name, self.code = name, code


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` (exit codes 130 and 143, as a shell reports a
    program killed by them), so the command can say what it kept before it stops."""

    def handler(signum, frame):
        name = signal.Signals(signum).name
        raise Interrupted(name, 128 + signum)

    import threading

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@dataclass
class Progress:
    """A tqdm bar on a terminal; in a pipe or log, a line every PROGRESS_SECONDS seconds."""

    total: int
    done: int = 0
    start: float = field(default_factory=time.monotonic)
    bar: object = None
    last: float = 0.0

    def __post_init__(self):
        self.last, self.initial = self.start, self.done  # a continued run's rate counts its own work
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=self.done, unit=" structure", file=sys.stderr, leave=False)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last >= PROGRESS_SECONDS:
            self.last = now
            print(f"predict: {self.done} of {self.total} structure(s), {self.rate()}", file=sys.stderr, flush=True)

    def rate(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        return f"{(self.done - self.initial) / elapsed:.1f} structures/s"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------- the run

def predict_batches(predictor, crystals, batches, partial: Partial, on_batch: Callable[[int], None], targets_clip) -> None:
    """Predict the planned batches ``partial`` does not hold yet, adding each when it is done.
    A batch line: ``kept`` (indices into crystals), ``values`` (the CSV cells of each kept
    structure's numbers), ``errors`` ([source, problem] of its failed structures)."""
    from crystalframes.api import clip_nonnegative

    with_std = hasattr(predictor, "predict_each_with_std")  # an ensemble (--ensemble, or a pretrained model)
    index = {id(c): i for i, c in enumerate(crystals)}
    for start, stop in batches[len(partial.batches):]:
        chunk = crystals[start:stop]
        if with_std:
            kept, pred, std, errors = predictor.predict_each_with_std(chunk, len(chunk))
        else:
            (kept, pred, errors), std = predictor.predict_each(chunk, len(chunk)), None
        clipped = clip_nonnegative(pred, predictor.targets)  # the one place that clips (api)
        values = []
        for i in range(len(kept)):
            row = []
            for t in range(pred.shape[1]):
                row.append(f"{clipped[i, t]:.6g}")
                if std is not None:
                    row.append(f"{float(std[i, t]):.6g}")
                if targets_clip[t]:
                    row.append(f"{pred[i, t]:.6g}")
            values.append(row)
        partial.add({"kept": [index[id(c)] for c in kept], "values": values, "errors": [[e.source, e.problem] for e in errors]})
        on_batch(stop - start)


def column_labels(predictor, with_std: bool, targets_clip) -> list[str]:
    """Each target's column, then its std (ensembles) and, for a target that cannot be negative
    (predictions clipped at 0), its unclipped value."""
    labels = []
    for t, u, clip in zip(predictor.targets, predictor.units, targets_clip):
        unit = f" ({u})" if u else ""
        labels.append(f"{t}{unit}")
        if with_std:
            labels.append(f"{t} std{unit}")
        if clip:
            labels.append(f"{t} raw{unit}")
    return labels
