"""``crystalframes predict`` and ``crystalframes eval``: use a trained model (no training code)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer


def _collect(inputs: List[str], model=None):
    """Crystals and errors from files, folders and datasets; bad inputs are listed, not fatal.
    With ``model``, structures holding elements it cannot encode are errors too (found here,
    before batching, so they never cost the good structures of their batch)."""
    import stat

    from crystalframes.io import InputError, iter_records, read_structure
    from crystalframes.models.elements import split_supported

    crystals, errors = [], []
    for item in inputs:
        path = Path(item)
        try:
            if path.is_dir() or path.name.endswith((".jsonl", ".jsonl.gz", ".zip")) or path.name == "id_prop.csv":
                for rec in iter_records(path):
                    (errors if isinstance(rec, InputError) else crystals).append(rec)
            else:
                try:
                    mode = path.stat().st_mode
                except OSError:
                    mode = None  # missing or unreadable: the reader says which
                if mode is not None and not stat.S_ISREG(mode):
                    # a named pipe or device would block the read forever (or never end)
                    raise InputError(item, "not a regular file (a named pipe, socket or device); give a structure file")
                crystals.append(read_structure(path))
        except InputError as exc:
            errors.append(exc)
    if model is not None:
        crystals, unsupported = split_supported(model, crystals)
        errors.extend(unsupported)
    return crystals, errors


def predict_command(
    model: str = typer.Argument(..., help="Model file (model.pt) or run folder."),
    inputs: List[str] = typer.Argument(..., help="Structure files, folders, JSONL datasets."),
    output: Path = typer.Option(Path("predictions.csv"), "-o", "--output", help="CSV to write."),
    batch_size: int = typer.Option(64, help="Structures per batch."),
):
    """Predict properties; bad inputs are listed in an error column while the good ones are predicted."""
    from crystalframes.api import load_model
    from crystalframes.atomic import atomic_write

    predictor = load_model(model)
    crystals, errors = _collect(inputs)
    pred = predictor.predict_crystals(crystals, batch_size) if crystals else np.zeros((0, len(predictor.targets)))
    buf = io.StringIO()
    w = csv.writer(buf)
    labels = [f"{t} ({u})" if u else t for t, u in zip(predictor.targets, predictor.units)]
    w.writerow(["id", "source", "formula", "n_atoms", *labels, "error"])
    for c, p in zip(crystals, pred):
        w.writerow([c.id, c.source, c.formula, c.num_atoms, *(f"{v:.6g}" for v in p), ""])
    for e in errors:
        w.writerow(["", e.source, "", "", *([""] * len(labels)), e.problem])
    with atomic_write(output, "w") as fh:
        fh.write(buf.getvalue())
    typer.echo(f"predicted {len(crystals)} structures -> {output}" + (f"; {len(errors)} bad inputs listed in its error column" if errors else ""))
    for e in errors[:10]:
        typer.echo(f"  bad input: {e}", err=True)


def eval_command(
    model: str = typer.Argument(..., help="Model file (model.pt) or run folder."),
    source: str = typer.Argument(..., help="Dataset name or file with the model's target."),
    split: Optional[str] = typer.Option(None, "--split", help="Only records whose split field is this (train/val/test)."),
    output: Path = typer.Option(Path("eval"), "-o", "--output", help="Folder for metrics.json and predictions.csv."),
):
    """Metrics (MAE, RMSE, R^2, n) of a model on a dataset, plus a predictions CSV."""
    from crystalframes.api import load_model
    from crystalframes.data.datasets import load_dataset
    from crystalframes.io import InputError
    from crystalframes.train.metrics import metrics_of, write_json, write_predictions

    predictor = load_model(model)
    target = predictor.targets[0]
    result = load_dataset(source, target=target)
    crystals = [c for c in result.crystals if split is None or c.split == split]
    if not crystals:
        raise InputError(source, f"no records with target '{target}'" + (f" in split '{split}'" if split else ""))
    true = np.array([c.target(target) for c in crystals])
    pred = predictor.predict_crystals(crystals)[:, 0]
    metrics = {"model": str(model), "source": source, "split": split, "target": target, "units": predictor.units[0], **metrics_of(pred, true)}
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / "metrics.json", metrics)
    write_predictions(output / "predictions.csv", crystals, pred, target, predictor.units[0])
    typer.echo(json.dumps(metrics, indent=2))
