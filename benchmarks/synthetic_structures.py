"""Synthetic crystal structures for SCALE BENCHMARKS ONLY -- not real data, never for accuracy.

    python benchmarks/synthetic_structures.py N -o FILE.jsonl[.gz] [--seed 0]

writes N records in the project's JSONL format (the one ``crystalframes.data.load_dataset`` and
``crystalframes predict`` read, as in the embedded ``mp_2018_demo``), for measuring how the graph
store, training and ``predict`` scale with the number of structures (issue 26) on a machine that
has no million-structure data set. Each record is a real demo crystal (the embedded
``mp_2018_demo``, so no download is needed) changed at random:

- a small symmetric strain ``L' = L (I + eps)``, ``eps`` with Frobenius norm at most 3%;
- every atom moved by a random vector of length up to 0.02-0.05 A (the bound drawn per structure);
- with probability 0.5 (``--substitution-probability``), every site of one element replaced by a
  same-group neighbour of similar radius (Si -> Ge, S -> Se, Cl -> Br, Ni -> Pd, ...).

Their graphs therefore look like real ones (atom counts, neighbour counts, element mix), which is
all a throughput or memory measurement needs. Their "physics" does not exist: the one target,
``synthetic_e_form``, is the parent's ``mp2018_e_form`` plus random noise (and a random shift
when an element was substituted), and the records say so (``"db": "synthetic"``, ``"synthetic":
true``, ``source`` and the target's name). Do not train a model on them for anything but timing.

Every structure is valid by construction: no two atoms closer than the readers' 0.5 A limit. A
strain of norm <= s shortens no distance by more than a factor 1 - s (the spectral norm is at most
the Frobenius norm, and images are moved by the same linear map) and two displacements of length
<= a shorten it by at most 2a; so a parent whose closest pair is d0 gets displacements of at most
(d0 (1 - s) - 0.5 - margin) / 2, and the few parents too tight for any are not used.

Streaming, constant memory, one seeded generator: a file of N records is the first N records of
any longer file of the same seed. About 10k structures/s written on one core after 2 s of reading
the parents (plain .jsonl or gzip level 3 alike), so 1M take under two minutes.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_STRAIN = 0.03  # Frobenius norm of the symmetric strain tensor
DISPLACEMENT_RANGE = (0.02, 0.05)  # A: each structure's bound on an atom's displacement, drawn uniformly
MIN_DISTANCE = 0.5  # A: the readers' limit (crystalframes.io.crystal.MIN_INTERATOMIC_DISTANCE)
DISTANCE_MARGIN = 0.02  # A: kept above MIN_DISTANCE against the 1e-6 rounding of the written coordinates
SPLIT_FRACTIONS = (("train", 0.8), ("val", 0.1), ("test", 0.1))
TARGET_NAME = "synthetic_e_form"  # NOT a formation energy: the parent's plus noise
TARGET_NOISE = 0.05  # eV/atom, standard deviation of the noise added to the parent's value
SUBSTITUTION_SHIFT = 0.1  # eV/atom, bound of the uniform shift of a substituted structure
PARENT_TARGET = "mp2018_e_form"

# Same group, neighbouring period, similar radius: swaps a chemist would try first. Both directions.
_NEIGHBOURS = (
    "Li Na", "Na K", "K Rb", "Rb Cs", "Ca Sr", "Sr Ba", "Sc Y", "Ti Zr", "Zr Hf", "V Nb", "Nb Ta",
    "Cr Mo", "Mo W", "Fe Ru", "Ru Os", "Co Rh", "Rh Ir", "Ni Pd", "Pd Pt", "Cu Ag", "Ag Au", "Zn Cd",
    "Cd Hg", "Al Ga", "Ga In", "In Tl", "Si Ge", "Ge Sn", "Sn Pb", "P As", "As Sb", "Sb Bi", "S Se",
    "Se Te", "Cl Br", "Br I", "La Ce", "Ce Pr", "Pr Nd", "Nd Sm", "Gd Tb", "Tb Dy", "Dy Ho", "Ho Er", "Er Tm",
)
SUBSTITUTES: dict[str, tuple[str, ...]] = {}
for _pair in _NEIGHBOURS:
    _a, _b = _pair.split()
    SUBSTITUTES[_a] = SUBSTITUTES.get(_a, ()) + (_b,)
    SUBSTITUTES[_b] = SUBSTITUTES.get(_b, ()) + (_a,)


@dataclass
class Parent:
    id: str
    lattice: np.ndarray  # (3, 3) rows = lattice vectors
    species: list[str]
    frac: np.ndarray  # (n, 3)
    target: float
    max_displacement: float  # A: the largest displacement that keeps every pair >= MIN_DISTANCE
    substitutable: list[str]  # its elements that have a substitute


def load_parents() -> list[Parent]:
    """The embedded demo crystals that have the parent target and room for the largest displacement."""
    from crystalframes.data.datasets import embedded_path, get_dataset_info
    from crystalframes.io.crystal import min_interatomic_distance

    parents = []
    probe = 2.0  # A: closest pairs are found up to here; farther ones leave ample room anyway
    with gzip.open(embedded_path(get_dataset_info("mp_2018_demo")), "rb") as fh:
        for line in fh:
            rec = json.loads(line)
            target = rec.get("targets", {}).get(PARENT_TARGET)
            if target is None:
                continue
            lattice = np.asarray(rec["lattice"], dtype=np.float64)
            frac = np.asarray(rec["frac_coords"], dtype=np.float64)
            d0 = min(min_interatomic_distance(lattice, frac, probe), probe)
            room = (d0 * (1 - MAX_STRAIN) - MIN_DISTANCE - DISTANCE_MARGIN) / 2
            if room < DISPLACEMENT_RANGE[0]:
                continue
            species = list(rec["species"])
            parents.append(Parent(rec["id"], lattice, species, frac, float(target), room,
                                  sorted({s for s in species if s in SUBSTITUTES})))
    return parents


def _strain(rng: np.random.Generator) -> np.ndarray:
    """``I + eps``: a symmetric strain of Frobenius norm uniform in [0, MAX_STRAIN]."""
    a = rng.standard_normal((3, 3))
    eps = (a + a.T) / 2
    eps *= rng.uniform(0, MAX_STRAIN) / np.linalg.norm(eps)
    return np.eye(3) + eps


def _split(u: float) -> str:
    for name, fraction in SPLIT_FRACTIONS:
        if u < fraction:
            return name
        u -= fraction
    return SPLIT_FRACTIONS[-1][0]


def synthetic_records(n: int, seed: int = 0, substitution_probability: float = 0.5, parents: list[Parent] | None = None):
    """The first ``n`` synthetic records (dicts) of ``seed``, one at a time."""
    parents = load_parents() if parents is None else parents
    rng = np.random.default_rng(seed)
    width = max(7, len(str(n)))
    for i in range(1, n + 1):
        p = parents[int(rng.integers(len(parents)))]
        lattice = p.lattice @ _strain(rng)
        bound = min(rng.uniform(*DISPLACEMENT_RANGE), p.max_displacement)
        # uniform directions, lengths uniform in [0, bound]
        step = rng.standard_normal(p.frac.shape)
        step *= (rng.uniform(0, bound, len(step)) / np.linalg.norm(step, axis=1))[:, None]
        frac = (p.frac + step @ np.linalg.inv(lattice)) % 1.0
        species, target, changed = p.species, p.target + rng.normal(0, TARGET_NOISE), None
        if p.substitutable and rng.random() < substitution_probability:
            old = p.substitutable[int(rng.integers(len(p.substitutable)))]
            options = SUBSTITUTES[old]
            new = options[int(rng.integers(len(options)))]
            species = [new if s == old else s for s in species]
            target += rng.uniform(-SUBSTITUTION_SHIFT, SUBSTITUTION_SHIFT)
            changed = f"{old}->{new}"
        yield {
            "id": f"synthetic-{i:0{width}d}",
            "db": "synthetic",
            "synthetic": True,
            "source": f"SYNTHETIC benchmark structure, not real data, never for accuracy: strained/perturbed {p.id}"
            + (f", {changed}" if changed else ""),
            "split": _split(rng.random()),
            "targets": {TARGET_NAME: round(target, 6)},
            "lattice": np.round(lattice, 6).tolist(),
            "species": species,
            "frac_coords": np.round(frac, 6).tolist(),
        }


def write_synthetic(n: int, out: str | Path, seed: int = 0, substitution_probability: float = 0.5, progress: bool = False) -> int:
    """Write ``n`` records to ``out`` (gzip if it ends in .gz) atomically; returns ``n``."""
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    start = time.perf_counter()
    opened = gzip.open(tmp, "wb", compresslevel=3) if out.name.endswith(".gz") else open(tmp, "wb", buffering=1 << 20)
    with opened as fh:
        dumps = json.JSONEncoder(separators=(",", ":")).encode
        for i, rec in enumerate(synthetic_records(n, seed, substitution_probability), 1):
            fh.write(dumps(rec).encode() + b"\n")
            if progress and i % 100_000 == 0:
                rate = i / (time.perf_counter() - start)
                print(f"{i}/{n} structures, {rate:.0f}/s", file=sys.stderr, flush=True)
    tmp.replace(out)
    return n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("n", type=int, help="number of structures")
    ap.add_argument("-o", "--output", required=True, help="FILE.jsonl or FILE.jsonl.gz")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--substitution-probability", type=float, default=0.5)
    args = ap.parse_args(argv)
    start = time.perf_counter()
    write_synthetic(args.n, args.output, args.seed, args.substitution_probability, progress=True)
    wall = time.perf_counter() - start
    print(f"{args.n} SYNTHETIC structures (benchmarks only) -> {args.output} in {wall:.1f} s "
          f"({args.n / wall:.0f}/s)", file=sys.stderr)


if __name__ == "__main__":
    main()
