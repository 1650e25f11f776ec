"""The one element table: symbols <-> atomic numbers (crystalframes.io.elements)."""

import re
from pathlib import Path

import pytest
from pymatgen.core import Element

from crystalframes.io.elements import MAX_ATOMIC_NUMBER, atomic_number, element_label, element_symbol

SRC = Path(__file__).resolve().parents[2] / "src" / "crystalframes"


def test_every_element_round_trips_and_agrees_with_pymatgen():
    for z in range(1, MAX_ATOMIC_NUMBER + 1):
        symbol = element_symbol(z)
        assert atomic_number(symbol) == z
        assert symbol == Element.from_Z(z).symbol


@pytest.mark.parametrize("z", [0, -1, MAX_ATOMIC_NUMBER + 1])
def test_no_symbol_outside_the_table(z):
    with pytest.raises(ValueError, match=str(z)):
        element_symbol(z)
    assert element_label(z) == f"Z={z}"


@pytest.mark.parametrize("symbol", ["X", "fe", "Xx", ""])
def test_unknown_symbols(symbol):
    with pytest.raises(KeyError):
        atomic_number(symbol)


def test_labels_name_symbol_and_number():
    assert element_label(99) == "Es (Z=99)" and element_label(118) == "Og (Z=118)"


def test_no_other_module_keeps_its_own_element_table():
    """Symbol <-> Z conversion lives in io/elements.py only (there were four copies). An ASE
    Atoms object's own get_chemical_symbols() (its spelling of an unknown element) is allowed."""
    pattern = re.compile(r"(?<!get_)chemical_symbols|Element\.from_Z|Element\(|_SYMBOL_TO_Z|from_symbol")
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                 if p.name != "elements.py" and pattern.search(p.read_text(encoding="utf-8"))]
    assert not offenders, offenders
