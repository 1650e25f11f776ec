import pytest

from crystalframes.io import InputError
from crystalframes.train.config import config_with_preset_training, explicit_keys, load_config
from crystalframes.train.module import lr_lambda


def test_defaults_and_overrides(tmp_path):
    cfg = load_config(None, ["trainer.epochs=3", "optim.lr=2e-4", "model.options={hidden: 16}", "data.max_train=10"])
    assert cfg.trainer.epochs == 3 and cfg.optim.lr == 2e-4 and cfg.model.options == {"hidden": 16}
    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  epochs: 7\nmodel:\n  spec: ecomformer:none@cpu_small\n")
    cfg = load_config(path, ["trainer.batch_size=8"])
    assert cfg.trainer.epochs == 7 and cfg.trainer.batch_size == 8 and cfg.model.spec == "ecomformer:none@cpu_small"
    assert explicit_keys(path, ["trainer.batch_size=8"]) == {"trainer.epochs", "model.spec", "trainer.batch_size"}


@pytest.mark.parametrize(
    "overrides, needle",
    [(["trainer.epochs=many"], "trainer.epochs"), (["trainer.nonsense=1"], "trainer.nonsense"), (["oops"], "key=value"),
     (["optim.loss=huber"], "optim.loss")],
)
def test_bad_config_names_the_problem(overrides, needle):
    with pytest.raises(InputError) as err:
        load_config(None, overrides)
    assert needle in str(err.value)


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("trainer: [unclosed\n")
    with pytest.raises(InputError, match="bad.yaml: not valid YAML"):
        load_config(path)
    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_preset_training_fills_only_what_the_user_did_not_set():
    cfg = load_config(None, ["model.spec=ecomformer:spframe_quaternion@jarvis_optb88vdw_bandgap", "trainer.epochs=2"])
    filled = config_with_preset_training(cfg, {"model.spec", "trainer.epochs"})
    # Hua & Lin, SPFrame, A.5, JARVIS OPT gap: polynomial 5e-4 -> 1e-5 (800 epochs, overridden here), L1, Adam
    assert filled.optim.scheduler == "polynomial" and filled.optim.lr == 5e-4 and filled.optim.lr_end == 1e-5
    assert filled.optim.loss == "l1" and filled.optim.optimizer == "adam" and filled.trainer.epochs == 2


def test_schedules():
    cfg = load_config(None, ["optim.scheduler=polynomial", "optim.lr=5e-4", "optim.lr_end=1e-5"]).optim
    f = lr_lambda(cfg, 100)
    assert f(0) == pytest.approx(1.0) and f(100) == pytest.approx(1e-5 / 5e-4) and f(50) == pytest.approx(0.5 + 0.5 * 0.02)
    inv = lr_lambda(load_config(None, ["optim.scheduler=inverse_sqrt"]).optim, 10**6)
    assert inv(0) == 1.0 and inv(12000) == pytest.approx(0.5)  # sqrt(4000 / 16000)


def test_default_run_is_spframe_on_the_embedded_demo_with_the_cpu_preset():
    """`crystalframes train` with no arguments: SPFrame on eComFormer, mp_2018_demo formation
    energy, the `cpu` preset's model (k = 16) and its 18-epoch OneCycle schedule."""
    cfg = config_with_preset_training(load_config(None), explicit_keys(None, []))
    assert cfg.model.spec == "ecomformer:spframe_quaternion@cpu"
    assert (cfg.data.source, cfg.data.target, cfg.data.split) == ("mp_2018_demo", "mp2018_e_form", "field")
    assert (cfg.trainer.epochs, cfg.trainer.batch_size, cfg.optim.scheduler, cfg.optim.loss) == (18, 32, "onecycle", "l1")
    from crystalframes.models import build_model

    model = build_model(cfg.model.spec)
    assert model.config.k == 16 and model.config.hidden == 64 and model.config.frame == "spframe_quaternion"


def test_unknown_setting_names_the_closest_one():
    with pytest.raises(InputError) as err:
        load_config(None, ["trainer.epoch=1"])
    assert "unknown setting trainer.epoch; did you mean trainer.epochs?" in str(err.value)
    with pytest.raises(InputError, match="did you mean data.source"):
        load_config(None, ["data.sourc=x"])
    with pytest.raises(InputError, match="did you mean trainer.epochs"):
        load_config(None, ["epochs=3"])


def test_unknown_setting_in_a_config_file_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  batch_sise: 8\n")
    with pytest.raises(InputError, match=r"c.yaml: unknown setting trainer.batch_sise; did you mean trainer.batch_size\?"):
        load_config(path)


@pytest.mark.parametrize(
    "setting",
    ["trainer.batch_size=0", "trainer.epochs=0", "trainer.epochs=-3", "optim.lr=0", "optim.lr=-1e-3", "optim.lr=.nan",
     "optim.lr=.inf", "optim.warmup_steps=0", "optim.pct_start=1.5", "optim.betas=[0.9, 1.5]", "optim.grad_clip=0",
     "trainer.seed=-1", "trainer.threads=0", "trainer.devices=0", "trainer.checkpoint_every_n_steps=0",
     "trainer.log_every_n_steps=0", "trainer.max_time_minutes=-1", "data.val_ratio=1.5", "data.max_train=0",
     "trainer.progress_seconds=0", "optim.swa_epochs=-1"],
)
def test_every_numeric_setting_is_range_checked(setting):
    with pytest.raises(InputError) as err:
        load_config(None, [setting])
    assert setting.split("=")[0] in str(err.value)


def test_a_bad_model_spec_is_a_config_error():
    with pytest.raises(InputError, match=r"model.spec: .*unknown frame 'nonsense'"):
        load_config(None, ["model.spec=ecomformer:nonsense"])
