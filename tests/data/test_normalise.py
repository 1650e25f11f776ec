"""Target standardisation with training statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crystalframes.data import TargetNormaliser, make_split


def test_fit_is_population_mean_and_std():
    values = [1.0, 2.0, 3.0, 6.0]
    norm = TargetNormaliser.fit(values)
    assert float(norm.mean) == pytest.approx(3.0)
    assert float(norm.std) == pytest.approx(math.sqrt((4 + 1 + 0 + 9) / 4))  # ddof=0
    assert float(TargetNormaliser.fit(values, ddof=1).std) == pytest.approx(math.sqrt(14 / 3))
    z = norm.transform(np.array(values))
    assert z.mean() == pytest.approx(0.0, abs=1e-12) and z.std() == pytest.approx(1.0)


def test_fit_in_place_returns_self():
    norm = TargetNormaliser()
    assert float(norm.mean) == 0.0 and float(norm.std) == 1.0
    assert norm.fit([2.0, 4.0]) is norm
    assert (float(norm.mean), float(norm.std)) == (3.0, 1.0)


def test_numpy_round_trip():
    rng = np.random.default_rng(0)
    y = rng.normal(-1.2, 0.7, size=200)
    norm = TargetNormaliser.fit(y)
    assert np.allclose(norm.inverse(norm.transform(y)), y, atol=1e-12)
    assert np.allclose(norm.inverse_scale(np.ones(3)), norm.std)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_round_trip_keeps_dtype(dtype):
    norm = TargetNormaliser(-0.5, 2.0)
    y = torch.tensor([-3.0, 0.0, 1.5, 7.25], dtype=dtype)
    z = norm.transform(y)
    assert isinstance(z, torch.Tensor) and z.dtype == dtype
    assert torch.allclose(z, (y + 0.5) / 2.0)
    back = norm.inverse(z)
    assert back.dtype == dtype and torch.allclose(back, y)


def test_torch_gradients_flow():
    norm = TargetNormaliser(1.0, 4.0)
    z = torch.tensor([0.5, -0.5], requires_grad=True)
    norm.inverse(z).sum().backward()
    assert torch.allclose(z.grad, torch.full((2,), 4.0))


def test_multiple_targets_with_missing_values():
    y = np.array([[1.0, 10.0], [3.0, np.nan], [5.0, 30.0]])
    norm = TargetNormaliser.fit(y, names=["a", "b"])
    assert norm.num_targets == 2
    assert np.allclose(norm.mean, [3.0, 20.0])
    assert np.allclose(norm.std, [np.std([1, 3, 5]), 10.0])  # NaN ignored per column
    z = norm.transform(y)
    assert np.allclose(z[0], [(1 - 3) / np.std([1, 3, 5]), -1.0]) and np.isnan(z[1, 1])
    back = norm.inverse(torch.as_tensor(z))
    assert torch.allclose(back[[0, 2]], torch.as_tensor(y[[0, 2]]))


def test_constant_target_gets_std_one_with_warning():
    with pytest.warns(UserWarning, match="standard deviation is 0.0 .*using std = 1"):
        norm = TargetNormaliser.fit([2.5, 2.5, 2.5])
    assert (float(norm.mean), float(norm.std)) == (2.5, 1.0)
    assert np.allclose(norm.transform([2.5, 3.5]), [0.0, 1.0])


def test_bad_inputs():
    with pytest.raises(ValueError, match="no values"):
        TargetNormaliser.fit([np.nan, np.nan])
    with pytest.raises(ValueError, match="infinite"):
        TargetNormaliser.fit([1.0, np.inf])
    with pytest.raises(ValueError, match="std must be > 0"):
        TargetNormaliser(0.0, 0.0)
    with pytest.raises(ValueError, match="equal length"):
        TargetNormaliser([0.0, 1.0], [1.0])


def test_state_dict_survives_weights_only_load(tmp_path):
    norm = TargetNormaliser.fit(np.array([[1.0, -2.0], [2.0, 0.5], [4.0, 3.0]]))
    state = norm.state_dict()
    assert all(isinstance(v, float) for v in state["mean"] + state["std"])
    path = tmp_path / "ckpt.pt"
    torch.save({"normaliser": state, "weights": torch.zeros(2)}, path)
    loaded = torch.load(path, weights_only=True)
    again = TargetNormaliser.from_state_dict(loaded["normaliser"])
    assert again == norm
    single = TargetNormaliser(0.25, 3.0).state_dict()
    assert single == {"mean": 0.25, "std": 3.0}
    assert TargetNormaliser.from_state_dict(single) == TargetNormaliser(0.25, 3.0)
    with pytest.raises(ValueError, match="lacks 'std'"):
        TargetNormaliser.from_state_dict({"mean": 0.0})


def test_fit_on_train_only_differs_from_fit_on_everything(mp_sample):
    """The normaliser sees only what it is given: fit it on the train split."""
    target = "mp2018_e_form"
    parts = make_split(mp_sample, "field", target=target)
    train = np.array([c.targets[target] for c in parts["train"]])
    everything = np.array([c.targets[target] for part in parts.values() for c in part])
    on_train = TargetNormaliser.fit(train)
    on_all = TargetNormaliser.fit(everything)
    assert len(train) == 5481 and len(everything) == 5915
    assert float(on_train.mean) == pytest.approx(train.mean()) and float(on_train.std) == pytest.approx(train.std())
    assert float(on_train.mean) != pytest.approx(float(on_all.mean), abs=1e-6)
    assert float(on_train.std) != pytest.approx(float(on_all.std), abs=1e-6)
