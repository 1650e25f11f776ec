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
# Structures above this many atoms are skipped unless the user lifts the limit (--max-atoms): a
# 5,000-atom cell took 3 GB (its 2x2x2 supercell holds 40,000 atoms).
DEFAULT_MAX_ATOMS = 500

REPORT_KEYS = {
    "rotation": "max_rotation_error",
    "translation": "max_translation_error",
    "permutation": "max_permutation_error",
    "supercell": "max_supercell_error",
    "basis_change": "max_basis_change_error",
    "batch": "max_batch_error",
    "mirror": "mirror_difference",
}
# A tensor model (output (3, ..., 3) per structure) is checked for equivariance instead: the
# output must rotate (and, for O(3) read-outs, reflect) with the crystal and obey its point group.
TENSOR_REPORT_KEYS = {
    "rotation": "max_rotation_error",
    "reflection": "max_reflection_error",
    "translation": "max_translation_error",
    "permutation": "max_permutation_error",
    "supercell": "max_supercell_error",
    "basis_change": "max_basis_change_error",
    "batch": "max_batch_error",
    "neumann": "max_neumann_error",
}


def check_command(
    model: str = typer.Argument(..., help="A pretrained name (mp_e_form), a model file (model.pt), a run folder or a model spec, e.g. ecomformer:spframe_quaternion."),
    structures: List[str] = typer.Argument(..., help="Structure files, folders or JSONL datasets."),
    trials: int = typer.Option(3, min=1, help="Random rotations/translations/permutations per structure."),
    dtype: str = typer.Option("float64", callback=choice_option(*DEFAULT_TOLERANCES), help="float64 (exactness) or float32."),
    max_atoms: int = typer.Option(
        DEFAULT_MAX_ATOMS, "--max-atoms", min=0,
        help=f"Skip (and list) structures with more atoms than this (default {DEFAULT_MAX_ATOMS}; 0: no limit): "
             "the 2x2x2 supercell check multiplies a cell by 8."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Does the model give the same prediction for the same crystal described differently?

    Each structure is rotated, shifted, has its atoms reordered, is described by supercells and
    by other unit cells of the same lattice, is predicted alone and in a batch, and is mirrored.
    The table shows the largest change of the prediction; a change above the tolerance is a
    failure, except for a transformation the model's frame is known by design not to be
    invariant to (a declared dependence). More: docs/diagnostics.md."""
    from crystalframes.io import InputError
    from crystalframes.testing import invariance_report, worst

    from crystalframes.io import InputError as _InputError

    net = model_for_checks(model, dtype)
    crystals, errors = collect_structures(structures, net)
    if max_atoms:
        big = [c for c in crystals if c.num_atoms > max_atoms]
        crystals = [c for c in crystals if c.num_atoms <= max_atoms]
        errors += [_InputError(c.where, f"{c.num_atoms} atoms, more than --max-atoms {max_atoms} (its supercell checks "
                                        f"need {8 * c.num_atoms} atoms); pass --max-atoms {c.num_atoms} to check it") for c in big]
    if not crystals:
        raise InputError(" ".join(structures), "no readable structures" + (f" ({errors[0]})" if errors else ""))
    tensor = hasattr(net, "kind")  # a tensor read-out (crystalframes.models.tensor_heads.TensorModel)
    keys = TENSOR_REPORT_KEYS if tensor else REPORT_KEYS
    if tensor:
        from crystalframes.testing import equivariance_report

        rows = equivariance_report(net, crystals, trials=trials)
    else:
        rows = invariance_report(net, crystals, trials=trials)
    per = [{"id": r["id"], **{keys[k]: r[k] for k in keys}, "notes": r["notes"]} for r in rows]
    overall = {name: worst(p[name] for p in per) for name in keys.values()}  # NaN shows
    tolerance = DEFAULT_TOLERANCES[dtype]
    # What the model's frame cannot satisfy by construction (the frame registry's declarations)
    # is reported as declared, not as a failure, unless it is NaN.
    from crystalframes.models import declared_dependences

    if tensor:
        declared = net.declared_dependences()
    else:
        declared = declared_dependences(net.spec) if getattr(net, "spec", None) else {}
    # `not error <= tolerance` is true for NaN: a NaN output is a failure, never a pass.
    failed = [name for key, name in keys.items()
              if key != "mirror" and not overall[name] <= tolerance and not (key in declared and overall[name] == overall[name])]
    out = {"model": model, "dtype": dtype, "tolerance": tolerance, "structures": per, "overall": overall,
           "failed": failed, "declared_dependences": declared, "bad_inputs": [str(e) for e in errors]}
    if tensor:
        out["tensor"] = {**net.settings(), "o3_equivariant": net.o3_equivariant,
                         "errors": "absolute, in the network's units (training tensors' entries: RMS 1)"}
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    cols = list(keys.values())
    short = [c.replace("max_", "").replace("_error", "").replace("_difference", "") for c in cols]
    typer.echo(f"{'structure':24s} " + " ".join(f"{s:>12s}" for s in short))
    for p in per + [{"id": "OVERALL", **overall}]:
        typer.echo(f"{p['id'][:24]:24s} " + " ".join(f"{p[c]:12.2e}" for c in cols))
    if tensor:
        typer.echo(f"Largest error of the {net.kind.name} tensor against what each transformation makes it (in the network's "
                   f"units, where the training tensors' entries have RMS 1; neumann: the crystal's own point group); "
                   f"tolerance for {dtype}: {tolerance:.0e}.")
    else:
        typer.echo(f"Largest change of the prediction per transformation; tolerance for {dtype}: {tolerance:.0e}.")
    passed = [short[i] for i, (key, name) in enumerate(keys.items())
              if key != "mirror" and key not in declared and name not in failed]
    if passed:
        typer.echo(f"passed (within tolerance): {', '.join(passed)}")
    if declared:
        typer.echo("expected by design (a declared dependence: the model's frame is built from the chosen cell or axes, "
                   "so this change is known, not a bug):")
        for key, reason in declared.items():
            typer.echo(f"  {key}: {_plain(reason)}")
    typer.echo(f"FAILED (above tolerance or NaN): {', '.join(failed)}" if failed else "no failures")
    if not tensor:
        typer.echo("mirror: a reflection; models that respect rotations only need not give the same value (not a failure).")
    typer.echo("More on each check: docs/diagnostics.md")
    for p in per:
        for note in p["notes"]:
            typer.echo(f"note: {p['id']}: {note}")
    for e in errors[:MAX_LISTED]:
        typer.echo(f"bad input: {e}", err=True)
    if len(errors) > MAX_LISTED:
        typer.echo(f"... and {len(errors) - MAX_LISTED} more bad inputs (--json lists all)", err=True)


def _plain(reason: str) -> str:
    """A frame registry's reason without its leading frame name ('qr: a frame of ...')."""
    from crystalframes.models.specs import MAY_CANCEL

    note = ""
    if reason.startswith(MAY_CANCEL):
        reason, note = reason[len(MAY_CANCEL):], " (shows only where some atoms fall back to the cell's frame)"
    name, sep, rest = reason.partition(": ")
    if sep and " " not in name:
        reason = f"{rest} (global frame '{name}')"
    return reason + note
