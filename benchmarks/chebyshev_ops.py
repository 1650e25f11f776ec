"""Aten operators and CPU time of ChebyshevMoments (nn/chebyshev.py), before / after the blocked
recurrence (one batched matmul per block of CHEBYSHEV_BLOCK degrees, one addcmul per
degree), on the inputs of a real training step (issue 25: a GPU step is launch-bound).

    python benchmarks/chebyshev_ops.py [--batch-size 128] [--rounds 7] [--step-rounds 6] [--threads 1]

One training step of ``crystalformer:max@reference`` (float32, train mode, L1 loss against zeros,
Adam) on ``--batch-size`` structures of the MP sample (seed-chosen, as benchmarks/step_profile.py)
records every ChebyshevMoments call's inputs. Then, with ``--threads`` threads:

- ops: aten operators (crystalframes.profiling.StepCounter) of forward + backward of every
  recorded call, per call, before (the class copied below) and after (the package's), also with
  an accelerator's memory budget (the CPU one x ACCELERATOR_BUDGET_SCALE: fewer, larger chunks),
  and of a whole training step with either class in the attention;
- moments ms: forward + backward of all recorded calls, before and after interleaved (the order
  alternating between rounds), median per version and their ratio after / before;
- step ms: whole training steps with either class patched into models.periodic_attention,
  interleaved likewise; ratio after / before of the medians (below 1: the new code is faster).
  Timings on a shared machine scatter (+-30 %): the load average is printed.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

from crystalframes.models import periodic_attention
from crystalframes.nn.chebyshev import CHEBYSHEV_BLOCK, ChebyshevMoments
from crystalframes.nn.periodic_entries import ACCELERATOR_BUDGET_SCALE
from crystalframes.profiling import StepCounter

MP_SAMPLE = "/work/shared/data/mp_2018_sample.jsonl.gz"


class ChebyshevMomentsBefore(torch.autograd.Function):
    """ChebyshevMoments as of commit 7f5fe87 (one multiply, subtraction and matmul per degree):
    the "before" of the comparison, copied verbatim apart from this docstring and its name."""

    @staticmethod
    def _chunks(lengths, axes: int, budget: int):
        """(start, stop, width) row chunks (width = the longest row of the chunk) within the
        element budget; a chunk of more than budget/16 elements also stops before rows ~15%
        longer than its first (padding), smaller ones do not (per-op overhead)."""
        lengths = np.maximum(np.asarray(lengths), 1)  # host numbers: planning reads no device
        out, start = [], 0
        while start < len(lengths):
            rest = lengths[start:]
            size = np.arange(1, len(rest) + 1) * rest * axes
            fits = (size <= budget) & ((rest <= 1.15 * rest[0] + 8) | (size <= budget // 16))
            stop = start + max(1, int(np.argmin(fits)) if not fits.all() else len(rest))
            out.append((start, stop, int(lengths[stop - 1])))
            start = stop
        return out

    @staticmethod
    def _recurrence(c, second_kind: bool = False):
        """Yield T_0(c), T_1(c), ... (U_0(c), U_1(c), ... with ``second_kind``) reusing three
        buffers (each valid until the next yield)."""
        t0, t1 = torch.ones_like(c), 2 * c if second_kind else c.clone()
        yield t0
        yield t1
        c2, t2 = 2 * c, torch.empty_like(c)
        while True:
            torch.mul(c2, t1, out=t2).sub_(t0)
            yield t2
            t0, t1, t2 = t1, t2, t0

    @staticmethod
    def forward(ctx, w, c, lengths, terms: int, budget: int):
        rows, heads, _ = w.shape
        out = w.new_empty(rows, heads, c.shape[-1], terms)
        chunks = ChebyshevMomentsBefore._chunks(lengths, c.shape[-1], budget)
        for s, e, width in chunks:
            ws = w[s:e, :, :width].contiguous()
            series = ChebyshevMomentsBefore._recurrence(c[s:e, :width].transpose(1, 2).contiguous())  # (rows, A, M)
            part = w.new_empty(terms, e - s, heads, c.shape[-1])
            for n in range(terms):
                torch.bmm(ws, next(series).transpose(1, 2), out=part[n])
            out[s:e] = part.permute(1, 2, 3, 0)
        ctx.save_for_backward(w, c)
        ctx.chunks = chunks
        return out

    @staticmethod
    def backward(ctx, grad):
        w, c = ctx.saved_tensors
        need_w, need_c = ctx.needs_input_grad[:2]
        rows, heads, _, terms = grad.shape
        gw = grad.new_zeros(rows, heads, c.shape[1]) if need_w else None
        gc = torch.zeros_like(c) if need_c else None
        for s, e, width in ctx.chunks:
            # contiguous operands: baddbmm_ on strided views falls back to a loop over the batch
            gs = grad[s:e].permute(3, 0, 1, 2).contiguous()  # (terms, rows, H, A)
            ct = c[s:e, :width].transpose(1, 2).contiguous()  # (rows, A, M)
            if need_w:
                acc = grad.new_zeros(e - s, heads, width)
                series = ChebyshevMomentsBefore._recurrence(ct)
                for n in range(terms):
                    acc.baddbmm_(gs[n], next(series))
                gw[s:e, :, :width] = acc
            if need_c:
                # (rows, A, M): sum_n n U_(n-1)(c) (g_S[n]^T w)
                ws = w[s:e, :, :width].contiguous()
                gst = gs.transpose(2, 3).contiguous()  # (terms, rows, A, H)
                acc, part = torch.zeros_like(ct), torch.empty_like(ct)
                series = ChebyshevMomentsBefore._recurrence(ct, second_kind=True)
                for n in range(1, terms):
                    torch.bmm(gst[n], ws, out=part)
                    acc.addcmul_(next(series), part, value=float(n))
                gc[s:e, :width] = acc.transpose(1, 2)
        return gw, gc, None, None, None


def training_step(spec: str, batch_size: int, seed: int):
    """(step function, recorded ChebyshevMoments calls of one step)."""
    from crystalframes.data import load_dataset
    from crystalframes.data.batch import collate
    from crystalframes.data.graph import build_graph
    from crystalframes.models import build_model

    pool = load_dataset(MP_SAMPLE).crystals
    chosen = np.sort(np.random.default_rng(seed).choice(len(pool), size=min(batch_size, len(pool)), replace=False))
    torch.manual_seed(seed)
    model = build_model(spec).float().train()
    batch = collate([build_graph(pool[i], model.graph_settings) for i in chosen], dtype=torch.float32)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        optimiser.zero_grad()
        out = model(batch)
        torch.nn.functional.l1_loss(out, torch.zeros_like(out)).backward()
        optimiser.step()

    calls = []

    class Recording(ChebyshevMoments):
        @staticmethod
        def forward(ctx, w, c, lengths, terms, budget):
            calls.append((w.detach().clone(), c.detach().clone(), np.asarray(lengths).copy(), terms, budget,
                          ctx.needs_input_grad[0], ctx.needs_input_grad[1]))
            return ChebyshevMoments.forward(ctx, w, c, lengths, terms, budget)

    step()  # warm-up (first-call allocations, cached sign tables)
    periodic_attention.ChebyshevMoments = Recording
    try:
        step()
    finally:
        periodic_attention.ChebyshevMoments = ChebyshevMoments
    return step, calls


def moments_pass(cls, calls, grads):
    for (w, c, lengths, terms, budget, need_w, need_c), g in zip(calls, grads):
        c = c.clone().requires_grad_(need_c)
        cls.apply(w.clone().requires_grad_(need_w), c, lengths, terms, budget).backward(g)


def with_class(cls, step):
    def run():
        periodic_attention.ChebyshevMoments = cls
        try:
            step()
        finally:
            periodic_attention.ChebyshevMoments = ChebyshevMoments
    return run


def interleaved(runs: dict, rounds: int) -> dict:
    times = {k: [] for k in runs}
    for r in range(rounds):
        for k in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            start = time.perf_counter()
            runs[k]()
            times[k].append(time.perf_counter() - start)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()} | {k + "_all": [round(1e3 * x, 1) for x in v] for k, v in times.items()}


def count(run) -> int:
    with StepCounter() as counter:
        run()
    return counter.ops


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default="crystalformer:max@reference")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds of all recorded calls")
    parser.add_argument("--step-rounds", type=int, default=6, help="timed rounds of whole training steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    step, calls = training_step(args.spec, args.batch_size, args.seed)
    g = torch.Generator().manual_seed(args.seed)
    grads = [torch.randn(w.shape[0], w.shape[1], c.shape[-1], terms, generator=g) for w, c, _, terms, *_ in calls]
    versions = {"before": ChebyshevMomentsBefore, "after": ChebyshevMoments}
    report = {"benchmark": "chebyshev_ops", "spec": args.spec, "batch_size": args.batch_size, "threads": args.threads,
              "torch": torch.__version__, "calls_per_step": len(calls), "block": CHEBYSHEV_BLOCK,
              "call_shapes": sorted({(tuple(w.shape), tuple(c.shape), terms) for w, c, _, terms, *_ in calls})[:3]}
    for label, cls in versions.items():
        moments_pass(cls, calls, grads)  # warm-up
        report[f"ops_per_call_{label}"] = count(lambda: moments_pass(cls, calls, grads)) / len(calls)
        # the same calls with an accelerator's budget (chunks of up to 16x as many elements)
        scaled = [(w, c, lengths, terms, budget * ACCELERATOR_BUDGET_SCALE, *rest) for w, c, lengths, terms, budget, *rest in calls]
        report[f"ops_per_call_accelerator_budget_{label}"] = count(lambda: moments_pass(cls, scaled, grads)) / len(calls)
        with_class(cls, step)()
        report[f"ops_per_step_{label}"] = count(with_class(cls, step))
    # the two versions agree (float32, the recorded inputs; relative to the largest moment)
    w, c, lengths, terms, budget, *_ = calls[len(calls) // 2]
    a, b = (cls.apply(w, c, lengths, terms, budget) for cls in versions.values())
    report["max_relative_difference"] = float((a - b).abs().max() / b.abs().max())
    moments = interleaved({k: (lambda cls=cls: moments_pass(cls, calls, grads)) for k, cls in versions.items()}, args.rounds)
    steps = interleaved({k: with_class(cls, step) for k, cls in versions.items()}, args.step_rounds)
    report["moments_ms"] = moments
    report["moments_ratio_after_before"] = moments["after"] / moments["before"]
    report["step_ms"] = steps
    report["step_ratio_after_before"] = steps["after"] / steps["before"]
    report["loadavg_start"] = [round(x, 2) for x in load_start]
    report["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
