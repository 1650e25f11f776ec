"""Every usage mistake a new user makes: one clear message, exit code 2, no traceback, no hang.

Each case runs ``python -m crystalframes ...`` in a fresh interpreter (as a user's shell would),
in an empty working folder, with a timeout: the exit code, a message naming the problem, no
"Traceback" on either stream, and, where the command would write a run folder, no folder left
behind by a refused command.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

NACL_POSCAR = """NaCl
1.0
5.64 0 0
0 5.64 0
0 0 5.64
Na Cl
4 4
Direct
0 0 0
0.5 0.5 0
0.5 0 0.5
0 0.5 0.5
0.5 0 0
0 0.5 0
0 0 0.5
0.5 0.5 0.5
"""

# an interpreter in which tensorboard cannot be imported, whether or not it is installed here
WITHOUT_TENSORBOARD = (
    "import sys; sys.modules['tensorboard'] = None; sys.modules['tensorboardX'] = None; "
    "sys.argv[0] = 'crystalframes'; from crystalframes.cli import main; main()"
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder holding a good structure, a tiny untrained model file and an existing output file."""
    import torch

    from crystalframes.api import save_model_file
    from crystalframes.data.normalise import TargetNormaliser
    from crystalframes.models import build_model

    folder = tmp_path_factory.mktemp("cli")
    (folder / "NaCl.vasp").write_text(NACL_POSCAR)
    torch.manual_seed(0)
    spec = "ecomformer:spframe_quaternion"
    model = build_model(spec)
    save_model_file(folder / "model.pt", model, model.spec, {}, TargetNormaliser(0.0, 1.0), ["e_form"], ["eV/atom"])
    (folder / "existing.csv").write_text("keep me\n")
    (folder / "existing_dir").mkdir()
    (folder / "labelled").mkdir()
    (folder / "labelled" / "NaCl.vasp").write_text(NACL_POSCAR)
    (folder / "labelled" / "id_prop.csv").write_text("NaCl.vasp,-1.5\n")
    return folder


# (id, argv or ("-c", code, *argv), allowed exit codes, regex the combined output must match)
CASES = [
    ("no-arguments", [], {0, 2}, r"Usage: crystalframes"),
    ("version", ["--version"], {0}, r"crystalframes \d+\.\d+"),
    ("unknown-command", ["nonsense"], {2}, r"No such command 'nonsense'"),
    ("unknown-option", ["predict", "--bogus"], {2}, r"No such option: --bogus"),
    ("predict-no-arguments", ["predict"], {2}, r"Missing argument 'MODEL'"),
    ("resume-without-output", ["train", "--resume"], {2}, r"--resume needs --output"),
    ("train-bad-spec", ["train", "--set", "model.spec=ecomformer:nonsense"], {2}, r"nonsense"),
    ("check-bad-spec", ["check", "ecomformer:nonsense", "NaCl.vasp"], {2}, r"nonsense"),
    ("symmetry-bad-frame", ["symmetry", "NaCl.vasp", "--frame", "nonsense"], {2}, r"nonsense"),
    ("bench-bad-spec", ["bench", "models", "ecomformer:nonsense"], {2}, r"nonsense"),
    ("graph-k-zero", ["data", "graph", "NaCl.vasp", "--k", "0"], {2}, r"--k|\bk\b"),
    ("unknown-model-option", ["train", "--set", "model.options.hiden=64"], {2}, r"hiden.*(did you mean|known).*hidden|hidden.*hiden"),
    ("unknown-trainer-key", ["train", "--set", "trainer.epoch=1"], {2}, r"did you mean.*epochs"),
    ("bad-trainer-batch-size", ["train", "--set", "trainer.batch_size=0"], {2}, r"batch_size"),
    ("tensorboard-missing", ["-c", WITHOUT_TENSORBOARD, "train", "--set", "trainer.tensorboard=true"], {2}, r"tensorboard"),
    ("print-config", ["train", "--print-config", "--set", "trainer.epochs=3"], {0}, r"epochs: 3"),
    ("predict-batch-size-negative", ["predict", "model.pt", "NaCl.vasp", "--batch-size", "-5"], {2}, r"batch-size|batch_size"),
    ("predict-batch-size-zero", ["predict", "model.pt", "NaCl.vasp", "--batch-size", "0"], {2}, r"batch-size|batch_size"),
    ("predict-output-is-folder", ["predict", "model.pt", "NaCl.vasp", "-o", "existing_dir"], {2}, r"existing_dir"),
    ("predict-nothing-predictable", ["predict", "model.pt", "missing.cif", "-o", "out.csv"], {1, 2}, r"missing\.cif"),
    ("predict-bad-device", ["predict", "model.pt", "NaCl.vasp", "--device", "nonsense"], {2}, r"device"),
    ("eval-output-exists", ["eval", "model.pt", "labelled", "-o", "existing.csv"], {2}, r"existing\.csv"),
    ("check-negative-trials", ["check", "ecomformer:spframe_quaternion", "NaCl.vasp", "--trials", "-1"], {2}, r"trials"),
    ("check-bad-dtype", ["check", "ecomformer:spframe_quaternion", "NaCl.vasp", "--dtype", "foo"], {2}, r"dtype|foo"),
    ("model-not-found", ["predict", "no_such_model.pt", "NaCl.vasp"], {2}, r"no_such_model"),
    ("predict-batch-atoms-zero", ["predict", "model.pt", "NaCl.vasp", "--batch-atoms", "0"], {2}, r"Invalid value for '--batch-atoms'"),
    ("predict-restart-output-is-folder", ["predict", "model.pt", "NaCl.vasp", "--restart", "-o", "existing_dir"], {2}, r"existing_dir: is a folder"),
    # issue 24: pretrained names everywhere a model is taken, eval's help, symmetry's size limit
    ("check-pretrained-name", ["check", "mp_e_form", "NaCl.vasp", "--trials", "1"], {0},
     r"passed \(within tolerance\).*mp_e_form: an ensemble of 4 models; checking its first member"),
    ("symmetry-pretrained-name", ["symmetry", "NaCl.vasp", "--model", "mp_e_form"], {0},
     r"Fm-3m.*translation copies only.*checking its first member"),
    ("check-no-such-model", ["check", "mp_e_frm", "NaCl.vasp"], {2},
     r"mp_e_frm: not a pretrained model name, a model file, a run folder or a model spec \(pretrained: mp_e_form"),
    ("eval-help-percent", ["eval", "--help"], {0}, r"^(?!.*%%).*10% of train"),
    ("symmetry-over-max-atoms", ["symmetry", "NaCl.vasp", "--max-atoms", "4"], {2},
     r"NaCl\.vasp: 8 atoms, more than --max-atoms 4; the analysis would take about .* pass --max-atoms 8"),
    # issue 24: predict's inputs: '-' is standard input (empty here), dataset names like eval's
    ("predict-stdin-empty", ["predict", "model.pt", "-", "-o", "out.csv"], {1}, r"<stdin>: standard input is empty"),
    ("predict-stdin-twice", ["predict", "model.pt", "-", "-", "-o", "out.csv"], {2}, r"standard input.*name it once"),
    ("predict-unknown-dataset-name", ["predict", "model.pt", "no_such_dataset", "-o", "out.csv"], {1},
     r"no_such_dataset: no such file, folder or dataset; known datasets: mp_2018_demo"),
    # issue 24: an output that cannot be created: one line with the path and the errno symbol
    ("train-output-is-a-file", ["train", "--output", "existing.csv"], {2}, r"existing\.csv: cannot create the run folder.*\(EEXIST\)"),
    ("train-output-under-a-file", ["train", "--output", "existing.csv/run"], {2}, r"existing\.csv/run: cannot create the run folder.*\(ENOTDIR\)"),
    ("eval-output-under-a-file", ["eval", "model.pt", "labelled", "--target-column", "target", "-o", "existing.csv/ev"], {2},
     r"existing\.csv/ev: cannot create the output folder.*\(ENOTDIR\)"),
]


def _run(argv, cwd: Path, timeout: float = 180):
    if argv[:1] == ["-c"]:
        cmd = [sys.executable, "-c", argv[1], *argv[2:]]
    else:
        cmd = [sys.executable, "-m", "crystalframes", *argv]
    env = dict(os.environ, COLUMNS="200", CRYSTALFRAMES_CACHE_DIR=str(cwd / "cache"))
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=env)


@pytest.mark.parametrize("argv,codes,pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_usage_mistake_is_one_clean_message(workdir, argv, codes, pattern):
    before = set(os.listdir(workdir))
    result = _run(argv, workdir)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    assert result.returncode in codes, f"exit {result.returncode}\n{output[-3000:]}"
    assert re.search(pattern, output, re.I | re.S), output[-3000:]
    created = set(os.listdir(workdir)) - before - {"cache"}
    if result.returncode != 0:
        assert not created, f"a refused command left {created} behind"
    else:
        assert not {name for name in created if name.startswith("runs")}, "a command that only prints trained"
    # the existing files are never replaced
    assert (workdir / "existing.csv").read_text() == "keep me\n"


def test_cases_cover_the_issue_list():
    """The issue asks for at least these invocations; keep the table honest when it is edited."""
    assert len(CASES) >= 20 and len({c[0] for c in CASES}) == len(CASES)
