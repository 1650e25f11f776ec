"""Fixtures of the model tests."""

import pytest


@pytest.fixture(scope="session")
def by_crystal_system(jarvis_sample, mp_sample):
    """``pick(per_kind, max_atoms)``: the first ``per_kind`` cubic, hexagonal and lower-symmetry
    crystals with 2..``max_atoms`` atoms of the shared JARVIS, then MP samples (spglib, symprec
    1e-3): symmetric crystals are where frames meet ties."""
    from crystalframes.testing import by_crystal_system as select

    def pick(per_kind: int, max_atoms: int) -> list:
        picked = select(jarvis_sample + mp_sample, per_kind, max_atoms)
        assert len(picked) == 3 * per_kind, [c.id for c in picked]
        return picked

    return pick
