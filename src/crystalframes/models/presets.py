"""Presets: named model sizes with the training settings they were published with.

Presets belong to a backbone, not to a frame: every frame of a backbone runs at every one of its
presets (``crystalformer:max@mp_e_form``, ``ecomformer:none@mp_gap``). A preset's ``training``
dict is plain data in the papers' vocabulary; :data:`TRAINING_KEYS` says, in this one place, what
the trainer does with each key: most fill a run's settings (``crystalframes.train.config``), and
the rest are recorded for the reader because the trainer already behaves that way. A key that is
in neither list is an error when the preset is defined, so a published setting can never be
dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

# training key -> the run setting it fills (see crystalframes.train.config)
USED_TRAINING_KEYS: dict[str, str] = {
    "loss": "optim.loss",
    "optimizer": "optim.optimizer",
    "lr": "optim.lr",
    "betas": "optim.betas",
    "weight_decay": "optim.weight_decay",
    "grad_clip_norm": "optim.grad_clip",
    "swa_epochs": "optim.swa_epochs",
    "epochs": "trainer.epochs",
    "batch_size": "trainer.batch_size",
    "scheduler.name": "optim.scheduler",
    "scheduler.pct_start": "optim.pct_start",
    "scheduler.lr_end": "optim.lr_end",
    "scheduler.power": "optim.power",
    "scheduler.T": "optim.warmup_steps",
}
# training key -> why the trainer needs no setting for it
INFORMATIONAL_TRAINING_KEYS: dict[str, str] = {
    "standardise_targets": "the trainer always standardises targets with the training split's mean and std",
    "scheduler.interval": "every learning-rate schedule steps once per optimiser step",
    "scheduler.formula": "documents the inverse-sqrt schedule the trainer implements (optim.warmup_steps = T)",
    "no_decay_on": "ComFormer's reference exempts biases and norms from weight decay; the trainer decays every "
    "parameter (weight decay 1e-5 makes the difference negligible)",
}
# what a preset was published for: dataset and target, shown by `crystalframes models`; the run's
# data section chooses the data (a preset never switches a run to a dataset that needs a download)
TASK_KEYS = ("dataset", "target")


def flat_training_keys(training: dict) -> list[str]:
    """``{"lr": .., "scheduler": {"name": ..}}`` -> ``["lr", "scheduler.name"]``."""
    out = []
    for key, value in training.items():
        if isinstance(value, dict):
            out.extend(f"{key}.{sub}" for sub in value)
        else:
            out.append(key)
    return out


@dataclass(frozen=True)
class Preset:
    """Named settings of one backbone: ``model`` (fields of its config dataclass), ``training``
    (keys of :data:`USED_TRAINING_KEYS` / :data:`INFORMATIONAL_TRAINING_KEYS`) and ``task`` (the
    dataset and target it was published for, if any)."""

    name: str
    description: str
    model: dict
    training: dict = field(default_factory=dict)
    task: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [k for k in flat_training_keys(self.training) if k not in USED_TRAINING_KEYS and k not in INFORMATIONAL_TRAINING_KEYS]
        if unknown:
            raise ValueError(f"preset {self.name!r}: training key(s) {unknown} are neither used nor declared informational")
        bad_task = sorted(set(self.task) - set(TASK_KEYS))
        if bad_task:
            raise ValueError(f"preset {self.name!r}: unknown task key(s) {bad_task}; known: {TASK_KEYS}")


def presets_by_name(*presets: Preset) -> dict[str, Preset]:
    return {p.name: p for p in presets}


def config_from_preset(config_class, presets: dict[str, Preset], preset: str, label: str, **settings):
    """``config_class`` (a dataclass) at ``presets[preset]`` with ``settings`` replacing fields;
    ValueError naming the backbone (``label``) for an unknown preset or setting."""
    if preset not in presets:
        raise ValueError(f"unknown {label} preset {preset!r}; choose one of {tuple(presets)}")
    known = {f.name for f in fields(config_class)}
    bad = sorted(set(settings) - known)
    if bad:
        raise ValueError(f"unknown {label} option(s) {bad}; known: {sorted(known)}")
    return replace(config_class(**presets[preset].model), **settings)
