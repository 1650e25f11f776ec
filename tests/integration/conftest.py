"""Running the `crystalframes` command in-process, as a user would type it."""

import pytest

from crystalframes.cli import main


@pytest.fixture
def run(capsys):
    """``run(*args) -> (exit_code, stdout, stderr)`` of ``crystalframes *args``."""

    def _run(*args):
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        out = capsys.readouterr()
        return code, out.out, out.err

    return _run
