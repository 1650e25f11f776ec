"""One model contract for every backbone x frame x global frame this installation can build
(the rows of ``crystalframes models`` at the ``cpu_small`` preset: every frame whose needs the
backbone provides), so a new frame or backbone is tested without a line of new test code. The
suite itself is the package's (:class:`crystalframes.testing.ModelContract`), which third-party
backbones and frames run the same way (tests/models/test_third_party_contract.py).

Float64, eval mode, real crystals from ../shared/data here (cubic, hexagonal and lower symmetry;
the package's default is the embedded demo set), tolerance DEFAULT_TOLERANCES["float64"] = 1e-9:
rotation, translation, permutation, supercell, basis-change (Niggli basis and a shear of the
basis) and batch invariance, determinism, finite outputs, a finite non-zero gradient for every
parameter, a model file that loads back to the same predictions, and the backbone's declared
contract. What a frame cannot satisfy by construction is declared once, beside the frame in the
frame registry (``Frame.dependences``, ``GLOBAL_FRAME_DEPENDENCES``; read through
:func:`crystalframes.models.declared_dependences`), and asserted the other way round: the
dependence must show (a negative control), so a declaration cannot hide a bug.
"""

from __future__ import annotations

import pytest

from crystalframes.cli.models import model_rows
from crystalframes.testing import ModelContract

SPECS = [row["spec"] for row in model_rows("cpu_small")]


def test_the_suite_covers_the_grid():
    from crystalframes.models import BACKBONES

    assert len(SPECS) >= 16 and {s.split(":")[0] for s in SPECS} == set(BACKBONES) and len(BACKBONES) >= 3


class TestContract(ModelContract):
    specs = SPECS

    @pytest.fixture(scope="class")
    @classmethod
    def contract_crystals(cls, by_crystal_system):
        return by_crystal_system(2, 6)

    @pytest.fixture(scope="class")
    @classmethod
    def gradient_crystals(cls, mp_sample):
        """16 ordinary MP crystals. (On small symmetric crystals alone the equivariant
        Gram-Schmidt vectors cancel on every atom and the frames fall back, so the second
        vector's message gets no gradient there: measured, and the reason for these.)"""
        return mp_sample[:16]
