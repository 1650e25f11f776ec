"""A non-finite training loss stops the run without a host read at every step: the module checks
a device-side flag every log_every_n_steps, at the epoch end, before validation and before any
checkpoint is written, and still names the step whose loss went bad and that step's structures."""

import pytest
import torch

from tiny import tiny_config


@pytest.fixture
def nan_at(monkeypatch):
    """``nan_at(k)``: the training loss of global step k becomes NaN; returns the record of what
    the steps saw: the ids of step k's batch and every trained global step."""
    from crystalframes.train.module import PropertyModule

    def make(k: int) -> dict:
        seen = {"ids": None, "steps": []}
        original = PropertyModule._step

        def step(self, batch):
            pred, target = original(self, batch)
            if self.training:
                seen["steps"].append(self.global_step)
                if self.global_step == k:
                    seen["ids"] = list(batch.ids)
                    pred = pred * float("nan")
            return pred, target

        monkeypatch.setattr(PropertyModule, "_step", step)
        return seen

    return make


def _finite_weights(path) -> bool:
    from crystalframes.train.folder import load_checkpoint

    state = load_checkpoint(path)["state_dict"]
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def test_nan_at_step_k_names_that_step_after_a_later_check(tiny_data, tmp_path, nan_at):
    from crystalframes.train.module import NonFiniteLossError
    from crystalframes.train.run import train

    seen = nan_at(3)  # the first batch of the second epoch (3 batches an epoch)
    cfg = tiny_config(tiny_data, 3, "trainer.log_every_n_steps=50")
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg, tmp_path / "run")
    message = str(info.value)
    # detected later (steps 4 and 5 ran with the NaN weights), reported for step 3
    assert max(seen["steps"]) > 3
    assert "at epoch 1, step 3;" in message and "nan" in message
    assert seen["ids"] and all(i in message for i in seen["ids"])
    # checkpoints of epoch 0 only, with finite weights
    for name in ("last.ckpt", "best.ckpt"):
        from crystalframes.train.folder import load_checkpoint

        path = tmp_path / "run" / "checkpoints" / name
        assert load_checkpoint(path)["global_step"] == 3 and _finite_weights(path)


def test_no_checkpoint_is_written_after_the_nan_step(tiny_data, tmp_path, nan_at):
    from crystalframes.train.folder import load_checkpoint
    from crystalframes.train.module import NonFiniteLossError
    from crystalframes.train.run import train

    seen = nan_at(4)
    # `last` after every step: the save after step 4 is the first that would hold NaN weights
    cfg = tiny_config(tiny_data, 3, "trainer.checkpoint_every_n_steps=1", "trainer.log_every_n_steps=50")
    with pytest.raises(NonFiniteLossError, match="at epoch 1, step 4;"):
        train(cfg, tmp_path / "run")
    assert seen["steps"][-1] == 4  # stopped by the save right after the NaN step
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert load_checkpoint(last)["global_step"] == 4 and _finite_weights(last)


def test_finite_losses_are_read_at_the_logging_interval_only(tiny_data, tmp_path):
    """3 epochs of 3 steps, logging every 2: the module reads its flag at the interval, before
    validation, at the epoch end and before checkpoints, never once a step; the progress
    lines show the loss of the last check."""
    from crystalframes.profiling import StepCounter
    from crystalframes.train.module import PropertyModule
    from crystalframes.train.run import train

    checks = []
    original = PropertyModule.check_finite_loss

    def check(self):
        checks.append((self.trainer.global_step, bool(self._recent)))
        return original(self)

    cfg = tiny_config(tiny_data, 3, "trainer.log_every_n_steps=2")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PropertyModule, "check_finite_loss", check)
        with StepCounter() as count:
            train(cfg, tmp_path / "run")
    reads_of_flag = sum(n for where, n in count.where.items() if "train/module.py" in where and "tolist" in where)
    assert reads_of_flag == sum(pending for _, pending in checks)  # one read per check with steps pending
    assert 0 < reads_of_flag < 9  # fewer than the 9 steps
    # the progress lines read the epoch's mean loss and val_mae once an epoch, nothing a step
    assert sum(n for where, n in count.where.items() if "train/progress.py" in where) <= 2 * 3


def test_a_nan_on_another_rank_stops_this_rank_too():
    """At a check, the ranks agree (Lightning's reduce_boolean_decision): a rank whose own losses
    are finite stops with the others instead of waiting in the next collective forever."""
    from types import SimpleNamespace

    from crystalframes.data.normalise import TargetNormaliser
    from crystalframes.train.config import OptimConfig
    from crystalframes.train.module import NonFiniteLossError, PropertyModule

    module = PropertyModule(torch.nn.Linear(1, 1), TargetNormaliser(0.0, 1.0), OptimConfig(), 10)
    decisions = []

    def another_rank_says_yes(decision, all=True):
        decisions.append((decision, all))
        return True

    strategy = SimpleNamespace(reduce_boolean_decision=another_rank_says_yes)
    module._trainer = SimpleNamespace(strategy=strategy, current_epoch=0, global_step=1, log_every_n_steps=50)
    module._watch_loss(torch.tensor(0.5), SimpleNamespace(ids=["a"]))
    with pytest.raises(NonFiniteLossError, match="another process"):
        module.check_finite_loss()
    assert decisions == [(False, False)]  # this rank's own losses were finite
