"""Element symbols and atomic numbers: the one table every module uses (ASE's, Z = 1..118).

ASE is imported on first use, not with :mod:`crystalframes.io` (it costs ~0.1 s)."""

from __future__ import annotations

from functools import lru_cache

MAX_ATOMIC_NUMBER = 118  # Og: the readers accept every element of the periodic table


@lru_cache(maxsize=1)
def _symbols() -> tuple[str, ...]:
    from ase.data import chemical_symbols

    return tuple(chemical_symbols[: MAX_ATOMIC_NUMBER + 1])  # index 0 is ASE's placeholder "X"


@lru_cache(maxsize=1)
def symbol_table() -> dict[str, int]:
    """Element symbol -> atomic number for Z = 1..118 (exact spelling: ``"Fe"``, not ``"fe"``)."""
    return {sym: z for z, sym in enumerate(_symbols()) if z >= 1}


def atomic_number(symbol: str) -> int:
    """The atomic number of an element symbol; ``KeyError`` for anything else."""
    return symbol_table()[symbol]


def element_symbol(z: int) -> str:
    """The symbol of atomic number ``z``; ``ValueError`` outside 1..118."""
    z = int(z)
    if not 1 <= z <= MAX_ATOMIC_NUMBER:
        raise ValueError(f"no element has atomic number {z}")
    return _symbols()[z]


def element_label(z: int) -> str:
    """How messages name an element: ``"Es (Z=99)"``, or ``"Z=0"`` when no element has that number."""
    try:
        return f"{element_symbol(z)} (Z={int(z)})"
    except ValueError:
        return f"Z={int(z)}"
