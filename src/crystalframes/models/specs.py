"""Model specs: one string names a model, ``backbone[:frame[+global_frame]][@preset]``.

Examples::

    ecomformer:none@reference                         plain eComFormer, original sizes
    ecomformer:spframe_quaternion@jarvis_formation_energy
    ecomformer:spframe_quaternion+polar@mp_gap        SPFrame with the polar global frame
    ecomformer                                        the backbone's default frame and preset

Omitted parts take the backbone's defaults. ``build_model(spec, **overrides)`` builds the model;
overrides replace single settings of the preset (``num_targets=2``, ``hidden=64``...).
``preset_training(spec)`` returns the preset's published training settings as plain data.

Backbones register a :class:`Backbone` (name, builder, frames, global frames, presets,
defaults) in :data:`BACKBONES` through :func:`register_backbone`; nothing else needs to change
for a new backbone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Mapping

from torch import nn

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

    builder(spec, **overrides) -> nn.Module; ``frames`` the accepted frame names;
    ``global_frames`` the accepted global frames; ``frames_with_global`` the frames for which a
    global frame means something (others reject ``+name``); ``presets`` name -> description;
    ``training`` preset name -> its published training settings (plain data, see
    :func:`preset_training`).
    """

    name: str
    builder: Callable[..., nn.Module]
    frames: tuple[str, ...]
    global_frames: tuple[str, ...]
    frames_with_global: tuple[str, ...]
    presets: Mapping[str, str]
    default_frame: str
    default_global_frame: str
    default_preset: str
    training: Mapping[str, dict] = field(default_factory=dict)


BACKBONES: dict[str, Backbone] = {}


def register_backbone(backbone: Backbone) -> None:
    """Add (or replace) a backbone in the registry."""
    BACKBONES[backbone.name] = backbone


def parse_spec(spec: str | ModelSpec) -> ModelSpec:
    """Validate a spec string and fill in the backbone's defaults."""
    if isinstance(spec, ModelSpec):
        spec = str(spec)
    m = _SPEC.match(spec.strip())
    if m is None:
        raise ValueError(f"bad model spec {spec!r}; expected backbone[:frame[+global_frame]][@preset], e.g. 'ecomformer:spframe_quaternion@jarvis_formation_energy'")
    name = m["backbone"]
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r} in {spec!r}; available: {sorted(BACKBONES)}")
    b = BACKBONES[name]
    frame = m["frame"] or b.default_frame
    if frame not in b.frames:
        raise ValueError(f"unknown frame {frame!r} for {name}; choose one of {b.frames}")
    global_frame = m["global_frame"]
    if frame in b.frames_with_global:
        global_frame = global_frame or b.default_global_frame
        if global_frame not in b.global_frames:
            raise ValueError(f"unknown global frame {global_frame!r}; choose one of {b.global_frames}")
    elif global_frame is not None:
        raise ValueError(f"frame {frame!r} of {name} uses no global frame, so '+{global_frame}' means nothing")
    preset = m["preset"] or b.default_preset
    if preset not in b.presets:
        raise ValueError(f"unknown preset {preset!r} for {name}; choose one of {tuple(b.presets)}")
    return ModelSpec(name, frame, global_frame, preset)


def build_model(spec: str | ModelSpec, **overrides) -> nn.Module:
    """Build the model a spec names; ``overrides`` replace settings of its preset. The model
    gets a ``spec`` attribute holding the canonical spec string."""
    parsed = parse_spec(spec)
    model = BACKBONES[parsed.backbone].builder(parsed, **overrides)
    model.spec = str(parsed)
    return model


def preset_training(spec: str | ModelSpec) -> dict:
    """The training settings stored with the spec's preset (a copy; empty if none): keys
    ``loss``, ``optimizer``, ``lr``, ``weight_decay``, ``scheduler`` ({``name``, ``pct_start`` or
    ``lr_end`` / ``power``}), ``epochs``, ``batch_size``; the training loop decides what to use."""
    import copy

    parsed = parse_spec(spec)
    return copy.deepcopy(dict(BACKBONES[parsed.backbone].training.get(parsed.preset, {})))


def available_specs() -> list[str]:
    """Every backbone:frame@preset combination (default global frames)."""
    out = []
    for b in BACKBONES.values():
        for frame in b.frames:
            for preset in b.presets:
                out.append(str(parse_spec(f"{b.name}:{frame}@{preset}")))
    return out


def _build_ecomformer(spec: ModelSpec, **overrides) -> nn.Module:
    from crystalframes.models.ecomformer import EComFormer, config_from_preset

    for key, value in (("frame", spec.frame), ("global_frame", spec.global_frame)):
        if key in overrides and overrides[key] != value:
            raise ValueError(f"{key} is part of the spec ({value!r}); write it there, not as an override")
        overrides.pop(key, None)
    if spec.global_frame is not None:
        overrides["global_frame"] = spec.global_frame
    return EComFormer(config_from_preset(spec.preset, frame=spec.frame, **overrides))


def _build_crystalformer(spec: ModelSpec, **overrides) -> nn.Module:
    from crystalframes.models.crystalformer import build_crystalformer

    if "frame" in overrides and overrides.pop("frame") != spec.frame:
        raise ValueError(f"frame is part of the spec ({spec.frame!r}); write it there, not as an override")
    return build_crystalformer(spec.frame, spec.preset, **overrides)


def _register_defaults() -> None:
    from crystalframes.frames import GLOBAL_FRAMES
    from crystalframes.models import ecomformer as ec

    register_backbone(
        Backbone(
            name="ecomformer",
            builder=_build_ecomformer,
            frames=ec.FRAMES,
            global_frames=tuple(GLOBAL_FRAMES),
            frames_with_global=ec.USES_GLOBAL_FRAME,
            presets={name: p.description for name, p in ec.PRESETS.items()},
            default_frame=ec.DEFAULT_FRAME,
            default_global_frame=ec.DEFAULT_GLOBAL_FRAME,
            default_preset=ec.DEFAULT_PRESET,
            training={name: p.training for name, p in ec.PRESETS.items()},
        )
    )
    from crystalframes.models import crystalformer as cf

    register_backbone(
        Backbone(
            name="crystalformer",
            builder=_build_crystalformer,
            frames=cf.FRAMES,
            global_frames=(),
            frames_with_global=(),
            presets={name: p.description for name, p in cf.CRYSTALFORMER_PRESETS.items()},
            default_frame=cf.DEFAULT_FRAME,
            default_global_frame="",
            default_preset=cf.DEFAULT_PRESET,
            training={name: p.training for name, p in cf.CRYSTALFORMER_PRESETS.items()},
        )
    )


_register_defaults()
