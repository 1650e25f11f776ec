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


# ---------------------------------------------------------------------------------------------
# The command line: inputs
# ---------------------------------------------------------------------------------------------


def _predict(folder, *args, stdin=b"", cache=None):
    """``crystalframes predict`` in a fresh interpreter (stdin given as bytes), as a shell runs it."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, COLUMNS="200", CRYSTALFRAMES_CACHE_DIR=str(cache or folder / "cache"))
    return subprocess.run([sys.executable, "-m", "crystalframes", "predict", *map(str, args)], cwd=folder,
                          input=stdin, capture_output=True, timeout=300, env=env)


def _rows(path):
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _nacl_dict_json(**extra) -> str:
    import json

    return json.dumps({**extra, "structure": nacl().as_dict()} if extra else nacl().as_dict())


def test_predict_reads_stdin_json_lines(gap_model):
    folder = gap_model.parent
    lines = [_nacl_dict_json(), '{"id": "rec", "lattice": [[4,0,0],[0,4,0],[0,0,4]], "species": ["Na", "Cl"], '
             '"frac_coords": [[0,0,0],[0.5,0.5,0.5]]}', "{broken"]
    result = _predict(folder, gap_model, "-", "-o", "stdin.csv", stdin="\n".join(lines).encode() + b"\n")
    assert result.returncode == 0, result.stderr.decode()
    rows = _rows(folder / "stdin.csv")
    assert [r["source"] for r in rows] == ["<stdin>:1", "<stdin>:2", "<stdin>:3"]
    assert [r["id"] for r in rows[:2]] == ["NaCl", "rec"] and "not valid JSON" in rows[2]["error"]


@pytest.mark.parametrize("fmt", ["cif", "poscar"])
def test_predict_reads_one_structure_from_stdin(gap_model, fmt):
    folder = gap_model.parent
    text = nacl().to(fmt=fmt) if fmt == "cif" else NACL_POSCAR
    result = _predict(folder, gap_model, "-", "-o", f"stdin_{fmt}.csv", stdin=text.encode())
    assert result.returncode == 0, result.stderr.decode()
    [row] = _rows(folder / f"stdin_{fmt}.csv")
    assert (row["id"], row["source"], row["formula"], row["error"]) == ("stdin", "<stdin>", "NaCl", "")


def test_predict_empty_stdin_is_one_clear_error(gap_model):
    result = _predict(gap_model.parent, gap_model, "-", "-o", "never.csv", stdin=b"  \n")
    assert result.returncode == 1
    assert "<stdin>: standard input is empty" in result.stderr.decode()
    assert not (gap_model.parent / "never.csv").exists()


def test_predict_reads_a_record_wrapping_a_structure_dict(gap_model):
    """``{"material_id", "structure": Structure.as_dict(), ...}``, as Materials Project exports are."""
    folder = gap_model.parent
    (folder / "mp.json").write_text(_nacl_dict_json(material_id="mp-22862", band_gap=5.0))
    result = _predict(folder, gap_model, "mp.json", "-o", "mp.csv")
    assert result.returncode == 0, result.stderr.decode()
    [row] = _rows(folder / "mp.csv")
    assert (row["formula"], row["error"]) == ("NaCl", "")


def _tiny_mp_2018_archive(path):
    """A two-record stand-in for the MEGNet archive (the member name and JARVIS record layout of
    the real one), so a registered name resolves to a small cached download."""
    import json
    import zipfile

    atoms = {"lattice_mat": [[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0]], "coords": [[0, 0, 0], [0.5, 0.5, 0.5]],
             "elements": ["Na", "Cl"], "cartesian": False}
    records = [{"id": f"mp-{i}", "atoms": atoms, "e_form": -1.0, "gap pbe": 4.0} for i in (1, 2)]
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("megnet.json", json.dumps(records))
    return path


def test_predict_takes_a_registered_dataset_name(gap_model, tmp_path):
    import subprocess
    import sys

    cache = tmp_path / "cache"
    env_fetch = [sys.executable, "-m", "crystalframes", "data", "fetch", "mp_2018", "--file",
                 str(_tiny_mp_2018_archive(tmp_path / "tiny.zip"))]
    import os

    fetched = subprocess.run(env_fetch, capture_output=True, timeout=300,
                             env=dict(os.environ, CRYSTALFRAMES_CACHE_DIR=str(cache)))
    assert fetched.returncode == 0, fetched.stderr.decode()
    result = _predict(tmp_path, gap_model, "megnet", "-o", "named.csv", cache=cache)  # an alias, as eval takes
    assert result.returncode == 0, result.stderr.decode()
    assert [r["id"] for r in _rows(tmp_path / "named.csv")] == ["mp-1", "mp-2"]


def test_predict_dataset_name_not_downloaded_says_how_to_fetch(gap_model, tmp_path):
    result = _predict(tmp_path, gap_model, "jarvis_dft_3d_2021", gap_model.parent / "NaCl.vasp", "-o", "some.csv")
    assert result.returncode == 0, result.stderr.decode()
    rows = _rows(tmp_path / "some.csv")
    assert "crystalframes data fetch jarvis_dft_3d_2021" in rows[1]["error"]
    assert rows[0]["formula"] == "NaCl"


def test_embedded_dataset_name_resolves_to_its_records():
    """The whole 5,955-structure demo takes minutes to predict: its resolution is checked here."""
    from itertools import islice

    from crystalframes.data.sources import iter_input_structures
    from crystalframes.io import Crystal

    first = list(islice(iter_input_structures("mp_demo"), 3))
    assert len(first) == 3 and all(isinstance(c, Crystal) for c in first)


def test_predict_does_not_leak_pymatgen_electronegativity_warnings(gap_model):
    """He has no Pauling electronegativity: pymatgen warns when it writes the formula."""
    import json

    folder = gap_model.parent
    record = {"id": "HeF", "lattice": [[4, 0, 0], [0, 4, 0], [0, 0, 4]], "species": ["He", "F"],
              "frac_coords": [[0, 0, 0], [0.5, 0.5, 0.5]]}
    (folder / "HeF.json").write_text(json.dumps(record))
    result = _predict(folder, gap_model, "HeF.json", "-o", "hef.csv")
    assert result.returncode == 0, result.stderr.decode()
    assert "electronegativity" not in result.stderr.decode()
    assert _rows(folder / "hef.csv")[0]["id"] == "HeF"


def test_predict_on_a_terminal_says_how_to_end_the_input(gap_model):
    """``-`` with standard input on a terminal: the hint first, then what is typed up to Ctrl-D."""
    import os
    import pty
    import subprocess
    import sys

    folder = gap_model.parent
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "crystalframes", "predict", str(gap_model), "-", "-o", "tty.csv"],
                                cwd=folder, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=dict(os.environ, CRYSTALFRAMES_CACHE_DIR=str(folder / "cache")))
        for line in NACL_POSCAR.splitlines(keepends=True):
            os.write(master, line.encode())
        os.write(master, b"\x04")  # Ctrl-D at the start of a line: end of input
        _, err = proc.communicate(timeout=300)
    finally:
        os.close(master)
        os.close(slave)
    assert proc.returncode == 0, err.decode()
    assert "reading structures from standard input (Ctrl-D to end)" in err.decode()
    assert _rows(folder / "tty.csv")[0]["formula"] == "NaCl"
