"""Run configuration: YAML files validated by pydantic; every key can be overridden with
``--set section.key=value`` on the command line."""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from crystalframes.io.errors import InputError


class _Strict(BaseModel):
    # NaN or infinity is never a meaningful setting (lr=nan would train silently to NaN)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DataConfig(_Strict):
    source: str = Field("mp_2018_demo", description="dataset name or path (see `crystalframes data list`)")
    target: str = Field("mp2018_e_form", description="target property key")
    split: Literal["field", "random", "ids"] = Field(
        "field", description="field: each record's own split; random: ALIGNN random split; ids: official id lists"
    )
    split_key: Optional[str] = Field(None, description="benchmark split key for split=ids, e.g. dft_3d_formation_energy_peratom")
    split_file: Optional[str] = Field(None, description="benchmark_splits.json.gz for split=ids")
    split_seed: int = Field(123, ge=0)
    train_ratio: Optional[float] = Field(None, gt=0, lt=1)
    val_ratio: float = Field(0.1, ge=0, lt=1)
    test_ratio: float = Field(0.1, ge=0, lt=1)
    test_from_train: float = Field(
        0.1, ge=0, lt=1, description="if the split leaves no test records (e.g. mp_2018_demo), hold out this fraction of train (seeded)"
    )
    max_train: Optional[int] = Field(None, ge=1, description="use only the first N training records (quick runs)")
    graph_cache: bool = True
    store: Optional[str] = Field(
        None, description="train from this graph store (`crystalframes data build SOURCE -o STORE`) instead of reading the source"
    )
    store_above: int = Field(
        50_000, ge=0, description="without data.store: a source of more records is turned into a graph store once (next to the graph cache) and trained from"
    )


class ModelConfig(_Strict):
    spec: str = Field("ecomformer:spframe_quaternion@cpu", description="backbone:frame[+global]@preset")
    options: dict[str, Any] = Field(default_factory=dict, description="overrides of the preset's model settings")
    init: Optional[str] = Field(None, description="start from this trained model's weights (model file or run folder; `train --init`)")
    init_member: int = Field(0, ge=0, description="with init naming an ensemble (a pretrained model): which member to start from")
    keep_head: bool = Field(False, description="with init and another target: keep the output head instead of a fresh one")
    freeze: list[str] = Field(default_factory=list, description="with init: parameter name prefixes to keep fixed, e.g. [atom_embedding, layers.0]")
    readout: Literal["global", "local", "irreps"] = Field(
        "global", description="tensor targets only: the tensor read-out (global frame, per-atom frames, irreps; docs/tensor_training.md)")
    tensor_frame: str = Field("polar_o3", description="tensor targets with readout global: the global frame the components are predicted in")

    @field_validator("tensor_frame")
    @classmethod
    def _known_tensor_frame(cls, frame: str) -> str:
        from crystalframes.models.tensor_heads import TENSOR_GLOBAL_FRAMES

        if frame not in TENSOR_GLOBAL_FRAMES:
            raise ValueError(f"unknown tensor frame {frame!r}; choose one of {', '.join(TENSOR_GLOBAL_FRAMES)}")
        return frame

    @field_validator("spec")
    @classmethod
    def _parsable(cls, spec: str) -> str:
        # a bad spec must stop the command here, before any run folder exists
        from crystalframes.models.specs import parse_spec

        parse_spec(spec)
        return spec


class OptimConfig(_Strict):
    loss: Literal["l1", "mse"] = "l1"
    optimizer: Literal["adam", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    scheduler: Literal["onecycle", "polynomial", "inverse_sqrt", "constant"] = "onecycle"
    pct_start: float = Field(0.3, gt=0, lt=1)
    lr_end: float = Field(1e-5, gt=0)
    power: float = Field(1.0, gt=0)
    warmup_steps: int = Field(4000, ge=1, description="inverse_sqrt: lr * sqrt(w / (w + step))")
    swa_epochs: int = Field(0, ge=0, description="stochastic weight averaging over the last N epochs (0 = off)")
    grad_clip: Optional[float] = Field(None, gt=0, description="gradient-norm clipping")

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in betas):
            raise ValueError("each beta must be in [0, 1)")
        return betas


class TrainerConfig(_Strict):
    @model_validator(mode="before")
    @classmethod
    def _old_tensorboard_key(cls, data):
        # trainer.tensorboard (bool) was the only logger option before trainer.logger: still accepted
        if isinstance(data, dict) and "tensorboard" in data:
            data = dict(data)
            if data.pop("tensorboard") in (True, "true", "True", 1):
                data.setdefault("logger", "tensorboard")
        return data

    epochs: int = Field(40, ge=1)
    batch_size: int = Field(64, ge=1)
    max_time_minutes: Optional[float] = Field(None, gt=0, description="stop after this wall time")
    devices: int = Field(1, ge=1)
    num_nodes: int = Field(1, ge=1)
    accelerator: str = Field("auto", description="cpu, gpu or auto")
    dtype: Literal["float32", "float64"] = Field("float32", description="weights and inputs; precision 64 == dtype float64")
    precision: Optional[Literal["32", "64", "bf16-mixed", "16-mixed"]] = Field(
        None,
        description="32, 64, bf16-mixed or 16-mixed (Lightning's autocast: dense layers in low precision, "
        "frames and geometry in float32); default: from trainer.dtype",
    )
    seed: int = Field(0, ge=0, lt=2**32, description="0 <= seed < 2**32 (numpy's range)")
    deterministic: bool = False
    num_workers: Optional[int] = Field(
        None,
        ge=0,
        description="DataLoader worker processes; default: 0 for graphs in memory, 2 for a graph store "
        "(its reads, from disk when the store outgrows the page cache, then overlap the step)",
    )
    threads: Optional[int] = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    compile: bool = Field(False, description="torch.compile the model's forward (inductor; graph breaks: docs/models.md)")
    checkpoint_every_n_steps: int = Field(50, ge=1, description="how often the `last` checkpoint is refreshed")
    log_every_n_steps: int = Field(20, ge=1)
    logger: Literal["csv", "tensorboard", "wandb"] = Field(
        "csv", description="csv (logs/metrics.csv, always written); tensorboard or wandb log there too (need their packages)"
    )
    progress_seconds: float = Field(
        60, gt=0, description="when output is not a terminal: a progress line at most this often within an epoch"
    )

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value):
        # `precision: 32` in YAML (and --set trainer.precision=32) is a number
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _precision_and_dtype(self):
        # One setting decides the weights' dtype: precision 64 is dtype float64, the others
        # (mixed ones included: autocast keeps float32 weights) are dtype float32.
        if self.precision is None:
            self.precision = "64" if self.dtype == "float64" else "32"
        wanted = "float64" if self.precision == "64" else "float32"
        if self.dtype != wanted and "dtype" in self.model_fields_set:
            raise ValueError(
                f"precision {self.precision} keeps {wanted} weights but dtype is {self.dtype}: "
                f"set one of them (precision 64 == dtype float64; precision 32, bf16-mixed, 16-mixed == dtype float32)"
            )
        self.dtype = wanted
        return self


class RunConfig(_Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)


def _set_dotted(tree: dict, dotted: str, value: Any, where: str) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise InputError(where, f"cannot set {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


# Keys of earlier versions that are still accepted (translated by the section's validator).
OLD_SETTINGS = {"trainer.tensorboard": "trainer.logger=tensorboard"}


def known_settings() -> list[str]:
    """Every settable dotted key (``model.options.*`` is free-form, checked when the model is built)."""
    return [f"{section}.{key}" for section, field in RunConfig.model_fields.items() for key in field.annotation.model_fields]


def _unknown_setting(dotted: str) -> str | None:
    """Why ``dotted`` is not a setting (with the closest known one), or None if it is one."""
    parts = dotted.split(".")
    known = known_settings()
    if parts[0] in RunConfig.model_fields and len(parts) == 1:
        return None  # a whole section
    if parts[:2] == ["model", "options"] or dotted in known or dotted in OLD_SETTINGS:
        return None
    if ".".join(parts[:2]) in known:
        return f"{'.'.join(parts[:2])} is a single value, not a section"
    candidates = known + list(RunConfig.model_fields)
    close = difflib.get_close_matches(dotted, candidates, n=1, cutoff=0.6)
    if not close and len(parts) == 2:  # a known key under a wrong or misspelt section
        close = [k for k in known if k.split(".")[1] == parts[1]][:1]
    hint = f"did you mean {close[0]}?" if close else f"settings are: {', '.join(known)}"
    return f"unknown setting {dotted}; {hint}"


def _check_settings(tree: dict, where: str, prefix: str = "") -> None:
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        problem = _unknown_setting(dotted)
        if problem:
            raise InputError(where, problem)
        if isinstance(value, dict) and dotted in RunConfig.model_fields:
            _check_settings(value, where, dotted + ".")


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config (or the defaults), apply ``key.sub=value`` overrides (values parsed as
    YAML: numbers, booleans, lists), validate. Errors name the file or the override."""
    tree: dict = {}
    where = str(path) if path else "<defaults>"
    if path is not None:
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise InputError(where, "config file not found") from None
        except yaml.YAMLError as exc:
            raise InputError(where, f"not valid YAML: {exc}") from None
        if not isinstance(tree, dict):
            raise InputError(where, "a config must be a mapping of sections (data, model, optim, trainer)")
        _check_settings(tree, where)
    tree = copy.deepcopy(tree)
    for item in overrides:
        if "=" not in item:
            raise InputError(f"--set {item}", "expected key=value, e.g. trainer.epochs=5")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise InputError(f"--set {item}", f"value is not valid YAML: {str(exc).splitlines()[0]}") from None
        problem = _unknown_setting(key.strip())
        if problem:
            raise InputError(f"--set {item}", problem)
        single: dict = {}
        _set_dotted(single, key.strip(), value, f"--set {item}")
        _check_settings(single, f"--set {item}")  # a whole section given as a mapping
        _set_dotted(tree, key.strip(), value, f"--set {item}")
    if overrides and where == "<defaults>":
        where = "--set"
    return validate_config(tree, where)


def validate_config(tree: dict, where: str) -> RunConfig:
    """The :class:`RunConfig` of a settings tree; an :class:`InputError` naming every bad value."""
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InputError(where, f"invalid config: {problems}") from None


def config_with_preset_training(config: RunConfig, explicit: set[str]) -> RunConfig:
    """Fill the run settings the user did not set explicitly from the model preset's published
    training settings; which key fills which setting is declared once, in
    :data:`crystalframes.train.recipes.USED_TRAINING_KEYS`."""
    from crystalframes.train.recipes import USED_TRAINING_KEYS, flat_training_keys, preset_training

    training = preset_training(config.model.spec)
    tree = config.model_dump()
    for key in flat_training_keys(training):
        dotted = USED_TRAINING_KEYS.get(key)
        section, _, sub = key.partition(".")
        value = training[section][sub] if sub else training[section]
        if dotted is not None and value is not None and dotted not in explicit:
            _set_dotted(tree, dotted, value, "preset")
    return RunConfig.model_validate(tree)


def explicit_keys(path: str | Path | None, overrides: list[str]) -> set[str]:
    """Dotted keys the user set in the YAML file or with --set."""
    keys = {item.split("=", 1)[0].strip() for item in overrides}
    if path is not None:
        tree = yaml.safe_load(Path(path).read_text()) or {}
        for section, values in tree.items():
            if isinstance(values, dict):
                keys |= {f"{section}.{k}" for k in values}
    return keys


def config_yaml(cfg: RunConfig) -> str:
    """The config as the YAML a run folder keeps and ``train --print-config`` shows."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
