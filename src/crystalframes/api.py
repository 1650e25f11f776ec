"""Portable trained models: save, load and predict. Imports no training code (Lightning)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from crystalframes.version import __version__
from crystalframes.atomic import save_torch
from crystalframes.data.normalise import TargetNormaliser
from crystalframes.io.errors import InputError

MODEL_FORMAT = "crystalframes-model"
MODEL_FORMAT_VERSION = 1
MODEL_FILENAME = "model.pt"


def save_model_file(path, model, spec: str, options: dict, normaliser: TargetNormaliser, targets: Sequence[str], units: Sequence[str],
                    extra: dict | None = None, storage_dtype: torch.dtype | None = None) -> Path:
    """Write a portable model file: spec + options (to rebuild the model), weights, target
    normaliser, target names/units and versions; for a tensor model
    (:class:`~crystalframes.models.tensor_heads.TensorModel`) also its read-out (``tensor``: kind,
    read-out, frame; ``spec`` and ``options`` are its backbone's). Plain tensors and Python types only, so it
    loads with ``torch.load(weights_only=True)``; written atomically. ``storage_dtype``
    (e.g. ``torch.float16``, for shipped models) stores the floating-point weights in that
    precision; they are cast back to the model's dtype on loading."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if storage_dtype is not None:
        state = {k: v.to(storage_dtype) if v.is_floating_point() else v for k, v in state.items()}
    payload = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "spec": spec,
        "options": dict(options),
        "state_dict": state,
        "normaliser": normaliser.state_dict(),
        "targets": list(targets),
        "units": list(units),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "versions": {"crystalframes": __version__, "torch": str(torch.__version__)},
        "extra": extra or {},
    }
    from crystalframes.models.tensor_heads import TensorModel

    if isinstance(model, TensorModel):
        payload["tensor"] = model.settings()
    path = Path(path)
    save_torch(payload, path)
    return path


def _raise_first(errors: list[InputError]) -> None:
    """Raise the first of the per-structure errors (naming how many more there are), if any."""
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InputError(errors[0].source, errors[0].problem + more)


def clip_nonnegative(values: np.ndarray, targets: Sequence[str]) -> np.ndarray:
    """A copy of ``values`` (n, n_targets) whose columns for targets that cannot be below zero
    (:func:`crystalframes.data.datasets.target_is_nonnegative`: band gaps, moduli...) are clipped
    at 0; NaN stays NaN. A model can predict -0.001 eV for a metal's gap; this is the one place
    that turns it into 0."""
    from crystalframes.data.datasets import target_is_nonnegative

    values = np.array(values, dtype=np.float64, copy=True)
    for j, name in enumerate(targets):
        if target_is_nonnegative(name):
            values[:, j] = np.maximum(values[:, j], 0.0)
    return values


@dataclass
class Predictions:
    """What ``predict(..., errors="collect")`` returns: one row per input, in input order.

    Attributes
    ----------
    values
        (n,) for one target or (n, n_targets); NaN in the rows of the inputs that failed.
    errors
        Position of each failed input in the input sequence -> its :class:`InputError`
        (ascending positions).
    std
        An ensemble's standard deviations, shaped like ``values`` (``return_std=True``), else None.
    """

    values: np.ndarray
    errors: dict[int, InputError]
    std: np.ndarray | None = None

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of the inputs that were predicted."""
        mask = np.ones(len(self.values), dtype=bool)
        mask[list(self.errors)] = False
        return mask


def _output_shape(predictor) -> tuple[int, ...]:
    """The shape of one structure's prediction: (n_targets,), or (3, ..., 3) for a tensor model."""
    rank = predictor.tensor_rank
    return (len(predictor.targets),) if rank is None else (3,) * rank


def _columns(predictor) -> list[str]:
    if predictor.tensor_rank is None:
        return list(predictor.targets)
    from crystalframes.io.tensors import tensor_columns

    return tensor_columns(predictor.targets[0], predictor.tensor_rank)


def _predict_inputs(predictor, structures: Iterable, batch_size: int, errors: str, clip: bool):
    """``Predictions`` for ``structures`` (paths or objects) with a std column when ``predictor``
    is an ensemble. With ``errors="raise"`` the first bad input raises its :class:`InputError`;
    with ``"collect"`` each bad input is one entry of ``errors`` and costs no other input."""
    from crystalframes.io import read_structure

    if errors not in ("raise", "collect"):
        raise ValueError(f"errors must be 'raise' or 'collect', not {errors!r}")

    def run(crystals):  # (kept, mean, std or None, errors)
        if isinstance(predictor, Ensemble):
            return predictor.predict_each_with_std(crystals, batch_size)
        kept, pred, errs = predictor.predict_each(crystals, batch_size)
        return kept, pred, None, errs

    structures = list(structures)
    failed: dict[int, InputError] = {}
    crystals, positions = [], []
    for i, s in enumerate(structures):
        try:
            crystals.append(read_structure(s))
            positions.append(i)
        except InputError as exc:
            if errors == "raise":
                raise
            failed[i] = exc
    kept, mean, std, errs = run(crystals)
    if errors == "raise":
        _raise_first(errs)
    shape = _output_shape(predictor)
    values = np.full((len(structures), *shape), np.nan)
    spread = np.full((len(structures), *shape), np.nan)
    row = {id(c): k for k, c in enumerate(kept)}
    for i, c in zip(positions, crystals):
        k = row.get(id(c))
        if k is not None:
            values[i] = mean[k]
            if std is not None:
                spread[i] = std[k]
            continue
        # The batch's errors name a source, not an input position, and two inputs can share a
        # source ("pymatgen Structure"): predicting the failed one alone gives its own error.
        own = run([c])[3]
        failed[i] = own[0] if own else InputError(c.where, "could not be predicted")
    if clip and predictor.tensor_rank is None:
        values = clip_nonnegative(values, predictor.targets)
    if predictor.tensor_rank is None and shape == (1,):
        values, spread = values[:, 0], spread[:, 0]
    return Predictions(values, dict(sorted(failed.items())), spread if std is not None else None)


@dataclass
class Predictor:
    """A trained model ready to predict; ``predict`` takes pymatgen Structures, ASE Atoms,
    :class:`~crystalframes.io.Crystal` objects or structure file paths."""

    model: torch.nn.Module
    normaliser: TargetNormaliser
    targets: list[str]
    units: list[str]
    spec: str
    path: str = ""
    options: dict = field(default_factory=dict)  # the model options the file was built with

    @property
    def graph_settings(self):
        return self.model.graph_settings

    @property
    def tensor_rank(self) -> int | None:
        """The Cartesian rank of a tensor model's output (predictions (n, 3, ..., 3)); None for
        a model of scalar targets."""
        from crystalframes.models.tensor_heads import TensorModel

        return self.model.kind.rank if isinstance(self.model, TensorModel) else None

    @property
    def columns(self) -> list[str]:
        """The columns of a prediction file: the targets, or a tensor target's components
        (:func:`crystalframes.io.tensors.tensor_columns`: ``e_electronic_xx`` ...)."""
        return _columns(self)

    @property
    def column_units(self) -> list[str]:
        """The units of each of :attr:`columns`."""
        return self.units if self.tensor_rank is None else self.units * len(self.columns)

    def to(self, device) -> "Predictor":
        self.model.to(device)
        return self

    def _each(self, crystals: Sequence, batch_size: int, compute) -> tuple[list, list, list[InputError]]:
        """Run ``compute(batch) -> list of per-structure results`` over the crystals in batches:
        ``(kept crystals, their results, errors)``. A structure the model cannot take (an element
        it cannot encode, a graph that cannot be built, a non-finite output) becomes an
        :class:`InputError` naming it, and the others still get their results."""
        from crystalframes.data.batch import collate
        from crystalframes.data.graph import build_graph
        from crystalframes.models.elements import split_supported

        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        crystals, errors = split_supported(self.model, crystals)
        param = next(self.model.parameters())
        self.model.eval()
        kept, out = [], []
        with torch.no_grad():
            for start in range(0, len(crystals), batch_size):
                graphs, chunk = [], []
                for c in crystals[start : start + batch_size]:
                    try:
                        graphs.append(build_graph(c, self.graph_settings))
                        chunk.append(c)
                    except InputError as exc:
                        errors.append(exc)
                if not graphs:
                    continue
                results = compute(collate(graphs, dtype=param.dtype).to(param.device))
                for c, r in zip(chunk, results):
                    if all(np.isfinite(x).all() for x in (r if isinstance(r, tuple) else (r,))):
                        kept.append(c)
                        out.append(r)
                    else:
                        errors.append(InputError(c.where, "the model's output is not finite (NaN or infinity)"))
        return kept, out, errors

    def predict_each(self, crystals: Sequence, batch_size: int = 64) -> tuple[list, np.ndarray, list[InputError]]:
        """``(predicted crystals, predictions (n, n_targets) or, for a tensor model, (n, 3, ..., 3),
        errors)``; see :meth:`_each`."""

        def compute(batch):
            return list(self.normaliser.inverse(self.model(batch)).cpu().numpy().astype(np.float64))

        kept, out, errors = self._each(crystals, batch_size, compute)
        return kept, (np.stack(out) if out else np.zeros((0, *_output_shape(self)))), errors

    def embed_each(self, crystals: Sequence, batch_size: int = 64, per_atom: bool = False):
        """``(crystals, embeddings (n, C), per-atom features or None, errors)``: the pooled
        per-structure vector the model's output head sees (the mean of its last per-atom
        features) and, with ``per_atom``, those per-atom features, one (n_atoms, C) array per
        structure. Same error handling as :meth:`predict_each`."""

        def compute(batch):
            atoms = self.model.node_features(batch)
            pooled = batch.mean_over_atoms(atoms).cpu().numpy().astype(np.float64)
            if not per_atom:
                return list(pooled)
            parts = torch.split(atoms.cpu(), batch.num_atoms.tolist())
            return [(p, a.numpy().astype(np.float64)) for p, a in zip(pooled, parts)]

        kept, out, errors = self._each(crystals, batch_size, compute)
        width = self.model.embedding_dim
        if per_atom:
            pooled = np.stack([p for p, _ in out]) if out else np.zeros((0, width))
            return kept, pooled, [a for _, a in out], errors
        return kept, (np.stack(out) if out else np.zeros((0, width))), None, errors

    def embed(self, structures: Iterable, batch_size: int = 64, per_atom: bool = False):
        """Per-structure embeddings (n, C), or ``(embeddings, [per-atom (n_atoms, C)])`` with
        ``per_atom``; bad inputs raise :class:`InputError` (:meth:`embed_each` keeps going)."""
        from crystalframes.io import read_structure

        crystals = [read_structure(s) for s in structures]
        kept, pooled, atoms, errors = self.embed_each(crystals, batch_size, per_atom)
        _raise_first(errors)
        return (pooled, atoms) if per_atom else pooled

    def predict_crystals(self, crystals: Sequence, batch_size: int = 64) -> np.ndarray:
        """Predictions (n, n_targets) in physical units for validated crystals, in their order;
        the first structure the model cannot take raises its :class:`InputError`
        (:meth:`predict_each` keeps going instead)."""
        kept, result, errors = self.predict_each(crystals, batch_size)
        _raise_first(errors)
        return result

    def predict(self, structures: Iterable, batch_size: int = 64, errors: str = "raise", clip: bool = True):
        """Predictions (n,) for one target, or (n, n_targets); for a tensor model Cartesian
        tensors (n, 3, 3), (n, 3, 3, 3) or (n, 3, 3, 3, 3) in the frame of each input structure.

        ``errors="raise"``: the first bad input raises its :class:`InputError`. ``"collect"``:
        returns a :class:`Predictions` (``.values`` with NaN rows for the bad inputs, ``.errors``
        position -> error); a bad input never costs the good ones. ``clip``: targets that cannot
        be below zero (band gaps, moduli: :func:`clip_nonnegative`) are clipped at 0; ``False``
        gives the model's raw values."""
        result = _predict_inputs(self, structures, batch_size, errors, clip)
        return result if errors == "collect" else result.values


@dataclass
class Ensemble:
    """Several trained models of the same targets (e.g. one spec trained with several seeds):
    the prediction is the mean over members and its uncertainty the standard deviation over
    members (sample standard deviation, ddof = 1: their disagreement). A structure is predicted
    when every member can take it; otherwise it is an error naming it."""

    members: list[Predictor]
    # The reported std is the members' spread times this factor. Ensembles of a few seeds are
    # overconfident; a pretrained model ships the factor fitted on its validation split
    # (crystalframes.analysis.uncertainty.calibration), 1 leaves the spread as it is.
    std_scale: float = 1.0

    def __post_init__(self):
        if len(self.members) < 2:
            raise ValueError("an ensemble needs at least two models")
        if not (math.isfinite(self.std_scale) and self.std_scale > 0):
            raise ValueError(f"std_scale must be a positive number, not {self.std_scale}")
        first = self.members[0]
        for m in self.members[1:]:
            if (m.targets, m.units) != (first.targets, first.units):
                raise InputError(m.path or m.spec, f"predicts {m.targets} ({m.units}), the ensemble's first model {first.targets} ({first.units})")

    @property
    def targets(self) -> list[str]:
        return self.members[0].targets

    @property
    def units(self) -> list[str]:
        return self.members[0].units

    @property
    def tensor_rank(self) -> int | None:
        return self.members[0].tensor_rank

    @property
    def columns(self) -> list[str]:
        return self.members[0].columns

    @property
    def column_units(self) -> list[str]:
        return self.members[0].column_units

    @property
    def spec(self) -> str:
        specs = sorted({m.spec for m in self.members})
        return f"ensemble of {len(self.members)}: " + ", ".join(specs)

    def to(self, device) -> "Ensemble":
        for m in self.members:
            m.to(device)
        return self

    def predict_each_with_std(self, crystals: Sequence, batch_size: int = 64):
        """``(crystals, mean (n, n_targets), std (n, n_targets), errors)``; std is the members'
        spread (ddof = 1) times :attr:`std_scale`."""
        crystals = list(crystals)
        results, errors = [], {}
        for member in self.members:
            kept, pred, errs = member.predict_each(crystals, batch_size)
            results.append({id(c): p for c, p in zip(kept, pred)})
            for e in errs:
                errors.setdefault((e.source, e.problem), e)
        kept = [c for c in crystals if all(id(c) in r for r in results)]
        stacked = np.stack([np.stack([r[id(c)] for c in kept]) for r in results]) if kept else np.zeros((len(results), 0, *_output_shape(self)))
        return kept, stacked.mean(axis=0), self.std_scale * stacked.std(axis=0, ddof=1), list(errors.values())

    def predict_each(self, crystals: Sequence, batch_size: int = 64):
        """``(crystals, mean (n, n_targets), errors)``, like :meth:`Predictor.predict_each`."""
        kept, mean, _, errors = self.predict_each_with_std(crystals, batch_size)
        return kept, mean, errors

    def predict(self, structures: Iterable, batch_size: int = 64, return_std: bool = False,
                errors: str = "raise", clip: bool = True):
        """Mean predictions (n,) or (n, n_targets), and with ``return_std`` also the standard
        deviations over members. ``errors`` and ``clip`` as in :meth:`Predictor.predict` (the
        mean is clipped, the std is not); with ``errors="collect"`` the :class:`Predictions`
        holds the std (``.std``) when ``return_std``."""
        result = _predict_inputs(self, structures, batch_size, errors, clip)
        if errors == "collect":
            return result if return_std else Predictions(result.values, result.errors)
        return (result.values, result.std) if return_std else result.values


    def embed_each(self, crystals: Sequence, batch_size: int = 64, per_atom: bool = False):
        """The first member's embeddings (members have their own feature spaces)."""
        return self.members[0].embed_each(crystals, batch_size, per_atom)

    def embed(self, structures: Iterable, batch_size: int = 64, per_atom: bool = False):
        """The first member's embeddings (members have their own feature spaces)."""
        return self.members[0].embed(structures, batch_size, per_atom)


def load_ensemble(paths: Sequence, device: str | torch.device = "cpu", std_scale: float = 1.0) -> Ensemble:
    """An :class:`Ensemble` of the model files or run folders ``paths`` (``std_scale``: see
    :class:`Ensemble`; ``benchmarks/calibration.py`` measures the factor for your ensemble)."""
    return Ensemble([load_model(p, device=device) for p in paths], std_scale=std_scale)


def resolve_model_path(path_or_name) -> Path:
    """The ``model.pt`` of a model file or run folder; :class:`InputError` when there is none."""
    path = Path(path_or_name).expanduser()
    if path.is_dir():
        path = path / MODEL_FILENAME
    if not path.is_file():
        from crystalframes.zoo import pretrained

        names = sorted(pretrained())
        shipped = f"; pretrained models: {', '.join(names)}" if names else ""
        raise InputError(str(path_or_name), f"no such model file or run folder (expected a model.pt or a run folder holding one){shipped}")
    return path


def _load_problem(exc: Exception) -> str:
    """torch's reason a file did not load, without its advice to load it with
    ``weights_only=False``: that would run whatever code the file holds."""
    paragraphs = [p.strip() for p in str(exc).split("\n\n") if p.strip()]
    kept = [p for p in paragraphs if "weights_only" not in p and "weights only" not in p.lower()]
    text = " ".join(" ".join(kept).split()) or "it holds objects other than tensors and plain data"
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}"


def _tensor_model_of(backbone, settings: dict, path: str):
    """The :class:`~crystalframes.models.tensor_heads.TensorModel` a model file's ``tensor``
    settings describe, on ``backbone``."""
    from crystalframes.models.tensor_heads import TensorModel
    from crystalframes.nn.cartesian import TENSOR_KINDS

    try:
        return TensorModel(backbone, TENSOR_KINDS[settings["kind"]], readout=settings["readout"], frame=settings["frame"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(path, f"holds a tensor read-out this crystalframes cannot build ({settings!r}: {exc})") from None


def load_model(path_or_name, device: str | torch.device = "cpu"):
    """Load a portable model file (or a run folder holding ``model.pt``) as a :class:`Predictor`,
    or a pretrained model shipped with the package by name (``crystalframes models
    --pretrained``) as an :class:`Ensemble` of its members. A path wins over a name.

    The file is read with ``torch.load(weights_only=True)``: a file that holds code (a pickle
    with a ``__reduce__`` payload) is refused and the code never runs."""
    from crystalframes.models.specs import SpecError, build_model
    from crystalframes.zoo import member_paths, pretrained

    shipped = pretrained() if isinstance(path_or_name, str) else {}
    if path_or_name in shipped and not Path(path_or_name).exists():
        members = [load_model(p, device) for p in member_paths(path_or_name)]
        return Ensemble(members, std_scale=shipped[path_or_name].get("std_scale", 1.0)) if len(members) > 1 else members[0]
    path = resolve_model_path(path_or_name)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(str(path), f"not a readable crystalframes model file ({_load_problem(exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise InputError(str(path), "not a crystalframes model file")
    if payload.get("format_version", 0) > MODEL_FORMAT_VERSION:
        raise InputError(str(path), f"written by a newer crystalframes ({payload.get('versions')}); upgrade to load it")
    missing = [k for k in ("spec", "options", "state_dict", "normaliser", "targets", "units") if k not in payload]
    if missing:
        raise InputError(str(path), f"incomplete crystalframes model file (no {', '.join(missing)})")
    try:
        model = build_model(payload["spec"], **payload["options"])
    except SpecError as exc:
        raise InputError(str(path), f"holds a model this crystalframes cannot build: {exc}") from None
    if "tensor" in payload:
        model = _tensor_model_of(model, payload["tensor"], str(path))
    model.to(getattr(torch, payload.get("dtype", "float32")))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise InputError(str(path), f"weights do not match the model spec {payload['spec']}: {str(exc)[:300]}") from None
    model.to(device).eval()
    normaliser = TargetNormaliser.from_state_dict(payload["normaliser"])
    # canonical spec name, also for files saved under an old one
    return Predictor(model, normaliser, list(payload["targets"]), list(payload["units"]), model.spec, str(path), dict(payload["options"]))
