"""Multi-seed accuracy studies: "does this frame help this backbone, at this budget?"

A study trains a grid of model specs x seeds with the same config overrides (data, budget) and
answers with spread, not anecdotes: :mod:`crystalframes.train.study_statistics` pairs every frame
model with its backbone without a frame over seeds and test structures, and
:mod:`crystalframes.train.study_tables` writes the tables. This module runs the grid and keeps its
results file.

Runs are resumable: each finished run appends one row to a JSON file (atomically), a rerun of
the same grid skips finished rows, and a run that was killed part-way resumes from its last
checkpoint. Several processes can work through one grid (one per core or GPU): each run is
claimed with a lock, so a run another process is training is skipped, not trained twice. Rows
carry the per-structure test errors (for the bootstrap) and the validation MAE of every epoch
(for MAE-against-epochs curves).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Callable, Iterable

from crystalframes.locks import file_lock

RESULTS_FORMAT = "crystalframes-study"
RESULTS_VERSION = 1


def budget_overrides(overrides: Iterable[str]) -> list[str]:
    """The overrides that change what is trained: all but ``trainer.threads`` (so a grid can be
    split over processes with other thread counts), sorted."""
    return sorted(o for o in overrides if not o.startswith("trainer.threads="))


def run_key(spec: str, seed: int, overrides: Iterable[str]) -> str:
    """The identity of one run: canonical spec, seed and the overrides that change what is
    trained (order-free)."""
    return f"{spec}|seed={seed}|" + ";".join(budget_overrides(overrides))


def load_rows(path: Path) -> list[dict]:
    """The rows of a results file ([] if it does not exist); a file of another format is refused."""
    path = Path(path)
    if not path.exists():
        return []
    payload = json.loads(path.read_text())
    if payload.get("format") != RESULTS_FORMAT:
        raise ValueError(f"{path}: not a crystalframes study results file")
    rows = list(payload["rows"])
    for row in rows:  # rows written before keys dropped trainer.threads
        row["overrides"] = budget_overrides(row["overrides"])
        row["key"] = run_key(row["key"].split("|")[0], row["seed"], row["overrides"])
    return rows


def save_rows(path: Path, rows: list[dict]) -> None:
    from crystalframes.atomic import atomic_write

    with atomic_write(Path(path), "w") as fh:
        json.dump({"format": RESULTS_FORMAT, "version": RESULTS_VERSION, "rows": rows}, fh, indent=1)
        fh.write("\n")


def append_row(path: Path, row: dict) -> None:
    """Add one row to a results file, reread under an exclusive lock so processes that split a
    grid between them keep each other's rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_name(path.name + ".lock")):
        rows = [r for r in load_rows(path) if r["key"] != row["key"]]
        rows.append(row)
        save_rows(path, rows)


def slug(text: str) -> str:
    """``text`` as a file-name part: every character but letters and digits becomes '-'."""
    return "".join(ch if ch.isalnum() else "-" for ch in text)


def _folder_name(spec: str, seed: int, overrides: Iterable[str] = ()) -> str:
    """Run folder of one run: spec and seed, plus a hash of the overrides that change what is
    trained (all but ``trainer.threads``), so grids with other budgets share a --runs folder."""
    import hashlib

    name = slug(spec) + f"-s{seed}"
    budget = budget_overrides(overrides)
    return name if not budget else name + "-" + hashlib.sha1(";".join(budget).encode()).hexdigest()[:8]


def row_of_run(folder: Path, spec: str, seed: int, overrides: list[str]) -> dict:
    """One results row from a finished run folder (metrics.json, predictions_test.csv, the
    per-epoch log)."""
    from crystalframes.models.specs import parse_spec

    m = json.loads((folder / "metrics.json").read_text())
    # a tensor target's error per structure is its Frobenius error (the last column of its
    # prediction file), its baseline the isotropic mean of the training tensors
    tensor = "frobenius" in m["test"]
    ids, errors = [], []
    with open(folder / "predictions_test.csv", newline="") as fh:
        reader = csv.reader(fh)
        next(reader)
        for rec in reader:
            ids.append(rec[0])
            errors.append(float(rec[-1]) if tensor else abs(float(rec[3]) - float(rec[4])))
    curve = {}
    log = folder / "logs" / "metrics.csv"
    if log.exists():
        with open(log, newline="") as fh:
            for rec in csv.DictReader(fh):
                if rec.get("val_mae"):
                    curve[int(rec["epoch"])] = float(rec["val_mae"])
    import yaml

    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    return {
        "key": run_key(spec, seed, overrides),
        "spec": str(parse_spec(m["spec"])),  # canonical: a run trained as "x@cpu" joins "x+qr@cpu"
        "seed": seed,
        "overrides": budget_overrides(overrides),
        "target": m["target"],
        "units": m["units"],
        "epochs": m["epochs_completed"],
        "batch_size": cfg["trainer"]["batch_size"],
        "params": m.get("params"),
        "train_wall_seconds": m["train_wall_seconds"],
        "val_mae": m["val"]["frobenius"] if tensor else m["val"]["mae"],
        "test_mae": m["test"]["frobenius"] if tensor else m["test"]["mae"],
        "val_mean_baseline_mae": m["val"]["isotropic_baseline"]["frobenius"] if tensor else m["val"]["mean_baseline_mae"],
        "test_mean_baseline_mae": m["test"]["isotropic_baseline"]["frobenius"] if tensor else m["test"]["mean_baseline_mae"],
        **({"error": "mean Frobenius error", "baseline": "isotropic mean of the training tensors",
            "test_ewt": {k: m["test"][k] for k in ("ewt_25", "ewt_10", "ewt_5")}} if tensor else {}),
        "val_mae_per_epoch": [curve[e] for e in sorted(curve)],
        "test_ids": ids,
        "test_abs_errors": [round(e, 7) for e in errors],
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        # a fine-tuning run: the sha256 of the model file it started from (see train.finetune)
        **({"init_sha256": m["init"]["sha256"]} if "init" in m else {}),
    }


def run_grid(specs: list[str], overrides: list[str], seeds: Iterable[int], output: Path, results: Path,
             on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Train every spec x seed not yet in ``results`` (seed-major: every spec gets seed 0 before
    any gets seed 1, so a partial study is balanced), appending each finished run's row."""
    from crystalframes.models.specs import parse_spec
    from crystalframes.train.config import config_with_preset_training, explicit_keys, load_config
    from crystalframes.train.run import train

    specs = [str(parse_spec(s)) for s in specs]  # all specs valid before the first long run
    output, results = Path(output), Path(results)
    output.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        for spec in specs:
            key = run_key(spec, seed, overrides)
            if key in {r["key"] for r in load_rows(results)}:  # reread: another process may share the file
                continue
            folder = output / _folder_name(spec, seed, overrides)
            # a lock file beside the run folder, so a fresh run that replaces the folder keeps it
            with file_lock(folder.with_name(folder.name + ".lock"), blocking=False) as claimed:
                if not claimed:  # another process is training this run: leave it to that one
                    print(f"skipping {spec} seed {seed}: another process is training it ({folder})", flush=True)
                    continue
                if key in {r["key"] for r in load_rows(results)}:  # it finished while we looked
                    continue
                if not (folder / "metrics.json").exists():
                    sets = [*overrides, f"model.spec={spec}", f"trainer.seed={seed}"]
                    cfg = config_with_preset_training(load_config(None, sets), explicit_keys(None, sets))
                    resume = (folder / "checkpoints" / "last.ckpt").exists()
                    train(cfg, folder, resume=resume, overwrite=folder.exists() and not resume)
                row = row_of_run(folder, spec, seed, overrides)
                append_row(results, row)
            if on_row is not None:
                on_row(row)
    return load_rows(results)
