"""Eager vs torch.compile on CPU: ms per structure (inference and training step) and the graph
breaks that remain per spec (printed figures, not a timed test).

    python benchmarks/compile_speed.py                                  # max frame of each backbone, cpu_small
    python benchmarks/compile_speed.py --specs crystalformer:none@cpu_small --backend aot_eager

One process, one thread by default. The eager and the compiled model (a copy with the same
weights, compiled in place as ``trainer.compile`` does) are timed interleaved, batch by batch
and round by round, so load from other jobs hits both alike; the ratio is the median of the
per-round ratios eager / compiled (> 1: compiled is faster). Training step: forward, L1 loss,
backward, Adam step (train mode). Compile time is reported apart (the first passes are untimed).
Graph breaks: ``torch._dynamo.explain`` on one batch, eval mode, with the reasons.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from crystalframes.testing import random_crystals as crystals


def graph_breaks(model, batch) -> dict:
    torch._dynamo.reset()
    model.eval()
    ex = torch._dynamo.explain(model)(batch)
    reasons: dict[str, int] = {}
    for r in ex.break_reasons:
        frame = r.user_stack[-1] if r.user_stack else None
        where = f"{frame.filename.split('/src/crystalframes/')[-1]}:{frame.lineno}" if frame else "?"
        key = f"{where} {r.reason.splitlines()[0][:90]}"
        reasons[key] = reasons.get(key, 0) + 1
    torch._dynamo.reset()
    return {"graphs": ex.graph_count, "breaks": ex.graph_break_count, "reasons": reasons}


def bench(spec: str, backend: str, structures: int, batch_size: int, rounds: int) -> dict:
    from crystalframes.data.batch import collate
    from crystalframes.data.graph import build_graph
    from crystalframes.models import build_model

    torch.manual_seed(0)
    eager = build_model(spec).float()
    graphs = [build_graph(c, eager.graph_settings) for c in crystals(structures)]
    batches = [collate(graphs[i : i + batch_size], dtype=torch.float32) for i in range(0, len(graphs), batch_size)]
    breaks = graph_breaks(eager, batches[0])
    compiled = copy.deepcopy(eager)
    compiled.compile(backend=backend)
    models = {"eager": eager, "compiled": compiled}
    optims = {k: torch.optim.Adam(m.parameters(), lr=1e-4) for k, m in models.items()}
    target = {id(b): torch.zeros(b.num_graphs if hasattr(b, "num_graphs") else int(b.batch.max()) + 1, 1) for b in batches}

    def infer(m, b):
        m.eval()
        with torch.no_grad():
            m(b)

    def train(m, b, opt):
        m.train()
        opt.zero_grad()
        out = m(b)
        torch.nn.functional.l1_loss(out, target[id(b)].expand_as(out)).backward()
        opt.step()

    t0 = time.perf_counter()
    for b in batches:  # untimed: compiles the compiled copy (eval and train graphs), warms both
        for k, m in models.items():
            infer(m, b)
            train(m, b, optims[k])
    warm = time.perf_counter() - t0
    per_round = {f"{what}_{k}": [] for what in ("infer", "train") for k in models}
    for _ in range(rounds):
        for what in ("infer", "train"):
            spent = dict.fromkeys(models, 0.0)
            for b in batches:
                for k, m in models.items():  # interleaved: batch by batch
                    t = time.perf_counter()
                    infer(m, b) if what == "infer" else train(m, b, optims[k])
                    spent[k] += time.perf_counter() - t
            for k in models:
                per_round[f"{what}_{k}"].append(1000 * spent[k] / structures)
    row = {"spec": spec, "backend": backend, "structures": structures, "warmup_and_compile_s": round(warm, 1),
           "graphs": breaks["graphs"], "graph_breaks": breaks["breaks"], "break_reasons": breaks["reasons"]}
    for what in ("infer", "train"):
        e, c = per_round[f"{what}_eager"], per_round[f"{what}_compiled"]
        row[f"{what}_eager_ms"] = round(min(e), 2)
        row[f"{what}_compiled_ms"] = round(min(c), 2)
        row[f"{what}_ratio"] = round(statistics.median(x / y for x, y in zip(e, c)), 3)
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--specs", nargs="+", default=["ecomformer:max@cpu_small", "crystalformer:max@cpu_small"])
    p.add_argument("--backend", default="inductor")
    p.add_argument("--structures", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = [bench(s, a.backend, a.structures, a.batch_size, a.rounds) for s in a.specs]
    print(f"| spec | backend | graphs | breaks | infer eager / compiled ms | ratio | train eager / compiled ms | ratio | warm-up + compile s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['spec']}` | {r['backend']} | {r['graphs']} | {r['graph_breaks']} | {r['infer_eager_ms']} / {r['infer_compiled_ms']} | "
              f"{r['infer_ratio']} | {r['train_eager_ms']} / {r['train_compiled_ms']} | {r['train_ratio']} | {r['warmup_and_compile_s']} |")
    for r in rows:
        print(f"\ngraph breaks of {r['spec']} (site, reason, count):")
        for k, v in sorted(r["break_reasons"].items()):
            print(f"  {k}  x{v}")


if __name__ == "__main__":
    main()
