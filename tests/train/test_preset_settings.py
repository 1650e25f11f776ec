"""Every backbone x preset resolves to the settings recorded in ``files/preset_settings.json``:
the architecture (the model's config), the preset's published training settings, the task it
was published for, and the run config ``crystalframes train --model backbone@preset`` trains
with. The file was written by :func:`current_settings` before the training recipes moved out of
the model modules (issue 28), so the move, and any later one, changes none of them; a deliberate
change of a preset rewrites the file (``python tests/train/test_preset_settings.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

EXPECTED = Path(__file__).parent / "files" / "preset_settings.json"


def current_settings() -> dict:
    """backbone -> preset -> {description, architecture, training, task, run} as JSON values."""
    from crystalframes.models import BACKBONES, build_model
    from crystalframes.train.config import config_with_preset_training, explicit_keys, load_config
    from crystalframes.train.recipes import preset_task, preset_training

    out: dict = {}
    for name in ("crystalformer", "ecomformer", "schnet"):  # the shipped backbones
        backbone = BACKBONES[name]
        for preset, description in backbone.presets.items():
            spec = f"{name}@{preset}"
            sets = [f"model.spec={spec}"]
            out.setdefault(name, {})[preset] = {
                "description": description,
                "architecture": build_model(spec).config.as_dict(),
                "training": preset_training(spec),
                "task": preset_task(spec),
                "run": config_with_preset_training(load_config(None, sets), explicit_keys(None, sets)).model_dump(mode="json"),
            }
    return json.loads(json.dumps(out))  # tuples -> lists, as in the file


def flat(tree, prefix: str = "") -> dict:
    """``{"a": {"b": 1, "c": {}}}`` -> ``{"a.b": 1, "a.c": {}}`` (lists and empty mappings are values)."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out.update(flat(value, f"{prefix}.{key}" if prefix else key))
    return out


@pytest.fixture(scope="module")
def settings() -> tuple[dict, dict]:
    return flat(json.loads(EXPECTED.read_text())), flat(current_settings())


def test_every_preset_of_every_backbone_is_recorded(settings):
    expected, now = settings
    presets = lambda keys: sorted({".".join(k.split(".")[:2]) for k in keys})  # noqa: E731
    assert presets(now) == presets(expected)
    assert len(presets(expected)) >= 25 and any(k.startswith("schnet.cpu.") for k in expected)


@pytest.mark.parametrize("part", ["description", "architecture", "training", "task", "run"])
def test_each_setting_is_as_recorded(settings, part):
    expected, now = settings
    mine = {k: v for k, v in now.items() if k.split(".")[2] == part}
    recorded = {k: v for k, v in expected.items() if k.split(".")[2] == part}
    assert recorded, part
    missing, extra = sorted(set(recorded) - set(mine)), sorted(set(mine) - set(recorded))
    changed = [f"{k}: {recorded[k]!r} -> {mine[k]!r}" for k in sorted(set(recorded) & set(mine)) if recorded[k] != mine[k]]
    assert not (missing or extra or changed), f"missing {missing}; new {extra}; changed {changed}"


def test_a_changed_setting_is_reported_by_key():
    """The comparison itself: one changed value anywhere in the tree is one dotted key."""
    a = {"x": {"p": {"run": {"optim": {"lr": 1e-3, "betas": [0.9, 0.98]}}, "task": {}}}}
    b = json.loads(json.dumps(a))
    b["x"]["p"]["run"]["optim"]["lr"] = 5e-4
    fa, fb = flat(a), flat(b)
    assert [k for k in fa if fa[k] != fb[k]] == ["x.p.run.optim.lr"] and fa["x.p.task"] == {}


if __name__ == "__main__":
    EXPECTED.write_text(json.dumps(current_settings(), indent=1, sort_keys=True) + "\n")
