"""Training recipes: the optimiser, schedule, epochs and batch size each backbone's presets were
published with (or chosen for, at CPU size), keyed by backbone and preset name.

A model module names architectures only (:mod:`crystalframes.models.presets`); how a preset is
trained is the trainer's business and lives here, so ``crystalformer:max@mp_e_form`` is the
architecture of Crystalformer's ``mp_e_form`` preset trained with :data:`RECIPES`
``["crystalformer"]["mp_e_form"]``. A recipe's ``training`` dict is plain data in the papers'
vocabulary; :data:`USED_TRAINING_KEYS` says, in this one place, what the trainer does with each
key: most fill a run's settings (:func:`crystalframes.train.config.config_with_preset_training`),
and the rest are recorded for the reader because the trainer already behaves that way. A key that
is in neither list is an error when the recipe is defined, so a published setting can never be
dropped silently. A backbone registered from outside the package may register recipes for its
presets (:func:`register_recipes`); a preset without one trains with the run config's defaults.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Mapping

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
# what a preset was published for: dataset and target; the run's data section chooses the data
# (a preset never switches a run to a dataset that needs a download)
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
class Recipe:
    """How one preset trains: ``training`` (keys of :data:`USED_TRAINING_KEYS` /
    :data:`INFORMATIONAL_TRAINING_KEYS`) and ``task`` (the dataset and target it was published
    for, if any)."""

    training: dict
    task: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [k for k in flat_training_keys(self.training) if k not in USED_TRAINING_KEYS and k not in INFORMATIONAL_TRAINING_KEYS]
        if unknown:
            raise ValueError(f"training key(s) {unknown} are neither used nor declared informational")
        bad_task = sorted(set(self.task) - set(TASK_KEYS))
        if bad_task:
            raise ValueError(f"unknown task key(s) {bad_task}; known: {TASK_KEYS}")


# ---------------------------------------------------------------------------------------------
# The recipes of the shipped backbones
# ---------------------------------------------------------------------------------------------

_JARVIS = "jarvis_dft_3d_2021"
_CPU_TASK = {"dataset": "mp_2018_demo", "target": "mp2018_e_form"}


def _comformer_cpu(epochs: int, batch_size: int) -> dict:
    # Not from a paper: ComFormer's recipe (AdamW, OneCycle; Yan et al.) at CPU-sized epochs and batches.
    return {"loss": "l1", "optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-5,
            "scheduler": {"name": "onecycle", "pct_start": 0.3, "interval": "step"}, "epochs": epochs, "batch_size": batch_size}


def _crystalformer_scripts(epochs: int, batch_size: int) -> dict:
    # As in the public Crystalformer / CrystalFramer training scripts (Taniai et al., ICLR 2024;
    # Ito, Taniai et al., ICLR 2025).
    return {"loss": "l1", "optimizer": "adamw", "lr": 5e-4, "betas": (0.9, 0.98), "weight_decay": 1e-5, "grad_clip_norm": 1.0,
            "scheduler": {"name": "inverse_sqrt", "formula": "lr * sqrt(T / (T + t))", "T": 4000, "interval": "step"},
            "swa_epochs": 50, "standardise_targets": True, "epochs": epochs, "batch_size": batch_size}


# Crystalformer's CPU recipe: eComFormer's `cpu` OneCycle schedule with Crystalformer's optimiser
# settings, for equal-budget comparisons at `cpu` size.
_CRYSTALFORMER_CPU = Recipe(
    {"loss": "l1", "optimizer": "adamw", "lr": 5e-4, "betas": (0.9, 0.98), "weight_decay": 1e-5, "grad_clip_norm": 1.0,
     "scheduler": {"name": "onecycle", "pct_start": 0.3, "interval": "step"}, "standardise_targets": True,
     "epochs": 18, "batch_size": 32},
    _CPU_TASK,
)


def _crystalformer_task(dataset: str, target: str, epochs: int, batch_size: int) -> Recipe:
    return Recipe(_crystalformer_scripts(epochs, batch_size), {"dataset": dataset, "target": target})


def _spframe_onecycle(lr=1e-3, epochs=500, batch_size=64, loss="l1") -> dict:
    # SPFrame (Hua & Lin, 2025), App. A.5: Adam without weight decay, OneCycle.
    return {"loss": loss, "optimizer": "adam", "lr": lr, "weight_decay": 0.0,
            "scheduler": {"name": "onecycle", "pct_start": 0.3, "interval": "step"}, "epochs": epochs, "batch_size": batch_size}


def _spframe_polynomial(lr, lr_end, epochs, batch_size=64) -> dict:
    # SPFrame (Hua & Lin, 2025), App. A.5 gives start and end learning rates only; power 1 (linear decay) is assumed.
    return {"loss": "l1", "optimizer": "adam", "lr": lr, "weight_decay": 0.0,
            "scheduler": {"name": "polynomial", "lr_end": lr_end, "power": 1.0, "interval": "step"},
            "epochs": epochs, "batch_size": batch_size}


# Per-task settings of the Crystalformer paper's public scripts: MEGNet (mp.2018.6.1) targets 500
# epochs at batch 128; JARVIS dft_3d_2021 targets 800 epochs at batch 256, MBJ gap 1600 epochs.
# (CrystalFramer's own scripts use 500 epochs / batch 128 for MP, params/latticeformer/default_mp.json,
# and 2000 epochs / batch 256 for JARVIS, params/crystalframer/default_jarvis.json: configs/crystalframer/.)
_CRYSTALFORMER: dict[str, Recipe] = {
    "reference": Recipe(_crystalformer_scripts(500, 128)),
    "lightweight": Recipe(_crystalformer_scripts(500, 128)),
    "mp_e_form": _crystalformer_task("mp_2018", "e_form", 500, 128),
    "mp_gap": _crystalformer_task("mp_2018", "gap pbe", 500, 128),
    "mp_bulk": _crystalformer_task("mp_2018_demo", "log10_K_VRH", 500, 128),
    "mp_shear": _crystalformer_task("mp_2018_demo", "log10_G_VRH", 500, 128),
    "jarvis_formation_energy": _crystalformer_task(_JARVIS, "formation_energy_peratom", 800, 256),
    "jarvis_total_energy": _crystalformer_task(_JARVIS, "optb88vdw_total_energy", 800, 256),
    "jarvis_optb88vdw_bandgap": _crystalformer_task(_JARVIS, "optb88vdw_bandgap", 800, 256),
    "jarvis_mbj_bandgap": _crystalformer_task(_JARVIS, "mbj_bandgap", 1600, 256),
    "jarvis_ehull": _crystalformer_task(_JARVIS, "ehull", 800, 256),
    "cpu": _CRYSTALFORMER_CPU,
    "cpu_lightweight_pe": _CRYSTALFORMER_CPU,
    "cpu_first_batch_rho": _CRYSTALFORMER_CPU,
    "cpu_small": Recipe(_crystalformer_scripts(100, 32)),
}

_ECOMFORMER: dict[str, Recipe] = {
    "reference": Recipe({
        # ComFormer's reference training code (Yan et al.); the loss it uses is not recorded here.
        "loss": "mse", "optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-5, "no_decay_on": ["bias", "batchnorm"],
        "scheduler": {"name": "onecycle", "pct_start": 0.3, "interval": "step"}, "epochs": 500, "batch_size": 64,
        "standardise_targets": True,
    }),
    "jarvis_formation_energy": Recipe(_spframe_onecycle(), {"dataset": _JARVIS, "target": "formation_energy_peratom"}),
    "jarvis_total_energy": Recipe(_spframe_onecycle(), {"dataset": _JARVIS, "target": "optb88vdw_total_energy"}),
    "jarvis_optb88vdw_bandgap": Recipe(_spframe_polynomial(5e-4, 1e-5, 800), {"dataset": _JARVIS, "target": "optb88vdw_bandgap"}),
    "jarvis_mbj_bandgap": Recipe(_spframe_polynomial(3e-4, 1e-5, 500), {"dataset": _JARVIS, "target": "mbj_bandgap"}),
    "jarvis_ehull": Recipe(_spframe_onecycle(), {"dataset": _JARVIS, "target": "ehull"}),
    "mp_e_form": Recipe(_spframe_onecycle(batch_size=32), {"dataset": "mp_2018", "target": "e_form"}),
    "mp_gap": Recipe(_spframe_onecycle(batch_size=32), {"dataset": "mp_2018", "target": "gap pbe"}),
    "mp_bulk": Recipe(_spframe_onecycle(), {"dataset": "mp_2018_demo", "target": "log10_K_VRH"}),
    "mp_shear": Recipe(_spframe_onecycle(loss="mse"), {"dataset": "mp_2018_demo", "target": "log10_G_VRH"}),
    "cpu_small": Recipe(_comformer_cpu(40, 32)),
    "cpu": Recipe(_comformer_cpu(18, 32), _CPU_TASK),
    "cpu_original_order": Recipe(_comformer_cpu(18, 32), _CPU_TASK),
}

# SchNet (Schütt et al., J. Chem. Phys. 2018) at the other backbones' CPU recipe: `cpu` has the
# budget of their `cpu` presets (equal-budget comparisons).
_SCHNET: dict[str, Recipe] = {
    "reference": Recipe(_comformer_cpu(500, 64)),
    "cpu": Recipe(_comformer_cpu(18, 32)),
    "cpu_small": Recipe(_comformer_cpu(100, 32)),
}

# backbone -> preset -> recipe
RECIPES: dict[str, dict[str, Recipe]] = {"crystalformer": _CRYSTALFORMER, "ecomformer": _ECOMFORMER, "schnet": _SCHNET}


def register_recipes(backbone: str, recipes: Mapping[str, Recipe]) -> None:
    """Add (or replace) the recipes of a backbone's presets (a backbone registered outside the
    package: :func:`crystalframes.models.register_backbone`)."""
    RECIPES[backbone] = dict(recipes)


def recipe_of(spec) -> Recipe | None:
    """The recipe of the spec's backbone and preset (None if it has none)."""
    from crystalframes.models.specs import parse_spec

    parsed = parse_spec(spec)
    return RECIPES.get(parsed.backbone, {}).get(parsed.preset)


def preset_training(spec) -> dict:
    """The training settings of the spec's preset (a copy; empty if none): keys ``loss``,
    ``optimizer``, ``lr``, ``weight_decay``, ``scheduler`` ({``name``, ``pct_start`` or ``lr_end`` /
    ``power``}), ``epochs``, ``batch_size``...; :func:`crystalframes.train.config.config_with_preset_training`
    decides what fills a run's settings."""
    recipe = recipe_of(spec)
    return copy.deepcopy(recipe.training) if recipe is not None else {}


def preset_task(spec) -> dict:
    """The dataset and target the spec's preset was published for (a copy; empty if none)."""
    recipe = recipe_of(spec)
    return dict(recipe.task) if recipe is not None else {}
