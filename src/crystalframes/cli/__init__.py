"""The ``crystalframes`` command: one typer app, one small module per command group.

Errors: typer's own standalone mode reports every usage mistake (missing argument, unknown
option, bad value) as a short message with exit code 2, whichever typer release is installed
(typer 0.29 carries its own click; older releases use the ``click`` package). We catch only our
own :class:`~crystalframes.io.errors.UserError` (bad input, bad spec, unsafe output), which the
commands raise: one ``error:`` line, exit code 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Optional

import typer

from crystalframes.io.errors import UserError

app = typer.Typer(
    help="Crystal property prediction with frame-based SE(3)-invariant neural networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain click-style help and errors: the same text on a terminal, in a pipe and in a SLURM log
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        from crystalframes.version import __version__

        typer.echo(f"crystalframes {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Crystal property prediction with frame-based SE(3)-invariant neural networks."""


def _register() -> None:
    from crystalframes.cli import bench, check, data, models, predict, symmetry, train

    app.add_typer(data.app, name="data")
    app.add_typer(bench.app, name="bench")
    app.command("train")(train.train_command)
    app.command("predict")(predict.predict_command)
    app.command("eval")(predict.eval_command)
    app.command("check")(check.check_command)
    app.command("symmetry")(symmetry.symmetry_command)
    app.command("models")(models.models_command)


_register()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: bad input ends in one clear line and exit code 2, not a traceback."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    from crystalframes.runtime import keep_freed_memory

    keep_freed_memory()  # every command runs models: no page-fault storm between passes
    try:
        app(args=argv, prog_name="crystalframes", standalone_mode=True)
    except UserError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise SystemExit(2)
