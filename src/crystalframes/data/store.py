"""A sharded graph store of flat arrays: build the graphs of a data set once, read any graph
of it from any process without loading the rest (issue 26).

Layout of a store folder::

    STORE/manifest.json          format, package version, GraphSettings, source fingerprint,
                                 counts, per-shard file sizes + sha256, bad records
    STORE/shard-00000/*.npy      flat arrays of the shard's structures (below), read with
                                 positioned reads (:class:`_FileArray`) in each process
    STORE/shard-00000/meta.json  the shard's ids, record splits and target names

Shard ``i`` holds the good records among records ``[i * shard_size, (i + 1) * shard_size)`` of
the source (bad records count, so a rerun knows which records a finished shard covers without
building anything). Per shard:

* ``atom_offsets``, ``edge_offsets`` (int64, S + 1): structure s owns atoms ``[a[s], a[s+1])``
  and edges ``[e[s], e[s+1])`` of the flat arrays;
* ``atomic_numbers`` (uint8), ``frac_coords`` (float64, wrapped into [0, 1) as build_graph
  wraps them), ``lattice`` (float64, S x 3 x 3);
* ``edge_index`` (2 x E, *local* atom indices in the smallest unsigned type holding the
  shard's largest structure: uint8 up to 256 atoms, then uint16, int32), ``edge_shift``
  (E x 3, int8; int16 or int32 for a shard where an image shift does not fit int8, recorded in
  the shard's ``dtypes``);
* ``targets`` (float64, S x T over the shard's target names, NaN where absent) and
  ``target_present`` (bool, S x T: a record may carry a NaN value for a target, which is kept
  as it is; absent keys are not invented).

Not stored, because they are recomputed exactly (same operations on the same float64 inputs as
:func:`~crystalframes.data.graph.build_graph`): ``pos = frac_coords @ lattice``,
``edge_vec = pos[j] + edge_shift @ lattice - pos[i]`` and ``edge_is_lattice`` (build_graph
appends the 6 lattice self-edges per atom after the k-NN edges: the last ``6 N`` edges when
``lattice_edges`` is set; the build checks every graph against this rule).

Integrity: :meth:`GraphStore.open` checks that every shard file exists with its recorded size
(one ``stat`` per file); ``verify="full"`` (and ``crystalframes data verify``) compares every
sha256. A rerun of the same build keeps the shards that are intact and rebuilds the others.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crystalframes.data.graph import CrystalGraph, GraphSettings, build_graph
from crystalframes.io.crystal import Crystal
from crystalframes.io.errors import InputError, SkippedInput, UserError
from crystalframes.version import __version__

log = logging.getLogger("crystalframes.data")

STORE_FORMAT = "crystalframes-graph-store"
STORE_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARD_META = "meta.json"
DEFAULT_SHARD_SIZE = 4096
# Records sent to a worker process at a time: small enough that 2 workers share a small shard,
# large enough that pickling the crystals costs little next to building their graphs.
CHUNK_RECORDS = 64
# Graph arrays of a shard, in the order they are written (plus SHARD_META).
_ARRAYS = ("atom_offsets", "edge_offsets", "atomic_numbers", "frac_coords", "lattice", "edge_index", "edge_shift",
           "targets", "target_present")
_SHARD_PREFIX = "shard-"
_TEMP_PREFIX = ".tmp-"
_READ_BLOCK = 1 << 20
# Held (flock) while a process builds into the folder: a second builder (another DDP rank, a
# second terminal) waits, then finds the store complete instead of writing the same shards.
_LOCK = ".build.lock"

__all__ = ["GraphStore", "StoreError", "build_store", "DEFAULT_SHARD_SIZE"]


class StoreError(InputError):
    """A store that cannot be used as it is (not a store, unfinished, a damaged shard, another
    build's folder); the message says how to rebuild it."""


# --------------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------------


def _index_dtype(max_atoms: int) -> np.dtype:
    """Smallest type for local atom indices 0 .. max_atoms - 1."""
    for dt in (np.uint8, np.uint16, np.int32):
        if max_atoms - 1 <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise ValueError(f"a structure of {max_atoms} atoms has more atoms than int32 indices can address")


def _shift_dtype(shifts: np.ndarray) -> np.dtype:
    """Smallest signed type holding every image shift of a shard (int8 for ordinary cells; a
    very flat or long cell's k-NN can reach further images)."""
    lo, hi = (int(shifts.min()), int(shifts.max())) if shifts.size else (0, 0)
    for dt in (np.int8, np.int16, np.int32):
        if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def _lattice_edge_mask(num_edges: int, num_atoms: int, settings: GraphSettings) -> np.ndarray:
    """``edge_is_lattice`` as build_graph lays it out: its 6 lattice self-edges per atom come
    after the k-NN edges."""
    mask = np.zeros(num_edges, dtype=bool)
    if settings.lattice_edges:
        mask[num_edges - 6 * num_atoms:] = True
    return mask


@dataclass
class _Chunk:
    """The graphs of consecutive records, as flat arrays (what a worker sends back)."""

    first_record: int
    ids: list[str] = field(default_factory=list)
    splits: list[str | None] = field(default_factory=list)
    targets: list[dict] = field(default_factory=list)
    num_atoms: list[int] = field(default_factory=list)
    num_edges: list[int] = field(default_factory=list)
    atomic_numbers: list[np.ndarray] = field(default_factory=list)
    frac_coords: list[np.ndarray] = field(default_factory=list)
    lattice: list[np.ndarray] = field(default_factory=list)
    edge_index: list[np.ndarray] = field(default_factory=list)
    edge_shift: list[np.ndarray] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)  # (record number, "where: problem")
    seconds: float = 0.0


def _encode_chunk(first_record: int, items: list, settings: GraphSettings) -> _Chunk:
    """Build the graphs of ``items`` (a Crystal, or the message of a bad record; records ``first_record``...);
    a graph that fails is a bad record, never an abort. Runs in a worker process."""
    start = time.perf_counter()
    chunk = _Chunk(first_record)
    for offset, item in enumerate(items):
        record = first_record + offset
        if isinstance(item, str):  # a bad record's "where: problem"
            chunk.errors.append((record, item))
            continue
        try:
            g = build_graph(item, settings)
        except Exception as exc:  # a graph that cannot be built costs its record only
            chunk.errors.append((record, str(InputError(item.where, f"graph not built: {type(exc).__name__}: {exc}"))))
            continue
        if not np.array_equal(g.edge_is_lattice, _lattice_edge_mask(g.num_edges, g.num_nodes, settings)):
            raise RuntimeError("build_graph no longer puts the lattice self-edges last; the store's "
                               "edge_is_lattice rule (crystalframes.data.store) must follow it")
        chunk.ids.append(g.id)
        chunk.splits.append(item.split)
        chunk.targets.append(g.targets)
        chunk.num_atoms.append(g.num_nodes)
        chunk.num_edges.append(g.num_edges)
        chunk.atomic_numbers.append(g.atomic_numbers)
        chunk.frac_coords.append(g.frac_coords)
        chunk.lattice.append(g.lattice)
        chunk.edge_index.append(g.edge_index)
        chunk.edge_shift.append(g.edge_shift)
    chunk.seconds = time.perf_counter() - start
    return chunk


def _shard_arrays(chunks: list[_Chunk]) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and meta of one shard from its chunks (in record order)."""
    ids = [i for c in chunks for i in c.ids]
    n_atoms = np.array([n for c in chunks for n in c.num_atoms], dtype=np.int64)
    n_edges = np.array([n for c in chunks for n in c.num_edges], dtype=np.int64)
    targets = [t for c in chunks for t in c.targets]
    names = sorted({name for t in targets for name in t})
    z = np.concatenate([a for c in chunks for a in c.atomic_numbers]) if ids else np.zeros(0, np.int64)
    if z.size and (z.min() < 0 or z.max() > np.iinfo(np.uint8).max):
        raise ValueError(f"atomic number {int(z.max())} does not fit uint8")
    ei = np.concatenate([a for c in chunks for a in c.edge_index], axis=1) if ids else np.zeros((2, 0), np.int64)
    shift = np.concatenate([a for c in chunks for a in c.edge_shift]) if ids else np.zeros((0, 3), np.int64)
    index_dt = _index_dtype(int(n_atoms.max()) if ids else 1)
    shift_dt = _shift_dtype(shift)
    values = np.full((len(ids), len(names)), np.nan, dtype=np.float64)
    present = np.zeros((len(ids), len(names)), dtype=bool)
    for s, t in enumerate(targets):
        for col, name in enumerate(names):
            if name in t:
                values[s, col] = t[name]
                present[s, col] = True
    arrays = {
        "atom_offsets": np.concatenate([[0], np.cumsum(n_atoms)]).astype(np.int64),
        "edge_offsets": np.concatenate([[0], np.cumsum(n_edges)]).astype(np.int64),
        "atomic_numbers": z.astype(np.uint8),
        "frac_coords": np.concatenate([a for c in chunks for a in c.frac_coords]) if ids else np.zeros((0, 3)),
        "lattice": np.stack([a for c in chunks for a in c.lattice]) if ids else np.zeros((0, 3, 3)),
        "edge_index": ei.astype(index_dt),
        "edge_shift": shift.astype(shift_dt),
        "targets": values,
        "target_present": present,
    }
    meta = {"ids": ids, "splits": [s for c in chunks for s in c.splits], "target_names": names}
    return arrays, meta


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_READ_BLOCK):
            h.update(block)
    return h.hexdigest()


def _write_json_atomic(path: Path, data: dict) -> None:
    """Replace ``path`` by a rename, so a reader (or a killed build) sees the old manifest or
    the new one, never half of one."""
    tmp = path.with_name(f"{_TEMP_PREFIX}{path.name}.{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _shard_name(index: int) -> str:
    return f"{_SHARD_PREFIX}{index:05d}"


def _write_shard(root: Path, index: int, records: tuple[int, int], chunks: list[_Chunk]) -> dict:
    """Write shard ``index`` into a temporary folder, then rename it into place; its manifest
    entry (counts, dtypes, file sizes and sha256, bad records)."""
    arrays, meta = _shard_arrays(chunks)
    name = _shard_name(index)
    tmp = root / f"{_TEMP_PREFIX}{name}.{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files = {}
    for key, arr in arrays.items():
        path = tmp / f"{key}.npy"
        with open(path, "wb") as fh:
            np.save(fh, np.ascontiguousarray(arr), allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
    with open(tmp / SHARD_META, "w", encoding="utf-8") as fh:
        json.dump(meta, fh)
        fh.flush()
        os.fsync(fh.fileno())
    for path in sorted(tmp.iterdir()):
        files[path.name] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    final = root / name
    if final.exists():  # a damaged or stale copy: moved aside first, a folder cannot be renamed over
        old = root / f"{_TEMP_PREFIX}old-{name}.{os.getpid()}"
        os.replace(final, old)
        shutil.rmtree(old)
    os.replace(tmp, final)
    errors = sorted(e for c in chunks for e in c.errors)
    return {
        "index": index,
        "name": name,
        "records": list(records),
        "structures": len(meta["ids"]),
        "atoms": int(arrays["atom_offsets"][-1]),
        "edges": int(arrays["edge_offsets"][-1]),
        "max_atoms": int(np.diff(arrays["atom_offsets"]).max()) if meta["ids"] else 0,
        "dtypes": {"edge_index": str(arrays["edge_index"].dtype), "edge_shift": str(arrays["edge_shift"].dtype)},
        "target_names": meta["target_names"],
        "files": files,
        "errors": [message for _, message in errors],
        "build_seconds": round(sum(c.seconds for c in chunks), 3),
    }


def _shard_problem(root: Path, entry: dict, full: bool) -> str | None:
    """Why shard ``entry`` is unusable (a missing file, a size or, with ``full``, a sha256 that
    differs from the manifest's), or None."""
    folder = root / entry["name"]
    if not folder.is_dir():
        return "folder missing"
    for fname, want in entry["files"].items():
        path = folder / fname
        try:
            size = path.stat().st_size
        except OSError:
            return f"{fname} missing"
        if size != want["size"]:
            return f"{fname} has {size} bytes, the manifest says {want['size']} (truncated or replaced)"
    if full:
        for fname, want in entry["files"].items():
            if _sha256(folder / fname) != want["sha256"]:
                return f"{fname} does not match its sha256 (corrupted)"
    return None


# --------------------------------------------------------------------------------------------------
# Source identity
# --------------------------------------------------------------------------------------------------


def _resolve(source: str | os.PathLike) -> tuple[Path, str | None]:
    """The local file/folder of ``source`` and the archive member to read (as load_dataset)."""
    from crystalframes.data.datasets import DATASETS
    from crystalframes.data.sources import resolve_source

    member = DATASETS[str(source)].member if str(source) in DATASETS else None
    return resolve_source(source), member


def _fingerprint(path: Path, member: str | None) -> dict:
    """What identifies the source's content without reading it: path, size and mtime of a file;
    of a folder, a hash of its entries' names, sizes and mtimes (the structure files of a plain
    or id_prop folder sit in the folder itself)."""
    path = path.resolve()
    st = path.stat()
    if not path.is_dir():
        return {"path": str(path), "member": member, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    h = hashlib.sha256()
    count = 0
    with os.scandir(path) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            try:
                est = entry.stat()
            except OSError:
                continue
            h.update(f"{entry.name}\0{est.st_size}\0{est.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
            count += 1
    return {"path": str(path), "member": member, "entries": count, "listing_sha256": h.hexdigest()}


def _build_id(fingerprint: dict, settings: GraphSettings, shard_size: int) -> str:
    key = {"format": STORE_FORMAT_VERSION, "version": __version__, "source": fingerprint,
           "settings": settings.as_dict(), "shard_size": shard_size}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def rebuild_command(source: str, out: str | os.PathLike, settings: GraphSettings, shard_size: int) -> str:
    """The ``crystalframes data build`` command line that (re)builds this store."""
    import shlex

    k = "none" if settings.k is None else str(settings.k)
    lattice = " --lattice-edges" if settings.lattice_edges else ""
    # absolute paths, so the command works from wherever the error is read; a dataset name stays
    where = str(Path(source).resolve()) if Path(source).exists() else str(source)
    return (f"crystalframes data build {shlex.quote(where)} -o {shlex.quote(str(Path(out).resolve()))} "
            f"--k {k}{lattice} --shard-size {shard_size}")


def _read_manifest(root: Path) -> dict | None:
    """The manifest of ``root``, None if it has none; StoreError if it is not ours."""
    path = root / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreError(str(root), f"unreadable {MANIFEST} ({exc}); not a graph store, or a damaged one: "
                                    "remove the folder and build again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT:
        raise StoreError(str(root), f"{MANIFEST} is not a crystalframes graph store's")
    if manifest.get("format_version") != STORE_FORMAT_VERSION:
        raise StoreError(str(root), f"store format {manifest.get('format_version')}, this crystalframes reads "
                                    f"{STORE_FORMAT_VERSION}: build it again (`{manifest['build']['command']}`)")
    return manifest


# --------------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------------


def _iter_source(path: Path, member: str | None, skipped: list[str]) -> Iterator[Crystal | InputError]:
    """The records of the source in order, lazily (JSONL, folders, id_prop, multi-frame files;
    a .json list or a .zip member is parsed whole first by the reader); the entries a folder
    holds that are not structure files go to ``skipped`` instead. Raises at once (DatasetError)
    for a source that is unusable as a whole."""
    from crystalframes.io.datasets import iter_records

    records = iter_records(path, member=member)

    def without_skipped() -> Iterator[Crystal | InputError]:
        for item in records:
            if isinstance(item, SkippedInput):
                skipped.append(str(item))
            else:
                yield item

    return without_skipped()


def _batched(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _Progress:
    """Structures done and structures/s on stderr, one line when a shard finishes at most every
    2 s (plain lines: a log or a pipe shows them as well as a terminal)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.start = time.perf_counter()
        self.built = 0
        self.kept = 0
        self.last = 0.0

    def update(self, built: int = 0, kept: int = 0, shards: int = 0, force: bool = False) -> None:
        self.built += built
        self.kept += kept
        now = time.perf_counter()
        if not self.enabled or (not force and now - self.last < 2.0):
            return
        self.last = now
        rate = self.built / max(now - self.start, 1e-9)
        kept_text = f" ({self.kept} kept from an earlier run)" if self.kept else ""
        print(f"graph store: {self.built + self.kept} structures in {shards} shards{kept_text}, "
              f"{rate:.0f} structures/s", file=sys.stderr, flush=True)


def _prepare_folder(out: Path, build_id: str) -> dict | None:
    """The existing manifest of the same build at ``out`` (to resume), or None for a new store;
    refuses a folder that is not a store or is another build's store."""
    if out.exists() and not out.is_dir():
        raise StoreError(str(out), "exists and is not a folder; refusing to overwrite it (give a new -o)")
    if not out.exists():
        out.mkdir(parents=True)
        return None
    manifest = _read_manifest(out)
    if manifest is None:
        if any(p.name != _LOCK for p in out.iterdir()):
            raise StoreError(str(out), "is a folder that is not a graph store (no manifest.json) and not empty; "
                                       "refusing to write into it (give a new or empty -o)")
        return None
    if manifest["build"]["id"] != build_id:
        raise StoreError(str(out), "holds a store of another build (" + manifest["build"]["command"]
                         + f", source {manifest['build']['source']}); its shards cannot be mixed with this build's: "
                         "give another -o, or remove the folder to rebuild it")
    return manifest


def _new_manifest(source: str, out: Path, settings: GraphSettings, shard_size: int, fingerprint: dict,
                  build_id: str) -> dict:
    return {
        "format": STORE_FORMAT,
        "format_version": STORE_FORMAT_VERSION,
        "crystalframes_version": __version__,
        "settings": settings.as_dict(),
        "build": {"id": build_id, "source": str(source), "fingerprint": fingerprint, "shard_size": shard_size,
                  "command": rebuild_command(str(source), out, settings, shard_size)},
        "encoding": {
            "stored": "atom/edge offsets int64, atomic_numbers uint8, frac_coords float64 (wrapped), lattice float64, "
                      "edge_index local (uint8/uint16/int32 per shard), edge_shift int8 (int16/int32 per shard when "
                      "a shift does not fit), targets float64 + presence mask, ids/splits/target names in meta.json",
            "recomputed": "pos = frac_coords @ lattice; edge_vec = pos[j] + edge_shift @ lattice - pos[i] "
                          "(build_graph's operations, bit-identical); edge_is_lattice = the last 6 N edges when "
                          "lattice_edges",
        },
        "complete": False,
        "num_records": None,
        "num_structures": 0,
        "num_errors": 0,
        "bytes": 0,
        "target_names": [],
        "shards": [],
        "skipped": [],
    }


def _refresh_totals(manifest: dict) -> None:
    shards = sorted(manifest["shards"], key=lambda e: e["index"])
    manifest["shards"] = shards
    manifest["num_structures"] = sum(e["structures"] for e in shards)
    manifest["num_errors"] = sum(len(e["errors"]) for e in shards)
    manifest["bytes"] = sum(f["size"] for e in shards for f in e["files"].values())
    manifest["target_names"] = sorted({n for e in shards for n in e["target_names"]})


def _report_errors(source: str, manifest: dict) -> None:
    """One WARNING grouping the bad records by problem (as the dataset readers report them)."""
    from crystalframes.io.datasets import _problem_kind

    errors = [m for e in manifest["shards"] for m in e["errors"]]
    if errors:
        groups: dict[str, list[str]] = {}
        for message in errors:
            groups.setdefault(_problem_kind(message.split(": ", 1)[-1]), []).append(message)
        lines = [f"{source}: {manifest['num_structures']} structures stored, {len(errors)} bad records:"]
        for kind, items in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            lines.append(f"  {len(items):>6} x {kind}  (e.g. {items[0]})")
        log.warning("%s", "\n".join(lines))
    if manifest["skipped"]:
        log.warning("%s: %d entries skipped (not structure files): %s", source, len(manifest["skipped"]),
                    "; ".join(manifest["skipped"][:10]) + (" ..." if len(manifest["skipped"]) > 10 else ""))


def build_store(source: str | os.PathLike, out: str | os.PathLike, settings: GraphSettings = GraphSettings(),
                workers: int = 1, shard_size: int = DEFAULT_SHARD_SIZE, progress: bool = True) -> "GraphStore":
    """Build (or finish, or repair) the graph store of ``source`` at ``out`` and open it.

    ``source`` is anything :func:`~crystalframes.data.sources.load_dataset` reads (a file, a
    folder, JSONL(.gz), a registered dataset name). Records are read lazily in order and their
    graphs built in ``workers`` processes (1: in this process), ``shard_size`` records per shard;
    each finished shard is written atomically and recorded in the manifest at once, so a killed
    build rerun with the same arguments keeps the finished shards (after checking their
    sha256) and builds only the missing or damaged ones. Bad records (unreadable, no atoms, a
    graph that fails) are listed in the manifest and in one warning, never fatal.
    """
    if not isinstance(shard_size, int) or shard_size < 1:
        raise UserError(f"shard size must be a positive integer, got {shard_size!r}")
    if not isinstance(workers, int) or workers < 1:
        raise UserError(f"workers must be a positive integer, got {workers!r}")
    out = Path(out)
    path, member = _resolve(source)
    fingerprint = _fingerprint(path, member)
    build_id = _build_id(fingerprint, settings, shard_size)
    skipped: list[str] = []
    records = _iter_source(path, member, skipped)
    _prepare_folder(out, build_id)  # refusals come before anything is written into the folder
    with _build_lock(out):
        old = _prepare_folder(out, build_id)  # again: another process may have built it meanwhile
        if old is not None and old["complete"] and all(_shard_problem(out, e, full=True) is None for e in old["shards"]):
            if progress:
                print(f"graph store: {out} is complete and intact ({old['num_structures']} structures)",
                      file=sys.stderr, flush=True)
            return GraphStore(out, old)
        return _build(source, records, skipped, out, old, settings, workers, shard_size, fingerprint, build_id,
                      progress)


class _build_lock:
    """An exclusive flock on the store folder's lock file for the duration of a build (none
    where there is no fcntl: Windows)."""

    def __init__(self, out: Path):
        self.path = out / _LOCK
        try:
            import fcntl
        except ImportError:
            fcntl = None
        self.fcntl = fcntl

    def __enter__(self):
        self.fh = open(self.path, "a+")
        if self.fcntl is not None:
            self.fcntl.flock(self.fh.fileno(), self.fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fcntl is not None:
            self.fcntl.flock(self.fh.fileno(), self.fcntl.LOCK_UN)
        self.fh.close()


def _build(source, records, skipped, out: Path, old: dict | None, settings: GraphSettings, workers: int,
           shard_size: int, fingerprint: dict, build_id: str, progress: bool) -> "GraphStore":
    for stale in out.glob(f"{_TEMP_PREFIX}*"):  # a killed build's half-written shard or manifest
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    manifest = _new_manifest(str(source), out, settings, shard_size, fingerprint, build_id)
    kept = {e["index"]: e for e in (old["shards"] if old else [])}
    manifest["shards"] = list(kept.values())
    _write_json_atomic(out / MANIFEST, manifest)

    bar = _Progress(progress)
    started = time.perf_counter()
    seen = {"shards": 0, "records": 0}

    def finished(entry: dict) -> None:
        manifest["shards"] = [e for e in manifest["shards"] if e["index"] != entry["index"]] + [entry]
        _refresh_totals(manifest)
        _write_json_atomic(out / MANIFEST, manifest)
        bar.update(built=entry["structures"], shards=len(manifest["shards"]))

    def shard_jobs() -> Iterator[tuple[int, tuple[int, int], list]]:
        """(index, record range, records) of every shard to build; intact finished ones are kept.
        Bad records travel as their message (an InputError does not survive pickling)."""
        for index, items in enumerate(_batched(records, shard_size)):
            span = (index * shard_size, index * shard_size + len(items))
            seen["shards"], seen["records"] = index + 1, span[1]
            entry = kept.get(index)
            if entry is not None and entry["records"] == list(span):
                problem = _shard_problem(out, entry, full=True)
                if problem is None:
                    bar.update(kept=entry["structures"])
                    continue
                log.warning("%s: %s; rebuilding it", out / entry["name"], problem)
            yield index, span, [str(x) if isinstance(x, InputError) else x for x in items]

    if workers == 1:
        for index, span, items in shard_jobs():
            chunks = [_encode_chunk(span[0] + o, items[o:o + CHUNK_RECORDS], settings)
                      for o in range(0, len(items), CHUNK_RECORDS)]
            finished(_write_shard(out, index, span, chunks))
    else:
        _build_parallel(shard_jobs(), out, settings, workers, finished)
    n_shards = seen["shards"]
    manifest["shards"] = [e for e in manifest["shards"] if e["index"] < n_shards]
    for folder in out.glob(f"{_SHARD_PREFIX}*"):  # shards of records the source no longer has
        if folder.is_dir() and int(folder.name[len(_SHARD_PREFIX):]) >= n_shards:
            shutil.rmtree(folder)
    manifest["skipped"] = skipped
    manifest["num_records"] = seen["records"]
    manifest["complete"] = True
    manifest["build_seconds"] = round(time.perf_counter() - started, 3)
    _refresh_totals(manifest)
    _write_json_atomic(out / MANIFEST, manifest)
    bar.update(shards=len(manifest["shards"]), force=True)
    _report_errors(str(source), manifest)
    return GraphStore.open(out)


def _end_with(builder: int) -> None:
    """Worker initializer: end this worker when the build process is gone. A build killed with
    SIGKILL cannot stop its pool, and an orphaned worker would wait on its task queue forever."""
    import threading

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(builder, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:  # alive, another user's (the pid was reused): keep going
                pass

    threading.Thread(target=watch, daemon=True, name="end-with-build").start()


def _build_parallel(jobs: Iterator[tuple[int, tuple[int, int], list]], root: Path, settings: GraphSettings,
                    workers: int, finished) -> None:
    """Build the shards of ``jobs`` in ``workers`` processes, CHUNK_RECORDS records per task;
    a shard is written (in this process) when its last chunk is back. At most a few tasks per
    worker are in flight, so memory stays within about a shard's records whatever the source."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # fork where there is one (Linux, as torch's DataLoader workers): a worker starts at once and
    # never imports the caller's main module again (spawn and forkserver do: a script without a
    # __main__ guard would run again in every worker). The workers run NumPy and vesin only
    # (no OpenMP), so the parent's threads (torch's, in a training) do not matter to them.
    import vesin  # noqa: F401  -- loaded once here and inherited: it takes seconds to load in each worker

    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_end_with, initargs=(os.getpid(),))
    pending: dict = {}  # future -> shard index
    building: dict[int, tuple[tuple[int, int], int, list]] = {}  # index -> (span, chunks expected, chunks)

    def drain() -> None:
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            index = pending.pop(future)
            span, expected, chunks = building[index]
            chunks.append(future.result())
            if len(chunks) == expected:
                del building[index]
                chunks.sort(key=lambda c: c.first_record)
                finished(_write_shard(root, index, span, chunks))

    try:
        for index, span, items in jobs:
            starts = range(0, len(items), CHUNK_RECORDS)
            building[index] = (span, len(starts), [])
            for o in starts:
                while len(pending) >= 4 * workers:
                    drain()
                pending[pool.submit(_encode_chunk, span[0] + o, items[o:o + CHUNK_RECORDS], settings)] = index
        while pending:
            drain()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


# --------------------------------------------------------------------------------------------------
# Read
# --------------------------------------------------------------------------------------------------


def assemble_graph(graph_id: str, atomic_numbers: np.ndarray, frac_coords: np.ndarray, lattice: np.ndarray,
                   edge_index: np.ndarray, edge_shift: np.ndarray, targets: dict, settings: GraphSettings) -> CrystalGraph:
    """The :class:`CrystalGraph` of one structure's stored (compact) arrays, with what is not
    stored recomputed exactly as :func:`~crystalframes.data.graph.build_graph` computes it."""
    # fresh contiguous float64 / int64 copies, so the products below run exactly as in build_graph
    frac = np.array(frac_coords, dtype=np.float64)
    lattice = np.array(lattice, dtype=np.float64)
    pos = frac @ lattice
    ei = np.array(edge_index, dtype=np.int64)
    shift = np.array(edge_shift, dtype=np.int64)
    vec = pos[ei[1]] + shift @ lattice - pos[ei[0]]
    return CrystalGraph(
        id=graph_id,
        atomic_numbers=np.array(atomic_numbers, dtype=np.int64),
        frac_coords=frac,
        pos=pos,
        lattice=lattice,
        edge_index=ei,
        edge_shift=shift,
        edge_vec=vec,
        edge_is_lattice=_lattice_edge_mask(ei.shape[1], frac.shape[0], settings),
        targets=targets,
    )


@functools.lru_cache(maxsize=1)
def _max_open_files() -> int:
    """How many store files a process keeps open: a quarter of its descriptor limit (9 files per
    shard; reopening a file costs a system call per read, so fewer means slower random reads)."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        soft = 65536 if soft == resource.RLIM_INFINITY else soft
    except (ImportError, OSError, ValueError):  # no resource module (Windows)
        soft = 1024
    return max(64, soft // 4)


class _FileArray:
    """A read-only ``.npy`` array read where indexed, with positioned reads (``os.pread``).

    Not a memory map: on a map, every page a random read touches brings its cached neighbours
    into the process's resident set (the kernel's fault-around maps 64 KB per fault, readahead
    advice does not change it), so a rank's RSS grew with the store it sampled from: 1.1 GB of
    mapped pages after 50 training steps on a 600k-structure store, against 0.24 GB at 60k. A
    positioned read copies just the bytes asked for; the page cache still serves repeated reads.

    Indexing: ``a[i]``, ``a[i:j]`` (rows), ``a[:, i:j]`` (a column range of a 2-D array, one read
    per row) and ``np.asarray(a)`` (everything)."""

    _open: "dict[tuple, int]" = {}  # file -> descriptor, per process (closed when too many are open)

    def __init__(self, path: Path):
        self.path = str(path)
        stat = os.stat(path)
        self._key = (self.path, stat.st_ino, stat.st_mtime_ns)  # a rebuilt shard is another file
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(fh)
            self.offset = fh.tell()
        if fortran:
            raise ValueError(f"{path}: a Fortran-ordered array; the store writes C order")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self._row = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def _fd(self) -> int:
        fds = _FileArray._open
        fd = fds.get(self._key)
        if fd is None:
            limit = _max_open_files()
            if len(fds) >= limit:  # shards of a large store can outnumber the descriptors
                for old in list(fds)[: max(1, limit // 2)]:
                    os.close(fds.pop(old))
            fd = fds[self._key] = os.open(self.path, os.O_RDONLY)
        return fd

    def _read(self, start: int, count: int) -> bytes:
        data = os.pread(self._fd(), count, self.offset + start)
        if len(data) != count:
            raise OSError(f"{self.path}: truncated ({len(data)} of {count} bytes at {self.offset + start})")
        return data

    def _rows(self, a: int, b: int) -> np.ndarray:
        b = max(a, b)
        return np.frombuffer(self._read(a * self._row, (b - a) * self._row), self.dtype).reshape((b - a,) + self.shape[1:])

    def __getitem__(self, key):
        n = self.shape[0]
        if isinstance(key, (int, np.integer)):
            i = int(key) + n if key < 0 else int(key)
            if not 0 <= i < n:
                raise IndexError(f"index {key} out of range for {n} rows")
            return self._rows(i, i + 1)[0]
        if isinstance(key, slice) and key.step in (None, 1):
            a, b, _ = key.indices(n)
            return self._rows(a, b)
        if (isinstance(key, tuple) and len(key) == 2 and key[0] == slice(None) and isinstance(key[1], slice)
                and key[1].step in (None, 1) and len(self.shape) == 2):
            a, b, _ = key[1].indices(self.shape[1])
            b = max(a, b)
            size = self.dtype.itemsize
            return np.stack([np.frombuffer(self._read((r * self.shape[1] + a) * size, (b - a) * size), self.dtype)
                             for r in range(n)]) if n else np.zeros((0, b - a), self.dtype)
        return np.asarray(self)[key]

    def __array__(self, dtype=None, copy=None):
        out = self._rows(0, self.shape[0])
        return out if dtype is None else out.astype(dtype)


class _Texts:
    """A column of strings held as one UTF-8 blob and its offsets (about 4 + len bytes per
    string), not a list of Python strings (about 60 bytes each plus the list's pointer): a
    training rank that touches every shard of a million-structure store holds every shard's ids."""

    __slots__ = ("_blob", "_ends")

    def __init__(self, texts: list[str]):
        encoded = [t.encode("utf-8") for t in texts]
        self._blob = b"".join(encoded)
        lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
        ends = np.cumsum(lengths)
        self._ends = ends.astype(np.uint32 if (ends[-1] if len(ends) else 0) < 2**32 else np.int64)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, j: int) -> str:
        end = int(self._ends[j])
        start = int(self._ends[j - 1]) if j > 0 else 0
        return self._blob[start:end].decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        return (self[j] for j in range(len(self)))


class _Labels:
    """A column of few distinct values (the records' own splits: train / val / test / None) as
    one byte code per structure."""

    __slots__ = ("_values", "_codes")

    def __init__(self, labels: list):
        self._values = list(dict.fromkeys(labels))
        if len(self._values) > 255:
            raise ValueError(f"{len(self._values)} distinct labels do not fit one byte")
        code = {v: c for c, v in enumerate(self._values)}
        self._codes = np.fromiter((code[v] for v in labels), dtype=np.uint8, count=len(labels))

    def __len__(self) -> int:
        return len(self._codes)

    def __getitem__(self, j: int):
        return self._values[self._codes[j]]

    def __iter__(self) -> Iterator:
        return (self._values[c] for c in self._codes.tolist())


class _Shard:
    """The arrays of one shard (read only where indexed, :class:`_FileArray`) and its meta, read
    on first use."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.arrays = {name: _FileArray(folder / f"{name}.npy") for name in _ARRAYS}
        self._meta: dict | None = None
        self._offsets: dict[str, np.ndarray] = {}

    def offsets(self, name: str) -> np.ndarray:
        """``atom_offsets`` / ``edge_offsets`` held in memory once read (8 bytes per structure:
        a read less per array and structure)."""
        if name not in self._offsets:
            self._offsets[name] = np.asarray(self.arrays[name])
        return self._offsets[name]

    @property
    def meta(self) -> dict:
        """``ids`` (:class:`_Texts`), ``splits`` (:class:`_Labels`) and ``target_names``."""
        if self._meta is None:
            meta = json.loads((self.folder / SHARD_META).read_text(encoding="utf-8"))
            self._meta = {**meta, "ids": _Texts(meta["ids"]), "splits": _Labels(meta["splits"])}
        return self._meta


class GraphStore:
    """A built graph store, read by index; see the module docstring for the layout.

    Pickles as its path and manifest only (a DataLoader worker or a DDP rank gets it cheaply)
    and maps a shard's files in each process on the first read of that shard."""

    def __init__(self, path: str | os.PathLike, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest
        self.settings = GraphSettings(**manifest["settings"])
        shards = manifest["shards"]
        self._starts = np.cumsum([0] + [e["structures"] for e in shards]).astype(np.int64)
        self._start_list = self._starts.tolist()
        self._shards: dict[int, _Shard] = {}
        self._pid = os.getpid()

    # ---- open / integrity ----------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike, verify: str = "sizes") -> "GraphStore":
        """Open the store at ``path``. ``verify="sizes"`` checks that every shard file exists with
        its recorded size (a stat per file, nothing read); ``"full"`` also compares every sha256
        (reads every byte). A damaged shard raises a :class:`StoreError` naming it and the command
        that rebuilds exactly the damaged shards."""
        if verify not in ("sizes", "full"):
            raise ValueError(f"verify must be 'sizes' or 'full', got {verify!r}")
        root = Path(path)
        if not root.is_dir():
            raise StoreError(str(root), "no such graph store (not a folder); build one with `crystalframes data build`")
        manifest = _read_manifest(root)
        if manifest is None:
            raise StoreError(str(root), f"not a graph store (no {MANIFEST}); build one with `crystalframes data build`")
        command = manifest["build"]["command"]
        if not manifest["complete"]:
            raise StoreError(str(root), f"the build did not finish ({len(manifest['shards'])} shards written); "
                                        f"rerun `{command}` to finish it (finished shards are kept)")
        for entry in manifest["shards"]:
            problem = _shard_problem(root, entry, full=verify == "full")
            if problem is not None:
                raise StoreError(str(root / entry["name"]), f"{problem}; rerun `{command}` to rebuild the damaged "
                                                            "shards (intact ones are kept)")
        return cls(root, manifest)

    def verify(self) -> None:
        """Compare every shard file with its sha256 (:class:`StoreError` for the first damaged)."""
        type(self).open(self.path, verify="full")

    def __getstate__(self) -> dict:
        return {"path": str(self.path), "manifest": self.manifest}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["manifest"])

    def __repr__(self) -> str:
        return f"GraphStore({str(self.path)!r}, {len(self)} structures, {len(self.manifest['shards'])} shards)"

    # ---- access ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _shard(self, index: int) -> _Shard:
        if self._pid != os.getpid():  # a forked child maps its own copies
            self._shards, self._pid = {}, os.getpid()
        shard = self._shards.get(index)
        if shard is None:
            shard = self._shards[index] = _Shard(self.path / self.manifest["shards"][index]["name"])
        return shard

    def _locate(self, i: int) -> tuple[int, int]:
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"structure {i} out of range for a store of {n}")
        s = bisect.bisect_right(self._start_list, i) - 1
        return s, i - self._start_list[s]

    def graph(self, i: int) -> CrystalGraph:
        """Structure ``i`` as :func:`~crystalframes.data.graph.build_graph` makes it: every
        array equal, with the same dtype."""
        s, j = self._locate(i)
        shard = self._shard(s)
        a = shard.arrays
        a0, a1 = shard.offsets("atom_offsets")[j:j + 2].tolist()
        e0, e1 = shard.offsets("edge_offsets")[j:j + 2].tolist()
        meta = shard.meta
        values, present = a["targets"][j], a["target_present"][j]
        return assemble_graph(
            meta["ids"][j], a["atomic_numbers"][a0:a1], a["frac_coords"][a0:a1], a["lattice"][j],
            a["edge_index"][:, e0:e1], a["edge_shift"][e0:e1],
            {name: float(values[c]) for c, name in enumerate(meta["target_names"]) if present[c]}, self.settings,
        )

    __getitem__ = graph

    def elements(self, i: int) -> np.ndarray:
        """Atomic numbers (int64) of structure ``i``, without touching its edges."""
        s, j = self._locate(i)
        shard = self._shard(s)
        a = shard.arrays
        a0, a1 = (int(x) for x in shard.offsets("atom_offsets")[j:j + 2])
        return np.array(a["atomic_numbers"][a0:a1], dtype=np.int64)

    # ---- columns (no graph is read) ----------------------------------------------------------

    def _nonempty(self) -> Iterator[tuple[int, dict]]:
        for s, entry in enumerate(self.manifest["shards"]):
            if entry["structures"]:
                yield s, entry

    def ids(self) -> list[str]:
        """Every structure's id, as a list (for one pass; :meth:`id` reads one)."""
        return [i for s, _ in self._nonempty() for i in self._shard(s).meta["ids"]]

    def id(self, i: int) -> str:
        s, j = self._locate(i)
        return self._shard(s).meta["ids"][j]

    def record_splits(self) -> list[str | None]:
        """Each structure's own split field (train / val / test), or None."""
        return [x for s, _ in self._nonempty() for x in self._shard(s).meta["splits"]]

    def target_names(self) -> list[str]:
        return list(self.manifest["target_names"])

    def targets(self, name: str) -> np.ndarray:
        """Column of target ``name`` over all structures (float64; NaN where a record lacks it)."""
        if name not in self.manifest["target_names"]:
            known = ", ".join(self.manifest["target_names"]) or "none"
            raise KeyError(f"no target {name!r} in {self.path} (targets: {known})")
        parts = [np.full(0, np.nan)]
        for s, entry in self._nonempty():
            names = entry["target_names"]
            if name in names:
                parts.append(np.array(self._shard(s).arrays["targets"][:, names.index(name)], dtype=np.float64))
            else:
                parts.append(np.full(entry["structures"], np.nan))
        return np.concatenate(parts)

    def num_atoms(self) -> np.ndarray:
        """Atoms per structure (int64)."""
        parts = [np.zeros(0, np.int64)]
        parts += [np.diff(self._shard(s).offsets("atom_offsets")) for s, _ in self._nonempty()]
        return np.concatenate(parts).astype(np.int64)

    def num_edges(self) -> np.ndarray:
        """Edges per structure (int64)."""
        parts = [np.zeros(0, np.int64)]
        parts += [np.diff(self._shard(s).offsets("edge_offsets")) for s, _ in self._nonempty()]
        return np.concatenate(parts).astype(np.int64)

    def errors(self) -> list[str]:
        """The bad records of the build, ``where: problem``, in record order."""
        return [m for e in self.manifest["shards"] for m in e["errors"]]

    def shard_ranges(self) -> list[tuple[int, int]]:
        """``[start, stop)`` structure indices of each shard (a sampler can keep a rank or a
        worker within few shards)."""
        return [(int(a), int(b)) for a, b in zip(self._starts[:-1], self._starts[1:])]

    @property
    def nbytes(self) -> int:
        """Bytes of the shard files (the manifest not counted)."""
        return int(self.manifest["bytes"])
