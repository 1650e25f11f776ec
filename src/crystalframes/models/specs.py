"""Model specs: one string names a model, ``backbone[:frame[+global_frame]][@preset]``.

Examples::

    ecomformer:none@reference                         plain eComFormer, original sizes
    ecomformer:spframe_quaternion@jarvis_formation_energy
    ecomformer:spframe_quaternion+polar@mp_gap        SPFrame with the polar global frame
    ecomformer                                        the backbone's default frame and preset

Omitted parts take the backbone's defaults. ``build_model(spec, **overrides)`` builds the model;
overrides replace single settings of the preset (``num_targets=2``, ``hidden=64``...). A preset
is an architecture; how it trains is :mod:`crystalframes.train.recipes` (``preset_training(spec)``).

Backbones register a :class:`Backbone` (name, builder, presets, defaults) in :data:`BACKBONES`
through :func:`register_backbone`; nothing else needs to change for a new backbone. Frames are
not the backbones' business: every frame of the frame registry (:mod:`crystalframes.frames`)
runs on every backbone that provides what the frame needs (``CrystalModel.provides``; others are
refused when the spec is parsed), and old frame names are its aliases.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from torch import nn

from crystalframes.io.errors import UserError


class SpecError(UserError, ValueError):
    """A model spec or model option that names nothing we have: the command line prints it as
    one ``error:`` line (a :class:`UserError`); code that expects ``ValueError`` still catches it."""


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown(kind: str, word: str, choices: Iterable[str], where: str = "") -> SpecError:
    choices = list(choices)
    return SpecError(f"unknown {kind} {word!r}{where}{_did_you_mean(word, choices)}; choose one of: {', '.join(choices)}")

_SPEC = re.compile(r"^(?P<backbone>[A-Za-z0-9_]+)(?::(?P<frame>[A-Za-z0-9_]+)(?:\+(?P<global_frame>[A-Za-z0-9_]+))?)?(?:@(?P<preset>[A-Za-z0-9_]+))?$")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed spec. ``global_frame`` is None for frames that use none."""

    backbone: str
    frame: str
    global_frame: str | None
    preset: str

    def __str__(self) -> str:
        frame = self.frame if self.global_frame is None else f"{self.frame}+{self.global_frame}"
        return f"{self.backbone}:{frame}@{self.preset}"


@dataclass(frozen=True)
class Backbone:
    """What the registry needs to know about a backbone.

    ``model``: the backbone's :class:`~crystalframes.models.base.CrystalModel` class (what it
    ``provides`` to frames); builder(spec, **overrides) -> that model; ``presets`` name -> description;
    ``options`` the settings a preset lets overrides replace (empty:
    the builder checks them itself); ``shared_frames_cancel``: a frame shared by every atom
    (``global+NAME``) provably changes nothing on this backbone, so no global frame's declared
    dependence applies to it (the model contract suite checks the claim); ``option_aliases``:
    old option names that still load (:func:`resolve_options`).
    """

    name: str
    model: type
    builder: Callable[..., nn.Module]
    presets: Mapping[str, str]
    default_frame: str
    default_preset: str
    options: tuple[str, ...] = ()
    shared_frames_cancel: bool = False
    # old option name -> today's, for model files and run configs written before a rename
    option_aliases: Mapping[str, str] = field(default_factory=dict)

    @property
    def provides(self) -> frozenset[str]:
        """What this backbone hands a frame (:data:`crystalframes.frames.NEEDS`)."""
        return self.model.provides

    def takes(self, frame: str) -> bool:
        """Whether the backbone provides everything the (registered) frame needs."""
        from crystalframes.frames import FRAMES

        return FRAMES[frame].needs <= self.provides


BACKBONES: dict[str, Backbone] = {}


def register_backbone(backbone: Backbone) -> None:
    """Add (or replace) a backbone in the registry."""
    BACKBONES[backbone.name] = backbone


def parse_spec(spec: str | ModelSpec) -> ModelSpec:
    """Validate a spec string and fill in the backbone's defaults; a bad spec raises
    :class:`SpecError` naming the part that is wrong and the choices."""
    if isinstance(spec, ModelSpec):
        spec = str(spec)
    if not isinstance(spec, str):
        raise SpecError(f"a model spec must be a string, not {type(spec).__name__}")
    m = _SPEC.match(spec.strip())
    if m is None:
        raise SpecError(f"bad model spec {spec!r}; expected backbone[:frame[+global_frame]][@preset], e.g. 'ecomformer:spframe_quaternion@jarvis_formation_energy'")
    name = m["backbone"]
    if name not in BACKBONES:
        raise _unknown("backbone", name, sorted(BACKBONES), f" in spec {spec!r}")
    from crystalframes.frames import FRAMES, GLOBAL_FRAMES, frame_names, resolve_frame
    from crystalframes.frames.registry import DEFAULT_GLOBAL_FRAME

    b = BACKBONES[name]
    try:
        frame, global_frame = resolve_frame(m["frame"] or b.default_frame, m["global_frame"])
    except ValueError as exc:
        raise SpecError(f"{exc} (in spec {spec!r})") from None
    if frame not in FRAMES:
        raise _unknown("frame", frame, [f for f in frame_names() if b.takes(f)], f" for {name} in spec {spec!r}")
    if not b.takes(frame):
        missing = ", ".join(sorted(FRAMES[frame].needs - b.provides))
        raise SpecError(f"frame {frame!r} needs {missing}, which backbone {name} does not provide (it provides "
                        f"{', '.join(sorted(b.provides))}); frames it takes: {', '.join(f for f in frame_names() if b.takes(f))}")
    if FRAMES[frame].composes_with_global:
        global_frame = global_frame or DEFAULT_GLOBAL_FRAME
        if global_frame not in GLOBAL_FRAMES:
            raise _unknown("global frame", global_frame, tuple(GLOBAL_FRAMES), f" in spec {spec!r}")
    elif global_frame is not None:
        raise SpecError(f"frame {frame!r} of {name} uses no global frame, so '+{global_frame}' in {spec!r} means nothing")
    preset = m["preset"] or b.default_preset
    if preset not in b.presets:
        raise _unknown("preset", preset, tuple(b.presets), f" for {name} in spec {spec!r}")
    return ModelSpec(name, frame, global_frame, preset)


def resolve_options(spec: str | ModelSpec, options: Mapping) -> dict:
    """``options`` with old option names (the backbone's ``option_aliases``) under today's, so a
    model file or run config written before a rename builds the same model; :class:`SpecError`
    if an old and a new name both set one option to different values."""
    aliases = BACKBONES[parse_spec(spec).backbone].option_aliases
    out = {key: value for key, value in options.items() if key not in aliases}
    for old, value in options.items():
        if old in aliases:
            new = aliases[old]
            if new in out and out[new] != value:
                raise SpecError(f"options {old!r} (the old name of {new!r}) and {new!r} disagree: {value!r} vs {out[new]!r}")
            out[new] = value
    return out


def check_options(spec: str | ModelSpec, options: Mapping) -> None:
    """Raise :class:`SpecError` if ``options`` (``model.options``) names a setting the spec's
    backbone does not have (old names of :func:`resolve_options` are accepted), with the known
    settings and a did-you-mean; cheap (builds nothing), so commands can call it before they
    create any output."""
    parsed = parse_spec(spec)
    known = BACKBONES[parsed.backbone].options
    if not known:
        return
    for key in resolve_options(parsed, options):
        if key not in known:
            raise SpecError(f"unknown {parsed.backbone} model option {key!r}{_did_you_mean(key, known)}; "
                            f"known options: {', '.join(sorted(known))}")


def build_model(spec: str | ModelSpec, **overrides) -> nn.Module:
    """Build the model a spec names; ``overrides`` replace settings of its preset. The model
    gets a ``spec`` attribute holding the canonical spec string. A bad spec, an unknown option
    or an invalid option value raises :class:`SpecError`."""
    parsed = parse_spec(spec)
    check_options(parsed, overrides)
    overrides = resolve_options(parsed, overrides)
    try:
        model = BACKBONES[parsed.backbone].builder(parsed, **overrides)
    except SpecError:
        raise
    except (TypeError, ValueError) as exc:
        # the preset configs validate values (sizes >= 1, known layer kinds...) with ValueError
        raise SpecError(f"model {parsed} with options {overrides}: {exc}") from None
    model.spec = str(parsed)
    return model


def spec_grid(preset: str | None = None, backbones: Iterable[str] | None = None) -> list[ModelSpec]:
    """Every backbone x frame it takes x global frame the frame composes with, at ``preset``
    (default: each backbone's default preset): the grid of ``crystalframes models`` and of the
    contract suite. A backbone without ``preset`` raises :class:`SpecError`."""
    from crystalframes.frames import FRAMES, GLOBAL_FRAMES, frame_names

    out = []
    for name in backbones or sorted(BACKBONES):
        b = BACKBONES[name]
        for frame in filter(b.takes, frame_names()):
            for global_name in GLOBAL_FRAMES if FRAMES[frame].composes_with_global else [None]:
                written = frame if global_name is None else f"{frame}+{global_name}"
                out.append(parse_spec(f"{name}:{written}@{preset or b.default_preset}"))
    return out


# Marks a declared dependence that may not show: see declared_dependences.
MAY_CANCEL = "may cancel: "


def declared_dependences(spec: str | ModelSpec) -> dict[str, str]:
    """What the model a spec names cannot satisfy by construction (check -> reason): its
    frame's declarations (:func:`crystalframes.frames.declared_dependences`). On a backbone where
    a frame shared by all atoms cancels (``Backbone.shared_frames_cancel``) a shared frame
    declares nothing, and a frame that uses its global frame only as a fallback keeps the global
    frame's dependences with the prefix :data:`MAY_CANCEL`: the atoms that fall back share that
    frame, so the dependence shows only where they meet atoms that do not (measured: on the
    contract suite's crystals it shows for supercells, not for basis changes)."""
    from crystalframes.frames import FRAMES, declared_dependences as frame_dependences

    parsed = parse_spec(spec)
    frame = FRAMES[parsed.frame]
    cancels = BACKBONES[parsed.backbone].shared_frames_cancel
    if cancels and frame.shared:
        return {}
    out = frame_dependences(parsed.frame, parsed.global_frame)
    if cancels and frame.global_frame_is_fallback:
        out = {check: reason if check in frame.dependences else MAY_CANCEL + reason for check, reason in out.items()}
    return out


def _frame_settings(spec: ModelSpec, overrides: dict) -> dict:
    """``overrides`` with the spec's frame and global frame, which overrides may not contradict."""
    overrides = dict(overrides)
    for key, value in (("frame", spec.frame), ("global_frame", spec.global_frame)):
        if key in overrides and overrides[key] != value:
            raise SpecError(f"{key} is part of the spec ({value!r}); write it there, not as an override")
        overrides.pop(key, None)
    if spec.global_frame is not None:
        overrides["global_frame"] = spec.global_frame
    return overrides


def backbone_of(name: str, model: type, config: type, presets: Mapping, default_frame: str, default_preset: str,
                label: str | None = None, **extra) -> Backbone:
    """The registry entry of a backbone module: its :class:`~crystalframes.models.base.CrystalModel`
    class ``model`` built from ``config`` (a dataclass whose fields the presets set, with
    ``frame`` and ``global_frame`` fields) at one of ``presets`` (name ->
    :class:`~crystalframes.models.presets.Preset`). ``extra``: other :class:`Backbone` fields."""
    from dataclasses import fields

    from crystalframes.models.presets import config_from_preset

    def build(spec: ModelSpec, **overrides) -> nn.Module:
        return model(config_from_preset(config, presets, spec.preset, label or name, frame=spec.frame, **_frame_settings(spec, overrides)))

    return Backbone(name=name, model=model, builder=build, presets={n: p.description for n, p in presets.items()},
                    default_frame=default_frame, default_preset=default_preset, options=tuple(f.name for f in fields(config)), **extra)

