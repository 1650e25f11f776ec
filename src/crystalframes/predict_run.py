"""The work of ``crystalframes predict`` over many structures, streamed: inputs are read lazily,
batches bounded by a memory budget are planned as the records go by, each structure's graph is
built once (in DataLoader workers) and shared by every ensemble member and by ``--embeddings``,
and each finished batch goes to a partial file at once, so memory stays flat in the number of
inputs. Progress shows on a terminal or in a log; SIGINT/SIGTERM become a clean stop.

The partial file (``OUTPUT.partial`` beside the CSV) is JSON lines: a header holding a
fingerprint of the run (model files, inputs, batch settings, device), then one line per finished
batch holding its CSV rows (and embeddings). A run whose fingerprint differs never continues it.
The batches are planned from the inputs and settings alone (in input order, by
:func:`plan_stream`, the same batches as :func:`plan_batches` of all atom counts), so the
continued run computes exactly the batches the interrupted one would have, and the CSV is the
same byte for byte. The CSV is assembled from the partial file at the end (atomically, as any
output).
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
from typing import Callable, Iterable, Iterator, Optional

import numpy as np

from crystalframes.io.errors import UserError

PARTIAL_FORMAT = "crystalframes-predict-partial"
PARTIAL_VERSION = 2  # 2: batches hold their CSV rows (1: indices into the inputs held in memory)
# Atoms per batch. Memory of a forward pass follows the atoms (and their edges) of the batch, not
# the number of structures: measured on the mp_gap ensemble, ~75 kB per atom, so 4096 atoms keep
# the temporaries near 0.3 GB on top of the model (64 demo structures hold ~660 atoms).
DEFAULT_BATCH_ATOMS = 4096
PROGRESS_SECONDS = float(os.environ.get("CRYSTALFRAMES_PROGRESS_SECONDS", "30"))


class _Planner:
    """Where batches start, one structure at a time: a chunk takes structures while their atoms
    fit ``batch_atoms`` (a structure larger than the budget is a chunk of its own), and a chunk
    is cut into batches of at most ``batch_size`` structures."""

    def __init__(self, batch_size: int, batch_atoms: int):
        self.batch_size, self.batch_atoms = batch_size, batch_atoms
        self.chunk_atoms = self.in_batch = 0

    def starts_batch(self, atoms: int) -> bool:
        """Whether a structure of ``atoms`` atoms, the next one, starts a new batch."""
        new = False
        if self.chunk_atoms and self.chunk_atoms + atoms > self.batch_atoms:  # the chunk is full
            self.chunk_atoms, new = 0, True
        if new or self.in_batch == self.batch_size:
            self.in_batch, new = 0, self.in_batch > 0
        self.chunk_atoms += atoms
        self.in_batch += 1
        return new


def plan_batches(atoms: list[int], batch_size: int, batch_atoms: int) -> list[tuple[int, int]]:
    """Consecutive ``(start, stop)`` batches of at most ``batch_size`` structures and at most
    ``batch_atoms`` atoms (a structure larger than the budget is a batch of its own): the batches
    :func:`plan_stream` forms as the structures go by."""
    planner, starts = _Planner(batch_size, batch_atoms), []
    for i, n in enumerate(atoms):
        if planner.starts_batch(int(n)) or i == 0:
            starts.append(i)
    return list(zip(starts, starts[1:] + [len(atoms)]))


def budget_cap(atoms: list[int], batch_size: int, batch_atoms: int) -> Optional[int]:
    """The structures per batch the atom budget allows for a typical (median) structure of these
    inputs, when ``batch_size`` asks for more; else None."""
    if not atoms:
        return None
    cap = max(1, int(batch_atoms // max(1.0, float(np.median(atoms)))))
    return cap if batch_size > cap else None


@dataclass
class Planned:
    """One planned batch: its number, its structures and the inputs that failed to read since the
    previous batch, as (source, problem) (kept with it so that the partial file holds every
    input's fate in order; errors travel to and from DataLoader workers as plain pairs, an
    exception of two arguments does not unpickle)."""

    number: int
    crystals: list
    read_errors: list


def plan_stream(records: Iterable, batch_size: int, batch_atoms: int) -> Iterator[Planned]:
    """The batches of :func:`plan_batches`, planned as ``records`` (crystals and InputErrors) stream
    by: a chunk takes structures while their atoms fit ``batch_atoms`` (a structure larger than
    the budget is a chunk of its own), and is cut into batches of ``batch_size``. Holds one batch."""
    from crystalframes.io import InputError

    planner, number, crystals, errors = _Planner(batch_size, batch_atoms), 0, [], []
    for rec in records:
        if isinstance(rec, InputError):
            errors.append((rec.source, rec.problem))
            continue
        if planner.starts_batch(rec.num_atoms):
            yield Planned(number, crystals, errors)
            number, crystals, errors = number + 1, [], []
        crystals.append(rec)
    if crystals or errors:
        yield Planned(number, crystals, errors)


@dataclass
class Scan:
    """What a first pass over the inputs learns, holding 4 bytes per structure: how many there
    are (for progress), their atom counts (for the batch-size warning) and a digest of
    everything they hold (for the partial file's fingerprint)."""

    total: int
    atoms: "array"
    digest: str


def scan_inputs(records: Iterable) -> Scan:
    """One streaming pass: :class:`Scan` of ``records`` (crystals and InputErrors); the digest is
    :func:`crystals_digest` of the crystals and errors in order."""
    from array import array

    from crystalframes.io import InputError

    h, atoms = hashlib.sha256(), array("i")
    failed = []
    for rec in records:
        if isinstance(rec, InputError):
            failed.append(f"{rec.source}\0{rec.problem}\0".encode("utf-8", "backslashreplace"))
            continue
        _digest_crystal(h, rec)
        atoms.append(rec.num_atoms)
    for e in failed:
        h.update(e)
    return Scan(len(atoms), atoms, h.hexdigest())


def _digest_crystal(h, c) -> None:
    h.update(f"{c.id}\0{c.source}\0".encode("utf-8", "backslashreplace"))
    for a in (c.lattice, c.atomic_numbers, c.frac_coords):
        h.update(np.ascontiguousarray(a).tobytes())


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
        _digest_crystal(h, c)
    for e in errors:
        h.update(f"{e.source}\0{e.problem}\0".encode("utf-8", "backslashreplace"))
    return h.hexdigest()


# what each fingerprint field means, for the refusal message
_FIELDS = {"model": "the model", "model_sha256": "the model files", "std_scale": "the std scale",
           "inputs": "the inputs", "inputs_sha256": "the structures the inputs hold", "batch_size": "--batch-size",
           "batch_atoms": "--batch-atoms", "device": "--device", "crystalframes": "the crystalframes version",
           "embeddings": "--embeddings / --atom-embeddings"}


class Partial:
    """The finished batches of a run, appended one JSON line each (one ``os.write`` per line, so
    an interruption leaves whole lines; a torn last line, from a full disk, is dropped). Only
    their count is held in memory; :meth:`lines` reads them back. Without a file of its own (the
    output is a stream) or once it cannot be written, the lines go to a temporary file (or, if
    that fails too, memory) so the CSV can still be assembled."""

    def __init__(self, path: Optional[Path], fingerprint: dict):
        self.path, self.fingerprint = path, fingerprint
        self.count = 0  # finished batches
        self.done = 0  # structures in them (predicted or failed)
        self.kept_rows = 0  # predicted structures in them
        self.fd: Optional[int] = None
        self.failed: Optional[str] = None  # why it could not be written (the run goes on)
        self.spool = None  # a temporary file holding the lines when the partial file cannot
        self.memory: Optional[list[bytes]] = None  # the last resort

    def _count(self, batch: dict) -> None:
        self.count += 1
        self.done += len(batch["rows"]) + len(batch["errors"])
        self.kept_rows += len(batch["rows"])

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
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return ""
        except OSError as exc:
            from crystalframes.atomic import describe_os_error

            raise UserError(f"{describe_os_error(exc, self.path)}; cannot read the partial file of an earlier run "
                            f"(move it away, or give another -o)") from None
        with fh:
            first = fh.readline()
            # ours (even a header torn by a full disk) or a file of the user's, which is never touched
            if not first.startswith(b'{"format": "%s"' % PARTIAL_FORMAT.encode()):
                raise UserError(f"{self.path}: is not a crystalframes predict partial file; refusing to continue from or "
                                f"replace it (move it away, or give another -o)")
            if restart:
                self.path.unlink()
                return f"predict: --restart: {self.path} discarded"
            try:
                header = json.loads(first)
            except ValueError:  # torn while its header was written (a full disk): no batch in it
                self.path.unlink()
                return f"predict: {self.path} held no finished batch; starting afresh"
            old = header.get("fingerprint", {})
            differ = [_FIELDS.get(k, k) for k in sorted(set(old) | set(self.fingerprint)) if old.get(k) != self.fingerprint.get(k)]
            if header.get("version") != PARTIAL_VERSION or differ:
                raise UserError(f"{self.path}: holds the finished batches of a different predict command "
                                f"({', '.join(differ) or 'another format version'} differ); not continued. Run the "
                                f"command that wrote it again to finish it, or give --restart to discard it")
            good = len(first)
            for line in fh:  # streamed: a resumed run holds no more than a fresh one
                try:
                    if not line.endswith(b"\n"):
                        raise ValueError("torn")
                    batch = json.loads(line)
                    assert batch["batch"] == self.count
                except Exception:
                    break  # a torn last line: the batch is computed again
                self._count(batch)
                good += len(line)
            size = os.fstat(fh.fileno()).st_size
        if good < size:
            os.truncate(self.path, good)
        if not self.count:
            return ""
        return f"predict: continuing from {self.path}: {self.count} batch(es), {self.done} structure(s) already done"

    def _append(self, line: bytes) -> None:
        if self.path is not None and not self.failed:
            try:
                if self.fd is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
                    if os.fstat(self.fd).st_size == 0:
                        header = {"format": PARTIAL_FORMAT, "version": PARTIAL_VERSION, "fingerprint": self.fingerprint}
                        self._write(self.fd, json.dumps(header).encode() + b"\n")
                self._write(self.fd, line)
                return
            except OSError as exc:
                from crystalframes.atomic import write_error

                self.failed = str(write_error(exc, self.path, "the partial file"))
                print(f"warning: {self.failed}; predicting on without it (an interruption now loses the work)",
                      file=sys.stderr, flush=True)
                self._to_spool()
        if self.memory is None and self.spool is None:
            self._to_spool()
        if self.memory is not None:
            self.memory.append(line)
            return
        try:
            self._write(self.spool.fileno(), line)
        except OSError:
            self._to_memory()
            self.memory.append(line)

    def _to_spool(self) -> None:
        """Move the lines written so far (from the partial file, if any) to a temporary file."""
        import tempfile

        try:
            self.spool = tempfile.TemporaryFile()
            for line in self._file_lines():
                self._write(self.spool.fileno(), line)
        except OSError:
            self._to_memory()

    def _to_memory(self) -> None:
        lines = list(self._file_lines()) if self.spool is None else []
        if self.spool is not None:
            try:
                self.spool.seek(0)
                lines = self.spool.read().splitlines(keepends=True)
            except OSError:
                pass
            self.spool = None
        self.memory = lines

    def _file_lines(self) -> Iterator[bytes]:
        """The batch lines of the partial file (its header skipped)."""
        if self.path is None or not self.path.exists():
            return
        with open(self.path, "rb") as fh:
            fh.readline()
            for line in fh:
                if line.endswith(b"\n"):
                    yield line

    @staticmethod
    def _write(fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def add(self, batch: dict) -> None:
        batch["batch"] = self.count
        self._count(batch)
        self._append((json.dumps(batch, separators=(",", ":")) + "\n").encode("utf-8", "backslashreplace"))

    def lines(self) -> Iterator[dict]:
        """The finished batches, in order, read back one at a time."""
        if self.memory is not None:
            source = iter(self.memory)
        elif self.spool is not None:
            self.spool.flush()
            self.spool.seek(0)
            source = iter(self.spool)
        else:
            source = self._file_lines()
        for line in source:
            yield json.loads(line)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def remove(self) -> None:
        self.close()
        if self.spool is not None:
            self.spool.close()
            self.spool = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def kept(self) -> bool:
        """Whether the finished batches are on disk."""
        return self.path is not None and not self.failed and self.path.exists()


# ---------------------------------------------------------------- signals and progress

class Interrupted(BaseException):
    """A signal that stops ``predict``. A BaseException, as KeyboardInterrupt is: the guards that
    turn one bad record's exception into its error row (``except Exception``, e.g. the readers'
    parser guard) must not catch it, or a signal landing while a record is read becomes that
    record's error, written to the partial file and kept by the continued run."""

    def __init__(self, name: str, code: int):
        super().__init__(name)
        self.name, self.code = name, code


@contextmanager
def stop_on_signals() -> Iterator[Callable[[], None]]:
    """SIGINT and SIGTERM raise :class:`Interrupted` (exit codes 130 and 143, as a shell reports a
    program killed by them), so the command can say what it kept before it stops.

    Yields ``check``, which raises the :class:`Interrupted` of a signal already received: call it
    at each batch boundary. The handler's own exception can be lost on its way up: a signal that
    arrives while Python runs a finalizer (vesin's ``NeighborList.__del__``, measured in CI) raises
    inside it, where Python only prints "Exception ignored", and the command went on to finish
    with exit code 0 as if never asked to stop."""
    received: list[tuple[str, int]] = []

    def handler(signum, frame):
        name = signal.Signals(signum).name
        received.append((name, 128 + signum))
        raise Interrupted(name, 128 + signum)

    def check() -> None:
        if received:
            raise Interrupted(*received[0])

    import threading

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield check
        return
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield check
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

class _Member:
    """What one model needs of a built batch: the graph settings and elements of its group."""

    def __init__(self, predictor):
        from crystalframes.models.elements import supported_atomic_numbers

        self.predictor = predictor
        self.key = (predictor.graph_settings, supported_atomic_numbers(predictor.model))


class BuildGraphs:
    """A map-style dataset for a DataLoader whose "indices" are :class:`Planned` batches (the
    planner runs lazily in the main process, the building in the workers): each batch becomes,
    per distinct (graph settings, supported elements) of the members, its graphs collated, the
    positions of the structures in it and the errors of the others. The members of an ensemble
    (and the embeddings) share one group, so each structure's graph is built once."""

    def __init__(self, keys: list, dtype):
        self.keys, self.dtype = keys, dtype

    def __getitem__(self, planned):
        return self.__getitems__([planned])[0]

    def __getitems__(self, items):
        return [self.build(planned) for planned in items]

    def build(self, planned: Planned):
        from crystalframes.data import graph
        from crystalframes.data.batch import collate
        from crystalframes.io import InputError
        from crystalframes.models.elements import element_label

        groups = []
        for settings, supported in self.keys:
            graphs, kept, unsupported, failed = [], [], [], []
            lo, hi = min(supported), max(supported)
            for i, c in enumerate(planned.crystals):
                bad = sorted({int(z) for z in np.unique(c.atomic_numbers)} - supported)
                if bad:  # the error of crystalframes.models.elements.unsupported_elements_error, without the model
                    names = ", ".join(element_label(z) for z in bad)
                    unsupported.append((c.where, f"the model cannot encode element(s) {names}: it covers Z = {lo}..{hi}"))
                    continue
                try:
                    graphs.append(graph.build_graph(c, settings))  # looked up here: a test counts the calls
                    kept.append(i)
                except InputError as exc:
                    failed.append((exc.source, exc.problem))
            groups.append((collate(graphs, dtype=self.dtype) if graphs else None, kept, unsupported + failed))
        return planned, groups


def _identity(batch):
    return batch[0]


def _pending(batches: Iterable[Planned], skip: int) -> Iterator[list]:
    """The planned batches after the ``skip`` ones a partial file holds, each as the one-item
    "index" list a DataLoader's batch sampler yields."""
    for planned in batches:
        if planned.number >= skip:
            yield [planned]


class _Sampler:
    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


# Below this many structures a worker process costs more to start than it saves.
SMALL_RUN = 1000


def default_workers(device: str, total: int) -> int:
    """Graph-building processes: on a GPU, up to two build the next batches while the model
    runs; on the CPU 0 (build in the main process), as the forward's own threads use the cores:
    on 2 busy cores one worker gave 0.93x the structures/s of none (20k structures, a tiny
    eComFormer). Give --workers where cores are free."""
    if total < SMALL_RUN or not str(device).startswith(("cuda", "mps")):
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(2, cpus)


def predict_stream(predictor, batches: Iterable[Planned], partial: Partial, on_batch: Callable[[int], None],
                   targets_clip, workers: int = 0, embeddings: Optional[str] = None) -> None:
    """Predict the planned batches ``partial`` does not hold yet, adding each when it is done.

    Graphs are built by a DataLoader (``workers`` processes, 0: in this one) once per structure;
    each member runs one forward on the batch, the first member's pooled features (and, with
    ``embeddings="atoms"``, per-atom features) are kept from that same forward. A batch line:
    ``rows`` (the CSV cells of each predicted structure), ``read_errors`` (inputs that failed to
    read before it), ``errors`` ([source, problem] of its failed structures) and, with
    ``embeddings``, ``emb`` (base64 float32, one row per ``emb_rows`` entry) and ``atoms``."""
    import base64

    import torch
    from torch.utils.data import DataLoader

    from crystalframes.api import clip_nonnegative

    members = [_Member(m) for m in getattr(predictor, "members", [predictor])]
    ensemble = hasattr(predictor, "members")
    keys = list(dict.fromkeys(m.key for m in members))
    param = next(members[0].predictor.model.parameters())
    loader = DataLoader(BuildGraphs(keys, param.dtype), batch_sampler=_Sampler(_pending(batches, partial.count)),
                        collate_fn=_identity, num_workers=workers, **({"prefetch_factor": 2} if workers else {}))
    for m in members:
        m.predictor.model.eval()
    for planned, groups in loader:
        crystals = planned.crystals
        results, errors, emb = [], {}, None
        with torch.no_grad():
            for n, m in enumerate(members):
                batch, kept, errs = groups[keys.index(m.key)]
                out = {}
                if batch is not None:
                    pred, pooled, atoms = _forward(m.predictor, batch.to(param.device), embeddings if n == 0 else None)
                    for row, i in enumerate(kept):
                        if np.isfinite(pred[row]).all():
                            out[i] = pred[row]
                        else:
                            errs = errs + [(crystals[i].where, "the model's output is not finite (NaN or infinity)")]
                    if pooled is not None:
                        emb = (kept, pooled, atoms)
                results.append(out)
                for e in errs:  # an ensemble reports each problem once (as Ensemble.predict_each_with_std)
                    errors.setdefault(e if ensemble else len(errors), e)
        kept = [i for i in range(len(crystals)) if all(i in r for r in results)]
        width = len(predictor.columns)
        stacked = np.stack([np.stack([r[i] for i in kept]) for r in results]) if kept else np.zeros((len(results), 0, width))
        pred = stacked.mean(axis=0)
        std = predictor.std_scale * stacked.std(axis=0, ddof=1) if ensemble else None
        clipped = clip_nonnegative(pred, predictor.columns)  # the one place that clips (api); tensor components never are
        rows = []
        for k, i in enumerate(kept):
            c = crystals[i]
            row = [c.id, c.source, c.formula, c.num_atoms]
            for t in range(width):
                row.append(f"{clipped[k, t]:.6g}")
                if std is not None:
                    row.append(f"{float(std[k, t]):.6g}")
                if targets_clip[t]:
                    row.append(f"{pred[k, t]:.6g}")
            rows.append(row)
        line = {"rows": rows, "read_errors": planned.read_errors, "errors": list(errors.values())}
        if embeddings is not None and emb is not None:
            positions, pooled, atoms = emb
            at = {i: row for row, i in enumerate(positions)}
            # as Predictor.embed_each over the predicted structures: a non-finite embedding is left out
            good = [k for k, i in enumerate(kept) if np.isfinite(pooled[at[i]]).all()
                    and (atoms is None or np.isfinite(atoms[at[i]]).all())]
            line["emb_rows"] = good
            line["emb"] = base64.b64encode(np.ascontiguousarray(pooled[[at[kept[k]] for k in good]], dtype=np.float32)).decode()
            if atoms is not None:
                parts = [atoms[at[kept[k]]] for k in good]
                line["atom_counts"] = [len(a) for a in parts]
                line["atoms"] = base64.b64encode(np.ascontiguousarray(np.concatenate(parts) if parts else np.zeros((0, pooled.shape[1])), dtype=np.float32)).decode()
        partial.add(line)
        on_batch(len(crystals))


def _forward(predictor, batch, embed: Optional[str]):
    """``(predictions (n, n_targets) float64 in physical units, pooled features or None, per-atom
    features or None)`` from one pass: the model's forward is head(mean over atoms(encode))."""
    import torch

    model = predictor.model
    if embed and hasattr(model, "encode") and hasattr(model, "head"):
        atoms = model.encode(batch)
        pooled_t = batch.mean_over_atoms(atoms)
        out = model.head(pooled_t)
    else:
        out, atoms, pooled_t = model(batch), None, None
        if embed:
            atoms = model.node_features(batch)
            pooled_t = batch.mean_over_atoms(atoms)
    pred = predictor.normaliser.inverse(out).cpu().numpy().astype(np.float64)
    if predictor.tensor_rank is not None:  # a tensor model: one column per component (Predictor.columns)
        from crystalframes.io.tensors import voigt_components

        pred = voigt_components(pred, predictor.tensor_rank)
    if not embed:
        return pred, None, None
    pooled = pooled_t.cpu().numpy().astype(np.float64)
    if embed != "atoms":
        return pred, pooled, None
    return pred, pooled, [a.numpy().astype(np.float64) for a in torch.split(atoms.cpu(), batch.num_atoms.tolist())]


def column_labels(predictor, with_std: bool, targets_clip) -> list[str]:
    """Each target's column (each component of a tensor target: ``Predictor.columns``), then its
    std (ensembles) and, for a target that cannot be negative (predictions clipped at 0), its
    unclipped value."""
    labels = []
    for t, u, clip in zip(predictor.columns, predictor.column_units, targets_clip):
        unit = f" ({u})" if u else ""
        labels.append(f"{t}{unit}")
        if with_std:
            labels.append(f"{t} std{unit}")
        if clip:
            labels.append(f"{t} raw{unit}")
    return labels
