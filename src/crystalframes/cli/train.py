"""``crystalframes train``: train a model from a YAML config and/or --set overrides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from crystalframes.cli.common import require_training_stack


def train_command(
    config: Optional[Path] = typer.Argument(None, help="YAML config (default: SPFrame on eComFormer, mp_2018_demo formation energy, CPU preset)."),
    set_: List[str] = typer.Option([], "--set", help="Override any config key, e.g. --set trainer.epochs=5 --set model.spec=crystalformer:max@cpu_small."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Run folder (default runs/<time>-<spec>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --output from its last checkpoint (--set may change how it runs, e.g. trainer.epochs for an extendable schedule)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run that --output already holds."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config (preset values filled in, --set winning) as YAML and exit."),
    store: Optional[Path] = typer.Option(None, "--store", help="Train from this graph store (built once by `crystalframes data build SOURCE -o STORE`); the same as --set data.store=STORE."),
    init: Optional[str] = typer.Option(None, "--init", help="Start from this trained model's weights (model file or run folder); the run uses its spec. With another data.target the output layer starts afresh (--set model.keep_head=true keeps it); --set model.freeze=[layers.0] keeps parts fixed."),
):
    """Train a model; prints validation and test MAE beside the mean-predictor baseline."""
    require_training_stack()
    from crystalframes.train.config import config_with_preset_training, config_yaml, explicit_keys, load_config
    from crystalframes.train.folder import resume_config

    if resume and output is None:
        raise typer.BadParameter("--resume needs --output RUN_FOLDER", param_hint="--resume")
    if resume and overwrite:
        raise typer.BadParameter("give --resume (continue the run) or --overwrite (replace it), not both", param_hint="--overwrite")
    if resume and config is not None:
        raise typer.BadParameter(f"a resumed run keeps the config it was started with ({output}/config.yaml); change what may change with --set", param_hint="CONFIG")
    if store is not None:  # quoted: a path is a YAML string whatever it looks like
        set_ = [*set_, f"data.store={json.dumps(str(store))}"]
    if init is not None:
        if resume:
            raise typer.BadParameter("a resumed run continues from its checkpoint, not from another model", param_hint="--init")
        set_ = [*set_, f"model.init={init}"]
    if resume:
        cfg = resume_config(output, list(set_))
    else:
        cfg = load_config(config, list(set_))
        explicit = explicit_keys(config, list(set_))
        if cfg.model.init:
            from crystalframes.train.finetune import config_with_init

            cfg = config_with_init(cfg, explicit)
        cfg = config_with_preset_training(cfg, explicit)
    if print_config:
        typer.echo(config_yaml(cfg), nl=False)
        return
    from crystalframes.train.progress import TrainingInterrupted
    from crystalframes.train.run import train

    try:
        result = train(cfg, output, resume=resume, overwrite=overwrite)
    except TrainingInterrupted as stop:  # SIGTERM / SIGINT: `last` saved; exit 143 / 130, never 0
        if stop.rank_zero:
            typer.echo(stop.message(), err=True)
        raise typer.Exit(stop.code)
    except KeyboardInterrupt:  # Ctrl+C before training started: nothing to continue from
        typer.echo("train: interrupted by SIGINT before training started", err=True)
        raise typer.Exit(130)
    m = result.metrics
    if not m:
        return  # a non-zero DDP rank
    typer.echo(f"run folder: {result.folder}")
    typer.echo(f"model:      {m['spec']}   target: {m['target']}{' (' + m['units'] + ')' if m['units'] else ''}   trained {m['epochs_completed']} epochs, {m['train_wall_seconds']} s")
    if any("isotropic_baseline" in m.get(split, {}) for split in ("val", "test")):
        _tensor_summary(m)
        return
    typer.echo(f"{'split':6s} {'n':>6s} {'MAE':>10s} {'RMSE':>10s} {'R2':>7s} {'mean-baseline MAE':>18s}")
    for split in ("val", "test"):
        if split in m:
            s = m[split]
            typer.echo(f"{split:6s} {s['n']:6d} {s['mae']:10.4f} {s['rmse']:10.4f} {s['r2']:7.3f} {s['mean_baseline_mae']:18.4f}")


def _tensor_summary(m: dict) -> None:
    """The tensor metrics of a run (crystalframes.train.tensor_metrics) beside the isotropic baseline's."""
    typer.echo(f"{'split':6s} {'n':>6s} {'Frobenius':>10s} {'EwT25':>6s} {'EwT10':>6s} {'EwT5':>6s} {'comp. MAE':>10s}"
               f" {'isotropic Frobenius':>20s} {'EwT25':>6s}")
    for split in ("val", "test"):
        if split in m:
            s, b = m[split], m[split]["isotropic_baseline"]
            typer.echo(f"{split:6s} {s['n']:6d} {s['frobenius']:10.4f} {s['ewt_25']:6.1%} {s['ewt_10']:6.1%} {s['ewt_5']:6.1%}"
                       f" {s['mae']:10.4f} {b['frobenius']:20.4f} {b['ewt_25']:6.1%}")
