"""``crystalframes bench``: efficiency and accuracy tables (printed figures)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from crystalframes.cli.options import choice_option

app = typer.Typer(help="Benchmarks: model efficiency and accuracy tables.", no_args_is_help=True)


@app.command("models")
def models(
    specs: List[str] = typer.Argument(..., help="Model specs, e.g. ecomformer:none@jarvis_formation_energy crystalformer:max@reference."),
    data: str = typer.Option("mp_2018_demo", "--data", help="Dataset name or file."),
    n: int = typer.Option(256, min=1, help="Structures to time."),
    batch_size: int = typer.Option(64, min=1, help="Batch size."),
    threads: int = typer.Option(2, min=1, help="torch CPU threads."),
    dtype: str = typer.Option("float32", callback=choice_option("float32", "float64"), help="float32 or float64."),
    repeats: int = typer.Option(2, min=1, help="Timings per batch (the fastest is kept)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON rows."),
):
    """Parameters, training ms/structure and s/epoch, inference ms/structure, peak memory."""
    from crystalframes.bench import bench_models, models_table

    rows = bench_models(specs, data, n=n, batch_size=batch_size, threads=threads, dtype=dtype, repeats=repeats)
    typer.echo(json.dumps(rows, indent=2) if as_json else models_table(rows))


@app.command("accuracy")
def accuracy(
    specs: List[str] = typer.Argument(..., help="Model specs to compare."),
    set_: List[str] = typer.Option([], "--set", help="Config overrides shared by every run (data, budget), e.g. trainer.epochs=20."),
    seeds: List[int] = typer.Option([0], "--seed", help="Seeds (repeat the option: --seed 0 --seed 1 --seed 2)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder for the runs and accuracy.md; rerun with the same folder to continue an interrupted grid."),
    results: Optional[Path] = typer.Option(None, "--results", help="JSON file of the finished runs' rows (default OUTPUT/results.json); rows already in it are kept and not rerun."),
):
    """Train a grid of models x seeds at equal budget; print mean +- std over seeds and the paired
    difference of every frame model to its backbone without a frame, with 95% intervals."""
    from crystalframes.bench import bench_accuracy
    from crystalframes.cli.common import require_training_stack

    require_training_stack()
    table, _ = bench_accuracy(specs, list(set_), seeds=seeds, output=output, results=results)
    typer.echo(table)
