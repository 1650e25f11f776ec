"""Issue 24: training on one's own id_prop.csv folder (no split field) works with a config file
alone, and eval says what a split option means on such data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

# What a user writes: the data, the target, and (for test speed) a tiny model and one epoch.
CONFIG = """\
data:
  source: {folder}
  target: target
model:
  spec: ecomformer:none@cpu_small
  options: {{hidden: 16, scalars: 8, vectors: 2, rbf_bins: 16}}
trainer:
  epochs: 1
  batch_size: 20
  threads: 1
"""


@pytest.fixture(scope="module")
def own_folder(demo_subset, tmp_path_factory):
    """60 real crystals of the embedded MP demo as POSCAR files plus an id_prop.csv (id, value;
    no header, no split column): the cgcnn / ALIGNN layout of one's own data."""
    from pymatgen.core import Element, Lattice, Structure

    from crystalframes.io import read_dataset

    folder = tmp_path_factory.mktemp("own") / "mydata"
    folder.mkdir()
    rows = []
    for c in read_dataset(demo_subset(60, 0)).crystals:
        Structure(Lattice(c.lattice), [Element.from_Z(int(z)) for z in c.atomic_numbers], c.frac_coords).to(
            filename=str(folder / f"{c.id}.vasp"), fmt="poscar")
        rows.append(f"{c.id},{c.targets['mp2018_e_form']}")
    (folder / "id_prop.csv").write_text("\n".join(rows) + "\n")
    return folder


def crystalframes(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(SRC), CRYSTALFRAMES_CACHE_DIR=str(cwd / "cache"), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "crystalframes", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_own_id_prop_folder_trains_with_a_random_split_and_eval_explains_split(own_folder, tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text(CONFIG.format(folder=own_folder))
    run = tmp_path / "run"
    proc = crystalframes("train", config, "-o", run, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the records have no split field (train/val/test); split at random instead: val 0.1, test 0.1" in proc.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val"]["n"] == 6 and metrics["test"]["n"] == 6
    # no units known for one's own target: named alone, not as "target ()"
    card = (run / "model_card.md").read_text()
    assert "- **target**: `target`\n" in card and "| split | n | MAE | mean-predictor MAE |" in card
    assert "random split (seed 123)" in card and "()" not in card
    assert "target: target   trained" in proc.stdout

    proc = crystalframes("eval", run, own_folder, "--split", "val", "-o", tmp_path / "ev", cwd=tmp_path)
    assert proc.returncode == 2
    assert "no record has a split field, so --split val selects nothing" in proc.stderr
    # the held-out part is the random split's test part, as training drew it
    proc = crystalframes("eval", run, own_folder, "--split", "heldout", "-o", tmp_path / "ev", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["n"] == 6
