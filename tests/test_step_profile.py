"""benchmarks/step_profile.py in a reduced form (cpu_small, batch 4, one round): it runs, prints
the table and one JSON line with every field, and its timings are finite and positive; with
``--before HEAD`` (a git checkout only) both versions are built, agree and are counted."""

import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "step_profile.py"
SPECS = ["crystalformer:max@cpu_small", "ecomformer:none@cpu_small"]
VERSION_FIELDS = {"ops", "syncs", "where", "outside", "infer_ops", "infer_syncs", "top", "train_ms_per_structure",
                  "train_ms_per_structure_all", "infer_ms_per_structure", "infer_ms_per_structure_all"}
TOP_FIELDS = {"benchmark", "torch", "after", "before", "before_commit", "data", "batch_size", "atoms", "threads", "rounds",
              "seed", "dtype", "warmup_steps", "specs", "loadavg_start", "loadavg_end", "seconds"}


@pytest.fixture(scope="module")
def step_profile():
    spec = importlib.util.spec_from_file_location("step_profile_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(step_profile, capsys, *extra) -> dict:
    returned = step_profile.main(["--specs", *SPECS, "--batch-size", "4", "--rounds", "1", *extra])
    out = capsys.readouterr().out
    json_lines = [line for line in out.splitlines() if line.startswith("{")]
    assert len(json_lines) == 1
    report = json.loads(json_lines[0])
    assert report == json.loads(json.dumps(returned))
    assert set(report) == TOP_FIELDS
    assert set(report["specs"]) == set(SPECS) and report["batch_size"] == 4 and report["atoms"] >= 4
    for spec in SPECS:
        assert f"| {spec} |" in out  # its table row
    return report


def check_version(row: dict) -> None:
    assert set(row) == VERSION_FIELDS
    assert row["ops"] > 0 and row["infer_ops"] > 0 and row["infer_ops"] < row["ops"]
    assert row["syncs"] == sum(row["where"].values())
    for kind in ("train", "infer"):
        value = row[f"{kind}_ms_per_structure"]
        assert math.isfinite(value) and value > 0


def test_reduced_run(step_profile, capsys):
    report = run(step_profile, capsys)
    assert report["before"] is None
    for spec, row in report["specs"].items():
        assert set(row) == {"after"}
        check_version(row["after"])
        # sync sources are lines of the package itself
        assert all(where.startswith("crystalframes/") for where in row["after"]["where"])


def test_reduced_run_against_head(step_profile, capsys):
    if shutil.which("git") is None or not (SCRIPT.parents[1] / ".git").exists():
        pytest.skip("--before needs git and a checkout (not an sdist)")
    report = run(step_profile, capsys, "--before", "HEAD")
    assert report["before"] == "HEAD" and len(report["before_commit"]) == 40
    for spec, row in report["specs"].items():
        assert set(row) == {"before", "after", "max_output_difference", "outputs_agree", "train_ratio", "infer_ratio",
                            "train_ratio_paired", "infer_ratio_paired"}
        for label in ("before", "after"):
            check_version(row[label])
        # the old copy is counted by its own lines, under its own name
        assert all(where.startswith("crystalframes_before/") for where in row["before"]["where"])
        assert row["outputs_agree"] and row["max_output_difference"] <= step_profile.AGREE
        assert all(math.isfinite(row[k]) and row[k] > 0 for k in ("train_ratio", "infer_ratio", "train_ratio_paired", "infer_ratio_paired"))
    # the temporary copy is gone from the process afterwards
    assert not any(name.startswith("crystalframes_before") for name in sys.modules)
