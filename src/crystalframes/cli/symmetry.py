"""``crystalframes symmetry``: Wyckoff orbits and what a frame does to equivalent atoms."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

# Cells larger than this are refused unless the user lifts the limit (--max-atoms): a
# 5,000-atom cell ran for minutes without a word (now ~30 s; larger cells grow from there).
# From ANNOUNCE_ATOMS on, the command says up front what the cell will cost and shows its
# progress on stderr.
DEFAULT_MAX_ATOMS = 2000
ANNOUNCE_ATOMS = 100

VERDICT_TEXT = {
    "single atom": "single atom",
    "translation copies": "translation copies only (nothing to tell apart)",
    "collapsed": "COLLAPSED: the frames show these atoms as identical",
    "kept apart": "kept apart",
}


def symmetry_command(
    structure: Path = typer.Argument(..., help="Structure file (CIF, POSCAR, ...)."),
    model: Optional[str] = typer.Option(
        None, "--model", help="Use this model's own frames: a pretrained name (mp_e_form), a model file, a run folder or a spec."),
    frame: str = typer.Option("spframe_gram_schmidt", "--frame", help="Frame built from the structure alone (without --model)."),
    max_atoms: int = typer.Option(
        DEFAULT_MAX_ATOMS, "--max-atoms", min=0,
        help=f"Refuse cells with more atoms than this (default {DEFAULT_MAX_ATOMS}; 0: no limit). Above 100 atoms the command says up front how long it will take."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG of the cell with each atom's frame axes."),
):
    """Can a frame tell symmetry-equivalent atoms apart?

    Atoms related by a symmetry of the crystal (an orbit: same Wyckoff position) have the same
    surroundings, only turned. For each orbit this finds the smallest difference
    (distinguishability, in Angstrom) between two of its atoms' surroundings as seen in their
    frames: 0 means the frame makes them look identical to a network (COLLAPSED); SO(3)-
    equivariant local frames do this, SPFrame does not. Copies of one atom by a lattice
    translation (a supercell's repeated cells) are identical by construction and reported as
    translation copies. More: docs/diagnostics.md."""
    from crystalframes.analysis.symmetry import check_frame, estimated_cost, plot_frames, symmetry_analysis
    from crystalframes.io import read_structure
    from crystalframes.io.errors import UserError

    if model is None:
        check_frame(frame)  # before reading: a typo is reported without any slow work
    crystal = read_structure(structure)  # refuses pipes and devices by name (never blocks)
    n = crystal.num_atoms
    seconds, mb = estimated_cost(n)
    cost = f"about {_duration(seconds)} and {mb:,.0f} MB"
    if max_atoms and n > max_atoms:
        raise UserError(f"{structure}: {n} atoms, more than --max-atoms {max_atoms}; the analysis would take {cost}; "
                        f"pass --max-atoms {n} (or 0 for no limit) to run it anyway")
    progress = None
    if n > ANNOUNCE_ATOMS:
        typer.echo(f"{structure}: {n} atoms: this will take {cost}", err=True)

        def progress(message):
            typer.echo(f"symmetry: {message} ...", err=True)

    net = None
    if model is not None:
        from crystalframes.cli.common import model_for_checks

        net = model_for_checks(model, "float64")
    report = symmetry_analysis(crystal, frame=frame, model=net, **({"progress": progress} if progress else {}))
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
        verdict = VERDICT_TEXT[o["verdict"]]
        if o["translation_copies"] and o["verdict"] in ("collapsed", "kept apart"):
            verdict += f" ({o['translation_copies']} translation copies set aside)"
        if o.get("fallback_atoms"):
            verdict += f"; {len(o['fallback_atoms'])} atoms fell back to the global frame"
        extra = f"  features spread {o['feature_spread']:.2e}" if "feature_spread" in o else ""
        atoms = ",".join(map(str, o["atoms"]))
        typer.echo(f"{o['wyckoff']:8s} {o['element']:8s} {o['site_symmetry']:10s} {atoms[:24]:24s} {('-' if d is None else f'{d:.4g}'):>24s}  {verdict}{extra}")
    verdicts = {o["verdict"] for o in report["orbits"]}
    if "collapsed" in verdicts:
        typer.echo("COLLAPSED: the frame makes symmetry-equivalent atoms look identical to a network, "
                   "so it cannot tell them apart (distinguishability below 0.001 A).")
    if "translation copies" in verdicts:
        typer.echo("translation copies: the atoms are copies of one atom by a lattice translation "
                   "(repeated cells of a supercell, or a centred cell): identical in any frame, not a collapse.")
    if any(o.get("fallback_atoms") for o in report["orbits"]):
        typer.echo("fell back to the global frame: at these atoms no equivariant frame exists (e.g. on a 3-fold axis), "
                   "so the frame of the whole cell was used there.")
    if plot is not None:
        typer.echo(f"plot: {plot}")
    del frames


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
