"""``crystalframes data``: inspect, fetch and graph datasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer

app = typer.Typer(help="Inspect, download and build graphs of datasets.", no_args_is_help=True)

# More neighbours than this per atom is no ComFormer graph (it uses 25) and would make the
# neighbour search run for minutes and exhaust memory.
MAX_K = 1000


def dataset_summary(result) -> dict:
    """Counts, per-target statistics, atoms-per-cell range and bad records of a ReadResult."""
    from crystalframes.data.datasets import target_units

    crystals = result.crystals
    names = sorted({t for c in crystals for t in c.targets})
    targets = {}
    for name in names:
        values = [c.targets[name] for c in crystals if name in c.targets]
        tensors = [v for v in values if isinstance(v, np.ndarray)]
        if tensors:
            # a tensor target: its count, Voigt shape and the statistics of its Frobenius norm
            norms = np.array([np.linalg.norm(t) for t in tensors])
            targets[name] = {
                "count": len(tensors),
                "shape": "x".join(map(str, tensors[0].shape)),
                "statistic": "Frobenius norm",
                "mean": float(norms.mean()),
                "std": float(norms.std()),
                "min": float(norms.min()),
                "max": float(norms.max()),
                "units": target_units(name),
            }
            continue
        vals = np.array(values, dtype=float)
        vals = vals[~np.isnan(vals)]
        if len(vals):
            targets[name] = {
                "count": int(len(vals)),
                "mean": float(vals.mean()),
                "std": float(vals.std()),
                "min": float(vals.min()),
                "max": float(vals.max()),
                "units": target_units(name),
            }
    n_atoms = [c.num_atoms for c in crystals]
    splits: dict[str, int] = {}
    for c in crystals:
        splits[str(c.split)] = splits.get(str(c.split), 0) + 1
    return {
        "source": str(result.source),
        "num_structures": len(crystals),
        "num_bad_records": len(result.errors),
        "atoms_per_cell": {"min": int(min(n_atoms)), "max": int(max(n_atoms)), "mean": float(np.mean(n_atoms))}
        if n_atoms
        else None,
        "splits": splits,
        "targets": targets,
        "bad_records": [str(e) for e in result.errors],
        # folder entries that are not structure files (or not readable as files): listed, not bad
        "skipped": [str(e) for e in result.skipped],
    }


@app.command("info")
def info(
    source: str = typer.Argument(..., help="Dataset name, JSONL(.gz)/JSON/zip file, id_prop folder or folder of structures."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    strict: bool = typer.Option(False, help="Stop at the first bad record instead of reporting it."),
):
    """Counts, targets (count/mean/std), atoms per cell and bad records of a dataset."""
    import logging

    from crystalframes.data.sources import load_dataset

    # the readers' INFO lines (e.g. how many rows of a tensor set break their crystal's symmetry)
    # are part of what this command reports
    io_logger = logging.getLogger("crystalframes.io")
    level = io_logger.level
    io_logger.setLevel(min(level or logging.INFO, logging.INFO))
    try:
        summary = dataset_summary(load_dataset(source, strict=strict))
    finally:
        io_logger.setLevel(level)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(f"source:        {summary['source']}")
    typer.echo(f"structures:    {summary['num_structures']}")
    if summary["atoms_per_cell"]:
        a = summary["atoms_per_cell"]
        typer.echo(f"atoms/cell:    {a['min']}-{a['max']} (mean {a['mean']:.1f})")
    typer.echo("splits:        " + ", ".join(f"{k}={v}" for k, v in summary["splits"].items()))
    if summary["targets"]:
        typer.echo(f"{'target':34s} {'count':>7s} {'mean':>10s} {'std':>10s}  units")
        for name, t in summary["targets"].items():
            label = f"{name} ({t['shape']}, norm)" if "shape" in t else name
            typer.echo(f"{label:34s} {t['count']:7d} {t['mean']:10.4f} {t['std']:10.4f}  {t['units']}")
    typer.echo(f"bad records:   {summary['num_bad_records']}")
    for line in summary["bad_records"][:20]:
        typer.echo(f"  {line}")
    if summary["num_bad_records"] > 20:
        typer.echo(f"  ... and {summary['num_bad_records'] - 20} more (use --json for all)")
    if summary["skipped"]:
        typer.echo(f"skipped:       {len(summary['skipped'])} (not structure files)")
        for line in summary["skipped"][:20]:
            typer.echo(f"  {line}")
        if len(summary["skipped"]) > 20:
            typer.echo(f"  ... and {len(summary['skipped']) - 20} more (use --json for all)")


@app.command("fetch")
def fetch(
    name: str = typer.Argument(..., help="Registered dataset name (see `crystalframes data list`)."),
    file: Optional[Path] = typer.Option(None, "--file", help="Use this already-downloaded archive instead of downloading."),
    sha256: Optional[str] = typer.Option(None, help="Expected sha256 of the archive (64 hex digits); the download must match it."),
    force: bool = typer.Option(False, help="Download again even if a valid copy is cached."),
):
    """Download (or import with --file) a benchmark dataset into the cache, validated."""
    from crystalframes.data.download import fetch_dataset

    path = fetch_dataset(name, file=file, sha256=sha256, force=force)
    typer.echo(str(path))


@app.command("list")
def list_cmd():
    """Registered datasets."""
    from crystalframes.data.datasets import list_datasets

    for info in list_datasets():
        typer.echo(f"{info.name:22s} {info.description}")


@app.command("graph")
def graph(
    file: Path = typer.Argument(..., help="Structure file (CIF, POSCAR, extxyz, JSON record)."),
    k: int = typer.Option(
        25, "--k", min=1, max=MAX_K, help="Neighbours per atom, 1 to 1000 (ties at the k-th distance are kept)."
    ),
    lattice_edges: bool = typer.Option(False, "--lattice-edges", help="Add the 6 lattice self-edges per atom."),
    as_json: bool = typer.Option(False, "--json", help="Print the graph as JSON."),
):
    """The k-NN multigraph of one structure."""
    from crystalframes.data.graph import GraphSettings, build_graph
    from crystalframes.io import read_structure

    g = build_graph(read_structure(file), GraphSettings(k=k, lattice_edges=lattice_edges))
    out = {
        "id": g.id,
        "num_nodes": g.num_nodes,
        "num_edges": g.num_edges,
        "in_degree": g.in_degree.tolist(),
        "distances": np.sort(g.distances).round(6).tolist(),
        "num_lattice_edges": int(g.edge_is_lattice.sum()),
    }
    if as_json:
        typer.echo(json.dumps(out))
        return
    d = np.sort(g.distances)
    typer.echo(f"{g.id}: {g.num_nodes} atoms, {g.num_edges} directed edges ({out['num_lattice_edges']} lattice)")
    typer.echo(f"in-degree: min {g.in_degree.min()} max {g.in_degree.max()}")
    if len(d):
        typer.echo(f"distances: {d[0]:.4f} .. {d[-1]:.4f} A")


def _k_option(value: str) -> int | None:
    """``--k``: a neighbour count 1..MAX_K, or ``none`` (no edges: the Crystalformer input)."""
    if value.strip().lower() == "none":
        return None
    try:
        k = int(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is neither a whole number nor 'none'") from None
    if not 1 <= k <= MAX_K:
        raise typer.BadParameter(f"{k} is not in 1..{MAX_K}")
    return k


@app.command("build")
def build(
    source: str = typer.Argument(..., help="Dataset name, JSONL(.gz)/JSON/zip file, id_prop folder or folder of structures."),
    output: Path = typer.Option(..., "-o", "--output", help="Store folder (new, empty, or this build's own to resume / repair)."),
    k: str = typer.Option("25", "--k", help="Neighbours per atom, 1 to 1000 (eComFormer: 25), or 'none' for no edges."),
    lattice_edges: bool = typer.Option(False, "--lattice-edges", help="Add the 6 lattice self-edges per atom (iComFormer)."),
    crystalformer: bool = typer.Option(False, "--crystalformer", help="Crystalformer's input: no edges (same as --k none)."),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes building graphs."),
    shard_size: int = typer.Option(4096, "--shard-size", min=1, help="Records per shard."),
):
    """Build a sharded, memory-mapped graph store of a dataset (resumable: rerun the same command
    after an interruption or a damaged shard; finished, intact shards are kept)."""
    import time

    from crystalframes.data.graph import GraphSettings
    from crystalframes.data.store import build_store

    k_value = _k_option(k)
    if crystalformer:
        if k_value is not None and k != "25":
            raise typer.BadParameter("--crystalformer builds no edges; drop --k", param_hint="--k")
        k_value = None
    start = time.perf_counter()
    store = build_store(source, output, GraphSettings(k=k_value, lattice_edges=lattice_edges), workers=workers,
                        shard_size=shard_size, progress=True)
    seconds = time.perf_counter() - start
    n = len(store)
    per = store.nbytes / n if n else 0.0
    typer.echo(f"{store.path}: {n} structures in {len(store.manifest['shards'])} shards, "
               f"{len(store.errors())} bad records")
    typer.echo(f"bytes/structure: {per:.0f} ({store.nbytes / 1e6:.1f} MB in all)")
    typer.echo(f"seconds:         {seconds:.1f}")


@app.command("verify")
def verify(store: Path = typer.Argument(..., help="Graph store folder (from `crystalframes data build`).")):
    """Check every file of a graph store against its sha256."""
    from crystalframes.data.store import GraphStore

    opened = GraphStore.open(store, verify="full")
    typer.echo(f"{store}: ok, {len(opened)} structures in {len(opened.manifest['shards'])} shards, "
               f"{opened.nbytes / 1e6:.1f} MB checked")
