"""Tensor datasets of Materials Project crystals, read with every tensor in the Cartesian frame
of the structure the model sees, and checked against Neumann's principle.

Three sets, each read from its files in one folder (``.gz`` or not):

``mp_dielectric``
    ``dielectric_constant.csv`` (Petousis et al., Sci. Data 2017): ``e_electronic``, ``e_total``
    (3x3) and the scalars ``poly_electronic``, ``poly_total``, ``refractive_index_n`` (the file's
    ``n``), ``dielectric_band_gap`` (the file's ``band_gap``, eV). Tensors in the frame of the
    ``poscar`` column.
``mp_elastic``
    ``elastic_tensor.csv`` (de Jong et al., Sci. Data 2015; frame of ``poscar``) and
    ``strainnet_mp_elastic.json`` (the validation file of Pakornchote et al.'s elastic-tensor
    study; pandas column dict, structures as CIF, tensors in the IEEE frame): ``elastic_tensor``
    (6x6 Voigt, GPa) and the scalars ``K_VRH``, ``G_VRH`` (GPa; for the second file, whose
    tensors are rounded to whole GPa and which carries Voigt bounds only, computed from its
    tensor by :func:`~crystalframes.io.tensors.vrh_moduli`). The structure the model sees for a row of the second
    file is its CIF as :mod:`crystalframes.io` parses CIFs (pymatgen, no primitive reduction);
    its tensor is rotated from that structure's IEEE frame into the structure's Cartesian frame.
    A material in both files is kept once: the first file's row when it passes the checks
    below (it needs no rotation and has the reference K_VRH / G_VRH), else the second file's
    row when that one passes.
``mp_piezo``
    ``piezoelectric_tensor.csv`` (de Jong et al., Sci. Data 2015): ``piezoelectric_tensor``
    (3x6 Voigt, C/m^2) and the scalar ``eij_max``. Tensors in the IEEE frame of the ``poscar``
    structure, rotated into the ``poscar`` frame.

Every tensor is stored in Voigt form (:mod:`crystalframes.io.tensors` holds the conventions) in
the Cartesian frame of the crystal's ``lattice`` rows. In the matminer CSV files every data row
has one leading column more than the header names (a bare index): rows are aligned from the
right.

**Neumann's principle at load.** Each row's tensors must be unchanged by every rotation of its
own structure's point group (spglib at ``symprec`` = :data:`~crystalframes.io.tensors.DEFAULT_SYMPREC`
= 0.01 A; Cartesian rotations ``R = L^T W L^-T``), up to a relative residual
``max_R ||R.T - T||_F / ||T||_F`` of :data:`NEUMANN_TOLERANCE` = 1e-2: the DFT tensors' own
noise sits below it (the median residual of each file's rows is 1e-4 or less), and a tensor in
a wrong frame typically lands far above it (0.1-2). A row whose tensor (any of its tensors) breaks it is
left out, logged at DEBUG with its residual, and counted in one INFO line per set. Rows passing,
measured on the development copy of the files (which lacks the ~10 % of each kept aside for
acceptance) with ``python benchmarks/tensor_frames.py``; the control takes the tensor in a wrong
frame (the raw IEEE-frame tensor as if in the structure's frame; for a file given in the
structure's frame, the tensor after a random rotation):

==========================  =====  ===============  ===============  ==================
file                         rows   stored, < 1e-2   control, < 1e-2  stored, < 5e-2
==========================  =====  ===============  ===============  ==================
dielectric_constant (both)    951   906 (95.3 %)     235 (24.7 %)     946 (99.5 %)
elastic_tensor              1,063   913 (85.9 %)       5 (0.5 %)     1,046 (98.4 %)
strainnet_mp_elastic        1,199  1,174 (97.9 %)    486 (40.5 %)    1,190 (99.2 %)
piezoelectric_tensor          847   683 (80.6 %)     342 (40.4 %)     683 (80.6 %)
==========================  =====  ===============  ===============  ==================

(the dielectric control passes for cubic crystals, whose isotropic tensors survive any
rotation.) Of the 164 piezoelectric rows that fail, 146 fail at a residual of ~2 whatever the
tolerance (an operation of the point group maps the tensor to its negative; none of them has an
inversion centre), and 48 of the 164 pass in the ``poscar`` frame instead: the
file's frame is not uniform, and no per-row frame guessing is done here.

**Mechanical stability** (``mp_elastic``): a row whose 6x6 stiffness is not positive definite
(a mechanically unstable structure) is left out too, and counted in the same line. The first
file holds none (de Jong et al. left them out); the second holds 77 of its 1,199, with
eigenvalues down to -449 GPa and Reuss moduli such as G_VRH = -2,008 GPa, which would make the
two files disagree on what the set is. ``mp_elastic`` on the development copy: 175 rows (150 +
25) break their symmetry, 77 are unstable, 94 materials are duplicates, 1,916 are kept.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crystalframes.io.coercion import _coerce_target, _label, _short_exc
from crystalframes.io.crystal import Crystal, quiet_pymatgen
from crystalframes.io.errors import DatasetError, InputError
from crystalframes.io.files import printable
from crystalframes.io.structures import _structure_from_text
from crystalframes.io.tensors import (
    DEFAULT_SYMPREC,
    full_to_voigt,
    ieee_rotation,
    neumann_residual,
    point_group_rotations,
    rotate,
    voigt_to_full,
    vrh_moduli,
)

__all__ = ["TENSOR_SETS", "NEUMANN_TOLERANCE", "TensorFile", "TensorSetReport", "tensor_set_files",
           "iter_tensor_set", "validate_tensor_file"]

logger = logging.getLogger("crystalframes.io")

# Largest relative residual max_R ||R.T - T|| / ||T|| a tensor may have under its own point group.
NEUMANN_TOLERANCE = 1e-2


@dataclass(frozen=True)
class TensorFile:
    """One upstream file of a tensor set.

    ``stem``: its name without ``.gz`` (``dielectric_constant.csv``); ``tensors`` / ``scalars``:
    target name -> the file's column; ``frame``: ``"structure"`` when the tensors are in the
    Cartesian frame of the row's structure, ``"ieee"`` when in its IEEE standard frame;
    ``structure``: the column holding the structure and its format."""

    stem: str
    tensors: dict[str, str]
    scalars: dict[str, str]
    frame: str
    structure: tuple[str, str]


_DIELECTRIC = TensorFile(
    "dielectric_constant.csv",
    tensors={"e_electronic": "e_electronic", "e_total": "e_total"},
    scalars={"poly_electronic": "poly_electronic", "poly_total": "poly_total", "refractive_index_n": "n",
             "dielectric_band_gap": "band_gap"},
    frame="structure", structure=("poscar", "poscar"),
)
_ELASTIC = TensorFile(
    "elastic_tensor.csv",
    tensors={"elastic_tensor": "elastic_tensor"}, scalars={"K_VRH": "K_VRH", "G_VRH": "G_VRH"},
    frame="structure", structure=("poscar", "poscar"),
)
_STRAINNET = TensorFile(
    "strainnet_mp_elastic.json",
    tensors={"elastic_tensor": "elasticity.elastic_tensor"}, scalars={},  # K_VRH, G_VRH from the tensor
    frame="ieee", structure=("cif", "cif"),
)
_PIEZO = TensorFile(
    "piezoelectric_tensor.csv",
    tensors={"piezoelectric_tensor": "piezoelectric_tensor"}, scalars={"eij_max": "eij_max"},
    frame="ieee", structure=("poscar", "poscar"),
)

# Set name -> its files, in the order they are read (and de-duplicated: first passing row wins).
TENSOR_SETS: dict[str, tuple[TensorFile, ...]] = {
    "mp_dielectric": (_DIELECTRIC,),
    "mp_elastic": (_ELASTIC, _STRAINNET),
    "mp_piezo": (_PIEZO,),
}


@dataclass
class TensorSetReport:
    """What reading a tensor set found: rows per file, the rows left out for breaking their point
    group's symmetry (file, id, worst relative residual), for a stiffness that is not positive
    definite (file, id, its lowest eigenvalue) and as duplicates (file, id)."""

    rows: dict[str, int] = field(default_factory=dict)
    broken: list[tuple[str, str, float]] = field(default_factory=list)
    unstable: list[tuple[str, str, float]] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    kept: int = 0

    def text(self, name: str, tolerance: float, symprec: float) -> str:
        total = sum(self.rows.values())
        line = (f"{name}: {len(self.broken)} of {total} rows break their point group's symmetry (relative residual "
                f"> {tolerance:g}, symprec {symprec:g} A) and are left out")
        if self.unstable:
            line += f"; {len(self.unstable)} rows whose stiffness is not positive definite (mechanically unstable) too"
        if self.duplicates:
            line += f"; {len(self.duplicates)} materials already read from an earlier file are left out"
        return line + f"; {self.kept} kept"


def tensor_set_files(folder: Path, name: str) -> list[Path] | None:
    """The files of tensor set ``name`` in ``folder`` (each as ``stem`` or ``stem.gz``), or
    ``None`` unless every one is there."""
    found = []
    for spec in TENSOR_SETS[name]:
        for candidate in (folder / (spec.stem + ".gz"), folder / spec.stem):
            if candidate.is_file():
                found.append(candidate)
                break
        else:
            return None
    return found


def _spec_of(path: Path, name: str) -> TensorFile:
    for spec in TENSOR_SETS[name]:
        if path.name in (spec.stem, spec.stem + ".gz"):
            return spec
    raise DatasetError(printable(path), f"is no file of {name} ({', '.join(s.stem for s in TENSOR_SETS[name])})")


def validate_tensor_file(path: str | Path, name: str, *, what: str | None = None) -> int:
    """Check that ``path`` (named as one of tensor set ``name``'s files) has that file's columns
    and at least one row; return its number of rows. Each row's structure, tensor and symmetry
    are checked when the set is read. :class:`DatasetError` otherwise."""
    path = Path(path)
    spec = _spec_of(path, name)
    where = what or printable(path)
    wanted = [spec.structure[0], "material_id", *spec.tensors.values(), *spec.scalars.values()]
    n_rows = 0
    columns: set[str] = set()
    for _, row in _file_rows(path, spec, where):  # a file that is no table at all raises its own DatasetError
        if not isinstance(row, InputError):
            columns = columns or set(row)
            n_rows += 1
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise DatasetError(where, f"lacks the column(s) {', '.join(missing)} (or holds no rows); is this {spec.stem}?")
    return n_rows


def iter_tensor_set(folder: str | Path, name: str, *, tolerance: float = NEUMANN_TOLERANCE,
                    symprec: float = DEFAULT_SYMPREC, report: TensorSetReport | None = None
                    ) -> Iterator[Crystal | InputError]:
    """The records of tensor set ``name`` (a key of :data:`TENSOR_SETS`) from its files in
    ``folder``: each a :class:`Crystal` with its tensors in its own Cartesian frame, or the
    :class:`InputError` of an unreadable row. Rows breaking Neumann's principle (module
    docstring) are left out and counted in one INFO line at the end; ``report`` (filled as the
    rows go) says which. Raises :class:`DatasetError` at once when a file is missing."""
    folder = Path(folder)
    where = printable(folder)
    files = tensor_set_files(folder, name)
    if files is None:
        wanted = ", ".join(spec.stem + "[.gz]" for spec in TENSOR_SETS[name])
        raise DatasetError(where, f"folder does not hold every file of {name} ({wanted})")
    return _tensor_set_rows(files, name, tolerance, symprec, report if report is not None else TensorSetReport())


def _tensor_set_rows(files: list[Path], name: str, tolerance: float, symprec: float,
                     report: TensorSetReport) -> Iterator[Crystal | InputError]:
    seen: set[str] = set()
    for spec, path in zip(TENSOR_SETS[name], files):
        file_where = printable(path)
        report.rows[spec.stem] = 0
        for row_where, row in _file_rows(path, spec, file_where):
            if isinstance(row, InputError):
                yield row
                continue
            report.rows[spec.stem] += 1
            try:
                crystal = _row_crystal(row, spec, row_where)
            except InputError as exc:
                yield exc
                continue
            if crystal.id in seen:
                report.duplicates.append((spec.stem, crystal.id))
                continue
            residual = _worst_residual(crystal, spec, symprec)
            if residual > tolerance:
                report.broken.append((spec.stem, crystal.id, residual))
                logger.debug("%s: tensor breaks its point group's symmetry (relative residual %.3g > %g): left out",
                             crystal.where, residual, tolerance)
                continue
            lowest = _lowest_stiffness_eigenvalue(crystal, spec)
            if lowest <= 0:
                report.unstable.append((spec.stem, crystal.id, lowest))
                logger.debug("%s: stiffness not positive definite (eigenvalue %.3g GPa): left out", crystal.where, lowest)
                continue
            seen.add(crystal.id)
            report.kept += 1
            yield crystal
    logger.info("%s", report.text(name, tolerance, symprec))


def _worst_residual(crystal: Crystal, spec: TensorFile, symprec: float) -> float:
    rotations = point_group_rotations(crystal.lattice, crystal.frac_coords, crystal.atomic_numbers, symprec)
    return max(neumann_residual(voigt_to_full(crystal.targets[t]), rotations) for t in spec.tensors)


def _lowest_stiffness_eigenvalue(crystal: Crystal, spec: TensorFile) -> float:
    """The lowest eigenvalue of the row's 6x6 stiffness (``inf`` for a set without one). The
    Voigt matrix is positive definite exactly when the strain energy is (the Voigt strain is a
    linear bijection of the strain tensor); a stiffness that is not describes a mechanically
    unstable structure, whose Reuss moduli are meaningless (G_VRH of -2,008 GPa in the data)."""
    stiffness = [crystal.targets[t] for t in spec.tensors if crystal.targets[t].shape == (6, 6)]
    return min((float(np.linalg.eigvalsh(c).min()) for c in stiffness), default=np.inf)


def _file_rows(path: Path, spec: TensorFile, where: str) -> Iterator[tuple[str, dict[str, Any] | InputError]]:
    """``(where, {column: value})`` of every row of one file (or an InputError for a row that
    cannot be split into its columns)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as fh:
            text = fh.read()
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise DatasetError(where, f"cannot read: {_short_exc(exc)}") from None
    if spec.stem.endswith(".json"):
        yield from _json_columns_rows(text, where)
    else:
        yield from _csv_rows(text, where)


def _csv_rows(text: str, where: str) -> Iterator[tuple[str, dict[str, Any] | InputError]]:
    # the matminer files open with "# ref: <citation>" lines before the header
    stream = io.StringIO(text)
    position = 0
    while True:
        line = stream.readline()
        if not line.startswith("#"):
            break
        position = stream.tell()
    stream.seek(position)
    reader = csv.reader(stream)
    header = next(reader, None)
    if not header:
        raise DatasetError(where, "file is empty")
    for number, row in enumerate(reader):
        row_where = f"{where}[{number}]"
        if not any(cell.strip() for cell in row):
            continue
        extra = len(row) - len(header)
        if extra < 0:
            yield row_where, InputError(row_where, f"row has {len(row)} fields, the header names {len(header)}")
            continue
        # a data row may carry leading columns the header does not name (an index): align from the right
        yield row_where, dict(zip(header, row[extra:]))


def _json_columns_rows(text: str, where: str) -> Iterator[tuple[str, dict[str, Any] | InputError]]:
    """Rows of a pandas ``to_json()`` column dict (``{column: {row key: value}}``)."""
    try:
        columns = json.loads(text)
    except ValueError as exc:
        raise DatasetError(where, f"not valid JSON: {_short_exc(exc)}") from None
    if not isinstance(columns, dict) or not all(isinstance(c, dict) for c in columns.values()):
        raise DatasetError(where, "not a column dict ({column: {row: value}}) of a pandas table")
    keys = list(next(iter(columns.values()), {}))
    for key in keys:
        yield f"{where}[{key}]", {name: col.get(key) for name, col in columns.items()}


def _parse_value(text: Any) -> Any:
    return json.loads(text) if isinstance(text, str) and text.lstrip().startswith("[") else text


def _row_crystal(row: dict[str, Any], spec: TensorFile, where: str) -> Crystal:
    record_id = str(row.get("material_id") or "").strip() or None
    label = _label(where, record_id)
    column, fmt = spec.structure
    text = row.get(column)
    if not isinstance(text, str) or not text.strip():
        raise InputError(label, f"no '{column}' structure")
    targets: dict[str, Any] = {}
    for target, col in spec.tensors.items():
        try:
            targets[target] = _coerce_target(target, _parse_value(row.get(col)), label)
        except ValueError as exc:  # json of a malformed list
            raise InputError(label, f"target '{target}' is not a readable tensor: {_short_exc(exc)}") from None
        if not isinstance(targets[target], np.ndarray):
            raise InputError(label, f"target '{target}' has no tensor")
    for target, col in spec.scalars.items():
        targets[target] = _coerce_target(target, row.get(col), label)
    with quiet_pymatgen():
        crystal = _structure_from_text(text, fmt, label, record_id, record_id, None)
    crystal.id = record_id or label
    crystal.source = where
    if spec.frame == "ieee":
        # the tensor is in the structure's IEEE frame: Q takes the structure's frame there, so Q^T back
        q = ieee_rotation(crystal.lattice, crystal.frac_coords, crystal.atomic_numbers)
        for target in spec.tensors:
            targets[target] = full_to_voigt(rotate(voigt_to_full(targets[target]), q.T))
    if spec is _STRAINNET:
        targets["K_VRH"], targets["G_VRH"] = vrh_moduli(targets["elastic_tensor"])
    crystal.targets = targets
    return crystal.validate()
