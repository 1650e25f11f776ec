"""``crystalframes symmetry``: Wyckoff orbits and what a frame does to equivalent atoms."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def symmetry_command(
    structure: Path = typer.Argument(..., help="Structure file (CIF, POSCAR, ...)."),
    model: Optional[str] = typer.Option(None, "--model", help="Use this model's own frames (trained model or spec)."),
    frame: str = typer.Option("spframe_gram_schmidt", "--frame", help="Frame built from the structure alone (without --model)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG of the cell with each atom's frame axes."),
):
    """Space group, Wyckoff orbits and, per orbit, whether the frames collapse equivalent atoms
    (distinguishability 0) or keep them apart (seed 000, Section 3.1)."""
    from crystalframes.analysis.symmetry import check_frame, plot_frames, symmetry_analysis
    from crystalframes.io import read_structure

    if model is None:
        check_frame(frame)  # before reading: a typo is reported without any slow work
    crystal = read_structure(structure)  # refuses pipes and devices by name (never blocks)
    net = None
    if model is not None:
        from crystalframes.cli.common import model_for_checks

        net = model_for_checks(model, "float64")
    report = symmetry_analysis(crystal, frame=frame, model=net)
    if plot is not None:
        plot_frames(crystal, report["frames"], plot, report["orbits"])
    frames = report.pop("frames")
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    sg = report["space_group"]
    typer.echo(f"{report['id']} {report['formula']}: space group {sg['symbol']} ({sg['number']}); frame: {report['frame']}")
    typer.echo(f"{'orbit':8s} {'element':8s} {'site sym':10s} {'atoms':24s} {'distinguishability (A)':>24s}  verdict")
    for o in report["orbits"]:
        d = o["distinguishability"]
        verdict = "single atom" if d is None else ("COLLAPSED" if o["collapsed"] else "kept apart")
        extra = f"  features spread {o['feature_spread']:.2e}" if "feature_spread" in o else ""
        atoms = ",".join(map(str, o["atoms"]))
        typer.echo(f"{o['wyckoff']:8s} {o['element']:8s} {o['site_symmetry']:10s} {atoms[:24]:24s} {('-' if d is None else f'{d:.4g}'):>24s}  {verdict}{extra}")
    if plot is not None:
        typer.echo(f"plot: {plot}")
    del frames
