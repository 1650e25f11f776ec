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


# A child that validates one tiny cell under a 2 GB address-space limit; it prints the error line.
_TINY_CELL_CHILD = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from crystalframes.io import InputError, read_structure
import ase.geometry, pymatgen.core, pymatgen.io.vasp  # imports are not what is timed
path = sys.argv[1]
start = time.perf_counter()
try:
    read_structure(path)
except InputError as err:
    print(f"{time.perf_counter() - start:.3f} {err}")
else:
    print("accepted")
"""


@pytest.mark.parametrize("a", [0.001, 0.0005])
@pytest.mark.parametrize("skewed", [False, True])
def test_tiny_lattice_rejected_before_neighbour_search(tmp_path, a, skewed):
    """Defect 6: a 1-atom cell whose lattice is far below the 0.5 A minimum distance is rejected
    at once (an atom meets its own periodic image), not after a neighbour search over millions of
    images. The skewed variant hides its short vector in a combination (c - a - b), with every
    basis vector itself long."""
    import subprocess
    import sys

    if skewed:
        lattice = [[10, 0, 0], [0, 10, 0], [10, 10, a]]
    else:
        lattice = [[a, 0, 0], [0, a, 0], [0, 0, a]]
    rows = "\n".join(" ".join(f"{x:.6f}" for x in row) for row in lattice)
    path = tmp_path / "POSCAR"
    path.write_text(f"tiny\n1.0\n{rows}\nCu\n1\nDirect\n0 0 0\n")
    proc = subprocess.run(
        [sys.executable, "-c", _TINY_CELL_CHILD, str(path)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    seconds, _, message = proc.stdout.strip().partition(" ")
    assert "closer than 0.5 A" in message and str(path) in message, proc.stdout
    assert float(seconds) < 1.0, proc.stdout


def test_validate_in_reduced_basis_agrees_with_vesin_on_the_given_basis():
    """Thin or skewed cells are checked in their Minkowski-reduced basis: same verdict as a
    neighbour search over the cell as given."""
    from crystalframes.io import Crystal, InputError

    rng = np.random.default_rng(1)
    verdicts = set()
    for _ in range(200):
        lattice = rng.normal(size=(3, 3)) * rng.uniform(0.4, 3)
        if abs(np.linalg.det(lattice)) / np.prod(np.linalg.norm(lattice, axis=1)) < 1e-3:
            continue
        frac = rng.uniform(size=(rng.integers(1, 5), 3))
        crystal = Crystal(id="x", lattice=lattice, atomic_numbers=[6] * len(frac), frac_coords=frac)
        try:
            crystal.validate()
            accepted = True
        except InputError as err:
            assert "closer than 0.5 A" in err.problem, err
            accepted = False
        assert accepted == (vesin_min_distance(lattice, frac, 0.5) == math.inf)
        verdicts.add(accepted)
    assert verdicts == {True, False}


@pytest.mark.parametrize("length", [1e13, 1e200, 1e308])
def test_astronomical_lattice_is_rejected_before_it_overflows(length):
    """A 1e308 A cell used to pass validation and end in vesin's 'cutoff must be a finite,
    positive number' at graph building, a traceback in predict; 1e12 A (huge vacuum) still reads."""
    import warnings

    from crystalframes.io import Crystal, InputError

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning on the way
        with pytest.raises(InputError, match="longer than 1e\\+12 A"):
            Crystal("huge", np.eye(3) * length, [11], np.zeros((1, 3)), source="huge.vasp").validate()
    Crystal("vacuum", np.eye(3) * 1e12, [11], np.zeros((1, 3))).validate()
