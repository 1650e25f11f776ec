"""After training: per-structure embeddings (the pooled features the output head sees, and
per-atom features on request) and ensembles (mean and standard deviation over members), from
the API and from ``crystalframes predict``."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from crystalframes.api import Ensemble, load_ensemble, load_model, save_model_file
from crystalframes.data.normalise import TargetNormaliser
from crystalframes.io import InputError
from crystalframes.models import build_model


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """Three untrained models of one spec (seeds 0, 1, 2) saved as model files."""
    folder = tmp_path_factory.mktemp("members")
    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = build_model("crystalformer:max@cpu_small").eval()
        paths.append(save_model_file(folder / f"m{seed}.pt", model, model.spec, {}, TargetNormaliser(-1.0, 2.0), ["e_form"], ["eV/atom"]))
    return paths


def test_embeddings_are_what_the_head_sees(members, nacl_and_skewed):
    predictor = load_model(members[0])
    pooled, atoms = predictor.embed(nacl_and_skewed, per_atom=True)
    assert pooled.shape == (2, 32) and [a.shape for a in atoms] == [(8, 32), (3, 32)]
    assert np.allclose(pooled, np.stack([a.mean(axis=0) for a in atoms]), atol=1e-6)
    head = predictor.model.head
    with torch.no_grad():
        out = predictor.normaliser.inverse(head(torch.as_tensor(pooled, dtype=torch.float32))).numpy()[:, 0]
    assert np.allclose(out, predictor.predict(nacl_and_skewed), atol=1e-5)
    assert np.array_equal(predictor.embed(nacl_and_skewed), pooled)


def test_an_ensemble_predicts_the_mean_and_the_spread_of_its_members(members, nacl_and_skewed):
    ensemble = load_ensemble(members)
    mean, std = ensemble.predict(nacl_and_skewed, return_std=True)
    each = np.stack([load_model(p).predict(nacl_and_skewed) for p in members])
    assert np.allclose(mean, each.mean(axis=0)) and np.allclose(std, each.std(axis=0, ddof=1))
    assert (std > 0).all()
    with pytest.raises(ValueError):
        Ensemble([load_model(members[0])])


def test_an_ensemble_refuses_members_of_other_targets(members, tmp_path):
    model = build_model("crystalformer:max@cpu_small").eval()
    other = save_model_file(tmp_path / "gap.pt", model, model.spec, {}, TargetNormaliser(0.0, 1.0), ["gap"], ["eV"])
    with pytest.raises(InputError, match="predicts"):
        load_ensemble([members[0], other])


def test_predict_writes_std_columns_and_embeddings(run, members, tmp_path):
    from pymatgen.core import Lattice, Structure

    cif = tmp_path / "NaCl.cif"
    Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(cif))
    out, npz = tmp_path / "pred.csv", tmp_path / "emb.npz"
    code, _, err = run("predict", members[0], cif, "--ensemble", members[1], "--ensemble", members[2], "-o", out,
                       "--embeddings", npz, "--atom-embeddings")
    assert code == 0, err
    (row,) = list(csv.DictReader(open(out)))
    assert float(row["e_form std (eV/atom)"]) > 0 and "e_form (eV/atom)" in row
    data = np.load(npz)
    assert data["ids"].tolist() == [row["id"]] and data["embeddings"].shape == (1, 32)
    assert data["atom_offsets"].tolist() == [0, int(row["n_atoms"])] and data["atom_features"].shape == (int(row["n_atoms"]), 32)
    code, _, err = run("predict", members[0], cif, "-o", tmp_path / "x.csv", "--atom-embeddings")
    assert code == 2 and "--atom-embeddings needs --embeddings" in err and not (tmp_path / "x.csv").exists()
