"""The model card written next to every run folder's ``model.pt``: what the model is, what it
was trained on, how well it did and how to train it again."""

from __future__ import annotations

import subprocess
from pathlib import Path

from crystalframes.data.download import file_sha256


def data_hash(source: str) -> str:
    """SHA-256 of the training data file (or folder) a data source resolves to."""
    from crystalframes.data.sources import resolve_source

    return file_sha256(resolve_source(source))


def data_line(d) -> str:
    """The card's name and hash of the training data: the source file, or with ``data.store``
    the store (its manifest holds every shard's sha256, so hashing it names the data exactly; the
    source it was built from may not exist on the machine that trained, e.g. a cluster node)."""
    if d.store:
        from crystalframes.data.store import MANIFEST

        manifest = Path(d.store) / MANIFEST
        return f"graph store `{d.store}` (manifest sha256 `{file_sha256(manifest)[:16]}...`)"
    return f"`{d.source}` (sha256 `{data_hash(d.source)[:16]}...`)"


def source_commit() -> str:
    """The git commit of the crystalframes source tree, when it is a checkout ('' otherwise)."""
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def model_card(folder: Path, cfg, metrics: dict, model_file: Path) -> str:
    """Markdown: name, spec, target and units, data and split, val/test MAE beside the mean
    baseline, seed, the command that trains it again, size, versions, commit, data hash."""
    from crystalframes.version import __version__

    d = cfg.data
    split = {"field": "the records' own split field", "random": f"random split (seed {d.split_seed})",
             "ids": f"official id lists ({d.split_key})"}[d.split]
    rows = []
    tensor = any("isotropic_baseline" in metrics.get(name, {}) for name in ("val", "test"))
    for name in ("val", "test"):
        if name in metrics:
            m = metrics[name]
            if tensor:  # tensor targets (train.tensor_metrics): Frobenius errors, EwT 25 %
                b = m["isotropic_baseline"]
                rows.append(f"| {name} | {m['n']} | {m['frobenius']:.4f} | {b['frobenius']:.4f} | {100 * m['ewt_25']:.1f} % | {100 * b['ewt_25']:.1f} % |")
            else:
                rows.append(f"| {name} | {m['n']} | {m['mae']:.4f} | {m['mean_baseline_mae']:.4f} |")
    size = model_file.stat().st_size
    # a target without units (one's own id_prop.csv) is named alone, not as "target ()"
    units = f" ({metrics['units']})" if metrics["units"] else ""
    header = ([f"| split | n | mean Frobenius error{units} | isotropic baseline | EwT 25 % | baseline EwT 25 % |", "|---|---:|---:|---:|---:|---:|"]
              if tensor else [f"| split | n | MAE{units} | mean-predictor MAE |", "|---|---:|---:|---:|"])
    return "\n".join([
        f"# Model card: {folder.name}",
        "",
        f"- **spec**: `{cfg.model.spec}`" + (f" with options `{cfg.model.options}`" if cfg.model.options else ""),
        f"- **target**: `{metrics['target']}`{units}",
        f"- **data**: {data_line(d)}, {split}; test "
        f"{'held out from train, ' + str(d.test_from_train) + ' of it (seed ' + str(d.split_seed) + ')' if d.split == 'field' else 'from the split'}; "
        f"{metrics['num_train']} training records",
        f"- **training**: {metrics['epochs_completed']} epochs, batch {cfg.trainer.batch_size}, seed {cfg.trainer.seed}, "
        f"{metrics['train_wall_seconds']:.0f} s" + (f"; started from `{cfg.model.init}`" if cfg.model.init else ""),
        f"- **parameters**: {metrics['params']:,} trainable; model file {size / 1e6:.2f} MB",
        f"- **trained again by**: `crystalframes train {folder / 'config.yaml'}` (the resolved config of this run)",
        f"- **versions**: crystalframes {__version__}" + (f", commit `{source_commit()[:12]}`" if source_commit() else ""),
        "",
        *header,
        *rows,
        "",
    ])
