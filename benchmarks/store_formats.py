"""Graph store formats on the same compact per-structure encoding (issue 26): our sharded .npy
memory maps (crystalframes.data.store), LMDB (fairchem's choice), litdata's optimize +
StreamingDataset (Lightning's streaming format) and HDF5 (h5py).

Every format holds the same compact arrays per structure (uint8 atomic numbers, float64
wrapped fractional coordinates and lattice, local edge indices in uint8/uint16/int32, int8
image shifts, float64 targets): our store as flat arrays with offsets per shard, the others as
one bytes blob per structure (``encode``) under its index. Every read ends in the same
:func:`crystalframes.data.store.assemble_graph` (positions and edge vectors recomputed), so the
formats differ only in how the bytes are found and read.

Measured, interleaved over rounds (medians; this machine's timings scatter by +-30%):

* bytes per structure on disk;
* write structures/s from graphs already built (building the graphs is the same for every
  format and printed once: it dominates a build);
* random-read structures/s over random indices: cold (the files' pages dropped from the page
  cache with posix_fadvise(DONTNEED) and a fresh reader) and warm (the same indices again);
* in-order structures/s: every structure once in the format's own order (litdata: its own
  iteration, as a StreamingDataLoader reads), warm.

Optional libraries (``pip install 'crystalframes[bench-store]'``: LMDB and h5py; litdata by hand,
``pip install 'crystalframes[bench-litdata]' && pip uninstall -y torchvision``, because the torchvision it pulls in is a
CUDA build that breaks ``import lightning`` next to a CPU torch) are skipped with a note when
missing. Usage::

    python benchmarks/store_formats.py [SOURCE] [--k 25] [--reads 2000] [--rounds 3] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from crystalframes.data import store as store_mod
from crystalframes.data.graph import GraphSettings
from crystalframes.data.store import GraphStore, assemble_graph

# One blob: header (atoms, edges, targets, index dtype code, shift dtype code), then the arrays.
_HEADER = struct.Struct("<iiiBB")
_INDEX_CODES = {0: np.uint8, 1: np.uint16, 2: np.int32}
_SHIFT_CODES = {0: np.int8, 1: np.int16, 2: np.int32}


# --------------------------------------------------------------------------------------------------
# One structure as one blob (what LMDB, litdata and HDF5 store)
# --------------------------------------------------------------------------------------------------


def encode(z, frac, lattice, ei, shift, target_values) -> bytes:
    """The compact arrays of one structure as bytes (dtypes chosen per structure, as our store
    chooses them per shard)."""
    n, e = len(z), ei.shape[1]
    index_code = 0 if n <= 256 else 1 if n <= 65536 else 2
    shift_code = 0 if shift.size == 0 or np.abs(shift).max() <= 127 else 1 if np.abs(shift).max() <= 32767 else 2
    parts = [
        _HEADER.pack(n, e, len(target_values), index_code, shift_code),
        np.asarray(z, np.uint8).tobytes(),
        np.asarray(frac, np.float64).tobytes(),
        np.asarray(lattice, np.float64).tobytes(),
        np.asarray(ei).astype(_INDEX_CODES[index_code]).tobytes(),
        np.asarray(shift).astype(_SHIFT_CODES[shift_code]).tobytes(),
        np.asarray(target_values, np.float64).tobytes(),
    ]
    return b"".join(parts)


def decode(blob, graph_id: str, target_names: list[str], settings: GraphSettings):
    buf = memoryview(blob)
    n, e, t, index_code, shift_code = _HEADER.unpack_from(buf, 0)
    at = _HEADER.size

    def take(dtype, count, shape):
        nonlocal at
        arr = np.frombuffer(buf, dtype=dtype, count=count, offset=at).reshape(shape)
        at += arr.nbytes
        return arr

    z = take(np.uint8, n, (n,))
    frac = take(np.float64, 3 * n, (n, 3))
    lattice = take(np.float64, 9, (3, 3))
    ei = take(_INDEX_CODES[index_code], 2 * e, (2, e))
    shift = take(_SHIFT_CODES[shift_code], 3 * e, (e, 3))
    values = take(np.float64, t, (t,))
    targets = {name: float(v) for name, v in zip(target_names, values) if not np.isnan(v)}
    return assemble_graph(graph_id, z, frac, lattice, ei, shift, targets, settings)


# --------------------------------------------------------------------------------------------------
# Formats: write(folder, data) -> None; reader(folder, data) -> read(i) -> CrystalGraph
# --------------------------------------------------------------------------------------------------


class Data:
    """The built graphs (as the store's chunks) and the same structures as blobs."""

    def __init__(self, chunks, settings, shard_size):
        self.chunks, self.settings, self.shard_size = chunks, settings, shard_size
        self.ids = [i for c in chunks for i in c.ids]
        self.target_names = sorted({name for c in chunks for t in c.targets for name in t})
        self.blobs = []
        for c in chunks:
            for s in range(len(c.ids)):
                values = [c.targets[s].get(name, np.nan) for name in self.target_names]
                self.blobs.append(encode(c.atomic_numbers[s], c.frac_coords[s], c.lattice[s], c.edge_index[s],
                                         c.edge_shift[s], values))


def write_npy(folder: Path, data: Data) -> None:
    """Our store: the shards and manifest exactly as build_store writes them (its private
    writer, fed the graphs already built)."""
    folder.mkdir(parents=True)
    per_shard = max(1, data.shard_size // store_mod.CHUNK_RECORDS)
    manifest = store_mod._new_manifest("benchmark", folder, data.settings, data.shard_size, {}, "benchmark")
    for index, first in enumerate(range(0, len(data.chunks), per_shard)):
        chunks = data.chunks[first:first + per_shard]
        span = (chunks[0].first_record, chunks[-1].first_record + len(chunks[-1].ids))
        manifest["shards"].append(store_mod._write_shard(folder, index, span, chunks))
    manifest["complete"] = True
    store_mod._refresh_totals(manifest)
    store_mod._write_json_atomic(folder / store_mod.MANIFEST, manifest)


def reader_npy(folder: Path, data: Data):
    return GraphStore.open(folder).graph


def stream_npy(folder: Path, data: Data):
    store = GraphStore.open(folder)
    return (store.graph(i) for i in range(len(store)))


def write_lmdb(folder: Path, data: Data) -> None:
    import lmdb

    # map_size is only an upper bound of the file (sparse until written)
    env = lmdb.open(str(folder), map_size=1 << 36, subdir=True, meminit=False, map_async=True)
    batch = 1000
    for first in range(0, len(data.blobs), batch):
        with env.begin(write=True) as txn:
            for i in range(first, min(first + batch, len(data.blobs))):
                txn.put(str(i).encode("ascii"), data.blobs[i])  # fairchem's keys: the index as text
    env.sync()
    env.close()


def reader_lmdb(folder: Path, data: Data):
    import lmdb

    env = lmdb.open(str(folder), readonly=True, lock=False, readahead=False, meminit=False, subdir=True)
    txn = env.begin(buffers=True)
    return lambda i: decode(txn.get(str(i).encode("ascii")), data.ids[i], data.target_names, data.settings)


_LITDATA_BLOBS: list[bytes] = []


def stream_lmdb(folder: Path, data: Data):
    fetch = reader_lmdb(folder, data)
    return (fetch(i) for i in range(len(data.ids)))


def _litdata_item(i: int) -> np.ndarray:
    return np.frombuffer(_LITDATA_BLOBS[i], dtype=np.uint8)


def write_litdata(folder: Path, data: Data) -> None:
    import litdata

    global _LITDATA_BLOBS
    _LITDATA_BLOBS = data.blobs  # read by the forked optimize worker
    litdata.optimize(fn=_litdata_item, inputs=list(range(len(data.blobs))), output_dir=str(folder),
                     chunk_bytes="64MB", num_workers=1, verbose=False, start_method="fork")


def reader_litdata(folder: Path, data: Data):
    import litdata

    ds = litdata.StreamingDataset(str(folder))
    return lambda i: decode(ds[i], data.ids[i], data.target_names, data.settings)


def stream_litdata(folder: Path, data: Data):
    """litdata's own iteration (what a StreamingDataLoader does: chunk by chunk, not shuffled)."""
    import litdata

    ds = litdata.StreamingDataset(str(folder))
    return (decode(blob, data.ids[i], data.target_names, data.settings) for i, blob in enumerate(ds))


def write_hdf5(folder: Path, data: Data) -> None:
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / "graphs.h5", "w") as fh:
        blobs = fh.create_dataset("blobs", (len(data.blobs),), dtype=h5py.vlen_dtype(np.uint8))
        for i, blob in enumerate(data.blobs):
            blobs[i] = np.frombuffer(blob, dtype=np.uint8)


def reader_hdf5(folder: Path, data: Data):
    import h5py

    blobs = h5py.File(folder / "graphs.h5", "r")["blobs"]
    return lambda i: decode(blobs[i], data.ids[i], data.target_names, data.settings)


def stream_hdf5(folder: Path, data: Data):
    fetch = reader_hdf5(folder, data)
    return (fetch(i) for i in range(len(data.ids)))


FORMATS = {
    "npy-memmap (ours)": ("numpy", write_npy, reader_npy, stream_npy,
                          "shards on any shared POSIX file system (NFS, Lustre); each rank/worker maps only the "
                          "shards it reads; no object storage, no built-in rank/worker sharding (our sampler)"),
    "lmdb": ("lmdb", write_lmdb, reader_lmdb, stream_lmdb,
             "one memory-mapped B-tree file on a shared POSIX file system, many readers (lock=False); "
             "no object storage, no sharding across ranks (the sampler's job), one file per writer"),
    "litdata": ("litdata", write_litdata, reader_litdata, stream_litdata,
                "chunks on local disk or S3/GCS/Azure; StreamingDataset splits chunks across ranks, workers "
                "and nodes, downloads and caches them, resumable loader state; random access reads whole chunks"),
    "hdf5": ("h5py", write_hdf5, reader_hdf5, stream_hdf5,
             "one file on a shared file system; a handle per process opened after fork; no object storage "
             "(ros3/fsspec are slow), no sharding"),
}


# --------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def drop_cache(folder: Path) -> None:
    """Evict the folder's files from the page cache (our own files only; no system knob)."""
    for p in folder.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def build_chunks(source: str, settings: GraphSettings, limit: int | None):
    from crystalframes.data.store import _iter_source, _resolve

    path, member = _resolve(source)
    items = [x for x in _iter_source(path, member, []) if not isinstance(x, Exception)][:limit]
    start = time.perf_counter()
    chunks = [store_mod._encode_chunk(o, items[o:o + store_mod.CHUNK_RECORDS], settings)
              for o in range(0, len(items), store_mod.CHUNK_RECORDS)]
    return chunks, (time.perf_counter() - start) / len(items)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?", default="mp_2018_demo")
    parser.add_argument("--k", type=int, default=25)
    parser.add_argument("--reads", type=int, default=2000, help="random reads per pass")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="first N structures only")
    parser.add_argument("--shard-size", type=int, default=store_mod.DEFAULT_SHARD_SIZE)
    parser.add_argument("--workdir", default=None, help="where the stores are written (default: a temp folder)")
    args = parser.parse_args(argv)

    import importlib.util

    formats = {}
    for name, (module, write, read, stream, multinode) in FORMATS.items():
        if importlib.util.find_spec(module) is None:
            print(f"note: {name} skipped ({module} not installed: pip install 'crystalframes[bench-store]')",
                  file=sys.stderr)
        else:
            formats[name] = (write, read, stream, multinode)

    settings = GraphSettings(k=args.k)
    chunks, build_s = build_chunks(args.source, settings, args.limit)
    data = Data(chunks, settings, args.shard_size)
    n = len(data.ids)
    print(f"{args.source}: {n} structures, graphs built in {build_s * 1e3:.2f} ms/structure on one core "
          f"(k={args.k}; common to every format)", file=sys.stderr)
    rng = np.random.default_rng(0)
    indices = rng.integers(0, n, size=args.reads).tolist()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="store_formats-"))
    results = {name: {"write": [], "cold": [], "warm": [], "stream": [], "bytes": None} for name in formats}
    try:
        write_npy(root / "reference", data)
        reference = GraphStore.open(root / "reference").graph
        for r in range(args.rounds):
            for name, (write, read, stream, _) in formats.items():  # interleaved: every format in every round
                folder = root / f"{name.split()[0]}-{r}"
                start = time.perf_counter()
                write(folder, data)
                results[name]["write"].append(n / (time.perf_counter() - start))
                results[name]["bytes"] = folder_bytes(folder) / n
                drop_cache(folder)
                fetch = read(folder, data)
                for key in ("cold", "warm"):
                    start = time.perf_counter()
                    for i in indices:
                        fetch(i)
                    results[name][key].append(len(indices) / (time.perf_counter() - start))
                if r == 0:  # every format reads back what the reference store holds
                    for i in indices[:100]:
                        want, got = reference(i), fetch(i)
                        assert want.id == got.id and want.targets == got.targets, name
                        for field in ("atomic_numbers", "pos", "edge_index", "edge_shift", "edge_vec"):
                            assert np.array_equal(getattr(want, field), getattr(got, field)), (name, field)
                del fetch
                start = time.perf_counter()
                count = sum(1 for _ in stream(folder, data))
                assert count == n, (name, count)
                results[name]["stream"].append(n / (time.perf_counter() - start))
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(root / "reference", ignore_errors=True)
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)

    med = {name: {k: float(np.median(v)) if isinstance(v, list) else v for k, v in res.items()}
           for name, res in results.items()}
    head = (f"{'format':20s} {'bytes/structure':>16s} {'write struct/s':>15s} {'cold read/s':>12s} "
            f"{'warm read/s':>12s} {'in order/s':>11s}")
    print(head)
    print("-" * len(head))
    for name, m in med.items():
        print(f"{name:20s} {m['bytes']:16.0f} {m['write']:15.0f} {m['cold']:12.0f} {m['warm']:12.0f} "
              f"{m['stream']:11.0f}")
    print()
    for name in med:
        print(f"{name}: {formats[name][3]}")
    print(json.dumps({"source": args.source, "structures": n, "k": args.k, "graph_build_ms": build_s * 1e3,
                      "reads": args.reads, "rounds": args.rounds, "formats": med}))


if __name__ == "__main__":
    main()
