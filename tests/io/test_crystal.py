import math

import numpy as np
import pytest
from vesin import NeighborList

from crystalframes.io.crystal import min_interatomic_distance


def vesin_min_distance(lattice, frac, cutoff):
    (d,) = NeighborList(cutoff=cutoff, full_list=False).compute(
        points=frac @ lattice, box=lattice, periodic=True, quantities="d"
    )
    return float(d.min()) if len(d) else math.inf


@pytest.mark.parametrize("cutoff", [0.5, 1.5, 3.0])
def test_minimum_image_shortcut_agrees_with_vesin(mp_sample, cutoff):
    """The fast path (small cells, wide planes) and the vesin path give the same closest pair."""
    for c in mp_sample[:400]:
        frac = np.mod(c.frac_coords, 1.0)
        got = min_interatomic_distance(c.lattice, frac, cutoff)
        want = vesin_min_distance(c.lattice, frac, cutoff)
        assert (got == want == math.inf) or abs(got - want) < 1e-9, c.id


def test_thin_and_skewed_cells():
    rng = np.random.default_rng(0)
    for _ in range(200):
        lattice = rng.normal(size=(3, 3)) * rng.uniform(0.6, 4)
        frac = rng.uniform(size=(rng.integers(1, 6), 3))
        got = min_interatomic_distance(lattice, frac, 0.5)
        want = vesin_min_distance(lattice, frac, 0.5)
        assert (got == want == math.inf) or abs(got - want) < 1e-9
