"""Host synchronisations and aten operators of one training step, per backbone, before / after a
change, with the CPU speed of both versions measured interleaved in one process.

What it measures, for each spec (default: the ``max`` and ``none`` frames of Crystalformer and
eComFormer at ``@reference``), on one batch of ``--batch-size`` real crystals (a seed-chosen sample
of the Materials Project file ``/work/shared/data/mp_2018_sample.jsonl.gz`` when present, else
``crystalframes.testing.random_crystals``; the same structures for every spec and version), in
float32, train mode, ``--threads`` threads (default 1):

- ``ops``: aten operator calls of one training step (zero_grad, forward, L1 loss against zeros,
  backward, Adam step), counted after two warm-up steps. On a GPU each one is a kernel launch;
  the Adam step's per-parameter operators are the same in both versions.
- ``syncs``: host-device synchronisations of that step in the package's own source, and where
  they are (``file:line kind``). On the CPU nothing waits, so they are recognised by name
  (:mod:`crystalframes.profiling`): Python-level reads of a tensor value (``.item()``,
  ``bool(t)``, ``int(t)``, ``.tolist()``, ``.cpu()``...) and operators whose output size depends on
  the data (``nonzero``, boolean-mask indexing, ``repeat_interleave`` without ``output_size``,
  ``unique``, ``bincount``...). Reads made by torch itself (Adam's step counters live on the CPU by
  design) are listed as ``outside``, not counted.
- ``train`` / ``infer`` ms per structure: the median over ``--rounds`` rounds of one training step
  and of one inference forward pass (eval mode, no_grad; graphs pre-built, not timed).

With ``--before REF`` (a git ref of this repository, e.g. a commit before the sync removal) the
revision's ``src/crystalframes`` is extracted into a temporary folder as the package
``crystalframes_before`` (its imports and package-data lookups renamed), so both versions live
in one process: the same model is built in both, the weights copied from the current version to
the old one (the outputs are compared, float32, tolerance 1e-5), both are counted by the same
(current) counter, and their steps are timed interleaved (each round runs both, the order
alternating between rounds). ``ratio`` = before / after of the median times: above 1 the current
code is faster; ``ratio_paired``, the median of each round's before / after, is less moved by load
that changes during the run. Timings on a shared machine scatter (+-30 %): the load average is printed.

    python benchmarks/step_profile.py --before 47d4258                 # 5-9 min on 2 cores (4 specs, 10 rounds)
    python benchmarks/step_profile.py --specs ecomformer:max@cpu_small --batch-size 8 --rounds 2

Prints a markdown table, the top sync sources, then one JSON line with everything.

On a GPU the direct check is ``torch.cuda.set_sync_debug_mode("warn")`` (or ``"error"``) around
the step: CUDA then reports every synchronisation as it happens (benchmarks/gpu_check.py).
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import crystalframes
from crystalframes.profiling import StepCounter

DEFAULT_SPECS = ("crystalformer:max@reference", "crystalformer:none@reference",
                 "ecomformer:max@reference", "ecomformer:none@reference")
MP_SAMPLE = Path("/work/shared/data/mp_2018_sample.jsonl.gz")
REPO = Path(__file__).resolve().parents[1]
BEFORE = "crystalframes_before"
AGREE = 1e-5  # float32 outputs of the two versions with identical weights
WARMUP_STEPS = 2

# `import crystalframes`, `from crystalframes`, and dotted names (`crystalframes.nn`, also inside
# strings such as importlib.resources.files("crystalframes.nn")); not the distribution name.
_OWN_NAME = re.compile(r"\bcrystalframes\b(?=\.[A-Za-z_])|(?<=from )crystalframes\b|(?<=import )crystalframes\b")


# --- the two versions -------------------------------------------------------------------------

class Version:
    """One version of the package: its module name, its source folder (what StepCounter counts)
    and the three functions the benchmark needs."""

    def __init__(self, label: str, package: str):
        self.label = label
        module = importlib.import_module(package)
        self.root = Path(module.__file__).resolve().parent
        self.build_model = importlib.import_module(f"{package}.models").build_model
        self.build_graph = importlib.import_module(f"{package}.data.graph").build_graph
        self.collate = importlib.import_module(f"{package}.data.batch").collate
        if not self.build_model.__module__.startswith(package + "."):  # a missed rename would compare a version with itself
            raise RuntimeError(f"{label}: build_model comes from {self.build_model.__module__}, not {package}")

    def batch(self, model, crystals, dtype):
        return self.collate([self.build_graph(c, model.graph_settings) for c in crystals], dtype=dtype)


def git_available() -> bool:
    return shutil.which("git") is not None and (REPO / ".git").exists()


def extract_before(ref: str, folder: Path) -> str:
    """Extracts ``src/crystalframes`` of ``ref`` into ``folder/crystalframes_before``, renamed,
    and puts ``folder`` on sys.path; returns the full commit id."""
    if not git_available():
        raise SystemExit("--before needs git and this repository's .git folder")
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{ref}^{{commit}}"],
                         capture_output=True, text=True, check=True).stdout.strip()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", sha, "src/crystalframes"],
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        # the "data" filter (no absolute paths, links out of the folder...) where this Python
        # has it (3.11.4+, 3.12; backported to some 3.8-3.10 patch releases); our own git
        # archive otherwise, which holds plain files only
        if hasattr(tarfile, "data_filter"):
            tar.extractall(folder, filter="data")
        else:
            tar.extractall(folder)
    package = folder / BEFORE
    (folder / "src" / "crystalframes").rename(package)
    for path in package.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        renamed = _OWN_NAME.sub(BEFORE, text)
        if renamed != text:
            path.write_text(renamed, encoding="utf-8")
    _forget_before()
    sys.path.insert(0, str(folder))
    return sha


def _forget_before() -> None:
    """A second run in one process (the tests) must not find the first run's deleted copy."""
    for name in [n for n in sys.modules if n == BEFORE or n.startswith(BEFORE + ".")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def head_description() -> str:
    if not git_available():
        return "working tree (no git)"
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src/crystalframes"],
                           capture_output=True, text=True).stdout.strip()
    return f"{sha}{' + uncommitted changes in src/crystalframes' if dirty else ''}"


# --- data ---------------------------------------------------------------------------------------

def pick_crystals(n: int, seed: int) -> tuple[list, str]:
    """``n`` structures chosen by ``seed``: real ones from the MP sample when it is there."""
    if MP_SAMPLE.exists():
        from crystalframes.data.sources import load_dataset

        pool = load_dataset(MP_SAMPLE).crystals
        chosen = np.sort(np.random.default_rng(seed).choice(len(pool), size=min(n, len(pool)), replace=False))
        return [pool[i] for i in chosen], MP_SAMPLE.name
    from crystalframes.testing import random_crystals

    return random_crystals(n, seed=seed), "random_crystals"


# --- one spec -------------------------------------------------------------------------------------

class Runner:
    """A model of one version with its optimiser, batch and target."""

    def __init__(self, version: Version, spec: str, crystals, seed: int, dtype):
        self.version = version
        torch.manual_seed(seed)
        self.model = version.build_model(spec).to(dtype).train()
        self.batch = version.batch(self.model, crystals, dtype)
        self.optimiser = None
        self.target = None

    def start_training(self) -> None:
        self.optimiser = torch.optim.Adam(self.model.parameters(), lr=1e-4)

    def train_step(self) -> None:
        self.optimiser.zero_grad()
        out = self.model(self.batch)
        if self.target is None:
            self.target = torch.zeros_like(out.detach())
        torch.nn.functional.l1_loss(out, self.target).backward()
        self.optimiser.step()

    def infer(self) -> torch.Tensor:
        self.model.eval()
        try:
            with torch.no_grad():
                return self.model(self.batch)
        finally:
            self.model.train()

    def count(self, what) -> StepCounter:
        with StepCounter(roots=[self.version.root]) as counter:
            what()
        return counter


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def profile_spec(spec: str, versions: list[Version], crystals, rounds: int, seed: int, top: int) -> dict:
    dtype = torch.float32
    runners = [Runner(v, spec, crystals, seed, dtype) for v in versions]
    row: dict = {}
    if len(runners) == 2:
        before, after = runners
        # identical weights whatever each version's initialisation does
        before.model.load_state_dict(after.model.state_dict())
        difference = float((before.infer() - after.infer()).abs().max())
        row["max_output_difference"] = difference
        row["outputs_agree"] = difference <= AGREE
    for r in runners:
        r.start_training()
        for _ in range(WARMUP_STEPS):
            r.train_step()
    for r in runners:
        step = r.count(r.train_step)
        forward = r.count(r.infer)
        row[r.version.label] = {
            "ops": step.ops, "syncs": step.syncs,
            "where": dict(step.where.most_common()), "outside": dict(step.outside.most_common()),
            "infer_ops": forward.ops, "infer_syncs": forward.syncs,
            "top": [f"{n} x {w}" for w, n in step.where.most_common(top)],
        }
    times = {r.version.label: {"train": [], "infer": []} for r in runners}
    for k in range(rounds):
        order = runners if k % 2 == 0 else runners[::-1]  # neither version always goes first
        for r in order:
            times[r.version.label]["train"].append(timed(r.train_step))
        for r in order:
            times[r.version.label]["infer"].append(timed(r.infer))
    n = len(crystals)
    for label, t in times.items():
        for kind in ("train", "infer"):
            row[label][f"{kind}_ms_per_structure"] = 1e3 * statistics.median(t[kind]) / n
            row[label][f"{kind}_ms_per_structure_all"] = [round(1e3 * x / n, 4) for x in t[kind]]
    if len(runners) == 2:
        for kind in ("train", "infer"):
            row[f"{kind}_ratio"] = row["before"][f"{kind}_ms_per_structure"] / row["after"][f"{kind}_ms_per_structure"]
            # each round's two versions ran back to back: their ratio is blind to load that
            # changes between rounds (other jobs come and go), which moves both medians
            row[f"{kind}_ratio_paired"] = statistics.median(
                b / a for b, a in zip(times["before"][kind], times["after"][kind]))
    return row


# --- output -------------------------------------------------------------------------------------

def table(report: dict) -> str:
    def cell(row, label, key, fmt="{}"):
        return fmt.format(row[label][key]) if label in row else "-"

    lines = ["| spec | ops before | ops after | syncs before | syncs after | train ms/structure before / after | ratio "
             "| infer ms/structure before / after | ratio |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for spec, row in report["specs"].items():
        ratio = {k: f"{row[k + '_ratio']:.2f} ({row[k + '_ratio_paired']:.2f})" if k + "_ratio" in row else "-"
                 for k in ("train", "infer")}
        lines.append(
            f"| {spec} | {cell(row, 'before', 'ops')} | {cell(row, 'after', 'ops')} | {cell(row, 'before', 'syncs')} "
            f"| {cell(row, 'after', 'syncs')} | {cell(row, 'before', 'train_ms_per_structure', '{:.2f}')} / "
            f"{cell(row, 'after', 'train_ms_per_structure', '{:.2f}')} | {ratio['train']} "
            f"| {cell(row, 'before', 'infer_ms_per_structure', '{:.2f}')} / "
            f"{cell(row, 'after', 'infer_ms_per_structure', '{:.2f}')} | {ratio['infer']} |")
    if any("train_ratio" in row for row in report["specs"].values()):
        lines.append("\nratio: before / after of the median times (in brackets: the median of each round's "
                     "before / after); above 1 the current code is faster")
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specs", nargs="+", default=list(DEFAULT_SPECS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds per spec (each: a training step and a "
                        "forward pass of every version)")
    parser.add_argument("--before", metavar="REF", help="git ref of this repository to compare against")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="chooses the structures and the initial weights")
    parser.add_argument("--top", type=int, default=8, help="sync sources listed per spec and version")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.batch_size < 1 or args.rounds < 1:
        raise SystemExit("--batch-size and --rounds must be at least 1")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    load_start = os.getloadavg()
    crystals, source = pick_crystals(args.batch_size, args.seed)
    report = {
        "benchmark": "step_profile", "torch": torch.__version__, "after": head_description(),
        "before": None, "before_commit": None, "data": source, "batch_size": len(crystals),
        "atoms": int(sum(c.num_atoms for c in crystals)), "threads": args.threads, "rounds": args.rounds,
        "seed": args.seed, "dtype": "float32", "warmup_steps": WARMUP_STEPS, "specs": {},
    }
    with tempfile.TemporaryDirectory(prefix="step_profile_") as tmp:
        try:
            versions = [Version("after", crystalframes.__name__)]
            if args.before:
                report["before"] = args.before
                report["before_commit"] = extract_before(args.before, Path(tmp))
                versions.insert(0, Version("before", BEFORE))
            for spec in args.specs:
                print(f"{spec} ...", file=sys.stderr, flush=True)
                report["specs"][spec] = profile_spec(spec, versions, crystals, args.rounds, args.seed, args.top)
        finally:
            if args.before:
                _forget_before()
                if tmp in sys.path:
                    sys.path.remove(tmp)
    report["loadavg_start"] = [round(x, 2) for x in load_start]
    report["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report["seconds"] = round(time.perf_counter() - start, 1)

    print(f"data: {source}, {report['batch_size']} structures ({report['atoms']} atoms), float32, "
          f"{args.threads} thread(s), {args.rounds} round(s); after = {report['after']}"
          + (f", before = {args.before} ({report['before_commit'][:9]})" if args.before else ""))
    print(f"load average (1/5/15 min): start {report['loadavg_start']}, end {report['loadavg_end']}\n")
    print(table(report) + "\n")
    for spec, row in report["specs"].items():
        if "max_output_difference" in row:
            print(f"{spec}: max |output before - after| = {row['max_output_difference']:.2e} "
                  f"({'agree' if row['outputs_agree'] else 'DIFFER'} at {AGREE:g})")
        for label in ("before", "after"):
            if label in row:
                print(f"  {label} syncs: " + ("; ".join(row[label]["top"]) or "none"))
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
