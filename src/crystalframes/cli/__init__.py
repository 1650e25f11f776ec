"""The ``crystalframes`` command: one typer app, one small module per command group.

Errors: typer's own standalone mode reports every usage mistake (missing argument, unknown
option, bad value) as a short message with exit code 2, whichever typer release is installed
(typer 0.29 carries its own click; older releases use the ``click`` package). We catch only our
own :class:`~crystalframes.io.errors.UserError` (bad input, bad spec, unsafe output), which the
commands raise: one ``error:`` line, exit code 2. The commands word their own failed writes (the
file, the OS reason, what was kept); an ``OSError`` that still escapes one (a full disk under
standard output, say) is the same: one line with the path, the reason and its errno symbol
(``ENOSPC``, ``EROFS`` ...), exit code 2. (A reader that stops early, ``| head``, is click's to
handle: it ends the command quietly with exit code 1.) Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import logging
import os
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
    except OSError as exc:
        from crystalframes.atomic import describe_os_error

        path = exc.filename or ("standard output" if _from_echo(exc) else "(a file the OS did not name)")
        if path == "standard output":  # what is still buffered for it cannot be written either:
            _silence_stdout()  # no second complaint when the interpreter exits
        typer.secho(f"error: {describe_os_error(exc, path)}", err=True, fg=typer.colors.RED)
        raise SystemExit(2)


def _from_echo(exc: BaseException) -> bool:
    """Whether the error came from printing (click's echo, which every command uses)."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "echo" and "click" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _silence_stdout() -> None:
    """Point standard output at the null device, as Python's documentation advises after a
    failed write to it, so the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
