"""The ``crystalframes`` command: one typer app, one small module per command group."""

from __future__ import annotations

import logging
import sys

import typer

from crystalframes.io.errors import UserError

app = typer.Typer(
    help="Crystal property prediction with frame-based SE(3)-invariant neural networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    from crystalframes.cli import bench, check, data, predict, symmetry, train

    app.add_typer(data.app, name="data")
    app.add_typer(bench.app, name="bench")
    app.command("train")(train.train_command)
    app.command("predict")(predict.predict_command)
    app.command("eval")(predict.eval_command)
    app.command("check")(check.check_command)
    app.command("symmetry")(symmetry.symmetry_command)


_register()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: bad input ends in one clear line and exit code 2, not a traceback."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    from crystalframes.runtime import keep_freed_memory

    keep_freed_memory()  # every command runs models: no page-fault storm between passes
    try:
        app(args=argv, prog_name="crystalframes", standalone_mode=False)
    except UserError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise SystemExit(2)
    except typer.Abort:
        raise SystemExit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click usage errors carry their own exit codes
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            raise SystemExit(exc.exit_code)
        raise
