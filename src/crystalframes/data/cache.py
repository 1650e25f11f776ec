"""Preprocessed-graph cache, keyed by what the graphs depend on.

The key hashes the raw crystals (ids, lattices, species, coordinates, targets), the graph
settings, the cache format and the package version. A file is used only if its stored key and
checksum both match, the checksum covering everything the file holds (arrays, ids, target names,
key); a stale, truncated or corrupted file is reported and rebuilt, never trusted because it
exists (a stale cache once silently changed a published ComFormer result; two swapped bytes in
a target name once swapped the labels of two targets unnoticed).

Writing the cache is best effort: a read-only or full cache folder costs one warning and a
rebuild on the next run, never the run itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from crystalframes.version import __version__
from crystalframes.atomic import save_torch
from crystalframes.data.paths import cache_root
from crystalframes.data.graph import CrystalGraph, GraphSettings, build_graph
from crystalframes.io.crystal import Crystal

log = logging.getLogger("crystalframes.data")

# 2: the checksum covers ids, target names and key too (format 1 files are rebuilt).
CACHE_FORMAT = 2
_ARRAYS = ("atomic_numbers", "frac_coords", "pos", "edge_index", "edge_shift", "edge_vec", "edge_is_lattice")


def crystals_hash(crystals: Sequence[Crystal]) -> str:
    """sha256 of the raw content of ``crystals`` (order matters)."""
    h = hashlib.sha256()
    for c in crystals:
        h.update(c.id.encode())
        h.update(np.ascontiguousarray(c.lattice, dtype=np.float64).tobytes())
        h.update(np.ascontiguousarray(c.atomic_numbers, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(c.frac_coords, dtype=np.float64).tobytes())
        h.update(json.dumps(c.targets, sort_keys=True, default=str).encode())
    return h.hexdigest()


def cache_key(crystals: Sequence[Crystal], settings: GraphSettings) -> str:
    meta = json.dumps(
        {"format": CACHE_FORMAT, "version": __version__, "settings": settings.as_dict()}, sort_keys=True
    )
    return hashlib.sha256((meta + crystals_hash(crystals)).encode()).hexdigest()


def _pack(graphs: Sequence[CrystalGraph], key: str) -> dict:
    target_names = sorted({t for g in graphs for t in g.targets})
    payload = {
        name: torch.from_numpy(np.concatenate([getattr(g, name) for g in graphs], axis=-1 if name == "edge_index" else 0))
        for name in _ARRAYS
    }
    payload["lattice"] = torch.from_numpy(np.stack([g.lattice for g in graphs]))
    payload["num_atoms"] = torch.tensor([g.num_nodes for g in graphs], dtype=torch.long)
    payload["num_edges"] = torch.tensor([g.num_edges for g in graphs], dtype=torch.long)
    payload["targets"] = torch.tensor(
        [[float(g.targets.get(t, np.nan)) for t in target_names] for g in graphs], dtype=torch.float64
    ).reshape(len(graphs), len(target_names))
    data = {"format": CACHE_FORMAT, "key": key, "ids": [g.id for g in graphs], "target_names": target_names, **payload}
    data["checksum"] = _checksum(data)
    return data


def _checksum(data: dict) -> str:
    """sha256 of every entry of ``data`` but the checksum itself: names, tensor dtypes, shapes and
    bytes, and the JSON of everything else (ids, target names, key, format)."""
    h = hashlib.sha256()
    for name in sorted(k for k in data if k != "checksum"):
        value = data[name]
        h.update(json.dumps(name).encode())
        if isinstance(value, torch.Tensor):
            h.update(f"{value.dtype}{tuple(value.shape)}".encode())
            h.update(value.contiguous().numpy().tobytes())
        else:
            h.update(json.dumps(value).encode())
    return h.hexdigest()


def _unpack(data: dict) -> list[CrystalGraph]:
    n_at = data["num_atoms"].numpy()
    n_ed = data["num_edges"].numpy()
    a_off = np.concatenate([[0], np.cumsum(n_at)])
    e_off = np.concatenate([[0], np.cumsum(n_ed)])
    arr = {name: data[name].numpy() for name in _ARRAYS}
    targets = data["targets"].numpy()
    graphs = []
    for b, gid in enumerate(data["ids"]):
        a0, a1, e0, e1 = a_off[b], a_off[b + 1], e_off[b], e_off[b + 1]
        tg = {t: float(targets[b, c]) for c, t in enumerate(data["target_names"]) if not np.isnan(targets[b, c])}
        graphs.append(
            CrystalGraph(
                id=gid,
                atomic_numbers=arr["atomic_numbers"][a0:a1],
                frac_coords=arr["frac_coords"][a0:a1],
                pos=arr["pos"][a0:a1],
                lattice=data["lattice"][b].numpy(),
                edge_index=arr["edge_index"][:, e0:e1],
                edge_shift=arr["edge_shift"][e0:e1],
                edge_vec=arr["edge_vec"][e0:e1],
                edge_is_lattice=arr["edge_is_lattice"][e0:e1],
                targets=tg,
            )
        )
    return graphs


def _load_valid(path: Path, key: str, n: int) -> list[CrystalGraph] | None:
    """The cached graphs if ``path`` holds exactly them, else ``None`` (after saying why)."""
    if not path.exists():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        problem = None
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
            problem = "unknown format"
        elif data.get("key") != key:
            problem = "stale (built from other data or settings)"
        elif len(data["ids"]) != n:
            problem = f"holds {len(data['ids'])} graphs, expected {n}"
        elif data.get("checksum") != _checksum(data):
            problem = "checksum mismatch (corrupted or edited)"
    except Exception as exc:  # truncated / not a torch file / unpickling refused
        problem = f"unreadable ({type(exc).__name__}: {str(exc)[:120]})"
    if problem:
        log.warning("graph cache %s is %s; rebuilding it", path, problem)
        return None
    return _unpack(data)


def _save(graphs: Sequence[CrystalGraph], key: str, path: Path) -> None:
    """Write the cache file, best effort: a folder that cannot be written (read-only, full,
    quota) costs a warning, not the graphs already built."""
    try:
        save_torch(_pack(graphs, key), path)
    except OSError as exc:
        folder = path.parent
        if folder not in _unwritable_folders:  # one warning per folder, not one per split
            _unwritable_folders.add(folder)
            log.warning(
                "cannot write the graph cache in %s (%s); going on without it (graphs are rebuilt "
                "on every run: set CRYSTALFRAMES_CACHE_DIR to a writable folder, or data.graph_cache=false)",
                folder,
                getattr(exc, "strerror", None) or exc,
            )


_unwritable_folders: set[Path] = set()


def _build_all(crystals: Sequence[Crystal], settings: GraphSettings, progress: Callable[[int, int], None] | None) -> list[CrystalGraph]:
    """Build every graph; a tqdm bar on stderr when it is a terminal (none in a pipe or a log)."""
    from tqdm import tqdm

    stream = sys.stderr
    graphs = []
    with tqdm(
        total=len(crystals), desc="building graphs", unit="crystal", file=stream,
        disable=not stream.isatty(), leave=False,
    ) as bar:
        for c in crystals:
            graphs.append(build_graph(c, settings))
            bar.update()
            if progress is not None:
                progress(len(graphs), len(crystals))
    return graphs


def build_graphs(
    crystals: Sequence[Crystal],
    settings: GraphSettings = GraphSettings(),
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> list[CrystalGraph]:
    """Graphs of ``crystals`` (same order), from the cache when it holds exactly them.

    ``cache_dir`` defaults to ``cache_root() / "graphs"``; ``use_cache=False`` neither reads nor
    writes it. A cache that cannot be written is warned about once and skipped. ``progress`` is
    called with ``(done, total)`` after each graph built; a progress bar shows on a terminal.
    """
    if not use_cache:
        return _build_all(crystals, settings, progress)
    key = cache_key(crystals, settings)
    folder = Path(cache_dir) if cache_dir is not None else cache_root() / "graphs"
    path = folder / f"graphs-{key[:32]}.pt"
    cached = _load_valid(path, key, len(crystals))
    if cached is not None:
        return cached
    graphs = _build_all(crystals, settings, progress)
    if graphs:
        _save(graphs, key, path)
    return graphs
