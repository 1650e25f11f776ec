"""``crystalframes predict`` and ``crystalframes eval``: use a trained model (no training code)."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer

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


def _write_embeddings(path: Path, partial, per_atom: bool) -> int:
    """``ids``, ``embeddings`` (n, C) and, with ``per_atom``, ``atom_features`` (sum n_atoms, C)
    with ``atom_offsets`` (n + 1,) to an .npz file, atomically, from the finished batches (the
    first member's features, computed by the same forward as the predictions). Returns the rows
    written."""
    import base64

    from crystalframes.atomic import atomic_write

    ids, pooled, atoms, counts = [], [], [], []
    for b in partial.lines():
        if "emb" not in b:
            continue
        ids += [b["rows"][k][0] for k in b["emb_rows"]]
        pooled.append(np.frombuffer(base64.b64decode(b["emb"]), dtype=np.float32))
        if per_atom:
            atoms.append(np.frombuffer(base64.b64decode(b["atoms"]), dtype=np.float32))
            counts += b["atom_counts"]
    width = sum(len(p) for p in pooled) // max(len(ids), 1)
    arrays = {"ids": np.array(ids), "embeddings": (np.concatenate(pooled) if pooled else np.zeros(0, np.float32)).reshape(len(ids), width)}
    if per_atom:
        arrays["atom_features"] = (np.concatenate(atoms) if atoms else np.zeros(0, np.float32)).reshape(-1, width)
        arrays["atom_offsets"] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    with atomic_write(path) as fh:
        np.savez(fh, **arrays)
    return len(ids)


def _fingerprint(model: str, ensemble, predictor, inputs, digest: str, batch_size: int, batch_atoms: int, device: str,
                 embeddings: Optional[str]) -> dict:
    """What ties a partial file to one command: a different model, input or batching never
    continues it (the batches, and so the numbers, would differ)."""
    from crystalframes.data.download import file_sha256
    from crystalframes.version import __version__

    members = getattr(predictor, "members", [predictor])
    return {"model": [model, *ensemble], "model_sha256": [file_sha256(m.path) for m in members],
            "std_scale": getattr(predictor, "std_scale", None), "inputs": list(inputs),
            "inputs_sha256": digest, "batch_size": batch_size, "batch_atoms": batch_atoms,
            "device": device, "crystalframes": __version__,
            # the batches hold the embeddings they were asked for; absent (None) without --embeddings
            **({"embeddings": embeddings} if embeddings else {})}


def _std_note(model: str, predictor, std_scale: Optional[float]) -> str:
    """What the std column is, for the summary: a pretrained model's calibration and coverage."""
    from crystalframes.zoo import pretrained

    if not hasattr(predictor, "std_scale"):
        return ""
    entry = pretrained().get(model) if isinstance(model, str) and not Path(model).exists() else None
    if entry and std_scale is None:
        held = entry.get("metrics", {}).get("heldout", {})
        cover = ""
        if "within_1_std" in held:
            cover = f"; on its held-out split the truth fell within 1 std for {held['within_1_std']:.0%}"
            cover += f", within 2 std for {held['within_2_std']:.0%}" if "within_2_std" in held else ""
        return (f"predict: std = the ensemble spread x {predictor.std_scale:.3g}, the calibration factor measured on "
                f"{model}'s validation split{cover} (see its model card: crystalframes models --pretrained)")
    return f"predict: std = the ensemble spread x {predictor.std_scale:.3g} (not calibrated by crystalframes)"


def predict_command(
    model: str = typer.Argument(..., help="Model file (model.pt), run folder, or the name of a pretrained model (crystalframes models --pretrained)."),
    inputs: List[str] = typer.Argument(..., help="Structure files, folders, JSONL datasets."),
    output: Path = typer.Option(Path("predictions.csv"), "-o", "--output", help="CSV to write (replaced if it exists, only once every structure is done; a symlink's target is replaced, a FIFO or device is written into)."),
    batch_size: int = typer.Option(64, min=1, help="Most structures per batch (fewer when --batch-atoms is reached)."),
    batch_atoms: int = typer.Option(4096, "--batch-atoms", min=1, help="Most atoms per batch: the memory budget (~75 kB per atom for mp_gap); a --batch-size the budget cannot hold is capped, with a warning."),
    device: str = typer.Option("cpu", "--device", callback=device_option, help="Where to run the model: cpu, cuda, cuda:N or mps."),
    ensemble: List[str] = typer.Option([], "--ensemble", help="More trained models of the same target (repeatable): predict the mean over MODEL and these, with a std column per target."),
    embeddings: Optional[Path] = typer.Option(None, "--embeddings", help="Also write the per-structure embeddings (the pooled features the output head sees; the first model's for an ensemble) with their ids to this .npz file."),
    std_scale: Optional[float] = typer.Option(None, "--std-scale", help="An ensemble's std is the members' spread times this factor (default: 1 for --ensemble; a pretrained model's own, fitted on its validation split). Measure yours with crystalframes.analysis.uncertainty.calibration."),
    atom_embeddings: bool = typer.Option(False, "--atom-embeddings", help="With --embeddings: also the per-atom features (atom_features, atom_offsets)."),
    restart: bool = typer.Option(False, "--restart", help="Discard the partial file of an earlier, interrupted run (OUTPUT.partial) instead of continuing it."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Processes building the graphs while the model runs (0: in the main process; default: 0 on the CPU or for fewer than 1000 structures, else min(2, CPU cores)); on the CPU they pay off only where cores are free."),
):
    """Predict properties; bad inputs are listed in an error column while the good ones are predicted.

    For an ensemble (--ensemble, or a pretrained model) each target has a 'TARGET std' column:
    the members' spread (standard deviation) times the calibration factor (a pretrained model's
    is measured on its validation split so that ~68% of errors fall within 1 std; the summary
    line gives the held-out coverage from its model card). A target that cannot be negative (band
    gap, moduli...) is clipped at 0, its unclipped value in a 'TARGET raw' column.

    Inputs are read as a stream and each batch's rows go to OUTPUT.partial as soon as it is
    done, so memory does not grow with the number of inputs (a first pass over the inputs counts
    them and fingerprints them). Each structure's graph is built once, by --workers processes, for
    all ensemble members and the embeddings.

    Finished batches are kept in OUTPUT.partial: after an interruption (Ctrl-C: exit 130,
    SIGTERM: exit 143) the same command continues from it and writes the same CSV an
    uninterrupted run would. Progress: a bar on a terminal, a line every 30 s otherwise.

    Exit code 1 when nothing could be predicted (the CSV is then left as it was)."""
    import shlex
    import sys

    from crystalframes.data.datasets import target_is_nonnegative
    from crystalframes.io import UserError
    from crystalframes.predict_run import (Interrupted, Partial, Progress, budget_cap, default_workers, partial_path,
                                           plan_stream, predict_stream, scan_inputs, stop_on_signals)

    _refuse_folder(output, "CSV")
    if embeddings is not None:
        _refuse_folder(embeddings, ".npz file")
    if atom_embeddings and embeddings is None:
        raise UserError("--atom-embeddings needs --embeddings FILE.npz")
    again = "crystalframes " + shlex.join(sys.argv[1:])
    embed = None if embeddings is None else ("atoms" if atom_embeddings else "pooled")
    run = _Run()
    with stop_on_signals() as check_signals:
        try:
            predictor = _load(model, device, ensemble, std_scale)
            records = _records(inputs)
            scan = scan_inputs(records())  # streamed: counts, atoms and a digest, no structure kept
            run.total = scan.total
            cap = budget_cap(scan.atoms, batch_size, batch_atoms)
            if cap is not None:
                typer.echo(f"warning: --batch-size {batch_size} capped: a batch holds at most {batch_atoms} atoms "
                           f"(--batch-atoms, the memory budget), i.e. about {cap} structures of these", err=True)
            del scan.atoms
            run.partial = partial = Partial(partial_path(output), _fingerprint(
                model, ensemble, predictor, inputs, scan.digest, batch_size, batch_atoms, device, embed))
            note = partial.load(restart)
            if note:
                typer.echo(note, err=True)
            clip = [target_is_nonnegative(t) for t in predictor.columns]
            run.progress = Progress(scan.total, done=partial.done)

            def advance(n: int) -> None:  # after each batch is on disk: stop there if a signal came
                run.progress.update(n)
                check_signals()

            predict_stream(predictor, plan_stream(records(), batch_size, batch_atoms), partial, advance, clip,
                           default_workers(device, scan.total) if workers is None else workers, embed)
            check_signals()
            run.progress.close()
            _finish(output, embeddings, atom_embeddings, predictor, scan.total, partial, clip, run.progress)
        except Interrupted as stop:
            if run.progress is not None:
                run.progress.close()
            partial = run.partial
            done = partial.done if partial else 0
            if partial is not None and partial.kept():
                partial.close()
                kept = f"the finished rows are kept in {partial.path}; continue with: {again}"
            else:
                kept = "nothing kept" + (f" ({partial.failed})" if partial is not None and partial.failed else "")
            of = f" of {run.total}" if run.total is not None else ""
            typer.echo(f"predict: interrupted by {stop.name} after {done}{of} structure(s); {output} left as it was; {kept}", err=True)
            raise typer.Exit(stop.code)
        finally:
            if run.partial is not None:
                run.partial.close()
    note = _std_note(model, predictor, std_scale)
    if note:
        typer.echo(note, err=True)


@dataclasses.dataclass
class _Run:
    """What an interruption message needs to know of the run so far."""

    total: Optional[int] = None
    partial: object = None
    progress: object = None


def _records(inputs: List[str]):
    """A function giving a fresh, lazy iterator over the structures (crystals and InputErrors) of
    ``inputs`` in order, as :func:`crystalframes.cli.common.collect_structures` lists them:
    standard input (``-``) is read once, up front, and its bytes iterated each time."""
    from crystalframes.cli.common import read_stdin_once
    from crystalframes.data.sources import iter_input_structures

    stdin, first, inputs = read_stdin_once(inputs)

    def records():
        yield from first
        for item in inputs:
            yield from iter_input_structures(item, stdin)

    return records


def _finish(output, embeddings, atom_embeddings, predictor, total_crystals, partial, clip, progress):
    """Write the CSV (and embeddings) from the finished batches, read back one at a time; the
    partial file goes once everything is written, so a failed write never costs the predictions."""
    from crystalframes.atomic import atomic_write, write_error
    from crystalframes.io import InputError, UserError
    from crystalframes.predict_run import column_labels

    # the inputs that failed to read come first, then those that failed in their batch (as before streaming)
    unread, failed = [], []
    for b in partial.lines():
        unread += [InputError(s, p) for s, p in b["read_errors"]]
        failed += [InputError(s, p) for s, p in b["errors"]]
    errors = unread + failed
    total = total_crystals + len(unread)
    if not partial.kept_rows:
        _summary_of_errors(errors)
        partial.remove()
        typer.echo(f"predict: nothing predicted: all {total} input(s) failed (listed above); {output} not written", err=True)
        raise typer.Exit(1)
    labels = column_labels(predictor, hasattr(predictor, "predict_each_with_std"), clip)
    again = " (run the same command again to write {} without predicting again)"
    keep_note = f"; the finished rows stay in {partial.path}" if partial.kept() else ""
    try:
        with atomic_write(output, "w") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "source", "formula", "n_atoms", *labels, "error"])
            for b in partial.lines():
                w.writerows(row + [""] for row in b["rows"])
            for e in errors:
                w.writerow(["", e.source, "", "", *([""] * len(labels)), e.problem])
    except OSError as exc:
        raise UserError(f"{write_error(exc, output, 'the predictions')}; nothing written, {output} left as it was"
                        f"{keep_note and keep_note + again.format('it')}") from None
    if embeddings is not None:
        try:
            rows = _write_embeddings(embeddings, partial, atom_embeddings)
        except OSError as exc:
            raise UserError(f"{write_error(exc, embeddings, 'the embeddings')}; the predictions were written to {output}"
                            f"{keep_note and keep_note + again.format('the embeddings')}") from None
        typer.echo(f"predict: embeddings of {rows} structure(s) -> {embeddings}", err=True)
    partial.remove()
    _summary_of_errors(errors)
    failed = f"; {len(errors)} failed (see the 'error' column)" if errors else ""
    typer.echo(f"predict: {partial.kept_rows} of {total} structure(s) predicted -> {output}{failed} ({progress.rate()})", err=True)


def eval_command(
    model: str = typer.Argument(..., help="Model file (model.pt) or run folder."),
    source: str = typer.Argument(..., help="Dataset name or file with the model's target (or --target-column)."),
    split: Optional[str] = typer.Option(
        None, "--split",
        help="Only records whose split field is this (train/val/test), or 'heldout': the test part a default "
             "'crystalframes train' uses (the records' test split, or for data with train/val only, such as "
             "mp_2018_demo, 10% of train held out with data.split_seed 123; for records without a split field, the test part of the random split)."),
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

    from crystalframes.atomic import os_reason, write_error
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
        if usable and any(c.split for c in usable) and not any(c.split == "train" for c in usable):
            raise InputError(source, "--split heldout needs records with a split field of 'train' (the held-out part is drawn "
                                     "from them, as training does); these records have none: use --split train/val/test or no --split")
        crystals = heldout_part(usable, source, column) if usable else []
    else:
        crystals = [c for c in result.crystals if split is None or c.split == split]
    if not crystals and split not in (None, "heldout") and result.crystals and not any(c.split for c in result.crystals):
        raise InputError(source, f"no record has a split field, so --split {split} selects nothing; training split such "
                                 "records at random: --split heldout gives the test part it held out, no --split all records")
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
    if single.tensor_rank is not None:
        _tensor_eval(model, source, split, column, predictor, crystals, pred, errors, output)
        return
    pred = pred[:, 0]
    true = np.array([c.target(target) for c in crystals])
    # what predicting the model's training mean everywhere would score: the floor a model must beat
    train_mean = float(np.asarray(single.normaliser.mean).reshape(-1)[0])
    metrics = {"model": str(model), "source": source, "split": split, "target": target, "target_column": column,
               "units": predictor.units[0], **metrics_of(pred, true),
               "mean_baseline_mae": float(np.abs(true - train_mean).mean()), "failed": len(errors)}
    # printed before the files are written: a failed write (full disk, read-only folder) keeps them
    typer.echo(json.dumps(metrics, indent=2))
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{exc.filename or output}: cannot create the output folder: {os_reason(exc)}; nothing was written (the metrics are on standard output)") from None
    written = []
    for name, what, write in (
        ("metrics.json", "the metrics", lambda path: write_json(path, metrics)),
        ("predictions.csv", "the predictions", lambda path: write_predictions(path, crystals, pred, target, predictor.units[0])),
    ):
        try:
            write(output / name)
        except OSError as exc:
            done = f"{' and '.join(written)} written" if written else "nothing was written"
            raise UserError(f"{write_error(exc, output / name, what)}; {done} (the metrics are on standard output)") from None
        written.append(str(output / name))
    if errors:
        typer.echo(f"eval: {len(crystals)} record(s) evaluated, {len(errors)} failed (listed above)", err=True)



def _tensor_eval(model, source, split, column, predictor, crystals, pred, errors, output: Path) -> None:
    """``eval`` of a tensor model: the tensor metrics (crystalframes.train.tensor_metrics; no
    isotropic baseline, which needs the training tensors: a run's metrics.json has it) and a
    predictions CSV of the Voigt components."""
    from crystalframes.atomic import os_reason, write_error
    from crystalframes.io import UserError
    from crystalframes.train.data import full_tensor_target
    from crystalframes.train.metrics import write_json
    from crystalframes.train.tensor_metrics import tensor_metrics, write_tensor_predictions

    target, rank, units = predictor.targets[0], predictor.tensor_rank, predictor.units[0]
    true = np.stack([full_tensor_target(c, column) for c in crystals])
    metrics = {"model": str(model), "source": source, "split": split, "target": target, "target_column": column, "units": units,
               **tensor_metrics(pred, true, rank), "failed": len(errors)}
    typer.echo(json.dumps(metrics, indent=2))
    try:
        output.mkdir(parents=True, exist_ok=True)
        write_json(output / "metrics.json", metrics)
        write_tensor_predictions(output / "predictions.csv", crystals, true, pred, target, rank, units)
    except OSError as exc:
        if exc.filename and Path(exc.filename) == output:
            raise UserError(f"{output}: cannot create the output folder: {os_reason(exc)}; nothing was written") from None
        raise UserError(f"{write_error(exc, Path(exc.filename or output), 'the evaluation')} (the metrics are on standard output)") from None
    if errors:
        typer.echo(f"eval: {len(crystals)} record(s) evaluated, {len(errors)} failed (listed above)", err=True)
