"""How the graph store, training from it and ``predict`` scale with the number of structures (issue 26).

    python benchmarks/store_scaling.py [SIZES...] [--workdir DIR] [--only build,train_store,...]

For each size N (default 6000 60000 600000 1000000) on SYNTHETIC structures
(benchmarks/synthetic_structures.py: strained, perturbed and substituted demo crystals, never
for accuracy), each measurement in a fresh subprocess:

- ``generate``: write the synthetic JSONL (cached in the workdir; a smaller file is a prefix of a
  larger one of the same seed);
- ``build``: ``build_store`` with 2 workers from scratch: wall time, structures/s, bytes per
  structure (every file of the store), peak RSS of the builder and of its workers;
- ``train_store`` / ``train_memory``: ``crystalframes train`` from the store (``data.store``) and
  today's in-memory path (only up to ``--memory-max`` structures: it holds every graph of every
  split in every process), 1 process, a fixed number of steps (``--steps``, stopped by a
  callback), batch ``--batch``, 1 thread: structures/s from the median step time after
  ``--warmup`` steps (the step includes loading its batch) and peak RSS; ``--repeats`` runs of
  each path, memory and store alternating (the machine's load changes under both alike), the
  row keeps the median rate and the largest RSS;
- ``loader``: in ONE process, interleaved: a random batch from the in-memory graph list and from
  the store, each collated, and the model's step: what each path adds to a training step, and
  the store / memory training ratio it implies (robust to the load changes between runs);
- ``train_store_ddp2`` / ``train_memory_ddp2``: the same with 2 gloo DDP ranks (2 processes,
  1 thread each): peak RSS per rank (each rank's own ``ru_maxrss``), structures/s of both ranks;
- ``train_ratio``: the training throughput of the store (its default 2 DataLoader workers, and
  without workers) against the in-memory path (no workers, on the first ``--memory-max``
  structures above that size), runs alternating within each of ``--repeats`` rounds;
- ``predict``: ``crystalframes predict`` with the 1-process run's model over the first
  min(N, ``--predict-max``) structures: wall time, structures/s, peak RSS (process and workers).

A training process also reads the source (in memory) or opens the store, validates once when
stopped, and evaluates val and test at the end, as every ``crystalframes train`` does: its peak
RSS covers all of it; its structures/s only the timed steps. Peak RSS (``ru_maxrss``, ``VmHWM``)
counts the pages of a memory-mapped store a process has touched: page cache, shared by the ranks
and reclaimable, unlike heap memory; the training rows also give RSS when training starts, and
the peak, RssAnon and RssFile at the last timed step, to tell set-up, heap and mapped pages apart.
An in-memory row says whether its graphs came from a warm graph cache or were built (cold).

Resumable: each (size, measurement) lands in ``benchmarks/results/store_scaling.json`` as it
finishes and is skipped on a rerun (``--redo`` measures again). A measurement whose dependency is
missing (no graph store module yet, no ``data.store`` key, no model to predict with) is skipped
with the reason and not recorded, so a later rerun does it. At the end: a markdown table of
every recorded row.

Timings on this 2-core machine are shared with other jobs: they scatter by +-30%; ratios from
one run of each path (medians of step times) are indicative, not precise.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "store_scaling.json"
DEFAULT_SIZES = (6000, 60000, 600000, 1000000)
MEASUREMENTS = ("generate", "build", "loader", "train_memory", "train_store", "train_memory_ddp2", "train_store_ddp2", "predict",
                "train_ratio")
SPEC = "ecomformer:none@cpu_small"
TARGET = "synthetic_e_form"  # the synthetic records' only target (see synthetic_structures.py)
SEED = 0
BUILD_WORKERS = 2


# --------------------------------------------------------------------------------------------------
# Results file
# --------------------------------------------------------------------------------------------------


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def _uncommitted() -> list[str]:
    """Source files that differ from the commit: the measurement ran with them (work in progress)."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"], capture_output=True, text=True).stdout
    except OSError:
        return []
    return sorted(line[3:] for line in out.splitlines())


def load_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return json.loads(path.read_text())["rows"]


def save_row(path: Path, row: dict) -> None:
    """Add ``row`` (replacing the one of the same size and measurement), atomically."""
    rows = [r for r in load_rows(path) if (r["size"], r["measurement"]) != (row["size"], row["measurement"])]
    rows.append(row)
    rows.sort(key=lambda r: (r["size"], MEASUREMENTS.index(r["measurement"])))
    doc = {
        "description": "issue 26 scaling table: benchmarks/store_scaling.py on SYNTHETIC structures "
        "(benchmarks/synthetic_structures.py; never for accuracy). RSS in MiB (ru_maxrss).",
        "rows": rows,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)


def _status_mib(field: str) -> float | None:
    """This process's VmRSS (now) or VmHWM (peak so far) from /proc, in MiB."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _peak_mib(who: int) -> float:
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)  # KiB on Linux


# --------------------------------------------------------------------------------------------------
# Children: each measurement runs in a fresh process started as `store_scaling.py --child KIND JOB`
# --------------------------------------------------------------------------------------------------


def _child_build(job: dict) -> dict:
    from crystalframes.data.store import build_store
    from crystalframes.models.specs import build_model

    settings = build_model(job["spec"], num_targets=1).graph_settings
    start = time.perf_counter()
    store = build_store(job["source"], job["store"], settings, workers=job["workers"], progress=False)
    wall = time.perf_counter() - start
    files = [p for p in Path(job["store"]).rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    n = len(store)
    return {"structures": n, "errors": len(store.errors()), "wall_s": round(wall, 2), "structures_per_s": round(n / wall, 1),
            "store_bytes": size, "bytes_per_structure": round(size / max(n, 1)), "files": len(files),
            "rss_mib": _peak_mib(resource.RUSAGE_SELF), "waited_children_rss_mib": _peak_mib(resource.RUSAGE_CHILDREN)}


def _child_train(job: dict) -> dict:
    """``crystalframes train`` in this process, stopped after ``steps`` steps by a callback that
    times them; under DDP Lightning starts rank 1 as this same command, which lands here too."""
    import lightning as L

    from crystalframes.cli import main

    steps, clock = job["steps"], {"times": [], "sizes": [], "rank": int(os.environ.get("LOCAL_RANK", 0))}

    class StepClock(L.Callback):
        def on_train_start(self, trainer, pl_module):
            clock["rank"] = trainer.global_rank
            clock["world"] = trainer.world_size
            clock["rss_at_train_start_mib"] = _status_mib("VmRSS")
            clock["times"].append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock["times"].append(time.perf_counter())
            clock["sizes"].append(int(batch.num_graphs))
            if len(clock["sizes"]) >= steps:
                trainer.should_stop = True
            if trainer.should_stop or batch_idx + 1 >= trainer.num_training_batches:
                # where the peak happens: set-up, steps (this), or the validation and the final
                # evaluation that follow
                clock["peak_rss_at_last_step_mib"] = _status_mib("VmHWM")
                # a memory-mapped store's pages count in RSS as file pages: reclaimable page
                # cache shared by the ranks, unlike anonymous (heap) memory
                clock["rss_anon_at_last_step_mib"] = _status_mib("RssAnon")
                clock["rss_file_at_last_step_mib"] = _status_mib("RssFile")

    base = L.Trainer

    class TimedTrainer(base):  # crystalframes.train.run looks up L.Trainer when it builds one
        def __init__(self, *args, callbacks=None, **kwargs):
            super().__init__(*args, callbacks=[*(callbacks or []), StepClock()], **kwargs)

    L.Trainer = TimedTrainer
    code, wall = _run_cli(main, job["argv"])
    times, sizes = clock["times"], clock["sizes"]
    warm = min(job["warmup"], max(len(sizes) - 2, 0))
    durations = [b - a for a, b in zip(times[warm:], times[warm + 1:])]  # step i: end of i-1 to end of i
    out = {"exit_code": code, "rank": clock["rank"], "world": clock.get("world", 1), "wall_s": round(wall, 2),
           "rss_at_train_start_mib": clock.get("rss_at_train_start_mib"), "peak_rss_at_last_step_mib": clock.get("peak_rss_at_last_step_mib"),
           "rss_anon_at_last_step_mib": clock.get("rss_anon_at_last_step_mib"), "rss_file_at_last_step_mib": clock.get("rss_file_at_last_step_mib"),
           "steps": len(sizes), "timed_steps": len(durations), "rss_mib": _peak_mib(resource.RUSAGE_SELF)}
    if durations:
        median = statistics.median(durations)
        out.update(median_step_s=round(median, 4), batch=max(sizes), rank_structures_per_s=round(max(sizes) / median, 1),
                   first_step_s=round(times[1] - times[0], 3) if len(times) > 1 else None)
    return out


def _run_cli(main, argv) -> tuple[int, float]:
    """(exit code, wall seconds) of the crystalframes command ``argv`` run in this process."""
    start = time.perf_counter()
    code = 0
    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, time.perf_counter() - start


def _child_predict(job: dict) -> dict:
    from crystalframes.cli import main

    code, wall = _run_cli(main, job["argv"])
    return {"exit_code": code, "wall_s": round(wall, 2), "structures_per_s": round(job["structures"] / wall, 1),
            "rss_mib": _peak_mib(resource.RUSAGE_SELF), "waited_children_rss_mib": _peak_mib(resource.RUSAGE_CHILDREN)}


def _child_loader(job: dict) -> dict:
    """What a training step pays for its batch on each path, interleaved in this one process:
    ``--batch`` random graphs from the in-memory list (a sample of ``memory_sample`` records,
    graphs built here) and from the store (random over all of it), each collated as the training
    DataLoader does; and the model's own step (forward, backward, AdamW) on such a batch. Rounds
    alternate which path goes first. The training ratio store / memory then follows as
    (step + load_memory) / (step + load_store), free of the load changes between separate runs."""
    import random

    import torch

    from crystalframes.data.batch import collate
    from crystalframes.data.cache import build_graphs
    from crystalframes.data.sources import load_dataset
    from crystalframes.data.store import GraphStore
    from crystalframes.models.specs import build_model

    torch.set_num_threads(1)
    model = build_model(job["spec"], num_targets=1)
    crystals = load_dataset(job["sample"]).crystals
    in_memory = build_graphs(crystals, model.graph_settings, use_cache=False)
    store = GraphStore.open(job["store"])
    sources = {"memory": (in_memory.__getitem__, len(in_memory)), "store": (store.graph, len(store))}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rng = random.Random(0)
    times: dict[str, list[float]] = {"memory": [], "store": [], "step": []}
    for r in range(job["rounds"]):
        batches = {}
        for name in (("memory", "store") if r % 2 == 0 else ("store", "memory")):
            get, n = sources[name]
            picks = [rng.randrange(n) for _ in range(job["batch"])]
            t0 = time.perf_counter()
            batches[name] = collate([get(i) for i in picks], target_names=[TARGET], dtype=torch.float32)
            times[name].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        loss = model(batches["memory"]).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times["step"].append(time.perf_counter() - t0)
    warm = min(3, job["rounds"] - 1)
    med = {k: statistics.median(v[warm:]) for k, v in times.items()}
    return {"rounds": job["rounds"], "batch": job["batch"], "memory_sample": len(in_memory), "store_structures": len(store),
            "load_memory_ms": round(1e3 * med["memory"], 2), "load_store_ms": round(1e3 * med["store"], 2),
            "load_ratio_store_memory": round(med["store"] / med["memory"], 2), "model_step_ms": round(1e3 * med["step"], 1),
            "estimated_train_ratio_store_memory": round((med["step"] + med["memory"]) / (med["step"] + med["store"]), 3),
            "rss_mib": _peak_mib(resource.RUSAGE_SELF)}


CHILDREN = {"build": _child_build, "train": _child_train, "predict": _child_predict, "loader": _child_loader}


def run_child(kind: str, job: dict, job_file: Path, log: Path, env: dict | None = None) -> list[dict]:
    """Run one measurement; the result of each process it started (one per DDP rank), or [] on failure."""
    job_file.write_text(json.dumps(job))
    for old in job_file.parent.glob(job_file.name + ".result*"):
        old.unlink()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(job_file)]
    peaks: dict[int, int] = {}  # pid -> VmHWM (KiB) of every process the child started
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=job_file.parent)
        while proc.poll() is None:
            _sample_descendants(proc.pid, peaks)
            time.sleep(0.5)
    results = [json.loads(p.read_text()) for p in sorted(job_file.parent.glob(job_file.name + ".result*"))]
    helpers = [kib for pid, kib in peaks.items() if pid != proc.pid]
    for r in results:
        # processes the child's own getrusage cannot see: forkserver / spawn workers are not its
        # waited children (and DDP rank 1 is counted by its own result)
        r["helpers_peak_rss_mib"] = round(max(helpers) / 1024, 1) if helpers else None
        r["helpers"] = len(helpers)
    if proc.returncode != 0 or not results or any(r.get("exit_code", 0) != 0 for r in results):
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        print(f"  FAILED ({kind}, exit {proc.returncode}); log {log}:\n{tail}", file=sys.stderr)
        return []
    return results


def _sample_descendants(root: int, peaks: dict[int, int]) -> None:
    """Record the peak RSS (VmHWM, the kernel's own high-water mark) of ``root``'s descendants."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as fh:
                    parents[int(entry.name)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    family, grew = {root}, True
    while grew:
        new = {pid for pid, ppid in parents.items() if ppid in family and pid not in family}
        family |= new
        grew = bool(new)
    for pid in family:
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        peaks[pid] = max(peaks.get(pid, 0), int(line.split()[1]))
                        break
        except OSError:
            continue


def child_main(kind: str, job_file: str) -> None:
    job = json.loads(Path(job_file).read_text())
    result = CHILDREN[kind](job)
    rank = result.get("rank", 0)
    Path(f"{job_file}.result{rank}").write_text(json.dumps(result))
    sys.exit(result.get("exit_code", 0))


# --------------------------------------------------------------------------------------------------
# What is available (the store and the streaming paths are being written alongside this script)
# --------------------------------------------------------------------------------------------------


def store_missing() -> str | None:
    try:
        from crystalframes.data import store
    except Exception as exc:  # not written yet, or broken right now
        return f"no graph store: crystalframes.data.store does not import ({type(exc).__name__}: {exc})"
    if not hasattr(store, "build_store"):
        return "no graph store: crystalframes.data.store has no build_store"
    return None


def config_key_missing(section: str, key: str) -> str | None:
    from crystalframes.train.config import RunConfig

    fields = RunConfig.model_fields[section].annotation.model_fields
    return None if key in fields else f"`crystalframes train` has no {section}.{key} setting yet"


# --------------------------------------------------------------------------------------------------
# The measurements of one size
# --------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.workdir)
        self.work.mkdir(parents=True, exist_ok=True)
        self.results = Path(args.results)

    def data_file(self, n: int) -> Path:
        return self.work / f"synthetic-seed{SEED}-{n}.jsonl"

    def store_dir(self, n: int) -> Path:
        return self.work / f"store-{n}-{self.args.spec.replace(':', '_').replace('@', '_')}"

    def run_dir(self, n: int, name: str) -> Path:
        return self.work / "runs" / f"{n}-{name}"

    def job_file(self, n: int, name: str) -> Path:
        folder = self.work / "jobs"
        folder.mkdir(exist_ok=True)
        return folder / f"{n}-{name}.json"

    def base_row(self, n: int, measurement: str) -> dict:
        return {"size": n, "measurement": measurement, "commit": _commit(), "uncommitted_src": _uncommitted(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "spec": self.args.spec, "cpus": os.cpu_count(), "load_avg_1min": round(os.getloadavg()[0], 2)}

    def done(self, n: int, measurement: str) -> bool:
        return not self.args.redo and any((r["size"], r["measurement"]) == (n, measurement) for r in load_rows(self.results))

    def record(self, row: dict) -> None:
        save_row(self.results, row)
        shown = {k: v for k, v in row.items() if k not in ("size", "measurement", "commit", "uncommitted_src", "date", "spec", "cpus")}
        print(f"  {row['measurement']}: {shown}", flush=True)

    # -- generate ------------------------------------------------------------------------------
    def ensure_data(self, n: int) -> Path:
        path = self.data_file(n)
        if path.exists():
            return path
        sys.path.insert(0, str(HERE))
        from synthetic_structures import write_synthetic

        start = time.perf_counter()
        write_synthetic(n, path, seed=SEED, progress=True)
        wall = time.perf_counter() - start
        row = self.base_row(n, "generate")
        row.update(wall_s=round(wall, 2), structures_per_s=round(n / wall, 1), file_bytes=path.stat().st_size,
                   bytes_per_structure=round(path.stat().st_size / n))
        self.record(row)
        return path

    # -- build ---------------------------------------------------------------------------------
    def build(self, n: int) -> None:
        missing = store_missing()
        if missing:
            print(f"  build: skipped: {missing}")
            return
        source = self.ensure_data(n)
        store = self.store_dir(n)
        if store.exists():  # timed from scratch: a leftover (killed) build would only be finished
            shutil.rmtree(store)
        job = {"source": str(source), "store": str(store), "spec": self.args.spec, "workers": BUILD_WORKERS}
        results = run_child("build", job, self.job_file(n, "build"), self.work / "jobs" / f"{n}-build.log")
        if results:
            row = self.base_row(n, "build")
            row.update(workers=BUILD_WORKERS, **results[0])
            self.record(row)

    def store_ready(self, n: int) -> str | None:
        missing = store_missing()
        if missing:
            return missing
        if not any((r["size"], r["measurement"]) == (n, "build") for r in load_rows(self.results)) or not self.store_dir(n).exists():
            return f"no store built for {n} yet (run --only build)"
        return None

    # -- train ---------------------------------------------------------------------------------
    def train_argv(self, n: int, name: str, from_store: bool, ranks: int, workers: int | None = None, small_eval: bool = False) -> list[str]:
        a = self.args
        sets = {
            "data.source": str(self.ensure_data(n)), "data.target": TARGET, "data.split": "field",
            "model.spec": a.spec, "trainer.batch_size": a.batch, "trainer.epochs": 1, "trainer.accelerator": "cpu",
            "trainer.devices": ranks, "trainer.threads": 1, "trainer.seed": 0, "trainer.logger": "csv",
            "trainer.checkpoint_every_n_steps": 10**9, "trainer.progress_seconds": 30,
        }
        if workers is not None:
            sets["trainer.num_workers"] = workers
        if small_eval:  # what is timed is the steps: a 0.2 % val / test split keeps the evaluations short
            sets.update({"data.split": "random", "data.val_ratio": 0.002, "data.test_ratio": 0.002})
        if from_store:
            sets["data.store"] = json.dumps(str(self.store_dir(n)))
        elif config_key_missing("data", "store_above") is None:  # today's path, however large the source
            sets["data.store_above"] = 10**12
        argv = ["train", "-o", str(self.run_dir(n, name)), "--overwrite"]
        for key, value in sets.items():
            argv += ["--set", f"{key}={value}"]
        return argv

    def train_missing(self, n: int, measurement: str) -> str | None:
        if "store" in measurement:
            return self.store_ready(n) or config_key_missing("data", "store")
        if n > self.args.memory_max:
            return f"in-memory path not run above --memory-max {self.args.memory_max} (it holds every graph in every process)"
        return None

    def train_once(self, n: int, measurement: str, workers: int | None = None, small_eval: bool = False) -> list[dict]:
        """One training process (or two DDP ranks): each rank's result, or [] when it failed.
        ``workers``: trainer.num_workers (None: the package's default for the path)."""
        a = self.args
        from_store, ranks = "store" in measurement, 2 if measurement.endswith("ddp2") else 1
        cached = set((self.work / "cache").rglob("*")) if (self.work / "cache").exists() else set()
        job = {"argv": self.train_argv(n, measurement, from_store, ranks, workers, small_eval), "steps": a.steps, "warmup": a.warmup}
        env = {"CRYSTALFRAMES_CACHE_DIR": str(self.work / "cache"), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
               "OMP_NUM_THREADS": "1"}
        results = run_child("train", job, self.job_file(n, measurement), self.work / "jobs" / f"{n}-{measurement}.log", env)
        if len(results) != ranks:
            if results:
                print(f"  {measurement}: {len(results)} of {ranks} ranks reported; not recorded")
            return []
        # cold: the run built its graphs and wrote them to the graph cache (another peak than loading them)
        cache_warm = not (set((self.work / "cache").rglob("*")) - cached) if (self.work / "cache").exists() else False
        for r in results:
            r["graph_cache_warm"] = cache_warm
        return results

    def record_train(self, n: int, measurement: str, runs: list[list[dict]]) -> None:
        a = self.args
        rates = [round(sum(r["rank_structures_per_s"] for r in ranks), 1) for ranks in runs]
        rss = [[r["rss_mib"] for r in ranks] for ranks in runs]
        row = self.base_row(n, measurement)
        row.update(path="store" if "store" in measurement else "memory", ranks=len(runs[0]), steps=runs[0][0]["steps"], warmup=a.warmup,
                   batch=a.batch, threads_per_rank=1, structures_per_s=round(statistics.median(rates), 1), structures_per_s_runs=rates,
                   median_step_s_runs=[[r["median_step_s"] for r in ranks] for ranks in runs],
                   peak_rss_mib_per_rank=max(max(x) for x in rss), rss_mib_per_rank_runs=rss,
                   rss_at_train_start_mib_runs=[[r.get("rss_at_train_start_mib") for r in ranks] for ranks in runs],
                   peak_rss_at_last_step_mib_runs=[[r.get("peak_rss_at_last_step_mib") for r in ranks] for ranks in runs],
                   rss_anon_at_last_step_mib_runs=[[r.get("rss_anon_at_last_step_mib") for r in ranks] for ranks in runs],
                   rss_file_at_last_step_mib_runs=[[r.get("rss_file_at_last_step_mib") for r in ranks] for ranks in runs],
                   wall_s_runs=[max(r["wall_s"] for r in ranks) for ranks in runs])
        if "memory" in measurement:
            row["graph_cache_warm_runs"] = [ranks[0]["graph_cache_warm"] for ranks in runs]
        self.record(row)

    def train(self, n: int, wanted: list[str]) -> None:
        """The training measurements in ``wanted``; the in-memory and store runs of the same number
        of ranks alternate (memory, store, memory, store, ...: ``--repeats`` each) so that both see
        the same load of this shared machine; each row keeps the median of its runs."""
        todo = []
        for m in wanted:
            missing = self.train_missing(n, m)
            if missing:
                print(f"  {m}: skipped: {missing}")
            else:
                todo.append(m)
        for ranks in ("", "_ddp2"):
            group = [m for m in (f"train_memory{ranks}", f"train_store{ranks}") if m in todo]
            runs: dict[str, list] = {m: [] for m in group}
            for _ in range(self.args.repeats):
                for m in group:
                    if runs[m] is not None:
                        result = self.train_once(n, m)
                        runs[m] = runs[m] + [result] if result else None  # a failed path is not retried
            for m in group:
                if runs[m]:
                    self.record_train(n, m, runs[m])

    def train_ratio(self, n: int) -> None:
        """Training throughput from the store of size ``n`` against the in-memory path, each at its
        default DataLoader workers (store: 2, memory: 0), plus the store without workers: runs
        alternate (memory, store, store without workers, memory, ...; ``--repeats`` rounds) so
        that the three see the same load. Above ``--memory-max`` the in-memory path cannot hold
        the data, so it runs on the first ``--memory-max`` structures (the same synthetic file's
        prefix): its step reads graphs from a list, whose cost does not depend on the list's
        length. Ratio = median store rate / median memory rate, and the median of the rounds'
        paired ratios. A random split with 0.2 % val / test keeps each run's evaluations short."""
        missing = self.store_ready(n)
        if missing:
            print(f"  train_ratio: skipped: {missing}")
            return
        m = min(n, self.args.memory_max)
        paths = {"memory": (m, "train_memory", None), "store": (n, "train_store", None), "store_no_workers": (n, "train_store", 0)}
        rates: dict[str, list[float]] = {k: [] for k in paths}
        detail: dict[str, list] = {k: [] for k in paths}
        for _ in range(self.args.repeats):
            for key, (size, measurement, workers) in paths.items():
                result = self.train_once(size, measurement, workers, small_eval=True)
                if not result:
                    print(f"  train_ratio: the {key} run failed; not recorded")
                    return
                rates[key].append(result[0]["rank_structures_per_s"])
                detail[key].append({k: result[0].get(k) for k in ("median_step_s", "rss_mib", "helpers_peak_rss_mib", "wall_s")})
        med = {k: statistics.median(v) for k, v in rates.items()}
        row = self.base_row(n, "train_ratio")
        row.update(memory_size=m, batch=self.args.batch, steps=self.args.steps, warmup=self.args.warmup, repeats=self.args.repeats,
                   structures_per_s=rates, runs=detail,
                   store_over_memory=round(med["store"] / med["memory"], 3),
                   store_over_memory_paired=round(statistics.median(s / r for s, r in zip(rates["store"], rates["memory"])), 3),
                   store_no_workers_over_memory=round(med["store_no_workers"] / med["memory"], 3))
        self.record(row)

    # -- loader ----------------------------------------------------------------------------------
    def loader(self, n: int) -> None:
        missing = self.store_ready(n)
        if missing:
            print(f"  loader: skipped: {missing}")
            return
        sample = self.ensure_data(min(n, self.args.loader_sample))
        job = {"spec": self.args.spec, "sample": str(sample), "store": str(self.store_dir(n)), "batch": self.args.batch,
               "rounds": self.args.loader_rounds}
        results = run_child("loader", job, self.job_file(n, "loader"), self.work / "jobs" / f"{n}-loader.log", {"OMP_NUM_THREADS": "1"})
        if results:
            row = self.base_row(n, "loader")
            row.update(**results[0])
            self.record(row)

    # -- predict -------------------------------------------------------------------------------
    def predict(self, n: int) -> None:
        model = next((self.run_dir(n, name) / "model.pt" for name in ("train_store", "train_memory")
                      if (self.run_dir(n, name) / "model.pt").exists()), None)
        if model is None:
            print("  predict: skipped: no trained model of this size yet (run --only train_store or train_memory first)")
            return
        m = min(n, self.args.predict_max)
        inputs = self.ensure_data(m)  # a prefix of the size-n file (same seed)
        out = self.work / "jobs" / f"{n}-predictions.csv"
        job = {"argv": ["predict", str(model), str(inputs), "-o", str(out), "--batch-size", str(self.args.batch)], "structures": m}
        results = run_child("predict", job, self.job_file(n, "predict"), self.work / "jobs" / f"{n}-predict.log", {"OMP_NUM_THREADS": "1"})
        if results:
            row = self.base_row(n, "predict")
            row.update(structures=m, model=str(model.parent.name), batch=self.args.batch, **results[0])
            self.record(row)
            out.unlink(missing_ok=True)

    def run(self, n: int, only: list[str]) -> None:
        print(f"== {n} structures", flush=True)
        trained = False
        for measurement in only:
            if self.done(n, measurement):
                print(f"  {measurement}: already in {self.results.name}")
                continue
            if measurement.startswith("train") and measurement != "train_ratio":
                if not trained:
                    self.train(n, [m for m in only if m.startswith("train") and m != "train_ratio" and not self.done(n, m)])
                    trained = True
                continue
            if measurement == "generate":
                if self.args.redo:
                    self.data_file(n).unlink(missing_ok=True)
                self.ensure_data(n)
            elif measurement == "build":
                self.build(n)
            elif measurement == "loader":
                self.loader(n)
            elif measurement == "train_ratio":
                self.train_ratio(n)
            elif measurement == "predict":
                self.predict(n)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------------
# Table
# --------------------------------------------------------------------------------------------------


def table(rows: list[dict]) -> str:
    by = {(r["size"], r["measurement"]): r for r in rows}
    sizes = sorted({r["size"] for r in rows})

    def get(n, m, key, fmt="{:.0f}"):
        r = by.get((n, m))
        if r is None or r.get(key) is None:
            return "-"
        return fmt.format(r[key])

    def ratio(n, a, b):
        ra, rb = by.get((n, a)), by.get((n, b))
        if not ra or not rb:
            return "-"
        return f"{ra['structures_per_s'] / rb['structures_per_s']:.2f}"

    head = ("| N | build s (2 workers) | build structures/s | bytes/structure | train RSS/rank MiB, store, 2 ranks "
            "| same, in memory | train RSS MiB, store, 1 proc | same, in memory | train structures/s, store, 1 proc "
            "| same, in memory | store / memory | batch load ms, store / memory (1 process) | step ms | implied store / memory "
            "| structures/s, store, 2 ranks | same, in memory | predict RSS MiB | predict structures/s "
            "| measured store / memory, 2 workers (paired) | same, no workers |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for n in sizes:
        lines.append("| " + " | ".join([
            f"{n:,}", get(n, "build", "wall_s", "{:.1f}"), get(n, "build", "structures_per_s"), get(n, "build", "bytes_per_structure"),
            get(n, "train_store_ddp2", "peak_rss_mib_per_rank"), get(n, "train_memory_ddp2", "peak_rss_mib_per_rank"),
            get(n, "train_store", "peak_rss_mib_per_rank"), get(n, "train_memory", "peak_rss_mib_per_rank"),
            get(n, "train_store", "structures_per_s"), get(n, "train_memory", "structures_per_s"), ratio(n, "train_store", "train_memory"),
            get(n, "loader", "load_store_ms", "{:.1f}") + " / " + get(n, "loader", "load_memory_ms", "{:.1f}"),
            get(n, "loader", "model_step_ms"), get(n, "loader", "estimated_train_ratio_store_memory", "{:.3f}"),
            get(n, "train_store_ddp2", "structures_per_s"), get(n, "train_memory_ddp2", "structures_per_s"),
            get(n, "predict", "rss_mib"), get(n, "predict", "structures_per_s"),
            get(n, "train_ratio", "store_over_memory", "{:.2f}") + " (" + get(n, "train_ratio", "store_over_memory_paired", "{:.2f}") + ")",
            get(n, "train_ratio", "store_no_workers_over_memory", "{:.2f}"),
        ]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child_main(argv[1], argv[2])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sizes", nargs="*", type=int, default=list(DEFAULT_SIZES))
    ap.add_argument("--workdir", default="/tmp/crystalframes-scale", help="synthetic files, stores, runs (1M: ~10 GB)")
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--only", default=",".join(MEASUREMENTS), help=f"comma-separated subset of {','.join(MEASUREMENTS)}")
    ap.add_argument("--spec", default=SPEC)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3, help="training runs per path (alternating memory / store); medians recorded")
    ap.add_argument("--warmup", type=int, default=10, help="steps not timed (first batches, allocator warm-up)")
    ap.add_argument("--loader-sample", type=int, default=6000, help="in-memory graphs of the loader comparison")
    ap.add_argument("--loader-rounds", type=int, default=40)
    ap.add_argument("--memory-max", type=int, default=60000, help="largest N for the in-memory training path")
    ap.add_argument("--predict-max", type=int, default=200_000)
    ap.add_argument("--redo", action="store_true", help="measure again what the results file already has")
    ap.add_argument("--table", action="store_true", help="only print the table of the results file")
    args = ap.parse_args(argv)
    if not args.table:
        only = [m.strip() for m in args.only.split(",") if m.strip()]
        unknown = sorted(set(only) - set(MEASUREMENTS))
        if unknown:
            ap.error(f"unknown measurement(s) {', '.join(unknown)}; known: {', '.join(MEASUREMENTS)}")
        bench = Bench(args)
        for n in args.sizes:
            bench.run(n, [m for m in MEASUREMENTS if m in only])
    print()
    print(table(load_rows(Path(args.results))))


if __name__ == "__main__":
    main()
