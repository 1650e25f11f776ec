"""Crystalformer / CrystalFramer speed and memory on CPU (printed figures, not a test).

    python benchmarks/crystalformer_speed.py [--threads 2] [--structures 256] [--batch-size 64]
        [--cells 8 64 320 1000] [--specs none@reference max@reference max@lightweight] [--repeats 3]
    python benchmarks/crystalformer_speed.py --before OLD/src [--specs ...] [--structures 32]
    (--specs with --before also takes full specs of any backbone: ecomformer:spframe_quaternion@cpu_small)
        [--batch-size 16] [--ratio-rounds 5]

``--before``: this checkout against another commit's package (``git worktree add OLD COMMIT``),
both loaded in this one process and timed interleaved batch by batch (inference, then training
steps), so that the machine's drift hits both alike; prints the median and range of the per-round
after/before ratios of every spec (see docs/models.md on why only interleaved ratios are quoted).

Rows: the shared MP sample (``--structures`` random crystals, seed 0, batches of
``--batch-size``) and single cells of 8, 64, 320 and 1000 atoms (supercells of an 8-atom MP
crystal). Every row runs in a fresh process, so "peak MB" is that process's maximum resident
set size (model, data and all temporaries; a bare ``import torch`` process is ~0.3 GB).
Inference: eval mode under ``torch.no_grad`` (rho statistics first set by one training-mode
pass). Training: forward + backward + AdamW step per batch, training mode. Both exclude graph
building (Crystalformer's input is the cell itself). Each batch is timed ``--repeats`` times after
a warm-up and the fastest run is kept: on a machine shared with other jobs this measures the
code rather than the contention (the load average is printed). Like the ``crystalframes``
command, every row first calls :func:`crystalframes.runtime.keep_freed_memory`;
``--default-malloc`` measures without it.
For reference (REFERENCE.md, 2 CPU cores): the reference Crystalformer's CPU path takes 27 ms
per 8-atom structure and 1.84 s for one 64-atom cell; the reference CrystalFramer cannot run on
a CPU. Target: CrystalFramer inference on the MP sample <= 15 ms/structure.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

SHARED = Path(os.environ.get("CRYSTALFRAMES_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
PAPER = {"none": "Crystalformer", "max": "CrystalFramer (max)", "weighted_pca": "CrystalFramer (weighted PCA)"}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run(job: dict) -> dict:
    """One row, in its own process."""
    import numpy as np
    import torch

    from crystalframes.bench import fastest_total_seconds
    from crystalframes.data.batch import collate
    from crystalframes.data.graph import build_graph
    from crystalframes.io import read_dataset
    from crystalframes.models.crystalformer import build_crystalformer
    from crystalframes.models.parameters import num_parameters
    from crystalframes.runtime import keep_freed_memory
    from crystalframes.testing import supercell

    if not job["default_malloc"]:
        keep_freed_memory()
    torch.set_num_threads(job["threads"])
    frame, preset = job["spec"].split("@")
    torch.manual_seed(0)
    model = build_crystalformer(preset=preset, frame=frame)  # keywords: versions before issue 28 took (frame, preset)
    crystals = read_dataset(SHARED / "mp_2018_sample.jsonl.gz").crystals
    if job["cell"]:
        base = next(c for c in crystals if c.num_atoms == 8)
        reps = {8: (1, 1, 1), 64: (2, 2, 2), 320: (5, 4, 2), 1000: (5, 5, 5)}[job["cell"]]
        sample, batch_size = [supercell(base, reps)], 1
        label = f"{job['cell']}-atom cell ({base.id} x{reps[0]}x{reps[1]}x{reps[2]})"
    else:
        idx = np.random.default_rng(0).choice(len(crystals), job["structures"], replace=False)
        sample, batch_size = [crystals[i] for i in idx], job["batch_size"]
        label = f"MP sample ({job['structures']} structures, batch {batch_size})"
    batches = [
        collate([build_graph(c, model.graph_settings) for c in sample[i : i + batch_size]], target_names=["mp2018_e_form"])
        for i in range(0, len(sample), batch_size)
    ]
    atoms = sum(int(b.num_atoms.sum()) for b in batches)
    model.train()
    with torch.no_grad():
        model(batches[0])  # sets the rho statistics
    model.eval()

    def timed(step, repeats):
        step(batches[0])  # warm-up
        return 1e3 * fastest_total_seconds(step, batches, repeats) / len(sample)

    repeats = job["repeats"] if job["cell"] <= 320 else 1
    with torch.no_grad():
        infer = timed(model, repeats)
    infer_peak = _peak_mb()
    train = float("nan")
    if job["train"]:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.98), weight_decay=1e-5)

        def step(b):
            loss = (model(b) - torch.nan_to_num(b.targets)).abs().mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        train = timed(step, repeats)
    return {
        "row": label,
        "spec": f"crystalformer:{job['spec']}",
        "params": num_parameters(model),
        "atoms": atoms,
        "infer": infer,
        "train": train,
        "infer_peak": infer_peak,
        "peak": _peak_mb(),
    }


def _package_modules() -> dict:
    return {k: m for k, m in sys.modules.items() if k == "crystalframes" or k.startswith("crystalframes.")}


def _use_package(modules: dict) -> None:
    """Make ``modules`` the ``crystalframes`` that imports (also those inside functions) resolve to."""
    for k in _package_modules():
        del sys.modules[k]
    sys.modules.update(modules)


def _load_package(src: str | None) -> dict:
    """Import ``crystalframes`` from ``src`` (None: the normal path) beside any already loaded one."""
    import importlib

    current = _package_modules()
    _use_package({})
    if src:
        sys.path.insert(0, src)
    try:
        for name in ("crystalframes", "crystalframes.models.crystalformer", "crystalframes.frames", "crystalframes.data.batch",
                     "crystalframes.data.graph", "crystalframes.io", "crystalframes.runtime"):
            importlib.import_module(name)
    finally:
        if src:
            sys.path.remove(src)
    loaded = _package_modules()
    _use_package(current)
    return loaded


def _label(spec: str) -> str:
    return spec if ":" in spec else f"crystalformer:{spec}"


def interleaved_before_after(before_src: str, specs: list[str], structures: int, batch_size: int, threads: int,
                             rounds: int, default_malloc: bool = False) -> dict:
    """spec -> {"difference": largest prediction difference, "infer" | "train": (median, lowest,
    highest) of the per-round after/before ratios and the ratio of the sums of every batch's fastest
    run}. Rounds alternate which version runs first."""
    import numpy as np
    import torch

    versions = [_load_package(before_src), _load_package(None)]
    assert versions[0]["crystalframes"].__file__ != versions[1]["crystalframes"].__file__, "both versions are the same files"
    _use_package(versions[1])
    if not default_malloc:
        versions[1]["crystalframes.runtime"].keep_freed_memory()
    torch.set_num_threads(threads)
    crystals = versions[1]["crystalframes.io"].read_dataset(SHARED / "mp_2018_sample.jsonl.gz").crystals
    idx = np.random.default_rng(0).choice(len(crystals), structures, replace=False)
    sample = [crystals[i] for i in idx]
    out = {}
    for spec in specs:
        runs = []
        for modules in versions:
            _use_package(modules)
            torch.manual_seed(0)
            if ":" in spec:  # a full spec of any backbone (ecomformer:spframe_quaternion@cpu)
                model = modules["crystalframes.models"].build_model(spec)
            else:
                frame, preset = spec.split("@")
                model = modules["crystalframes.models.crystalformer"].build_crystalformer(preset=preset, frame=frame)  # keywords: versions before issue 28 took (frame, preset)
            batches = [modules["crystalframes.data.batch"].collate(
                [modules["crystalframes.data.graph"].build_graph(c, model.graph_settings) for c in sample[i : i + batch_size]],
                target_names=["mp2018_e_form"]) for i in range(0, len(sample), batch_size)]
            opt = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.98), weight_decay=1e-5)

            def infer(b, model=model):
                model.eval()
                with torch.no_grad():
                    model(b)

            def train(b, model=model, opt=opt):
                model.train()
                loss = (model(b) - torch.nan_to_num(b.targets)).abs().mean()
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()

            runs.append((modules, model, batches, {"infer": infer, "train": train}))
        outputs = []
        for modules, model, batches, _ in runs:  # same seed, same code path: the same predictions
            _use_package(modules)
            model.train()
            with torch.no_grad():
                model(batches[0])  # sets the rho statistics
                outputs.append(model.eval()(batches[0]))
        difference = float((outputs[1] - outputs[0]).abs().max())
        print(f"{_label(spec):42s} largest |after - before| of the predictions: {difference:.2e}", flush=True)
        out[spec] = {"difference": difference}
        for kind in ("infer", "train"):
            seconds = np.zeros((rounds, len(runs[0][2]), 2))  # (round, batch, version)
            for r in range(-1, rounds):  # round -1: warm-up
                for k in range(len(runs[0][2])):
                    for v in (0, 1) if r % 2 else (1, 0):  # alternate who goes first
                        modules, _, batches, steps = runs[v]
                        _use_package(modules)
                        start = time.perf_counter()
                        steps[kind](batches[k])
                        if r >= 0:
                            seconds[r, k, v] = time.perf_counter() - start
            per_round = seconds.sum(1)
            ratio = per_round[:, 1] / per_round[:, 0]
            fastest = seconds.min(0).sum(0)  # every batch's fastest run: robust to other jobs' bursts
            out[spec][kind] = (float(np.median(ratio)), float(ratio.min()), float(ratio.max()), float(fastest[1] / fastest[0]))
            print(f"{_label(spec):42s} {kind:5s} after/before: median of rounds {out[spec][kind][0]:.3f}x "
                  f"[{out[spec][kind][1]:.3f}, {out[spec][kind][2]:.3f}] over {rounds} rounds; fastest runs {out[spec][kind][3]:.3f}x "
                  f"(before {1e3 * fastest[0] / structures:.1f} ms/structure)", flush=True)
    _use_package(versions[1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--structures", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cells", type=int, nargs="*", default=[8, 64, 320, 1000])
    parser.add_argument("--specs", nargs="*", default=["none@reference", "max@reference", "max@lightweight"])
    parser.add_argument("--cell-specs", nargs="*", default=None, help="specs for the single cells (default: --specs)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per batch (the fastest is kept)")
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("--default-malloc", action="store_true", help="leave glibc's malloc settings alone (see crystalframes.runtime)")
    parser.add_argument("--before", default=None, help="another commit's src folder: interleaved after/before ratios instead of the table")
    parser.add_argument("--ratio-rounds", type=int, default=5)
    args = parser.parse_args()
    if args.before:
        print(f"torch threads: {args.threads}; load average before start: {os.getloadavg()[0]:.2f}")
        interleaved_before_after(args.before, args.specs, args.structures, args.batch_size, args.threads, args.ratio_rounds, args.default_malloc)
        return
    jobs = [
        {"spec": s, "cell": 0, "structures": args.structures, "batch_size": args.batch_size, "threads": args.threads, "train": not args.no_train, "repeats": args.repeats,
         "default_malloc": args.default_malloc}
        for s in args.specs
    ]
    jobs += [
        {"spec": s, "cell": n, "structures": 0, "batch_size": 1, "threads": args.threads, "train": not args.no_train, "repeats": args.repeats,
         "default_malloc": args.default_malloc}
        for n in args.cells
        for s in (args.cell_specs or args.specs)
    ]
    print(f"torch threads: {args.threads}; {'default malloc' if args.default_malloc else 'keep_freed_memory'}; load average before start: {os.getloadavg()[0]:.2f} (other jobs on the machine slow everything)")
    print(f"{'input':44s} {'spec':34s} {'params':>8s} {'infer ms/str':>12s} {'train ms/str':>12s} {'peak MB infer':>13s} {'peak MB train':>13s}")
    ctx = mp.get_context("spawn")
    for job in jobs:
        with ctx.Pool(1) as pool:
            r = pool.apply(_run, (job,))
        print(
            f"{r['row']:44s} {r['spec']:34s} {r['params']:8d} {r['infer']:12.1f} {r['train']:12.1f} "
            f"{r['infer_peak']:13.0f} {r['peak']:13.0f}   (load {os.getloadavg()[0]:.1f})",
            flush=True,
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
