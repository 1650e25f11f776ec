"""`crystalframes predict`, `eval` and `check` with hostile inputs: one bad structure never costs
the good ones, nothing is half-written, every mistake is one clear line (no traceback, no hang).

The model is a freshly initialised small eComFormer saved as a portable model file: loading and
predicting do not care whether it was trained."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

SRC = Path(__file__).resolve().parents[2] / "src"
TARGET = "mp2018_e_form"
SPEC = "ecomformer:none@cpu_small"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    import torch

    from crystalframes.api import save_model_file
    from crystalframes.data.normalise import TargetNormaliser
    from crystalframes.models import build_model

    torch.manual_seed(0)
    options = {"hidden": 16, "scalars": 8, "vectors": 2, "rbf_bins": 16}
    model = build_model(SPEC, **options)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    return save_model_file(path, model, model.spec, options, TargetNormaliser(-1.0, 1.0), [TARGET], ["eV/atom"])


def write(path, species, coords, a=5.0):
    Structure(Lattice.cubic(a), species, coords).to(filename=str(path), fmt="poscar" if "POSCAR" in path.name else "cif")
    return str(path)


@pytest.fixture
def good(tmp_path):
    return write(tmp_path / "NaCl.cif", ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]], 5.64)


def rows_of(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def cli(*args, timeout=120, **kw):
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "crystalframes", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, **kw)


def assert_clean(proc_or_err, code=2):
    err = proc_or_err if isinstance(proc_or_err, str) else proc_or_err.stderr
    assert "Traceback" not in err, err[-3000:]
    if not isinstance(proc_or_err, str):
        assert proc_or_err.returncode == code, (proc_or_err.returncode, err[-3000:])


# --- defect 1: elements the model cannot encode --------------------------------------------


def test_unencodable_elements_are_per_structure_errors_and_the_good_ones_are_predicted(run, model_file, good, tmp_path):
    """A POSCAR with Og Ts Pu among good files used to abort the batch (no CSV at all)."""
    heavy = write(tmp_path / "POSCAR", ["Og", "Ts", "Pu"], [[0, 0, 0], [0.5, 0.5, 0.5], [0, 0.5, 0.5]])
    out = tmp_path / "p.csv"
    code, _, err = run("predict", str(model_file), good, heavy, str(tmp_path / "missing.cif"), "-o", str(out), "--batch-size", "8")
    assert code == 0, err
    assert_clean(err)
    rows = rows_of(out)
    assert [r["formula"] for r in rows if not r["error"]] == ["NaCl"]
    bad = {Path(r["source"]).name: r["error"] for r in rows if r["error"]}
    assert "Og (Z=118)" in bad["POSCAR"] and "Ts (Z=117)" in bad["POSCAR"] and "missing.cif" in bad
    # the one-line summary: how many predicted, how many failed, where the errors are
    assert "1 of 3 structure(s) predicted" in err.splitlines()[-1] and "2 failed" in err.splitlines()[-1]
    assert "error' column" in err.splitlines()[-1]


def test_api_and_check_name_the_structure_with_unencodable_elements(run, model_file, good, tmp_path):
    from crystalframes.api import load_model
    from crystalframes.io import InputError

    heavy = write(tmp_path / "POSCAR", ["Og", "Ts", "Pu"], [[0, 0, 0], [0.5, 0.5, 0.5], [0, 0.5, 0.5]])
    predictor = load_model(model_file)
    with pytest.raises(InputError, match="POSCAR.*Og"):
        predictor.predict([good, heavy])
    kept, pred, errors = predictor.predict_each([predictor_read(good), predictor_read(heavy)])
    assert [c.formula for c in kept] == ["NaCl"] and pred.shape == (1, 1) and len(errors) == 1
    # Es (Z = 99) is fine for eComFormer but not for Crystalformer (Z <= 98)
    einsteinium = write(tmp_path / "Es.cif", ["Es"], [[0, 0, 0]], 4.0)
    code, out, err = run("check", "crystalformer:none@cpu_small", good, einsteinium, "--trials", "1", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert [s["id"] for s in report["structures"]] == ["NaCl"]
    assert any("Es (Z=99)" in e for e in report["bad_inputs"])


def predictor_read(path):
    from crystalframes.io import read_structure

    return read_structure(path)


# --- predict: nothing predicted, --device ----------------------------------------------------


def test_predict_exits_non_zero_when_nothing_could_be_predicted(run, model_file, tmp_path):
    out = tmp_path / "p.csv"
    out.write_text("previous results\n")
    bad = tmp_path / "broken.cif"
    bad.write_text("data_x\n_cell_length_a 3\n")
    code, _, err = run("predict", str(model_file), str(bad), str(tmp_path / "missing.cif"), "-o", str(out))
    assert code == 1
    assert_clean(err)
    last = err.strip().splitlines()[-1]
    assert "nothing predicted" in last and "2 input(s) failed" in last
    assert "broken.cif" in err and "missing.cif" in err
    assert out.read_text() == "previous results\n"  # a run that predicted nothing replaces nothing


def test_predict_device_option(run, model_file, good, tmp_path):
    code, _, err = run("predict", str(model_file), good, "--device", "cpu", "-o", str(tmp_path / "p.csv"))
    assert code == 0, err
    for device in ("gpu7", "cuda:99", "tpu"):
        if device == "cuda:99" and __import__("torch").cuda.device_count() > 99:
            continue
        code, _, err = run("predict", str(model_file), good, "--device", device, "-o", str(tmp_path / "q.csv"))
        assert code == 2 and "--device" in err, (device, err)
        assert_clean(err)
    assert not (tmp_path / "q.csv").exists()


# --- defect 2: non-UTF-8 file names ----------------------------------------------------------


def test_a_non_utf8_file_name_keeps_every_result(model_file, good, tmp_path):
    """predict used to fail with UnicodeEncodeError while writing the CSV: all results lost."""
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/x_\xe9.cif"))
    Structure(Lattice.cubic(4.2), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(odd))
    out = tmp_path / "p.csv"
    proc = cli("predict", model_file, good, odd, "-o", out)
    assert_clean(proc, 0)
    rows = rows_of(out)  # valid UTF-8
    assert sorted(r["formula"] for r in rows) == ["MgO", "NaCl"] and not any(r["error"] for r in rows)
    assert any("x_\\xe9.cif" in r["source"] for r in rows)  # the readers' printable name


# --- defect 10: numeric options ----------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["predict", "{model}", "{good}", "--batch-size", "-5"],
    ["predict", "{model}", "{good}", "--batch-size", "0"],
    ["eval", "{model}", "{good}", "--batch-size", "0"],
    ["check", SPEC, "{good}", "--trials", "-1"],
    ["check", SPEC, "{good}", "--trials", "0"],
    ["check", SPEC, "{good}", "--dtype", "foo"],
])
def test_bad_numbers_and_dtypes_are_usage_errors(run, model_file, good, tmp_path, args):
    """--batch-size -5 used to write a header-only CSV and exit 0; --trials -1 reported zero
    error without rotating anything; --dtype foo was an AttributeError traceback."""
    args = [a.format(model=model_file, good=good) for a in args]
    code, out, err = run(*args, "-o" if args[0] != "check" else "--json", *([str(tmp_path / "o")] if args[0] != "check" else []))
    assert code == 2, (out, err)
    assert_clean(err)
    assert args[-2] in err
    assert not (tmp_path / "o").exists()


# --- bad specs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("args, says", [
    (["check", "ecomformer:nonsense", "{good}"], "unknown frame 'nonsense'"),
    (["check", "ecomformr:none", "{good}"], "did you mean 'ecomformer'"),
    (["check", "no_such_model_or_spec", "{good}"], "not a pretrained model name, a model file, a run folder or a model spec"),
    (["symmetry", "{good}", "--frame", "nonsense"], "unknown frame 'nonsense'"),
    (["symmetry", "{good}", "--model", "ecomformer:nonsense"], "unknown frame 'nonsense'"),
])
def test_bad_specs_are_one_line(run, good, args, says):
    code, out, err = run(*[a.format(good=good) for a in args])
    assert code == 2 and says in err, err
    assert_clean(err)
    assert len(err.strip().splitlines()) == 1


def test_unknown_model_options_name_the_known_ones():
    from crystalframes.models import SpecError, build_model

    with pytest.raises(SpecError, match="did you mean 'hidden'.*known options:.*rbf_bins"):
        build_model(SPEC, hiden=64)
    with pytest.raises(SpecError, match="did you mean 'num_heads'"):
        build_model("crystalformer:none@cpu_small", num_head=2)
    with pytest.raises(ValueError):  # still a ValueError for code that catches those
        build_model("ecomformer:nonsense")


# --- defect 12: outputs that are not what they should be; named pipes ---------------------------


def test_predict_into_a_folder_and_eval_into_a_file_are_refused(run, model_file, good, tmp_path):
    folder = tmp_path / "outdir"
    (folder / "keep").mkdir(parents=True)
    code, _, err = run("predict", str(model_file), good, "-o", str(folder))
    assert code == 2 and "is a folder" in err
    assert_clean(err)
    assert [p.name for p in folder.iterdir()] == ["keep"]
    file = tmp_path / "eval.txt"
    file.write_text("mine\n")
    code, _, err = run("eval", str(model_file), "mp_2018_demo", "-o", str(file))
    assert code == 2 and "is a file" in err
    assert_clean(err)
    assert file.read_text() == "mine\n"


def test_predict_on_a_named_pipe_does_not_hang(model_file, good, tmp_path):
    fifo = tmp_path / "pipe.cif"
    os.mkfifo(fifo)
    out = tmp_path / "p.csv"
    proc = cli("predict", model_file, good, fifo, "-o", out, timeout=120)
    assert_clean(proc, 0)
    rows = rows_of(out)
    assert [r["formula"] for r in rows if not r["error"]] == ["NaCl"]
    assert any("pipe.cif" in r["source"] and "regular file" in r["error"] for r in rows)


# --- defect 11: long output names --------------------------------------------------------------


def test_a_250_character_output_name(run, model_file, good, tmp_path):
    out = tmp_path / ("p" * 246 + ".csv")
    code, _, err = run("predict", str(model_file), good, "-o", str(out))
    assert code == 0, err
    assert len(rows_of(out)) == 1


# --- defect 13 / must keep working: malicious pickles ------------------------------------------


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_model_file_is_refused_and_its_payload_never_runs(run, good, tmp_path):
    import torch

    from crystalframes.api import load_model
    from crystalframes.io import InputError

    marker = tmp_path / "PAYLOAD_RAN"
    evil = tmp_path / "run" / "model.pt"
    evil.parent.mkdir()
    torch.save({"format": "crystalframes-model", "spec": SPEC, "options": _Payload(marker)}, evil)
    with pytest.raises(InputError, match="not a readable crystalframes model file") as info:
        load_model(evil)
    assert "weights_only" not in str(info.value) and "Re-running" not in str(info.value)
    assert "posix.system" in str(info.value) or "system" in str(info.value)
    for args in (["predict", str(evil.parent), good, "-o", str(tmp_path / "p.csv")],
                 ["eval", str(evil), "mp_2018_demo", "-o", str(tmp_path / "ev")]):
        code, _, err = run(*args)
        assert code == 2 and "not a readable crystalframes model file" in err, err
        assert "weights_only" not in err
        assert_clean(err)
    assert not marker.exists()


# --- eval --target-column --------------------------------------------------------------------


def _labelled(tmp_path, n=3):
    from crystalframes.io import read_structure

    folder = tmp_path / "mine"
    folder.mkdir()
    lines, rows = [], []
    for i, a in enumerate((5.64, 5.5, 5.8)[:n]):
        name = f"s{i}.cif"
        write(folder / name, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]], a)
        c = read_structure(folder / name)
        rows.append(f"{name},{-1.0 - i / 10}")
        lines.append(json.dumps({"id": f"s{i}", "lattice": c.lattice.tolist(), "species": ["Na", "Cl"],
                                 "frac_coords": c.frac_coords.tolist(), "targets": {"my_energy": -1.0 - i / 10}}))
    (folder / "id_prop.csv").write_text("\n".join(rows) + "\n")
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    return folder, jsonl


def test_eval_on_own_labelled_data_with_another_target_name(run, model_file, tmp_path):
    folder, jsonl = _labelled(tmp_path)
    code, _, err = run("eval", str(model_file), str(jsonl), "-o", str(tmp_path / "e0"))
    assert code == 2 and "--target-column" in err and "my_energy" in err, err
    assert_clean(err)
    for source, column, out in ((folder, "target", "e1"), (folder / "id_prop.csv", "target", "e2"), (jsonl, "my_energy", "e3")):
        code, stdout, err = run("eval", str(model_file), str(source), "--target-column", column, "-o", str(tmp_path / out))
        assert code == 0, err
        metrics = json.loads((tmp_path / out / "metrics.json").read_text())
        assert metrics["n"] == 3 and metrics["target"] == TARGET and metrics["target_column"] == column
        rows = rows_of(tmp_path / out / "predictions.csv")
        assert [float(r[f"true {TARGET} (eV/atom)"]) for r in rows] == [-1.0, -1.1, -1.2]


def test_symmetry_and_check_on_a_named_pipe_do_not_hang(tmp_path):
    fifo = tmp_path / "pipe.cif"
    os.mkfifo(fifo)
    proc = cli("symmetry", fifo, timeout=120)
    assert_clean(proc, 2)
    assert "regular file" in proc.stderr
    proc = cli("check", SPEC, fifo, timeout=120)
    assert_clean(proc, 2)
    assert "no readable structures" in proc.stderr and "regular file" in proc.stderr


def test_multi_frame_file_gives_one_prediction_per_frame(run, model_file, good, tmp_path):
    """An extxyz with three frames, one of them bad (atoms 0.1 A apart): two rows predicted from
    it, the bad frame named as file@index, the CIF beside it predicted too."""
    import ase.io
    from ase import Atoms

    frames = [Atoms("NaCl", positions=[[0, 0, 0], [2.8, 2.8, 2.8]], cell=[5.6] * 3, pbc=True) for _ in range(3)]
    frames[1].positions[1] = [0.1, 0, 0]
    frames[2].cell = [6.0] * 3
    traj = tmp_path / "md.extxyz"
    ase.io.write(traj, frames, format="extxyz")
    out = tmp_path / "p.csv"
    code, _, err = run("predict", str(model_file), str(traj), good, "-o", str(out))
    assert code == 0, err
    rows = rows_of(out)
    predicted = {r["id"] for r in rows if r[f"{TARGET} (eV/atom)"]}
    assert predicted == {"md@0", "md@2", "NaCl"}, rows
    (failed,) = [r for r in rows if r["error"]]
    assert "md@1" in failed["source"] and "closer than 0.5" in failed["error"]
