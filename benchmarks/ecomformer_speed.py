"""Speed and memory of eComFormer with and without frames (printed figures, not a timed test).

    python3 benchmarks/ecomformer_speed.py                       # paper JARVIS e_form preset
    python3 benchmarks/ecomformer_speed.py --preset cpu_small --structures 256
    python3 benchmarks/ecomformer_speed.py --literal             # + rows with the e3nn tensor products

For each spec: parameters; inference ms/structure including graph construction (k-NN graph,
collate, forward) and model only (forward on prebuilt batches); training ms/structure (forward,
L1 loss, backward, Adam step; train mode); peak resident memory of the process. Batches of 64,
float32, ``torch.set_num_threads(2)`` by default.

Each spec runs in its own fresh process (so the memory figure is its own); every batch is timed
``--repeats`` times and the fastest run kept (on a shared machine other jobs only ever add time);
with ``--rounds`` > 1 the specs run round-robin in fresh processes and the fastest round is kept.
The load average is printed with every result. Like the ``crystalframes`` command, each process
first calls :func:`crystalframes.runtime.keep_freed_memory` (glibc keeps freed memory instead of
page-faulting it back in on every pass); ``--default-malloc`` measures without it.
Two untimed passes come first: in a fresh process the first passes are far slower and would
say nothing about the model. With 2 threads on a shared 2-core machine every parallel region
waits whenever another process holds a core; compare ``--threads 1`` when the load is high.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_FRAMES = ("none", "spframe_quaternion", "spframe_gram_schmidt", "equivariant_gram_schmidt")
SHARED_MP = Path(__file__).resolve().parents[2] / "shared" / "data" / "mp_2018_sample.jsonl.gz"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def sample_crystals(data: str, structures: int, seed: int) -> list:
    """``structures`` random crystals of ``data`` (in dataset order), the same for every spec."""
    import numpy as np

    from crystalframes.data import load_dataset

    crystals = load_dataset(data).crystals
    pick = np.random.default_rng(seed).choice(len(crystals), size=min(structures, len(crystals)), replace=False)
    return [crystals[i] for i in sorted(pick)]


def setup_process(threads: int, default_malloc: bool) -> None:
    import torch

    if not default_malloc:
        from crystalframes.runtime import keep_freed_memory

        keep_freed_memory()
    torch.set_num_threads(threads)


def edge_groups(batches) -> dict:
    """Edges, distinct distances (EdgeTable rows), distinct atom pairs and distinct (pair,
    distance) groups, summed over the batches, as the model's layers see them."""
    from crystalframes.nn import EdgeTable, MessageGraph

    counts = {"edges": 0, "distances": 0, "pairs": 0, "pair_distance_groups": 0}
    for b in batches:
        graph = MessageGraph(b.edge_index, b.atomic_numbers.shape[0], b.edge_vec.dtype)
        counts["edges"] += graph.num_edges
        counts["pairs"] += graph.groups(None).centre.shape[0]
        distances = EdgeTable.of_distances(b.edge_vec.norm(dim=-1))
        counts["distances"] += distances.values.shape[0]
        counts["pair_distance_groups"] += graph.groups(distances).centre.shape[0]
    return counts


def measure(spec: str, overrides: dict, data: str, structures: int, batch_size: int, threads: int, repeats: int, seed: int,
            default_malloc: bool = False) -> dict:
    """All figures of one spec, in this process."""
    import numpy as np
    import torch

    from crystalframes.bench import fastest_total_seconds
    from crystalframes.data.batch import collate
    from crystalframes.data.graph import build_graph
    from crystalframes.models import build_model, num_parameters

    setup_process(threads, default_malloc)
    torch.manual_seed(seed)
    crystals = sample_crystals(data, structures, seed)
    model = build_model(spec, **overrides)
    chunks = [crystals[i : i + batch_size] for i in range(0, len(crystals), batch_size)]
    graphs = [[build_graph(c, model.graph_settings) for c in chunk] for chunk in chunks]
    batches = [collate(g) for g in graphs]
    base_rss = peak_rss_mb()
    n = len(crystals)

    def timed(step, items) -> float:
        """ms per structure, every batch timed ``repeats`` times (the fastest kept)."""
        return fastest_total_seconds(step, items, repeats) * 1000.0 / n

    model.eval()
    with torch.no_grad():
        # Warm-up: the first passes of a fresh process are many times slower (allocator, lazily
        # initialised kernels); not counted.
        for _ in range(2):
            [model(b) for b in batches]
        before = resource.getrusage(resource.RUSAGE_SELF)
        model_only = timed(model, batches)
        after = resource.getrusage(resource.RUSAGE_SELF)
        with_graphs = timed(lambda chunk: model(collate([build_graph(c, model.graph_settings) for c in chunk])), chunks)
    infer_rss = peak_rss_mb()

    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train_step(b):
        optimiser.zero_grad(set_to_none=True)
        loss = model(b).abs().mean()  # L1 against zero targets: the cost is what matters
        loss.backward()
        optimiser.step()

    for b in batches:  # warm-up (optimiser state, allocator)
        train_step(b)
    train = timed(train_step, batches)
    return {
        "spec": model.spec + ("" if not overrides else " " + ",".join(f"{k}={v}" for k, v in overrides.items())),
        "params": num_parameters(model),
        "structures": n,
        "mean_atoms": float(np.mean([c.num_atoms for c in crystals])),
        "mean_edges": float(np.mean([sum(g.num_edges for g in gs) for gs in graphs]) / batch_size),
        "infer_ms": with_graphs,
        "infer_model_ms": model_only,
        # over the timed model-only passes (repeats x every batch): the allocator's cost
        "infer_faults_per_structure": (after.ru_minflt - before.ru_minflt) / (repeats * n),
        "infer_sys_share": (after.ru_stime - before.ru_stime) / max(1e-9, (after.ru_stime - before.ru_stime) + (after.ru_utime - before.ru_utime)),
        **edge_groups(batches),
        "train_ms": train,
        "base_rss_mb": base_rss,
        "infer_rss_mb": infer_rss,
        "train_rss_mb": peak_rss_mb(),
    }


def interleaved_ratios(specs: list[str], data: str, structures: int, batch_size: int, threads: int, rounds: int, seed: int,
                       default_malloc: bool = False) -> dict:
    """Model-only inference time of every spec relative to the first, measured in one process
    with the specs interleaved batch by batch for ``rounds`` rounds: the machine's slow drift
    (+-30% between runs minutes apart on the development VM) then hits all specs alike.
    Returns spec -> (median, lowest, highest) of the per-round ratios."""
    import numpy as np
    import torch

    from crystalframes.data.batch import collate
    from crystalframes.data.graph import build_graph
    from crystalframes.models import build_model

    setup_process(threads, default_malloc)
    crystals = sample_crystals(data, structures, seed)
    models, batches = [], []
    for spec in specs:
        torch.manual_seed(seed)
        model = build_model(spec).eval()
        models.append(model)
        batches.append([collate([build_graph(c, model.graph_settings) for c in crystals[i : i + batch_size]])
                        for i in range(0, len(crystals), batch_size)])
    seconds = np.zeros((rounds, len(specs)))
    with torch.no_grad():
        for model, bs in zip(models, batches):  # warm-up
            for _ in range(2):
                [model(b) for b in bs]
        for r in range(rounds):
            for k in range(len(batches[0])):
                for s, model in enumerate(models):
                    start = time.perf_counter()
                    model(batches[s][k])
                    seconds[r, s] += time.perf_counter() - start
    ratios = seconds / seconds[:, :1]
    return {spec: (float(np.median(ratios[:, s])), float(ratios[:, s].min()), float(ratios[:, s].max()))
            for s, spec in enumerate(specs)}


def run_child(args, spec: str, overrides: dict) -> dict:
    cmd = [
        sys.executable, __file__, "--child", spec, "--overrides", json.dumps(overrides),
        "--data", args.data, "--structures", str(args.structures), "--batch-size", str(args.batch_size),
        "--threads", str(args.threads), "--repeats", str(args.repeats), "--seed", str(args.seed),
    ] + (["--default-malloc"] if args.default_malloc else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="jarvis_formation_energy")
    p.add_argument("--frames", nargs="+", default=list(DEFAULT_FRAMES))
    p.add_argument("--literal", action="store_true", help="also run none / spframe_quaternion with tensor_product=e3nn")
    p.add_argument("--data", default=str(SHARED_MP) if SHARED_MP.exists() else "mp_2018_demo")
    p.add_argument("--structures", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=4, help="timed runs of every batch (the fastest is kept)")
    p.add_argument("--rounds", type=int, default=1, help="fresh processes per spec, round-robin")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ratio-rounds", type=int, default=10,
                   help="rounds of the interleaved ratio measurement (0: skip it)")
    p.add_argument("--default-malloc", action="store_true", help="leave glibc's malloc settings alone (see crystalframes.runtime)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        result = measure(args.child, json.loads(args.overrides), args.data, args.structures, args.batch_size, args.threads, args.repeats, args.seed,
                         args.default_malloc)
        print(json.dumps(result))
        return

    jobs = [(f"ecomformer:{frame}@{args.preset}", {}) for frame in args.frames]
    if args.literal:
        jobs += [(f"ecomformer:{frame}@{args.preset}", {"tensor_product": "e3nn"}) for frame in ("none", "spframe_quaternion")]
    print(f"data {args.data}: {args.structures} structures, batch {args.batch_size}, {args.threads} threads, float32; "
          f"{'default malloc' if args.default_malloc else 'keep_freed_memory'}; load average before: {os.getloadavg()[0]:.2f}", flush=True)
    best: dict[int, dict] = {}
    for _ in range(args.rounds):
        for k, (spec, overrides) in enumerate(jobs):
            r = run_child(args, spec, overrides)
            print(f"  {r['spec']}: infer {r['infer_ms']:.2f}, model {r['infer_model_ms']:.2f}, train {r['train_ms']:.2f} ms/structure; "
                  f"model-only passes: {r['infer_faults_per_structure']:.0f} page faults per structure, "
                  f"{100 * r['infer_sys_share']:.0f}% system time (load {os.getloadavg()[0]:.2f})", flush=True)
            old = best.get(k)
            if old is None:
                best[k] = r
            else:
                for key in ("infer_ms", "infer_model_ms", "train_ms"):
                    old[key] = min(old[key], r[key])
                for key in ("base_rss_mb", "infer_rss_mb", "train_rss_mb"):
                    old[key] = max(old[key], r[key])
    rows = [best[k] for k in range(len(jobs))]
    first = rows[0]
    print(f"structures: mean {first['mean_atoms']:.1f} atoms, {first['mean_edges']:.0f} edges; per batch of {args.batch_size}: "
          f"{first['edges'] / first['distances']:.2f}x fewer distinct distances, {first['edges'] / first['pairs']:.2f}x fewer distinct atom pairs and {first['edges'] / first['pair_distance_groups']:.2f}x "
          f"fewer distinct (pair, distance) groups than edges; load average after: {os.getloadavg()[0]:.2f}")
    header = f"{'spec':<62} {'params':>10} {'infer ms':>9} {'model ms':>9} {'train ms':>9} {'vs none':>8} {'RSS MB':>7} {'train RSS':>9}"
    print(header)
    print("-" * len(header))
    reference = {r["spec"].split(" ")[-1] if " " in r["spec"] else "": r for r in rows if r["spec"].split(":")[1].startswith("none")}
    for r in rows:
        suffix = r["spec"].split(" ")[-1] if " " in r["spec"] else ""
        base = reference.get(suffix)
        ratio = f"{r['infer_model_ms'] / base['infer_model_ms']:.2f}x" if base else "-"
        print(
            f"{r['spec']:<62} {r['params']:>10,} {r['infer_ms']:>9.2f} {r['infer_model_ms']:>9.2f} {r['train_ms']:>9.2f} "
            f"{ratio:>8} {r['infer_rss_mb']:>7.0f} {r['train_rss_mb']:>9.0f}"
        )
    print("infer ms: per structure incl. graph construction + collate; model ms: forward only; "
          "vs none: model-only inference time relative to frame 'none' with the same tensor products")
    if args.ratio_rounds > 0:
        specs = [spec for spec, overrides in jobs if not overrides]
        ratios = interleaved_ratios(specs, args.data, args.structures, args.batch_size, args.threads, args.ratio_rounds,
                                    args.seed, args.default_malloc)
        print(f"\nmodel-only inference relative to {specs[0]}, one process, specs interleaved batch by batch, "
              f"{args.ratio_rounds} rounds: median [lowest, highest] of the per-round ratios (load {os.getloadavg()[0]:.2f})")
        for spec, (median, low, high) in ratios.items():
            print(f"  {spec:<62} {median:.3f}x [{low:.3f}, {high:.3f}]")


if __name__ == "__main__":
    main()
