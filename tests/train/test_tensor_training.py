"""Training tensor targets: the metrics of train.tensor_metrics (by hand), tensor targets in
batches, the read-out settings, the graph store's refusal, and a tiny end-to-end training on
mp_dielectric's e_electronic (model file round trip, prediction CSV columns)."""

import csv
import json

import numpy as np
import pytest

from crystalframes.io.errors import InputError, UserError
from crystalframes.io.tensors import component_labels, tensor_columns, voigt_components, voigt_to_full
from crystalframes.train.tensor_metrics import derived_scalars, frobenius_errors, isotropic_part, relative_frobenius_errors, tensor_metrics

from tiny import cli, set_args


def _random_stiffness(rng):
    a = rng.normal(size=(6, 6))
    return voigt_to_full(a + a.T)


def _isotropic_stiffness(lam: float, mu: float) -> np.ndarray:
    """The full stiffness tensor of an isotropic solid with Lame constants ``lam`` and ``mu``."""
    voigt = np.zeros((6, 6))
    voigt[:3, :3] = lam
    voigt[np.arange(3), np.arange(3)] = lam + 2 * mu
    voigt[np.arange(3, 6), np.arange(3, 6)] = mu
    return voigt_to_full(voigt)


# -- metrics -----------------------------------------------------------------------------------

@pytest.mark.parametrize("rank", [2, 3, 4])
def test_a_perfect_prediction_has_zero_error_and_every_structure_within_every_threshold(rank):
    rng = np.random.default_rng(0)
    true = np.stack([voigt_to_full(rng.normal(size={2: (3, 3), 3: (3, 6), 4: (6, 6)}[rank])) for _ in range(5)])
    if rank == 2:
        true = (true + true.transpose(0, 2, 1)) / 2
    m = tensor_metrics(true.copy(), true, rank, train=true)
    assert m["frobenius"] == 0 and m["mae"] == 0
    assert m["ewt_25"] == m["ewt_10"] == m["ewt_5"] == 1.0
    assert set(m["component_mae"]) == set(component_labels(rank)) and not any(m["component_mae"].values())
    assert m["n"] == 5


def test_metrics_of_a_case_worked_by_hand():
    true = np.stack([2 * np.eye(3), 4 * np.eye(3)])  # norms sqrt(12), sqrt(48)
    pred = true.copy()
    pred[0, 2, 2] += 1.0  # error 1: relative 1 / sqrt(12) = 0.289, above 25 %
    pred[1, 2, 2] += 0.5  # error 0.5: relative 0.5 / sqrt(48) = 0.072, below 10 %, not below 5 %
    m = tensor_metrics(pred, true, 2, train=np.stack([np.diag([1.0, 2.0, 3.0]), np.diag([2.6, 2.0, 3.2])]))
    assert m["frobenius"] == pytest.approx(0.75)
    assert (m["ewt_25"], m["ewt_10"], m["ewt_5"]) == (0.5, 0.5, 0.0)
    assert m["component_mae"]["zz"] == pytest.approx(0.75) and m["component_mae"]["xx"] == 0
    assert m["mae"] == pytest.approx(0.75 / 6)
    # the training tensors' isotropic parts are 2 I and 2.6 I: the baseline predicts 2.3 I for both,
    # off by 0.3 sqrt(3) (15 % of 2 I) and 1.7 sqrt(3) (42.5 % of 4 I)
    b = m["isotropic_baseline"]
    assert b["frobenius"] == pytest.approx(np.sqrt(3))
    assert (b["ewt_25"], b["ewt_10"], b["ewt_5"]) == (0.5, 0.0, 0.0)


def test_derived_scalars_of_known_tensors():
    """trace / 3 of a dielectric tensor; K_VRH = lambda + 2 mu / 3 and G_VRH = mu of an isotropic
    stiffness (Voigt and Reuss bounds coincide); their MAE in the metrics; none for rank 3."""
    eps = np.diag([2.0, 3.0, 7.0])
    assert derived_scalars(eps[None], 2)["trace_over_3"] == pytest.approx([4.0])
    lam, mu = 60.0, 40.0
    c = _isotropic_stiffness(lam, mu)
    moduli = derived_scalars(c[None], 4)
    assert moduli["K_VRH"] == pytest.approx([lam + 2 * mu / 3]) and moduli["G_VRH"] == pytest.approx([mu])
    m = tensor_metrics(np.stack([c * 1.1, c]), np.stack([c, c]), 4)
    assert m["derived_mae"]["K_VRH"] == pytest.approx(0.05 * (lam + 2 * mu / 3))
    assert m["derived_mae"]["G_VRH"] == pytest.approx(0.05 * mu)
    assert derived_scalars(np.zeros((2, 3, 3, 3)), 3) == {} and "derived_mae" not in tensor_metrics(np.zeros((2, 3, 3, 3)), np.zeros((2, 3, 3, 3)), 3)


def test_relative_error_of_a_zero_tensor_is_zero_for_zero_and_infinite_otherwise():
    true = np.zeros((2, 3, 3, 3))
    pred = np.zeros((2, 3, 3, 3))
    pred[1, 0, 1, 1] = 1e-3
    assert list(relative_frobenius_errors(pred, true)) == [0.0, np.inf]
    assert list(frobenius_errors(pred, true)) == [0.0, 1e-3]


def test_isotropic_parts():
    rng = np.random.default_rng(1)
    eps = rng.normal(size=(3, 3))
    assert np.allclose(isotropic_part(eps[None], 2)[0], np.trace(eps) / 3 * np.eye(3))
    assert not isotropic_part(rng.normal(size=(2, 3, 3, 3)), 3).any()
    # an isotropic stiffness (Lame constants 3 and 2) is its own isotropic part ...
    iso = _isotropic_stiffness(3.0, 2.0)
    assert np.allclose(isotropic_part(iso[None], 4)[0], iso)
    # ... and the part of any stiffness is an orthogonal projection: what is left is orthogonal to both invariants
    c = _random_stiffness(rng)
    rest = c - isotropic_part(c[None], 4)[0]
    assert abs(np.einsum("iijj->", rest)) < 1e-12 and abs(np.einsum("ijij->", rest)) < 1e-12


def test_component_columns_follow_the_voigt_forms():
    assert tensor_columns("e_electronic", 2) == ["e_electronic_xx", "e_electronic_yy", "e_electronic_zz", "e_electronic_yz",
                                                 "e_electronic_xz", "e_electronic_xy"]
    assert tensor_columns("e", 3)[:7] == ["e_x_xx", "e_x_yy", "e_x_zz", "e_x_yz", "e_x_xz", "e_x_xy", "e_y_xx"]
    assert tensor_columns("C", 4)[:7] == ["C_xx_xx", "C_xx_yy", "C_xx_zz", "C_xx_yz", "C_xx_xz", "C_xx_xy", "C_yy_yy"]
    rng = np.random.default_rng(2)
    piezo = rng.normal(size=(3, 6))
    assert np.array_equal(voigt_components(voigt_to_full(piezo), 3), piezo.ravel())
    stiffness = rng.normal(size=(6, 6))
    stiffness = stiffness + stiffness.T
    assert np.array_equal(voigt_components(voigt_to_full(stiffness), 4), stiffness[np.triu_indices(6)])


# -- data and model ----------------------------------------------------------------------------

def test_a_batch_carries_the_full_tensor_of_a_tensor_target(nacl):
    import torch

    from crystalframes.data.batch import collate
    from crystalframes.data.graph import build_graph

    graphs = [build_graph(nacl) for _ in range(3)]
    graphs[0].targets["eps"] = 2 * np.eye(3)
    graphs[2].targets["eps"] = np.diag([1.0, 2.0, 3.0])
    batch = collate(graphs, ["eps"], dtype=torch.float64)
    assert batch.targets.shape == (3, 3, 3) and batch.targets.dtype == torch.float64
    assert torch.equal(batch.targets[2], torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)))
    assert torch.isnan(batch.targets[1]).all()  # a structure without the tensor


def test_a_graph_store_refuses_a_tensor_target_naming_it(tmp_path):
    from crystalframes.data.graph import GraphSettings
    from crystalframes.train.config import DataConfig
    from crystalframes.train.data import prepare_data

    with pytest.raises(InputError) as info:
        prepare_data(DataConfig(source="mp_dielectric", target="e_electronic", store=str(tmp_path / "store")), GraphSettings())
    message = str(info.value)
    assert "'e_electronic' is a tensor" in message and "data.store" in message and "\n" not in message


@pytest.mark.parametrize("spec, readout, problem", [("schnet:none@cpu_small", "local", "per-atom frame"),
                                                    ("crystalformer:none@cpu_small", "irreps", "neighbour edges")])
def test_a_read_out_the_backbone_cannot_run_is_a_clear_error(spec, readout, problem):
    from crystalframes.models.specs import build_model
    from crystalframes.train.config import load_config
    from crystalframes.train.run import tensor_model

    cfg = load_config(None, [f"model.spec={spec}", f"model.readout={readout}", "data.target=e_electronic"])
    with pytest.raises(UserError, match=problem) as info:
        tensor_model(cfg, build_model(spec, num_targets=1), rank=2)
    assert f"model.readout={readout}" in str(info.value)


def test_an_unknown_tensor_frame_is_refused_when_the_config_is_read():
    from crystalframes.train.config import load_config

    with pytest.raises(InputError, match="unknown tensor frame"):
        load_config(None, ["model.tensor_frame=polr_o3"])


# -- end to end --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tensor_data(shared_data):
    if not (shared_data / "tensors" / "dielectric_constant.csv.gz").exists():
        pytest.skip("../shared/data/tensors/dielectric_constant.csv.gz not found")
    return shared_data


TINY_TENSOR = ["data.source=mp_dielectric", "data.target=e_electronic", "data.max_train=48", "model.spec=schnet:none@cpu_small",
               "trainer.epochs=1", "trainer.batch_size=16", "trainer.threads=1", "trainer.deterministic=true",
               "optim.scheduler=constant"]


def test_a_tiny_tensor_training_runs_end_to_end(tensor_data, tmp_path, monkeypatch):
    import torch

    from crystalframes.api import load_model, save_model_file
    from crystalframes.data.sources import load_dataset
    from crystalframes.models.tensor_heads import TensorModel
    from crystalframes.train.config import load_config
    from crystalframes.train.data import full_tensor_target, heldout_part
    from crystalframes.train.run import train

    monkeypatch.setenv("CRYSTALFRAMES_SHARED_DATA", str(tensor_data))
    folder = tmp_path / "run"
    metrics = train(load_config(None, TINY_TENSOR), folder).metrics
    for split in ("val", "test"):
        m = metrics[split]
        assert m["frobenius"] > 0 and 0 <= m["ewt_5"] <= m["ewt_10"] <= m["ewt_25"] <= 1
        assert set(m["component_mae"]) == set(component_labels(2))
        assert m["isotropic_baseline"]["frobenius"] > 0
    # the test split's metrics are those of its prediction file
    rows = list(csv.DictReader(open(folder / "predictions_test.csv")))
    assert len(rows) == metrics["test"]["n"]
    assert np.mean([float(r["frobenius error"]) for r in rows]) == pytest.approx(metrics["test"]["frobenius"], rel=1e-4)
    # a study row of a tensor run (benchmarks/tensor_study.py): per-structure Frobenius errors,
    # the isotropic baseline in place of the mean baseline
    from crystalframes.train.study import row_of_run

    row = row_of_run(folder, "schnet:none@cpu_small", 0, [])
    assert row["test_mae"] == metrics["test"]["frobenius"]
    assert row["test_mean_baseline_mae"] == metrics["test"]["isotropic_baseline"]["frobenius"]
    assert row["test_abs_errors"] == pytest.approx([float(r["frobenius error"]) for r in rows], rel=1e-5)

    predictor = load_model(folder)
    assert isinstance(predictor.model, TensorModel) and predictor.model.settings() == {
        "kind": "dielectric", "readout": "global", "frame": "polar_o3"}
    assert predictor.normaliser.mean == 0 and predictor.normaliser.std > 0  # one scale, no shift
    test = heldout_part(load_dataset("mp_dielectric", target="e_electronic").crystals, "mp_dielectric", "e_electronic")
    assert [c.id for c in test] == [r["id"] for r in rows]
    pred = predictor.predict(test[:8])
    assert pred.shape == (8, 3, 3)
    written = np.array([[float(r[f"predicted {c}"]) for c in tensor_columns("e_electronic", 2)] for r in rows[:8]])
    assert np.allclose(voigt_components(pred, 2), written, rtol=1e-5, atol=1e-6)
    # saved again and loaded again: bit for bit the same predictions
    again = save_model_file(tmp_path / "again.pt", predictor.model, predictor.spec, predictor.options, predictor.normaliser,
                            predictor.targets, predictor.units)
    assert torch.equal(torch.as_tensor(load_model(again).predict(test[:8])), torch.as_tensor(pred))
    assert not np.allclose(full_tensor_target(test[0], "e_electronic"), 0)  # the targets reached the run

    # fine-tuning from it (train --init) starts from its backbone's weights
    from crystalframes.models.specs import build_model
    from crystalframes.train.finetune import initialise_from

    backbone = build_model("schnet:none@cpu_small", num_targets=1)
    said = initialise_from(backbone, load_config(None, TINY_TENSOR + [f"model.init={folder}"]))
    assert "backbone only" in said
    trained = predictor.model.backbone.state_dict()
    assert all(torch.equal(v, trained[k].to(v.dtype)) for k, v in backbone.state_dict().items() if not k.startswith("head."))

    # the command line: one column per Voigt component, in the input's Cartesian frame
    paths = []
    for i, c in enumerate(test[:3]):
        path = tmp_path / f"s{i}.vasp"
        _write_poscar(path, c)
        paths.append(str(path))
    out = tmp_path / "pred.csv"
    done = cli(tmp_path, "predict", str(folder), *paths, "-o", str(out))
    assert done.returncode == 0, done.stderr
    header, *lines = list(csv.reader(open(out)))
    assert header == ["id", "source", "formula", "n_atoms", *tensor_columns("e_electronic", 2), "error"]
    values = np.array([[float(x) for x in line[4:10]] for line in lines])
    assert np.allclose(values, voigt_components(predictor.predict(paths), 2), rtol=1e-5, atol=1e-6)
    assert np.allclose(values, voigt_components(pred[:3], 2), rtol=1e-5, atol=1e-5)  # POSCAR keeps the Cartesian frame

    # eval on the held-out part scores what the run scored on its test split
    done = cli(tmp_path, "eval", str(folder), "mp_dielectric", "--split", "heldout", "-o", str(tmp_path / "eval"))
    assert done.returncode == 0, done.stderr
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["n"] == metrics["test"]["n"]
    assert evaluated["frobenius"] == pytest.approx(metrics["test"]["frobenius"], rel=1e-6)
    assert evaluated["ewt_25"] == metrics["test"]["ewt_25"]


def _write_poscar(path, crystal):
    from pymatgen.core import Element, Lattice, Structure

    species = [Element.from_Z(int(z)) for z in crystal.atomic_numbers]
    Structure(Lattice(crystal.lattice), species, crystal.frac_coords).to(filename=str(path), fmt="poscar")


def test_the_train_command_stops_cleanly_on_a_read_out_the_backbone_cannot_run(tensor_data, tmp_path):
    done = cli(tmp_path, "train", *set_args(TINY_TENSOR + ["model.readout=local"]), "--output", str(tmp_path / "run"),
               CRYSTALFRAMES_SHARED_DATA=str(tensor_data))
    assert done.returncode != 0
    assert "model.readout=local" in done.stderr and "per-atom frame" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()  # a run that never started leaves no folder
