"""Microseconds per atom for every frame construction on the shared JARVIS sample (printed
figures, not a test). Batches of 64 structures, float64 and float32, k = 12 neighbours as the
entries of the local/dynamic frames (3 heads for max / weighted PCA).

    python benchmarks/frames_speed.py [--shared ../shared/data] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from crystalframes.data.batch import collate
from crystalframes.data.graph import GraphSettings, build_graph
from crystalframes.frames import (
    GLOBAL_FRAMES,
    global_frame,
    gram_schmidt,
    max_frame,
    qr_frame,
    quaternion_to_rotation,
    static_local_frame,
    weighted_pca_frame,
)
from crystalframes.io import read_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    crystals = read_dataset(args.shared / "jarvis_dft_3d_sample.jsonl.gz").crystals
    graphs = [build_graph(c, GraphSettings(k=12)) for c in crystals]
    print(f"{len(crystals)} JARVIS structures, {sum(g.num_nodes for g in graphs)} atoms, batches of 64, {args.threads} threads")
    print(f"{'frame':24s} {'float64 us/atom':>16s} {'float32 us/atom':>16s}")
    for name in [*GLOBAL_FRAMES, "gram_schmidt", "quaternion", "static", "max (3 heads)", "weighted_pca (3 heads)"]:
        row = []
        for dtype in (torch.float64, torch.float32):
            batches = [collate(graphs[i : i + 64], dtype=dtype) for i in range(0, len(graphs), 64)]
            atoms = sum(len(b.batch) for b in batches)
            run(name, batches[0])  # warm-up (first calls initialise linalg kernels)
            t0 = time.perf_counter()
            for b in batches:
                run(name, b)
            row.append(1e6 * (time.perf_counter() - t0) / atoms)
        print(f"{name:24s} {row[0]:16.2f} {row[1]:16.2f}")


def run(name: str, b) -> torch.Tensor:
    n = len(b.batch)
    if name in GLOBAL_FRAMES:
        return global_frame(name, b.lattice, b.frac_coords, b.batch)
    if name == "gram_schmidt":
        v = torch.zeros(n, 3, dtype=b.pos.dtype).index_add_(0, b.edge_index[0], b.edge_vec)
        return gram_schmidt(v + 0.1, v.roll(1, dims=1))
    if name == "quaternion":
        return quaternion_to_rotation(torch.cat([b.pos, b.pos[:, :1]], dim=1))
    tie = qr_frame(b.lattice)[b.batch]
    if name == "static":
        return static_local_frame(b.edge_vec, b.edge_index[0], n, tie)
    d = b.edge_vec.norm(dim=-1)
    w = torch.stack([torch.exp(-d), torch.exp(-2 * d), torch.ones_like(d)], 1)
    fn = max_frame if name.startswith("max") else weighted_pca_frame
    return fn(b.edge_vec, w, b.edge_index[0], n, tie)


if __name__ == "__main__":
    main()
