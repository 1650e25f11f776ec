"""Standard input as a structure source (the ``-`` input), records wrapping a pymatgen Structure
dict, and pymatgen's electronegativity warnings kept out of our reading calls."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys

import pytest

from crystalframes.io import Crystal, InputError, read_structure


def _nacl():
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _read(data: bytes) -> list:
    from crystalframes.io.stdin import iter_stream_structures

    return list(iter_stream_structures(data))


def test_json_lines_each_line_named():
    data = (json.dumps(_nacl().as_dict()) + "\n\n" + json.dumps({"id": "x"}) + "\n").encode()
    good, bad = _read(data)
    assert isinstance(good, Crystal) and good.source == "<stdin>:1" and good.formula == "NaCl"
    assert isinstance(bad, InputError) and bad.source.startswith("<stdin>:3")


def test_gzipped_json_lines():
    [crystal] = _read(gzip.compress(json.dumps(_nacl().as_dict()).encode() + b"\n"))
    assert crystal.formula == "NaCl"


def test_one_json_document_pretty_printed_list_and_single():
    listed = _read(json.dumps([_nacl().as_dict()] * 2, indent=2).encode())
    assert [c.source for c in listed] == ["<stdin>[0]", "<stdin>[1]"]
    [single] = _read(json.dumps(_nacl().as_dict(), indent=2).encode())
    assert isinstance(single, Crystal) and single.source == "<stdin>"


def test_broken_json_document_is_one_error():
    [error] = _read(b'{\n  "lattice": [1, 2,\n')
    assert isinstance(error, InputError) and error.source == "<stdin>" and "not valid JSON" in error.problem


@pytest.mark.parametrize("fmt", ["cif", "poscar", "extxyz"])
def test_one_structure_told_by_content(fmt):
    if fmt == "extxyz":
        text = ('2\nLattice="4 0 0 0 4 0 0 0 4" Properties=species:S:1:pos:R:3 pbc="T T T"\n'
                "Na 0 0 0\nCl 2 2 2\n")
    else:
        text = _nacl().to(fmt=fmt)
    [crystal] = _read(text.encode())
    assert isinstance(crystal, Crystal), crystal
    assert (crystal.id, crystal.source, crystal.formula) == ("stdin", "<stdin>", "NaCl")


@pytest.mark.parametrize("data,problem", [(b"", "standard input is empty"), (b" \n\t\n", "standard input is empty"),
                                          (b"\x00\x01\x02\x03" * 10, "binary"), (b"\x1f\x8bnot gzip", "gzip"),
                                          (b"hello world\n", "cannot parse as POSCAR")])
def test_unusable_input_is_one_error(data, problem):
    [error] = _read(data)
    assert isinstance(error, InputError) and error.source == "<stdin>" and problem in error.problem, error


class _Terminal:
    """A stand-in for ``sys.stdin`` on a terminal."""

    def __init__(self, data: bytes):
        self.buffer = io.BytesIO(data)

    def isatty(self):
        return True


def test_terminal_says_how_to_end_the_input(monkeypatch, capsys):
    from crystalframes.io.stdin import read_stdin

    monkeypatch.setattr(sys, "stdin", _Terminal(b"abc"))
    assert read_stdin() == b"abc"
    assert "reading structures from standard input (Ctrl-D to end)" in capsys.readouterr().err


def test_closed_stdin_is_an_error(monkeypatch):
    from crystalframes.io.stdin import read_stdin

    monkeypatch.setattr(sys, "stdin", None)
    with pytest.raises(InputError, match="no standard input"):
        read_stdin()


def test_record_wrapping_a_structure_dict():
    record = {"material_id": "mp-22862", "structure": _nacl().as_dict(), "band_gap": 5.0, "formula_pretty": "NaCl"}
    crystal = read_structure(record)
    assert crystal.id == "mp-22862" and crystal.targets == {"band_gap": 5.0} and crystal.num_atoms == 2
    with pytest.raises(InputError, match=r"mp-1\].*Structure dict"):
        read_structure({"material_id": "mp-1", "structure": {"@class": "Structure", "sites": "nonsense"}})


QUIET_CHECK = """
import warnings
warnings.simplefilter("always")
from crystalframes.io import Crystal
with warnings.catch_warnings(record=True) as ours:
    warnings.simplefilter("always")
    formula = Crystal("x", [[4, 0, 0], [0, 4, 0], [0, 0, 4]], [2, 9], [[0, 0, 0], [0.5, 0.5, 0.5]]).formula
from pymatgen.core import Element
with warnings.catch_warnings(record=True) as theirs:  # the user's own pymatgen call still warns
    warnings.simplefilter("always")
    Element("Ne").X
print(formula, len(ours), len(theirs))
"""


def test_electronegativity_warning_silenced_only_in_our_calls():
    """In a fresh interpreter: pymatgen caches each element's electronegativity (and warns once)."""
    out = subprocess.run([sys.executable, "-c", QUIET_CHECK], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    formula, ours, theirs = out.stdout.split()
    assert formula in ("HeF", "FHe") and ours == "0" and theirs == "1", out.stdout + out.stderr
