"""``crystalframes models``: every backbone, frame, global frame and preset, with parameter counts."""

from __future__ import annotations

import json
from typing import List, Optional

import typer


def model_rows(preset: Optional[str] = None, backbones: Optional[List[str]] = None) -> list[dict]:
    """One row per backbone x frame at ``preset`` (default: each backbone's default preset), the
    model built to count its parameters. A preset a listed backbone lacks is a UserError."""
    from crystalframes.io.errors import UserError
    from crystalframes.models import BACKBONES, build_model, num_parameters, spec_grid

    names = backbones or sorted(BACKBONES)
    unknown = [n for n in names if n not in BACKBONES]
    if unknown:
        raise UserError(f"unknown backbone(s) {', '.join(unknown)}; choose from {', '.join(sorted(BACKBONES))}")
    lacking = [n for n in names if preset is not None and preset not in BACKBONES[n].presets]
    if lacking:
        raise UserError(f"backbone(s) {', '.join(lacking)} have no preset {preset!r} (choose --backbone, or see `crystalframes models` for the presets)")
    from crystalframes.frames import FRAMES
    from crystalframes.models import declared_dependences

    rows = []
    for name in names:
        backbone = BACKBONES[name]
        for spec in spec_grid(preset, [name]):  # every frame it can run, with every global frame it takes
            rows.append(
                {
                    "spec": str(spec),
                    "backbone": name,
                    "frame": spec.frame,
                    "global_frame": spec.global_frame,
                    "summary": FRAMES[spec.frame].summary,
                    "needs": sorted(FRAMES[spec.frame].needs),
                    "declared_dependences": declared_dependences(spec),
                    "preset": spec.preset,
                    "presets": list(backbone.presets),
                    "parameters": num_parameters(build_model(spec)),
                }
            )
    return rows


def models_command(
    preset: Optional[str] = typer.Option(None, "--preset", help="Count parameters at this preset (default: each backbone's default preset)."),
    backbone: List[str] = typer.Option([], "--backbone", help="Only this backbone (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of objects with a 'spec' key."),
    pretrained: bool = typer.Option(False, "--pretrained", help="List the pretrained models shipped with this installation, with their model cards."),
):
    """Every backbone x frame x global frame this installation can build, with its size (trainable
    parameters), what the frame needs and what it cannot satisfy by construction."""
    if pretrained:
        from crystalframes.zoo import card, pretrained as shipped

        entries = shipped()
        if as_json:
            typer.echo(json.dumps([{"name": name, **entry} for name, entry in entries.items()], indent=2))
        elif not entries:
            typer.echo("no pretrained models ship with this installation yet (train your own: crystalframes train)")
        for name in entries if not as_json else []:
            typer.echo(card(name))
        return
    rows = model_rows(preset, list(backbone) or None)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(f"{'spec':64s} {'parameters':>11s}  {'needs':30s} declared dependences")
    for row in rows:
        needs = ", ".join(row["needs"]) or "-"
        typer.echo(f"{row['spec']:64s} {row['parameters']:11,d}  {needs:30s} {', '.join(row['declared_dependences']) or '-'}")
    for name in dict.fromkeys(r["backbone"] for r in rows):
        presets = next(r["presets"] for r in rows if r["backbone"] == name)
        typer.echo(f"\n{name} presets: {', '.join(presets)}")
