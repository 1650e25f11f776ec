"""Graph-construction throughput on the shared JARVIS and MP samples (printed figures, not a test).

    python benchmarks/graph_throughput.py [--k 25] [--shared ../shared/data]
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc
from pathlib import Path

from crystalframes.data.graph import GraphSettings, build_graph
from crystalframes.io import read_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=25)
    parser.add_argument("--lattice-edges", action="store_true")
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args()
    settings = GraphSettings(k=args.k, lattice_edges=args.lattice_edges)
    print(f"graph construction, k={args.k}, lattice_edges={args.lattice_edges}, 1 process")
    print("peak MB = largest Python/NumPy allocation while building one graph at a time (tracemalloc)")
    print(f"{'dataset':28s} {'structures':>10s} {'edges':>10s} {'struct/s':>10s} {'ms/struct':>10s} {'peak MB':>8s}")
    for name in ("jarvis_dft_3d_sample.jsonl.gz", "mp_2018_sample.jsonl.gz"):
        crystals = read_dataset(args.shared / name).crystals
        build_graph(crystals[0], settings)  # warm-up: first call loads vesin's library
        t0 = time.perf_counter()
        edges = sum(build_graph(c, settings).num_edges for c in crystals)
        dt = time.perf_counter() - t0
        # Peak memory in a second, untimed pass (tracemalloc slows every allocation).
        tracemalloc.start()
        for c in crystals:
            build_graph(c, settings)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        print(f"{name:28s} {len(crystals):10d} {edges:10d} {len(crystals) / dt:10.0f} {1e3 * dt / len(crystals):10.3f} {peak:8.1f}")
    print(f"process max RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
