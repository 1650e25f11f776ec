"""Fine-tuning: ``train --init MODEL`` starts from a trained model's weights, with a fresh
output layer for another target, optional frozen parts, and clear errors when it cannot."""

from __future__ import annotations

import json

import pytest
import torch

from crystalframes.api import load_model, save_model_file
from crystalframes.data.normalise import TargetNormaliser
from crystalframes.io import UserError
from crystalframes.models import build_model
from crystalframes.train.config import load_config
from crystalframes.train.finetune import config_with_init, initialise_from

SPEC = "crystalformer:none@cpu_small"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(SPEC, num_targets=1).eval()
    path = tmp_path_factory.mktemp("base") / "model.pt"
    return save_model_file(path, model, model.spec, {"num_targets": 1}, TargetNormaliser(-1.0, 2.0), ["mp2018_e_form"], ["eV/atom"])


def fresh(cfg):
    torch.manual_seed(123)
    return build_model(cfg.model.spec, num_targets=1, **cfg.model.options)


def test_the_run_takes_the_init_models_spec_and_weights(base):
    cfg = config_with_init(load_config(None, [f"model.init={base}"]), {"model.init"})
    assert cfg.model.spec == SPEC
    model = fresh(cfg)
    said = initialise_from(model, cfg)
    reference = load_model(base).model.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items()) and "fresh" not in said


def test_another_target_gets_a_fresh_output_layer_unless_keep_head(base):
    reference = load_model(base).model.state_dict()
    for keep, same in ((False, False), (True, True)):
        cfg = config_with_init(load_config(None, [f"model.init={base}", "data.target=mp2018_gap", f"model.keep_head={str(keep).lower()}"]), set())
        model = fresh(cfg)
        initialise_from(model, cfg)
        last = [k for k in reference if k.startswith("head.")][-1]  # head.2.bias
        assert torch.equal(model.state_dict()[last], reference[last]) is same
        body = "layers.0.attention.q_proj.weight"
        assert torch.equal(model.state_dict()[body], reference[body])


def test_freeze_keeps_named_parts_fixed_and_names_the_parts_when_wrong(base):
    cfg = config_with_init(load_config(None, [f"model.init={base}", "model.freeze=[atom_embedding, layers.0]"]), set())
    model = fresh(cfg)
    said = initialise_from(model, cfg)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "atom_embedding.weight" in frozen and all(n.startswith(("atom_embedding", "layers.0.")) or n.endswith("rho_stats") for n in frozen)
    assert "froze layers.0" in said
    bad = config_with_init(load_config(None, [f"model.init={base}", "model.freeze=[layer.0]"]), set())
    with pytest.raises(UserError, match="names no parameter.*layers"):
        initialise_from(fresh(bad), bad)


def test_a_spec_that_cannot_start_from_the_init_model_is_refused(base):
    with pytest.raises(UserError, match="cannot start from it"):
        config_with_init(load_config(None, [f"model.init={base}", "model.spec=ecomformer:none@cpu_small"]), {"model.spec"})


def test_train_init_end_to_end_keeps_frozen_weights(run, base, demo_subset, tmp_path):
    data = demo_subset(60, 20)
    out = tmp_path / "tuned"
    code, _, err = run("train", "--init", base, "--set", f"data.source={data}", "--set", "trainer.epochs=1",
                       "--set", "trainer.threads=1", "--set", "model.freeze=[atom_embedding]", "--output", out)
    assert code == 0, err
    tuned = torch.load(out / "model.pt", weights_only=True)
    assert tuned["spec"] == SPEC
    start = load_model(base).model.state_dict()
    assert torch.equal(tuned["state_dict"]["atom_embedding.weight"], start["atom_embedding.weight"])
    assert not torch.equal(tuned["state_dict"]["layers.0.attention.q_proj.weight"], start["layers.0.attention.q_proj.weight"])
    assert json.loads((out / "metrics.json").read_text())["epochs_completed"] == 1
    card = (out / "model_card.md").read_text()
    assert SPEC in card and "started from" in card and "sha256" in card and "crystalframes train" in card
    assert f"{json.loads((out / 'metrics.json').read_text())['val']['mae']:.4f}" in card
    code, _, err = run("train", "--init", tmp_path / "nothing.pt", "--output", tmp_path / "x")
    assert code == 2 and "nothing.pt" in err and not (tmp_path / "x").exists()
