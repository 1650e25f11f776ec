"""Wyckoff orbits and whether local frames collapse or keep apart symmetry-equivalent atoms.

Atoms related by a symmetry of the crystal (a rotation, mirror or screw axis) have the same
surroundings, only turned. A frame that turns with each atom's surroundings (an SO(3)-equivariant
local frame) shows the network the same picture for all of them, so it cannot tell them apart
("information collapse"); SPFrame (an invariant local frame times one frame for the whole cell)
keeps their relative orientation (Hua & Lin, SPFrame, Section 3.1, Fig. 3). For each orbit
of equivalent atoms this module measures the **distinguishability**: the smallest Hausdorff
distance (Angstrom, species-matched) between the frame-transformed neighbourhoods of two atoms of
the orbit; 0 means collapsed.

Atoms that are copies of each other by a lattice translation (the repeated cells of a supercell,
or the centring of a conventional cell) have identical surroundings in every frame, so they are
set aside as **translation copies**, not reported as collapsed, and not compared (which keeps the
cost of a supercell that of its primitive cell).
"""

from __future__ import annotations

import contextlib
import difflib
import warnings
from pathlib import Path

import numpy as np
import torch

from crystalframes.data.batch import collate
from crystalframes.data.graph import GraphSettings, build_graph
from crystalframes.frames.local import GRAM_SCHMIDT_EPS
from crystalframes.frames import (
    FRAME_ALIASES,
    GLOBAL_FRAMES,
    compose_spframe,
    edges_in_frames,
    global_frame,
    gram_schmidt,
    qr_frame,
    static_local_frame,
)
from crystalframes.io.elements import element_symbol
from crystalframes.io.errors import InputError
from crystalframes.models.elements import unsupported_elements_error
from crystalframes.models.specs import SpecError

# Distinguishability below this (Angstrom) counts as collapsed: DFT-relaxed files are
# symmetric to ~1e-5 A, far below any real difference between neighbourhoods.
COLLAPSE_TOLERANCE = 1e-3
# Per-atom model features of equivalent atoms within this (relative to the largest feature,
# float64, on the idealised crystal) count as coinciding; collapse leaves only rounding.
FEATURE_TOLERANCE = 1e-8

T = torch.float64


def _radial_vectors(batch):
    """Per atom, two invariant 3-vectors and two equivariant vectors from fixed radial
    functions of the neighbour distances: stand-ins for the learned phi_k of Hua & Lin's SPFrame,
    Eqs. 16 and 14, so frames can be compared without a trained model."""
    d = batch.edge_vec.norm(dim=-1, keepdim=True)
    unit = batch.edge_vec / d
    n, c = len(batch.batch), batch.edge_index[0]
    phi = torch.cat([torch.exp(-d), torch.exp(-((d - 3) ** 2)), torch.sin(d)], dim=1)
    inv1 = torch.zeros(n, 3, dtype=T).index_add_(0, c, phi)
    inv2 = torch.zeros(n, 3, dtype=T).index_add_(0, c, phi.roll(1, dims=1) ** 2)
    eq1 = torch.zeros(n, 3, dtype=T).index_add_(0, c, phi[:, :1] * unit)
    eq2 = torch.zeros(n, 3, dtype=T).index_add_(0, c, phi[:, 1:2] * unit)
    return (inv1, inv2), (eq1, eq2)


def _spframe(batch):
    (inv1, inv2), _ = _radial_vectors(batch)
    return compose_spframe(gram_schmidt(inv1, inv2), qr_frame(batch.lattice), batch.batch)


def _equivariant_gs(batch):
    _, (eq1, eq2) = _radial_vectors(batch)
    return gram_schmidt(eq1, eq2, fallback=qr_frame(batch.lattice)[batch.batch])


def _equivariant_gs_fallbacks(batch) -> np.ndarray:
    """Atoms whose equivariant Gram-Schmidt frame is the global (QR) frame, in part or whole:
    the conditions of :func:`gram_schmidt` (a vanishing first vector, or a second one collinear
    with it, as on a 3-fold axis, where no equivariant frame exists)."""
    _, (v1, v2) = _radial_vectors(batch)
    e1 = v1 / v1.norm(dim=-1, keepdim=True).clamp_min(GRAM_SCHMIDT_EPS)
    ortho = v2 - (e1 * v2).sum(-1, keepdim=True) * e1
    small = v1.norm(dim=-1) <= GRAM_SCHMIDT_EPS
    collinear = ortho.norm(dim=-1) <= GRAM_SCHMIDT_EPS * (v2.norm(dim=-1) + GRAM_SCHMIDT_EPS)
    return (small | collinear).numpy()


def _static(batch):
    return static_local_frame(batch.edge_vec, batch.edge_index[0], len(batch.batch), qr_frame(batch.lattice)[batch.batch])


def _global(name):
    def per_atom(batch):
        return global_frame(name, batch.lattice, batch.frac_coords, batch.batch)[batch.batch]

    return per_atom


# Frames built from the structure alone (untrained stand-ins for the learned ones), under the
# names the model specs use; the names of earlier releases stay accepted.
STRUCTURE_FRAMES = {
    "spframe_gram_schmidt": _spframe,
    "equivariant_gram_schmidt": _equivariant_gs,
    "static": _static,
    **{f"global+{name}": _global(name) for name in GLOBAL_FRAMES},
}
# Frames that fall back to the global frame where they cannot be built: which atoms did.
FALLBACKS = {"equivariant_gram_schmidt": _equivariant_gs_fallbacks}


def estimated_cost(num_atoms: int) -> tuple[float, float]:
    """(seconds, MB) a symmetry analysis of a cell of ``num_atoms`` atoms takes, roughly: measured
    on one CPU core (2026-12, supercells of rock salt and of JVASP-5371 from 8 to 5,120 atoms:
    3 s start-up, then about 5 ms per atom, mostly making the cell exactly symmetric; translation
    copies are not compared, so a supercell costs little more than its size)."""
    return 3.0 + 0.005 * num_atoms, 350.0 + 0.01 * num_atoms


def check_frame(frame: str) -> str:
    """The canonical name of ``frame`` (one of :data:`STRUCTURE_FRAMES`, or an old name of the
    frame registry, :data:`crystalframes.frames.FRAME_ALIASES`); :class:`SpecError` with a
    did-you-mean otherwise."""
    frame = FRAME_ALIASES.get(frame, frame)
    if frame not in STRUCTURE_FRAMES:
        close = difflib.get_close_matches(str(frame), list(STRUCTURE_FRAMES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpecError(f"unknown frame {frame!r}{hint}; choose one of: {', '.join(sorted(STRUCTURE_FRAMES))}")
    return frame


def _neighbourhoods(batch, frames, atoms):
    """Per atom of ``atoms`` (a dict), its neighbours' positions in its frame and their species."""
    local = edges_in_frames(batch.edge_vec, frames, batch.edge_index[0]).numpy()
    species = batch.atomic_numbers[batch.edge_index[1]].numpy()
    centre = batch.edge_index[0].numpy()
    order = np.argsort(centre, kind="stable")
    bounds = np.searchsorted(centre[order], np.arange(len(batch.batch) + 1))
    return {i: (local[order[bounds[i] : bounds[i + 1]]], species[order[bounds[i] : bounds[i + 1]]]) for i in atoms}


def _hausdorff(a, b) -> float:
    (va, sa), (vb, sb) = a, b
    worst = 0.0
    for (x, sx), (y, sy) in (((va, sa), (vb, sb)), ((vb, sb), (va, sa))):
        for z in np.unique(sx):
            if not np.any(sy == z):
                return float("inf")
            d = np.linalg.norm(x[sx == z][:, None, :] - y[sy == z][None, :, :], axis=-1)
            worst = max(worst, float(d.min(axis=1).max()))
    return worst


@contextlib.contextmanager
def _spglib_quietly():
    """spglib >= 2.5 warns on every call ("Set OLD_ERROR_HANDLING to false") while it keeps its
    old convention (None on failure); ASE's symmetry tools call it too. The callers here handle
    a failure under either convention, so the warning says nothing to our users."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Set OLD_ERROR_HANDLING", category=DeprecationWarning)
        yield


def symmetry_dataset(crystal, symprec: float = 1e-3):
    """spglib's symmetry dataset of ``crystal``, or None when spglib finds none (it returns None
    under its old error convention and raises ``SpglibError`` under the new one)."""
    import spglib

    with _spglib_quietly():
        try:
            return spglib.get_symmetry_dataset((crystal.lattice, crystal.frac_coords, crystal.atomic_numbers), symprec=symprec)
        except Exception as exc:
            if type(exc).__name__ == "SpglibError":
                return None
            raise


def idealised(crystal, symprec: float):
    """The crystal with lattice and positions made exactly symmetric (ASE's
    ``refine_symmetry``; same cell setting and atom order) and the largest atom displacement
    (Angstrom). Files are symmetric only to their printed digits (~1e-5 A); without this the
    features of equivalent atoms would differ by that noise, amplified by the model."""
    from dataclasses import replace

    from ase import Atoms
    from ase.spacegroup.symmetrize import refine_symmetry

    atoms = Atoms(numbers=crystal.atomic_numbers, cell=crystal.lattice, scaled_positions=crystal.frac_coords, pbc=True)
    with _spglib_quietly():
        refine_symmetry(atoms, symprec=symprec, verbose=False)
    frac = atoms.get_scaled_positions(wrap=False)
    shift = frac - crystal.frac_coords
    moved = float(np.linalg.norm((shift - np.round(shift)) @ crystal.lattice, axis=1).max())
    return replace(crystal, lattice=np.array(atoms.cell), frac_coords=frac), moved


def _quiet(message: str) -> None:
    pass


def symmetry_analysis(crystal, frame: str = "spframe_gram_schmidt", model=None, k: int = 12, symprec: float = 1e-3,
                      idealise: bool = True, progress=_quiet) -> dict:
    """Space group, Wyckoff orbits and, per orbit, the distinguishability of equivalent atoms
    under ``frame`` (one of :data:`STRUCTURE_FRAMES`) or under a model's own frames
    (``model.frames_of(batch)``, first block) when ``model`` is given. With a model every
    multi-atom orbit also gets ``feature_spread`` (max |h_p - h_q| of the per-atom features
    ``model.node_features``) and ``features_coincide``. ``idealise`` first makes the crystal
    exactly symmetric within ``symprec`` (:func:`idealised`). ``progress(message)`` is told each
    step (the command prints it on stderr for large cells).

    Every orbit gets a ``verdict``: ``single atom``, ``translation copies`` (all its atoms are
    lattice-translation copies of one atom: identical by construction, nothing to tell apart),
    ``collapsed`` or ``kept apart`` (measured among its atoms that are not translation copies of
    each other; ``translation_copies`` counts the others). With a frame that falls back to the
    global frame (equivariant Gram-Schmidt), ``fallback_atoms`` lists the orbit's atoms that did."""
    frame = check_frame(frame)
    if model is not None:
        error = unsupported_elements_error(model, crystal)
        if error is not None:
            raise error
    moved = 0.0
    if idealise:
        progress("making the cell exactly symmetric")
        crystal, moved = idealised(crystal, symprec)

    progress("finding the space group and the orbits of equivalent atoms")
    ds = symmetry_dataset(crystal, symprec)
    if ds is None:
        raise InputError(crystal.where, f"spglib found no symmetry dataset (symprec {symprec})")
    features = None
    fallbacks = None
    progress("building the frames")
    if model is not None:
        # The model's own frames where it builds per-atom frames (its first frame-using layer;
        # per-head frames, CrystalFramer's, by their first head); with frame none the structure
        # frame ``frame`` is analysed beside the model's per-atom features.
        model_batch = collate([build_graph(crystal, model.graph_settings)], dtype=next(model.parameters()).dtype)
        with torch.no_grad():
            features = _node_features(model, model_batch)
            model_frames = model.frames_of(model_batch)
    if model is not None and model_frames:
        first = model_frames[0] if model_frames[0].dim() == 3 else model_frames[0][:, 0]
        batch, frames = model_batch.to(dtype=T), first.to(T)
        frame_name = getattr(model, "spec", "model")
    else:
        batch = collate([build_graph(crystal, GraphSettings(k=k))], dtype=T)
        frames = STRUCTURE_FRAMES[frame](batch)
        frame_name = frame
        fallbacks = FALLBACKS[frame](batch) if frame in FALLBACKS else None
    # One atom per class of translation copies (spglib's map to the primitive cell): copies
    # have identical neighbourhoods in any frame built from the structure.
    primitive = np.asarray(ds.mapping_to_primitive)
    groups = {}
    for rep in sorted(set(ds.equivalent_atoms.tolist())):
        atoms = [int(i) for i in np.flatnonzero(ds.equivalent_atoms == rep)]
        firsts = {}
        for a in atoms:
            firsts.setdefault(int(primitive[a]), a)
        groups[rep] = (atoms, sorted(firsts.values()))
    progress(f"comparing the neighbourhoods of {sum(len(c) for _, c in groups.values())} atoms in {len(groups)} orbits")
    hoods = _neighbourhoods(batch, frames, {a for _, compared in groups.values() for a in compared})
    orbits = []
    for rep, (atoms, compared) in groups.items():
        scores = [_hausdorff(hoods[p], hoods[q]) for i, p in enumerate(compared) for q in compared[i + 1 :]]
        score = min(scores) if scores else None
        if len(atoms) == 1:
            verdict = "single atom"
        elif score is None:
            verdict = "translation copies"
        else:
            verdict = "collapsed" if score < COLLAPSE_TOLERANCE else "kept apart"
        orbit = {
            "atoms": atoms,
            "element": element_symbol(crystal.atomic_numbers[atoms[0]]),
            "wyckoff": f"{len(atoms)}{ds.wyckoffs[atoms[0]]}",
            "site_symmetry": ds.site_symmetry_symbols[atoms[0]],
            "distinguishability": score,
            "collapsed": None if score is None else bool(score < COLLAPSE_TOLERANCE),
            "verdict": verdict,
            "translation_copies": len(atoms) - len(compared),
        }
        if fallbacks is not None:
            orbit["fallback_atoms"] = [a for a in atoms if fallbacks[a]]
        if features is not None and len(atoms) > 1:
            f = features[atoms]
            orbit["feature_spread"] = float((f - f[0]).abs().max())
            scale = max(1.0, float(f.abs().max()))
            orbit["features_coincide"] = bool(orbit["feature_spread"] <= FEATURE_TOLERANCE * scale)
        orbits.append(orbit)
    return {
        "id": crystal.id,
        "formula": crystal.formula,
        "space_group": {"symbol": ds.international, "number": int(ds.number)},
        "idealised_max_displacement": moved,
        "frame": frame_name,
        "model": None if model is None else getattr(model, "spec", type(model).__name__),
        "orbits": orbits,
        "frames": frames.numpy().tolist(),
    }


def _node_features(model, batch):
    """Per-atom features before pooling (``model.node_features``), in float64."""
    fn = getattr(model, "node_features", None)
    if fn is None:
        raise ValueError(f"{type(model).__name__} does not expose per-atom features (node_features)")
    return fn(batch).to(T)


def plot_frames(crystal, frames, path: Path, orbits=None) -> None:
    """Unit cell, atoms coloured by Wyckoff orbit, and each atom's frame axes (red, green, blue
    = e1, e2, e3); written atomically as PNG."""
    try:
        import matplotlib
    except ImportError:
        from crystalframes.io.errors import UserError

        raise UserError(f"{path}: plots need matplotlib (pip install 'crystalframes[train]')") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from crystalframes.atomic import atomic_write, write_error

    lat = crystal.lattice
    pos = np.mod(crystal.frac_coords, 1.0) @ lat
    frames = np.asarray(frames)
    fig = plt.figure(figsize=(6, 6))
    ax = fig.add_subplot(projection="3d")
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    for a in range(8):
        for b in range(a + 1, 8):
            if np.abs(corners[a] - corners[b]).sum() == 1:
                seg = corners[[a, b]] @ lat
                ax.plot(*seg.T, color="0.6", lw=0.8)
    colour = np.zeros(len(pos))
    for n, orbit in enumerate(orbits or []):
        colour[orbit["atoms"]] = n
    ax.scatter(*pos.T, c=colour, cmap="tab10", s=60, depthshade=False)
    scale = 0.25 * np.linalg.norm(lat, axis=1).min()
    for p, f in zip(pos, frames):
        for axis, col in zip(f, ("r", "g", "b")):
            ax.quiver(*p, *(scale * axis), color=col, lw=1.2)
    ax.set_title(f"{crystal.formula}: frame axes e1 (red), e2 (green), e3 (blue)")
    ax.set_box_aspect(np.ptp(np.concatenate([pos, corners @ lat]), axis=0) + 1e-9)
    try:
        with atomic_write(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=110, bbox_inches="tight")
    except OSError as exc:  # a full disk, a read-only folder: one line naming the file
        raise write_error(exc, path, "the plot") from None
    finally:
        plt.close(fig)
