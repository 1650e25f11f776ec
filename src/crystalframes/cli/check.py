"""``crystalframes check``: measure a model's invariances on any structures."""

from __future__ import annotations

import json
from typing import List

import typer

from crystalframes.cli.common import collect_structures, model_for_checks
from crystalframes.cli.options import choice_option
from crystalframes.testing import DEFAULT_TOLERANCES  # numpy only: the dtypes a check can run in

# Bad inputs listed one per line on stderr before "... and K more" (--json lists them all).
MAX_LISTED = 20

REPORT_KEYS = {
    "rotation": "max_rotation_error",
    "translation": "max_translation_error",
    "permutation": "max_permutation_error",
    "supercell": "max_supercell_error",
    "basis_change": "max_basis_change_error",
    "batch": "max_batch_error",
    "mirror": "mirror_difference",
}


def check_command(
    model: str = typer.Argument(..., help="Trained model (model.pt or run folder) or a model spec, e.g. ecomformer:spframe_quaternion."),
    structures: List[str] = typer.Argument(..., help="Structure files, folders or JSONL datasets."),
    trials: int = typer.Option(3, min=1, help="Random rotations/translations/permutations per structure."),
    dtype: str = typer.Option("float64", callback=choice_option(*DEFAULT_TOLERANCES), help="float64 (exactness) or float32."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Largest prediction change under rotations, translations, permutations, supercells,
    basis changes and a mirror reflection, per structure and overall."""
    from crystalframes.io import InputError
    from crystalframes.testing import invariance_report, worst

    net = model_for_checks(model, dtype)
    crystals, errors = collect_structures(structures, net)
    if not crystals:
        raise InputError(" ".join(structures), "no readable structures" + (f" ({errors[0]})" if errors else ""))
    rows = invariance_report(net, crystals, trials=trials)
    per = [{"id": r["id"], **{REPORT_KEYS[k]: r[k] for k in REPORT_KEYS}, "notes": r["notes"]} for r in rows]
    overall = {name: worst(p[name] for p in per) for name in REPORT_KEYS.values()}  # NaN shows
    tolerance = DEFAULT_TOLERANCES[dtype]
    # What the model's frame cannot satisfy by construction (the frame registry's declarations)
    # is reported as declared, not as a failure, unless it is NaN.
    from crystalframes.models import declared_dependences

    declared = declared_dependences(net.spec) if getattr(net, "spec", None) else {}
    # `not error <= tolerance` is true for NaN: a NaN output is a failure, never a pass.
    failed = [name for key, name in REPORT_KEYS.items()
              if key != "mirror" and not overall[name] <= tolerance and not (key in declared and overall[name] == overall[name])]
    out = {"model": model, "dtype": dtype, "tolerance": tolerance, "structures": per, "overall": overall,
           "failed": failed, "declared_dependences": declared, "bad_inputs": [str(e) for e in errors]}
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    cols = list(REPORT_KEYS.values())
    short = [c.replace("max_", "").replace("_error", "").replace("_difference", "") for c in cols]
    typer.echo(f"{'structure':24s} " + " ".join(f"{s:>12s}" for s in short))
    for p in per + [{"id": "OVERALL", **overall}]:
        typer.echo(f"{p['id'][:24]:24s} " + " ".join(f"{p[c]:12.2e}" for c in cols))
    typer.echo(f"tolerance for {dtype}: {tolerance:.0e} (mirror: SO(3) models need not be mirror-invariant)")
    for key, reason in declared.items():
        typer.echo(f"declared dependence ({key}): {reason}")
    typer.echo(f"FAILED (above tolerance or NaN): {', '.join(failed)}" if failed else "all invariances within tolerance (declared dependences aside)")
    for p in per:
        for note in p["notes"]:
            typer.echo(f"note: {p['id']}: {note}")
    for e in errors[:MAX_LISTED]:
        typer.echo(f"bad input: {e}", err=True)
    if len(errors) > MAX_LISTED:
        typer.echo(f"... and {len(errors) - MAX_LISTED} more bad inputs (--json lists all)", err=True)
