"""Presets: named architectures of one backbone.

Presets belong to a backbone, not to a frame: every frame of a backbone runs at every one of its
presets (``crystalformer:max@mp_e_form``, ``ecomformer:none@mp_gap``). A preset names the fields
of the backbone's config dataclass it sets; how a preset is trained (optimiser, schedule, epochs,
batch size) and the task it was published for are the trainer's business, keyed by backbone and
preset name in :mod:`crystalframes.train.recipes`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class Preset:
    """Named settings of one backbone: ``model`` (fields of its config dataclass)."""

    name: str
    description: str
    model: dict


def presets_by_name(*presets: Preset) -> dict[str, Preset]:
    return {p.name: p for p in presets}


def config_from_preset(config_class, presets: dict[str, Preset], preset: str, label: str, **settings):
    """``config_class`` (a dataclass) at ``presets[preset]`` with ``settings`` (``frame=...`` and
    any other field) replacing fields; ValueError naming the backbone (``label``) for an unknown
    preset or setting. The per-backbone helpers (``crystalformer_config``, ``ecomformer_config``)
    take their arguments in this order: the preset, then the frame and overrides as keywords."""
    if preset not in presets:
        raise ValueError(f"unknown {label} preset {preset!r}; choose one of {tuple(presets)}")
    known = {f.name for f in fields(config_class)}
    bad = sorted(set(settings) - known)
    if bad:
        raise ValueError(f"unknown {label} option(s) {bad}; known: {sorted(known)}")
    return replace(config_class(**presets[preset].model), **settings)
