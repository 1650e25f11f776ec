"""What ``predict`` (CLI and Python API) accepts and returns: dataset names, pymatgen
``Structure.as_dict()`` JSON, standard input, per-structure errors in the API, and band gaps
clipped at 0 with the raw value kept."""

from __future__ import annotations

import numpy as np
import pytest

from tests.integration.test_cli_hygiene import NACL_POSCAR

GAP = "mp2018_gap_pbe"


@pytest.fixture(scope="module")
def gap_model(tmp_path_factory):
    """A tiny untrained band-gap model whose normaliser mean of -10 makes every prediction
    negative (an untrained head outputs about 0 in normalised units)."""
    import torch

    from crystalframes.api import save_model_file
    from crystalframes.data.normalise import TargetNormaliser
    from crystalframes.models import build_model

    folder = tmp_path_factory.mktemp("gap")
    torch.manual_seed(0)
    model = build_model("ecomformer:spframe_quaternion")
    path = save_model_file(folder / "model.pt", model, model.spec, {}, TargetNormaliser(-10.0, 1.0), [GAP], ["eV"])
    (folder / "NaCl.vasp").write_text(NACL_POSCAR)
    return path


def nacl():
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_band_gap_is_clipped_at_zero_and_raw_on_request(gap_model):
    from crystalframes.api import load_model

    predictor = load_model(gap_model)
    raw = predictor.predict([nacl()], clip=False)
    assert raw.shape == (1,) and raw[0] < -1, raw  # the model's own value: negative
    assert predictor.predict([nacl()]).tolist() == [0.0]


def test_clip_leaves_targets_that_can_be_negative(tmp_path):
    from crystalframes.api import clip_nonnegative
    from crystalframes.data.datasets import DATASETS, target_is_nonnegative

    values = np.array([[-1.0, -2.0, np.nan], [3.0, -0.001, -4.0]])
    clipped = clip_nonnegative(values, ["mp2018_e_form", "gap pbe", "K_VRH"])
    np.testing.assert_array_equal(clipped, [[-1.0, 0.0, np.nan], [3.0, 0.0, 0.0]])
    assert values[0, 1] == -2.0  # a copy
    # every registered target is decided: gaps and moduli clip, energies and log10 moduli do not
    decided = {t: target_is_nonnegative(t) for info in DATASETS.values() for t in info.targets}
    assert decided["mbj_bandgap"] and decided["bulk_modulus_kv"] and decided["ehull"]
    assert not decided["formation_energy_peratom"] and not decided["log10_K_VRH"] and not decided["e_form"]


def test_api_collects_per_structure_errors(gap_model, tmp_path):
    from crystalframes.api import Predictions, load_model
    from crystalframes.io import InputError

    predictor = load_model(gap_model)
    from pymatgen.core import Lattice, Structure

    # Og (Z = 118) is beyond the model's element table: a model-side error, not a reading one
    og = Structure(Lattice.cubic(5.0), ["Og"], [[0, 0, 0]])
    inputs = [nacl(), str(tmp_path / "missing.cif"), og, nacl()]
    with pytest.raises(InputError, match="missing.cif"):
        predictor.predict(inputs)
    result = predictor.predict(inputs, errors="collect", clip=False)
    assert isinstance(result, Predictions)
    assert result.values.shape == (4,)
    assert np.isfinite(result.values[[0, 3]]).all() and np.isnan(result.values[[1, 2]]).all()
    assert result.values[0] == pytest.approx(predictor.predict([nacl()], clip=False)[0])
    assert sorted(result.errors) == [1, 2] and result.ok.tolist() == [True, False, False, True]
    assert "missing.cif" in str(result.errors[1]) and "Og" in result.errors[2].problem
    with pytest.raises(ValueError, match="errors"):
        predictor.predict(inputs, errors="ignore")


def test_ensemble_collects_errors_with_std(gap_model, tmp_path):
    from crystalframes.api import load_ensemble

    ensemble = load_ensemble([gap_model, gap_model])
    result = ensemble.predict([nacl(), str(tmp_path / "missing.cif")], errors="collect", return_std=True)
    assert result.values[0] == 0.0 and np.isnan(result.values[1])  # clipped mean
    assert result.std is not None and result.std[0] == pytest.approx(0.0) and np.isnan(result.std[1])
    assert list(result.errors) == [1]
    mean, std = ensemble.predict([nacl()], return_std=True, clip=False)
    assert mean[0] < -1 and std.shape == (1,)
