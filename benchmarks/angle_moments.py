"""What CrystalFramer's angle encoding rests on (printed figures, not a test).

    python3 benchmarks/angle_moments.py [--structures 256] [--threads 1]

1. How many distinct max frames the heads of one centre use, on the shared MP sample (the
   moments are computed once per distinct (centre, frame); see
   ``PeriodicAttention._angle_encoding``), for ``crystalformer:max@reference`` in eval mode.
2. The per-degree batched product of ``ChebyshevMoments`` (400 rows x 8 heads x 300 entries x 3
   axes, 46 degrees, float32) with the (M x 3) operand stored as (M x 3) versus as a transposed
   view of a contiguous (3 x M) block, which is what the code does.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

SHARED_MP = Path(__file__).resolve().parents[2] / "shared" / "data" / "mp_2018_sample.jsonl.gz"


def frames_per_centre(structures: int, batch_size: int) -> float:
    import numpy as np
    import torch

    from crystalframes.data.batch import collate
    from crystalframes.data.graph import build_graph
    from crystalframes.io import read_dataset
    from crystalframes.models.crystalformer import build_crystalformer
    from crystalframes.models import periodic_attention as pa

    torch.manual_seed(0)
    model = build_crystalformer("reference", frame="max")
    crystals = read_dataset(SHARED_MP).crystals
    pick = np.random.default_rng(0).choice(len(crystals), structures, replace=False)
    sample = [crystals[i] for i in pick]
    batches = [collate([build_graph(c, model.graph_settings) for c in sample[i : i + batch_size]]) for i in range(0, len(sample), batch_size)]
    centres, groups = 0, 0

    def count(original):
        def frames(*args):
            nonlocal centres, groups
            out = original(*args)
            centres += out.shape[0]
            groups += pa._distinct_frames_per_centre(out)[1].shape[0]
            return out

        return frames

    model.train()
    with torch.no_grad():
        model(batches[0])  # sets the rho statistics
    model.eval()
    for layer in model.layers:
        layer.attention.frames = count(layer.attention.frames)
    with torch.no_grad():
        for b in batches:
            model(b)
    return groups / centres


def product_layouts(rows: int = 400, heads: int = 8, entries: int = 300, terms: int = 46, repeats: int = 5) -> dict:
    import torch

    w = torch.rand(rows, heads, entries)
    c = torch.rand(rows, entries, 3)
    layouts = {"(M x 3) contiguous": c.contiguous(), "transposed view of (3 x M)": c.transpose(1, 2).contiguous().transpose(1, 2)}
    out = torch.empty(rows, heads, 3)
    result = {}
    for name, operand in layouts.items():
        torch.bmm(w, operand, out=out)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(terms):
                torch.bmm(w, operand, out=out)
            best = min(best, time.perf_counter() - start)
        result[name] = best * 1e3
    return result


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--structures", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.threads} thread(s)")
    if SHARED_MP.exists():
        ratio = frames_per_centre(args.structures, args.batch_size)
        print(f"crystalformer:max@reference, {args.structures} MP structures: {ratio:.2f} distinct max frames per centre (of 8 heads)")
    else:
        print(f"{SHARED_MP} not found: frames per centre skipped")
    for name, ms in product_layouts().items():
        print(f"46 batched (8 x 300)(300 x 3) products over 400 rows, operand {name}: {ms:.1f} ms")


if __name__ == "__main__":
    main()
