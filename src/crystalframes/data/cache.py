"""Preprocessed-graph cache, keyed by what the graphs depend on.

The key hashes the raw crystals (ids, lattices, species, coordinates, targets), the graph
settings, the cache format and the package version. A file is used only if its stored key and
payload checksum both match; a stale, truncated or corrupted file is reported and rebuilt, never
trusted because it exists (a stale cache once silently changed a published ComFormer result).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from crystalframes import __version__
from crystalframes.atomic import atomic_write
from crystalframes.data.paths import cache_root
from crystalframes.data.graph import CrystalGraph, GraphSettings, build_graph
from crystalframes.io.crystal import Crystal

log = logging.getLogger("crystalframes.data")

CACHE_FORMAT = 1
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
    return {
        "format": CACHE_FORMAT,
        "key": key,
        "ids": [g.id for g in graphs],
        "target_names": target_names,
        "checksum": _checksum(payload),
        **payload,
    }


def _checksum(payload: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(payload):
        h.update(name.encode())
        h.update(payload[name].contiguous().numpy().tobytes())
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
        elif data["checksum"] != _checksum({k: data[k] for k in (*_ARRAYS, "lattice", "num_atoms", "num_edges", "targets")}):
            problem = "checksum mismatch (corrupted)"
    except Exception as exc:  # truncated / not a torch file / unpickling refused
        problem = f"unreadable ({type(exc).__name__}: {str(exc)[:120]})"
    if problem:
        log.warning("graph cache %s is %s; rebuilding it", path, problem)
        return None
    return _unpack(data)


def build_graphs(
    crystals: Sequence[Crystal],
    settings: GraphSettings = GraphSettings(),
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> list[CrystalGraph]:
    """Graphs of ``crystals`` (same order), from the cache when it holds exactly them.

    ``cache_dir`` defaults to ``cache_root() / "graphs"``; ``use_cache=False`` neither reads nor
    writes it.
    """
    if not use_cache:
        return [build_graph(c, settings) for c in crystals]
    key = cache_key(crystals, settings)
    folder = Path(cache_dir) if cache_dir is not None else cache_root() / "graphs"
    path = folder / f"graphs-{key[:32]}.pt"
    cached = _load_valid(path, key, len(crystals))
    if cached is not None:
        return cached
    graphs = []
    for n, c in enumerate(crystals):
        graphs.append(build_graph(c, settings))
        if progress is not None:
            progress(n + 1, len(crystals))
    if graphs:
        with atomic_write(path) as fh:
            torch.save(_pack(graphs, key), fh)
    return graphs
