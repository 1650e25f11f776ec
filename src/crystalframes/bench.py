"""Benchmark harness: model efficiency (Hua & Lin, SPFrame, Table 3; Ito, Taniai et al., ICLR 2025,
efficiency table) and accuracy grids (Hua & Lin, SPFrame, Tables 1-2). Figures are printed, never asserted."""

from __future__ import annotations

import multiprocessing as mp
import resource
import time
from pathlib import Path



def fastest_total_seconds(step, items, repeats: int) -> float:
    """Sum over ``items`` of the fastest of ``repeats`` timed ``step(item)`` calls: on a shared
    machine other jobs only ever add time, and they come and go faster than a whole pass."""
    total = 0.0
    for item in items:
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            step(item)
            best = min(best, time.perf_counter() - start)
        total += best
    return total


def _measure(spec: str, source: str, n: int, batch_size: int, threads: int, dtype: str, repeats: int, queue) -> None:
    """Runs in a fresh process so that its peak RSS belongs to this spec alone; puts
    ``("ok", row)`` or ``("error", message, is_user_error)`` on ``queue``, so the parent never
    waits for a row that will not come."""
    try:
        queue.put(("ok", _measure_row(spec, source, n, batch_size, threads, dtype, repeats)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides
        import traceback

        from crystalframes.io.errors import UserError

        user = isinstance(exc, UserError)
        queue.put(("error", str(exc) if user else traceback.format_exc(), user))


def _measure_row(spec: str, source: str, n: int, batch_size: int, threads: int, dtype: str, repeats: int) -> dict:
    """The figures of one spec (keys as :func:`models_table` reads them)."""
    import torch

    from crystalframes.data.batch import collate
    from crystalframes.data.sources import load_dataset
    from crystalframes.data.graph import build_graph
    from crystalframes.models.parameters import num_parameters
    from crystalframes.models.specs import build_model
    from crystalframes.runtime import keep_freed_memory

    keep_freed_memory()  # a spawned process: the command's setting does not carry over
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    crystals = load_dataset(source).crystals[:n]
    model = build_model(spec, num_targets=1).to(dt)
    params = num_parameters(model)
    chunks = [crystals[i : i + batch_size] for i in range(0, len(crystals), batch_size)]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    # Timed like the speed scripts: every batch `repeats` times, the fastest kept (other jobs
    # on a shared machine only ever add time).
    def build(chunk):
        return collate([build_graph(c, model.graph_settings) for c in chunk], dtype=dt)

    model.eval()
    with torch.no_grad():
        model(build(chunks[0]))  # warm-up
        graph_time = fastest_total_seconds(build, chunks, repeats)
        infer = fastest_total_seconds(lambda chunk: model(build(chunk)), chunks, repeats)  # incl. graphs
    # training: forward + backward + optimiser step on pre-built batches
    batches = [build(chunk) for chunk in chunks]
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step(batch):
        opt.zero_grad()
        model(batch).abs().mean().backward()
        opt.step()

    train_step(batches[0])  # warm-up (optimiser state)
    train = fastest_total_seconds(train_step, batches, repeats)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (
        {
            "spec": spec,
            "params": int(params),
            "structures": len(crystals),
            "infer_ms_per_structure": 1e3 * infer / len(crystals),
            "graph_ms_per_structure": 1e3 * graph_time / len(crystals),
            "train_ms_per_structure": 1e3 * train / len(crystals),
            "peak_mem_mb": peak / 1024,
            "peak_mem_increase_mb": (peak - rss0) / 1024,
        }
    )


DTYPES = ("float32", "float64")


def _wait_for_child(proc, queue, spec: str, poll_seconds: float = 1.0) -> dict:
    """The row the child process measured for ``spec``. Waits in short slices and checks the
    child between them, so a child that raised or died (killed, out of memory) ends the wait
    with its error instead of hanging the command forever."""
    import queue as queue_module

    from crystalframes.io.errors import UserError

    message = None
    while message is None:
        try:
            message = queue.get(timeout=poll_seconds)
        except queue_module.Empty:
            if not proc.is_alive():
                try:  # it may have put its message just before exiting
                    message = queue.get(timeout=poll_seconds)
                except queue_module.Empty:
                    proc.join()
                    raise UserError(f"bench models {spec}: the measuring process ended without a result "
                                    f"(exit code {proc.exitcode}; killed or out of memory?)") from None
    proc.join()
    if message[0] == "ok":
        return message[1]
    _, text, user = message
    if user:
        raise UserError(f"bench models {spec}: {text}")
    raise RuntimeError(f"bench models {spec}: the measuring process failed:\n{text}")


def bench_models(specs, source="mp_2018_demo", n=256, batch_size=64, threads=2, dtype="float32", train_size=None,
                 repeats: int = 2) -> list[dict]:
    """Efficiency of each model spec on the first ``n`` structures of ``source``, every batch
    timed ``repeats`` times (the fastest kept); ``s_per_epoch`` extrapolates training time to
    ``train_size`` structures (default: the dataset size)."""
    from crystalframes.data.sources import load_dataset
    from crystalframes.io.errors import UserError
    from crystalframes.models.specs import parse_spec

    # everything a child would only find out after a slow start is checked here, once
    for spec in specs:
        parse_spec(spec)
    for name, value in (("n", n), ("batch_size", batch_size), ("threads", threads), ("repeats", repeats)):
        if int(value) < 1:
            raise UserError(f"bench models: {name} must be at least 1, got {value}")
    if dtype not in DTYPES:
        raise UserError(f"bench models: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    total = train_size or len(load_dataset(source).crystals)
    ctx = mp.get_context("spawn")
    rows = []
    for spec in specs:
        queue = ctx.Queue()
        proc = ctx.Process(target=_measure, args=(spec, str(source), n, batch_size, threads, dtype, repeats, queue))
        proc.start()
        try:
            row = _wait_for_child(proc, queue, spec)
        finally:
            if proc.is_alive():  # interrupted (Ctrl-C) or failed: no orphan left measuring
                proc.kill()
                proc.join()
        row["s_per_epoch"] = row["train_ms_per_structure"] * total / 1e3
        rows.append(row)
    return rows


def models_table(rows: list[dict]) -> str:
    head = "| model | params | train ms/structure | s/epoch | inference ms/structure | (of which graphs) | peak memory MB |\n|---|---:|---:|---:|---:|---:|---:|\n"
    return head + "".join(
        f"| `{r['spec']}` | {r['params']:,} | {r['train_ms_per_structure']:.2f} | {r['s_per_epoch']:.1f} | "
        f"{r['infer_ms_per_structure']:.2f} | {r['graph_ms_per_structure']:.2f} | {r['peak_mem_mb']:.0f} |\n"
        for r in rows
    )


def bench_accuracy(specs, overrides: list[str], seeds=(0,), output: Path | None = None, results: Path | None = None) -> tuple[str, list[dict]]:
    """Train every spec x seed with the same config overrides (data, budget; each spec's preset
    supplies what they leave open, epochs and batch size included) and return the Markdown table
    of :func:`crystalframes.train.study_tables.summary_table` (mean +- std over seeds, paired difference
    to the backbone without a frame) and the result rows. Resumable: rerun with the same
    ``output`` (and ``results``, default ``output/results.json``) to continue a grid."""
    from crystalframes.atomic import atomic_write, write_error
    from crystalframes.io.errors import UserError
    from crystalframes.train.study import budget_overrides, run_grid
    from crystalframes.train.study_tables import summary_table

    base = Path(output) if output else Path("runs") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    results = Path(results) if results else base / "results.json"
    rows = run_grid(list(specs), list(overrides), list(seeds), base, results)
    from crystalframes.models.specs import parse_spec

    wanted = {str(parse_spec(s)) for s in specs}
    rows = [r for r in rows if r["spec"] in wanted and r["overrides"] == budget_overrides(overrides) and r["seed"] in set(seeds)]
    table = summary_table(rows)
    try:
        with atomic_write(base / "accuracy.md", "w") as fh:
            fh.write(table)
    except OSError as exc:  # the runs and results.json are complete: say so, and how to get the table
        raise UserError(f"{write_error(exc, base / 'accuracy.md', 'the table')}; the runs and {results} are complete: "
                        "fix that and rerun the same command to write the table") from None
    return table, rows
