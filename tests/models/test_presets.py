"""Presets belong to a backbone: every frame runs at every preset, and every training key a preset
publishes is either used by the trainer or declared informational (never dropped silently)."""

from __future__ import annotations

import pytest

from crystalframes.models.specs import BACKBONES, parse_spec
from crystalframes.train.recipes import (
    INFORMATIONAL_TRAINING_KEYS,
    RECIPES,
    USED_TRAINING_KEYS,
    Recipe,
    flat_training_keys,
    preset_task,
    preset_training,
)


def test_every_frame_parses_at_every_preset_of_every_backbone_that_provides_its_needs():
    from crystalframes.frames import FRAMES, frame_names
    from crystalframes.models import SpecError

    refused = 0
    for backbone in BACKBONES.values():
        for frame in frame_names():
            for preset in backbone.presets:
                if FRAMES[frame].needs <= backbone.provides:
                    assert parse_spec(f"{backbone.name}:{frame}@{preset}").preset == preset
                else:
                    missing = sorted(FRAMES[frame].needs - backbone.provides)
                    with pytest.raises(SpecError, match=f"needs {', '.join(missing)}, which backbone {backbone.name} does not provide"):
                        parse_spec(f"{backbone.name}:{frame}@{preset}")
                    refused += 1
    assert refused  # schnet has no attention


def test_crystalframer_at_a_task_preset_gets_the_published_settings():
    """``crystalformer:max@mp_e_form`` was rejected although its settings existed."""
    from crystalframes.train.config import config_with_preset_training, explicit_keys, load_config

    sets = ["model.spec=crystalformer:max@mp_e_form"]
    cfg = config_with_preset_training(load_config(None, sets), explicit_keys(None, sets))
    assert (cfg.trainer.epochs, cfg.trainer.batch_size) == (500, 128)
    assert (cfg.optim.scheduler, cfg.optim.warmup_steps, cfg.optim.lr) == ("inverse_sqrt", 4000, 5e-4)
    assert (cfg.optim.grad_clip, cfg.optim.swa_epochs, cfg.optim.betas) == (1.0, 50, (0.9, 0.98))


def test_every_published_training_key_is_used_or_declared():
    seen = set()
    for backbone in BACKBONES.values():
        for preset in backbone.presets:
            keys = flat_training_keys(preset_training(f"{backbone.name}@{preset}"))
            seen.update(keys)
            assert all(k in USED_TRAINING_KEYS or k in INFORMATIONAL_TRAINING_KEYS for k in keys), (backbone.name, preset, keys)
    # the keys the issue found dropped are now accounted for, and each used key fills a real setting
    assert {"no_decay_on", "standardise_targets", "scheduler.interval", "scheduler.formula"} <= seen
    from crystalframes.train.config import RunConfig

    for dotted in USED_TRAINING_KEYS.values():
        section, key = dotted.split(".")
        assert key in RunConfig.model_fields[section].annotation.model_fields, dotted


def test_an_unknown_training_key_is_an_error_where_the_recipe_is_defined():
    with pytest.raises(ValueError, match="warmup.*neither used nor declared"):
        Recipe({"lr": 1e-3, "warmup": 100})
    with pytest.raises(ValueError, match="scheduler.gamma"):
        Recipe({"scheduler": {"name": "onecycle", "gamma": 0.5}})
    with pytest.raises(ValueError, match="unknown task key"):
        Recipe({}, {"datset": "mp_2018"})


def test_every_shipped_preset_has_a_recipe_and_every_recipe_a_preset():
    """The architectures (models/) and their recipes (train/recipes.py) are keyed alike."""
    shipped = {"crystalformer", "ecomformer", "schnet"}
    assert shipped <= set(RECIPES)
    for name in shipped:
        assert set(RECIPES[name]) == set(BACKBONES[name].presets), name


def test_numbers_a_preset_description_states_are_its_recipe():
    """Descriptions that quote epochs or a batch size ("500 epochs, batch 128") quote the recipe."""
    import re

    quoted = 0
    for backbone in BACKBONES.values():
        for preset, description in backbone.presets.items():
            training, task = preset_training(f"{backbone.name}@{preset}"), preset_task(f"{backbone.name}@{preset}")
            for number in re.findall(r"(\d+) epochs", description):
                assert int(number) == training["epochs"], (backbone.name, preset)
                quoted += 1
            for number in re.findall(r"batch (\d+)", description):
                assert int(number) == training["batch_size"], (backbone.name, preset)
            if task and backbone.name == "crystalformer" and "scripts:" in description:
                assert f"{task['dataset']} {task['target']}," in description, (backbone.name, preset)
    assert quoted >= 10


def test_a_backbone_without_recipes_trains_with_the_run_defaults():
    from crystalframes.models import register_backbone
    from crystalframes.models.presets import Preset
    from crystalframes.models.schnet import SchNet, SchNetConfig
    from crystalframes.models.specs import backbone_of

    register_backbone(backbone_of("toy_no_recipe", SchNet, SchNetConfig, {"cpu_small": Preset("cpu_small", "test size", {})},
                                  "none", "cpu_small"))
    try:
        assert preset_training("toy_no_recipe@cpu_small") == {} and preset_task("toy_no_recipe@cpu_small") == {}
    finally:
        del BACKBONES["toy_no_recipe"]


@pytest.mark.parametrize("spec", ["crystalformer:max@mp_e_form", "crystalformer:static@jarvis_mbj_bandgap", "ecomformer:none@mp_gap"])
def test_task_presets_build_with_any_frame(spec):
    from crystalframes.models import build_model, num_parameters

    model = build_model(spec)
    assert model.spec == str(parse_spec(spec)) and num_parameters(model) > 100_000


def test_an_option_renamed_since_a_model_file_was_written_still_loads_under_its_old_name(tmp_path, nacl_and_skewed):
    """Crystalformer's width was ``model_dim`` before every backbone called it ``hidden``
    (Backbone.option_aliases): a model file or run config that says ``model_dim`` builds the same
    model, and an old and a new name that disagree are an error."""
    import torch

    from crystalframes.api import load_model, save_model_file
    from crystalframes.data.normalise import TargetNormaliser
    from crystalframes.models import SpecError, build_model
    from crystalframes.models.specs import check_options
    from crystalframes.testing import predict

    spec = "crystalformer:max@cpu_small"
    torch.manual_seed(0)
    model = build_model(spec, hidden=16).double().eval()
    assert model.config.hidden == 16 and build_model(spec, model_dim=16).config == model.config
    check_options(spec, {"model_dim": 16})
    with pytest.raises(SpecError, match="old name of 'hidden'"):
        build_model(spec, model_dim=16, hidden=32)
    path = save_model_file(tmp_path / "old.pt", model, spec, {"model_dim": 16}, TargetNormaliser(0.0, 1.0), ["y"], ["eV"])
    loaded = load_model(path)
    assert loaded.model.config.hidden == 16
    assert torch.equal(predict(loaded.model, nacl_and_skewed), predict(model, nacl_and_skewed))
