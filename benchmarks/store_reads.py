"""Positioned reads against memory maps for a graph store's random reads (issue 26).

    python benchmarks/store_reads.py STORE [--batches 40] [--batch 64]

In ONE process, interleaved batch by batch (the machine's load changes under both alike): random
batches of graphs read by ``GraphStore.graph`` with the store's own positioned reads
(``data/store.py:_FileArray``) and with the arrays memory-mapped (``np.load(mmap_mode="r")``, how
the store read before); ms per batch (median), then, each in a fresh child process, the reader's
RssAnon / RssFile after as many random graphs (a map's fault-around brings cached neighbour pages
into the process, which is why the store stopped using maps). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np


def _mapped_shard_class():
    from crystalframes.data import store

    class MappedShard(store._Shard):
        def __init__(self, folder):
            super().__init__(folder)
            self.arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r").view(np.ndarray) for n in store._ARRAYS}

    return MappedShard


def _status() -> dict:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("RssAnon", "RssFile")):
                key, value = line.split(":")
                out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def child(path: str, mode: str, count: int) -> dict:
    from crystalframes.data import store

    if mode == "mmap":
        store._Shard = _mapped_shard_class()
    s = store.GraphStore.open(path)
    for i in np.random.default_rng(0).integers(0, len(s), count):
        s.graph(int(i))
    return {f"{k}_mib": v for k, v in _status().items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("store")
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--child", choices=["pread", "mmap"], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.store, a.child, a.batches * a.batch)))
        return
    from crystalframes.data import store

    own, mapped = store._Shard, _mapped_shard_class()
    readers = {"pread": store.GraphStore.open(a.store), "mmap": store.GraphStore.open(a.store)}
    idx = np.random.default_rng(1).integers(0, len(readers["pread"]), a.batches * a.batch)
    times = {name: [] for name in readers}
    for b in range(a.batches):
        for name, reader in readers.items():
            store._Shard = own if name == "pread" else mapped  # shards are created on first use
            t = time.perf_counter()
            for i in idx[b * a.batch:(b + 1) * a.batch]:
                reader.graph(int(i))
            times[name].append(1000 * (time.perf_counter() - t))
    store._Shard = own
    rss = {mode: json.loads(subprocess.run([sys.executable, __file__, a.store, "--child", mode, "--batches", str(a.batches),
                                            "--batch", str(a.batch)], capture_output=True, text=True, check=True).stdout)
           for mode in readers}
    ms = {name: round(statistics.median(v), 2) for name, v in times.items()}
    print(json.dumps({"store": a.store, "structures": len(readers["pread"]), "batch": a.batch, "batches": a.batches,
                      "ms_per_batch_median": ms, "ratio_pread_mmap": round(ms["pread"] / ms["mmap"], 2),
                      "rss_after_reads": rss}, indent=1))


if __name__ == "__main__":
    main()
