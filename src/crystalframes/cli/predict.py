"""``crystalframes predict`` and ``crystalframes eval``: use a trained model (no training code)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer

from crystalframes.cli.common import collect_structures
from crystalframes.cli.options import device_option


def _target_names(source: str, records: int = 50) -> list[str]:
    """The target names the first ``records`` good records of ``source`` hold (for a hint)."""
    from itertools import islice

    from crystalframes.data.sources import resolve_source
    from crystalframes.io import Crystal, iter_records

    found = islice((r for r in iter_records(resolve_source(source)) if isinstance(r, Crystal)), records)
    return sorted({name for crystal in found for name in crystal.targets})


def _summary_of_errors(errors, limit: int = 10) -> None:
    """The first ``limit`` bad inputs on stderr, one per line."""
    for e in errors[:limit]:
        typer.echo(f"  bad input: {e}", err=True)
    if len(errors) > limit:
        typer.echo(f"  ... and {len(errors) - limit} more", err=True)


def _refuse_folder(output: Path, what: str) -> None:
    if output.is_dir():
        from crystalframes.io import UserError

        raise UserError(f"{output}: is a folder; give the name of the {what} to write (-o FILE)")


def _load(model: str, device: str, ensemble: Optional[List[str]] = None, std_scale: Optional[float] = None):
    """The model, or with ``ensemble`` (more model files / run folders) an ensemble of it and them;
    ``std_scale`` replaces an ensemble's std factor (a pretrained model's shipped one included)."""
    import dataclasses

    from crystalframes.api import Ensemble, load_ensemble, load_model
    from crystalframes.io import UserError

    predictor = load_ensemble([model, *ensemble], device=device) if ensemble else load_model(model, device=device)
    if std_scale is not None:
        if not isinstance(predictor, Ensemble):
            raise UserError(f"--std-scale: {model} is one model, not an ensemble (add --ensemble RUN ...)")
        try:  # the Ensemble checks the factor
            predictor = dataclasses.replace(predictor, std_scale=std_scale)
        except ValueError as exc:
            raise UserError(f"--std-scale: {exc} (e.g. scale_for_68 of benchmarks/calibration.py)") from None
    return predictor


def _write_embeddings(path: Path, predictor, crystals, batch_size: int, per_atom: bool) -> int:
    """``ids``, ``embeddings`` (n, C) and, with ``per_atom``, ``atom_features`` (sum n_atoms, C)
    with ``atom_offsets`` (n + 1,) to an .npz file, atomically. Returns the rows written."""
    from crystalframes.atomic import atomic_write

    kept, pooled, atoms, _ = predictor.embed_each(crystals, batch_size, per_atom)  # an ensemble's: its first member's
    arrays = {"ids": np.array([c.id for c in kept]), "embeddings": pooled.astype(np.float32)}
    if per_atom:
        arrays["atom_features"] = (np.concatenate(atoms) if atoms else np.zeros((0, pooled.shape[1]))).astype(np.float32)
        arrays["atom_offsets"] = np.concatenate([[0], np.cumsum([len(a) for a in atoms])]).astype(np.int64)
    with atomic_write(path) as fh:
        np.savez(fh, **arrays)
    return len(kept)


def predict_command(
    model: str = typer.Argument(..., help="Model file (model.pt), run folder, or the name of a pretrained model (crystalframes models --pretrained)."),
    inputs: List[str] = typer.Argument(..., help="Structure files, folders, JSONL datasets."),
    output: Path = typer.Option(Path("predictions.csv"), "-o", "--output", help="CSV to write (replaced if it exists)."),
    batch_size: int = typer.Option(64, min=1, help="Structures per batch."),
    device: str = typer.Option("cpu", "--device", callback=device_option, help="Where to run the model: cpu, cuda, cuda:N or mps."),
    ensemble: List[str] = typer.Option([], "--ensemble", help="More trained models of the same target (repeatable): predict the mean over MODEL and these, with a std column per target."),
    embeddings: Optional[Path] = typer.Option(None, "--embeddings", help="Also write the per-structure embeddings (the pooled features the output head sees; the first model's for an ensemble) with their ids to this .npz file."),
    std_scale: Optional[float] = typer.Option(None, "--std-scale", help="An ensemble's std is the members' spread times this factor (default: 1 for --ensemble; a pretrained model's own, fitted on its validation split). Measure yours with crystalframes.analysis.uncertainty.calibration."),
    atom_embeddings: bool = typer.Option(False, "--atom-embeddings", help="With --embeddings: also the per-atom features (atom_features, atom_offsets)."),
):
    """Predict properties; bad inputs are listed in an error column while the good ones are predicted.

    Exit code 1 when nothing could be predicted (the CSV is then left as it was)."""
    from crystalframes.atomic import atomic_write
    from crystalframes.io import UserError

    _refuse_folder(output, "CSV")
    if embeddings is not None:
        _refuse_folder(embeddings, ".npz file")
    if atom_embeddings and embeddings is None:
        raise UserError("--atom-embeddings needs --embeddings FILE.npz")
    predictor = _load(model, device, ensemble, std_scale)
    crystals, errors = collect_structures(inputs)
    std = None
    if hasattr(predictor, "predict_each_with_std"):  # an ensemble (--ensemble, or a pretrained model)
        crystals, pred, std, model_errors = predictor.predict_each_with_std(crystals, batch_size)
    else:
        crystals, pred, model_errors = predictor.predict_each(crystals, batch_size)
    errors += model_errors
    total = len(crystals) + len(errors)
    if not crystals:
        _summary_of_errors(errors)
        typer.echo(f"predict: nothing predicted: all {total} input(s) failed (listed above); {output} not written", err=True)
        raise typer.Exit(1)
    buf = io.StringIO()
    w = csv.writer(buf)
    labels = [f"{t} ({u})" if u else t for t, u in zip(predictor.targets, predictor.units)]
    if std is not None:  # one std column after each target
        labels = [x for t, u in zip(predictor.targets, predictor.units) for x in (f"{t} ({u})" if u else t, f"{t} std ({u})" if u else f"{t} std")]
    w.writerow(["id", "source", "formula", "n_atoms", *labels, "error"])
    for i, (c, p) in enumerate(zip(crystals, pred)):
        values = p if std is None else [x for pair in zip(p, std[i]) for x in pair]
        w.writerow([c.id, c.source, c.formula, c.num_atoms, *(f"{v:.6g}" for v in values), ""])
    for e in errors:
        w.writerow(["", e.source, "", "", *([""] * len(labels)), e.problem])
    try:
        with atomic_write(output, "w") as fh:
            fh.write(buf.getvalue())
    except OSError as exc:
        raise UserError(f"{output}: cannot write the predictions ({exc.strerror or exc})") from None
    if embeddings is not None:
        try:
            rows = _write_embeddings(embeddings, predictor, crystals, batch_size, atom_embeddings)
        except OSError as exc:
            raise UserError(f"{embeddings}: cannot write the embeddings ({exc.strerror or exc})") from None
        typer.echo(f"predict: embeddings of {rows} structure(s) -> {embeddings}", err=True)
    _summary_of_errors(errors)
    failed = f"; {len(errors)} failed (see the 'error' column)" if errors else ""
    typer.echo(f"predict: {len(crystals)} of {total} structure(s) predicted -> {output}{failed}", err=True)


def eval_command(
    model: str = typer.Argument(..., help="Model file (model.pt) or run folder."),
    source: str = typer.Argument(..., help="Dataset name or file with the model's target (or --target-column)."),
    split: Optional[str] = typer.Option(
        None, "--split",
        help="Only records whose split field is this (train/val/test), or 'heldout': the test part a default "
             "'crystalframes train' uses (the records' test split, or for data with train/val only, such as "
             "mp_2018_demo, 10%% of train held out with data.split_seed 123)."),
    target_column: Optional[str] = typer.Option(
        None, "--target-column",
        help="The dataset's name for the true values when it differs from the model's target "
             "(e.g. 'target' for an id_prop.csv without header, or your own JSONL key)."),
    output: Path = typer.Option(Path("eval"), "-o", "--output", help="Folder for metrics.json and predictions.csv."),
    batch_size: int = typer.Option(64, min=1, help="Structures per batch."),
    device: str = typer.Option("cpu", "--device", callback=device_option, help="Where to run the model: cpu, cuda, cuda:N or mps."),
):
    """Metrics (MAE, RMSE, R^2, n) of a model on a dataset, plus a predictions CSV."""
    from dataclasses import replace

    from crystalframes.data.sources import load_dataset
    from crystalframes.io import InputError, UserError
    from crystalframes.train.metrics import metrics_of, write_json, write_predictions

    if output.exists() and not output.is_dir():
        raise UserError(f"{output}: is a file; eval writes a folder (metrics.json, predictions.csv): give a folder name with -o")
    predictor = _load(model, device)
    target = predictor.targets[0]
    column = target_column or target
    single = getattr(predictor, "members", [predictor])[0]  # an ensemble's members share data and target
    result = load_dataset(source, target=column)
    if split == "heldout":
        from crystalframes.train.data import heldout_part, usable_records

        # the records training would use, split as training splits them
        usable, _ = usable_records(result.crystals, column, single.model)
        if usable and not any(c.split == "train" for c in usable):
            raise InputError(source, "--split heldout needs records with a split field of 'train' (the held-out part is drawn "
                                     "from them, as training does); these records have none: use --split train/val/test or no --split")
        crystals = heldout_part(usable, source, column) if usable else []
    else:
        crystals = [c for c in result.crystals if split is None or c.split == split]
    if not crystals:
        hint = ""
        if target_column is None:
            names = _target_names(source)
            hint = "; if the dataset names it otherwise, give --target-column NAME" + (f" (records have: {', '.join(names)})" if names else "")
        raise InputError(source, f"no records with target '{column}'" + (f" in split '{split}'" if split else "") + hint)
    if column != target:  # the user's column holds the model's target
        crystals = [replace(c, targets={**c.targets, target: c.targets[column]}) for c in crystals]
    crystals, pred, errors = predictor.predict_each(crystals, batch_size)
    _summary_of_errors(errors)
    if not crystals:
        raise InputError(source, f"none of the {len(errors)} records could be predicted (listed above)")
    pred = pred[:, 0]
    true = np.array([c.target(target) for c in crystals])
    # what predicting the model's training mean everywhere would score: the floor a model must beat
    train_mean = float(np.asarray(single.normaliser.mean).reshape(-1)[0])
    metrics = {"model": str(model), "source": source, "split": split, "target": target, "target_column": column,
               "units": predictor.units[0], **metrics_of(pred, true),
               "mean_baseline_mae": float(np.abs(true - train_mean).mean()), "failed": len(errors)}
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / "metrics.json", metrics)
    write_predictions(output / "predictions.csv", crystals, pred, target, predictor.units[0])
    typer.echo(json.dumps(metrics, indent=2))
    if errors:
        typer.echo(f"eval: {len(crystals)} record(s) evaluated, {len(errors)} failed (listed above)", err=True)

