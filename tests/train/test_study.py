"""The multi-seed study behind ``crystalframes bench accuracy``: resumable grids, the presets'
own budgets, and the statistics (t interval over seeds, paired bootstrap over structures)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from crystalframes.train import study, study_statistics, study_tables


def fake_train(calls):
    """A stand-in for train(): records the config and writes what a finished run folder holds;
    the errors depend on spec and seed, so the statistics have something to chew on."""

    def train(cfg, folder, resume=False, overwrite=False):
        calls.append({"spec": cfg.model.spec, "seed": cfg.trainer.seed, "epochs": cfg.trainer.epochs,
                      "batch_size": cfg.trainer.batch_size, "resume": resume, "overwrite": overwrite})
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(cfg.trainer.seed)
        target = getattr(getattr(cfg, "data", None), "target", "y")
        shift = (0.01 if "max" in cfg.model.spec else 0.0) * (2 if "gap" in target else 1)
        errors = np.abs(rng.normal(0.1, 0.02, 20)) + shift
        (folder / "metrics.json").write_text(json.dumps({
            "spec": cfg.model.spec, "target": target, "units": "eV", "epochs_completed": cfg.trainer.epochs,
            "train_wall_seconds": 1.0, "params": 10,
            "val": {"mae": float(errors.mean()) + 0.01, "mean_baseline_mae": 1.0},
            "test": {"mae": float(errors.mean()), "mean_baseline_mae": 1.0}}))
        (folder / "config.yaml").write_text(f"trainer:\n  batch_size: {cfg.trainer.batch_size}\n")
        lines = ["id,formula,n_atoms,true y (eV),predicted y (eV)"] + [f"s{i},X,1,0.0,{e}" for i, e in enumerate(errors)]
        (folder / "predictions_test.csv").write_text("\n".join(lines) + "\n")

    return train


@pytest.fixture
def calls(monkeypatch):
    import crystalframes.train.run as run

    recorded = []
    monkeypatch.setattr(run, "train", fake_train(recorded))
    return recorded


def test_a_grid_resumes_where_it_stopped_and_keeps_finished_runs(calls, tmp_path):
    specs = ["crystalformer:none@cpu_small", "crystalformer:max@cpu_small"]
    results = tmp_path / "results.json"
    study.run_grid(specs, [], [0], tmp_path / "runs", results)
    assert [(c["spec"], c["seed"]) for c in calls] == [(specs[0], 0), (specs[1], 0)]
    # a second invocation with more seeds runs only what is missing, seed-major
    study.run_grid(specs, [], [0, 1], tmp_path / "runs", results)
    assert [(c["spec"], c["seed"]) for c in calls[2:]] == [(specs[0], 1), (specs[1], 1)]
    rows = study.load_rows(results)
    assert len(rows) == 4 and len({r["key"] for r in rows}) == 4
    # a run killed part-way (checkpoint, no metrics) resumes; a folder of a finished run whose
    # row was not yet written is collected without training again
    killed = tmp_path / "runs" / (study._folder_name(specs[0], 2, []))
    (killed / "checkpoints").mkdir(parents=True)
    (killed / "checkpoints" / "last.ckpt").write_bytes(b"x")
    study.run_grid(specs[:1], [], [2], tmp_path / "runs", results)
    assert calls[-1]["resume"] is True and calls[-1]["seed"] == 2


def test_grids_with_other_budgets_share_a_runs_folder_without_mixing(calls, tmp_path):
    """A 54-epoch run of a spec must not pick up the finished 18-epoch run of the same seed."""
    spec = "crystalformer:none@cpu_small"
    study.run_grid([spec], ["trainer.threads=1"], [0], tmp_path / "runs", tmp_path / "r.json")
    study.run_grid([spec], ["trainer.threads=1", "trainer.epochs=5"], [0], tmp_path / "runs", tmp_path / "r.json")
    assert len(calls) == 2 and calls[-1]["epochs"] == 5
    assert study._folder_name(spec, 0, ["trainer.threads=2"]) == study._folder_name(spec, 0, [])
    rows = study.load_rows(tmp_path / "r.json")
    assert sorted(r["epochs"] for r in rows) == [5, 100]


def test_processes_that_split_a_grid_keep_each_others_rows(monkeypatch, tmp_path):
    """Two processes with other thread counts share one results file: the rows are keyed by what
    is trained (threads dropped), and a row is appended to the file as it is then, so a run that
    finishes while another is training is not lost when the other one lands."""
    import crystalframes.train.run as run

    results = tmp_path / "results.json"
    a, b = "crystalformer:none@cpu_small", "crystalformer:max@cpu_small"
    calls = []
    plain = fake_train(calls)

    def interleaved(cfg, folder, resume=False, overwrite=False):
        if cfg.model.spec == a:  # while a trains, the other process finishes b
            study.run_grid([b], ["trainer.threads=2"], [0], tmp_path / "runs", results)
        plain(cfg, folder, resume, overwrite)

    monkeypatch.setattr(run, "train", interleaved)
    study.run_grid([a], ["trainer.threads=1"], [0], tmp_path / "runs", results)
    assert sorted(r["spec"] for r in study.load_rows(results)) == sorted([a, b])
    # the same spec and seed with another thread count is the same run: not trained again
    study.run_grid([a, b], ["trainer.threads=2"], [0], tmp_path / "runs", results)
    assert len(calls) == 2
    assert all(r["overrides"] == [] for r in study.load_rows(results))


def test_processes_given_the_same_grid_share_its_runs(calls, tmp_path):
    """A run another process has claimed (its lock is held) is skipped, not trained twice; once
    the lock is released (that process finished or died), the run is trained or collected."""
    import fcntl

    specs = ["crystalformer:none@cpu_small", "crystalformer:max@cpu_small"]
    busy = tmp_path / "runs" / study._folder_name(specs[0], 0, [])
    busy.parent.mkdir()
    with open(busy.with_name(busy.name + ".lock"), "w") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        rows = study.run_grid(specs, [], [0], tmp_path / "runs", tmp_path / "r.json")
    assert [c["spec"] for c in calls] == [specs[1]] and [r["spec"] for r in rows] == [specs[1]]
    rows = study.run_grid(specs, [], [0], tmp_path / "runs", tmp_path / "r.json")
    assert [c["spec"] for c in calls] == [specs[1], specs[0]] and len(rows) == 2


def test_the_presets_budget_is_used_unless_the_user_sets_one(calls, tmp_path):
    """cpu_small's own epochs and batch size (100 / 32 for Crystalformer), not a bench default."""
    from crystalframes.train.recipes import preset_training

    study.run_grid(["crystalformer:none@cpu_small"], [], [0], tmp_path / "a", tmp_path / "a.json")
    own = preset_training("crystalformer:none@cpu_small")
    assert (calls[-1]["epochs"], calls[-1]["batch_size"]) == (own["epochs"], own["batch_size"])
    study.run_grid(["crystalformer:none@cpu_small"], ["trainer.epochs=3"], [0], tmp_path / "b", tmp_path / "b.json")
    assert (calls[-1]["epochs"], calls[-1]["batch_size"]) == (3, own["batch_size"])


def test_the_summary_pairs_every_frame_with_its_backbone(calls, tmp_path):
    specs = ["crystalformer:none@cpu_small", "crystalformer:max@cpu_small"]
    rows = study.run_grid(specs, [], [0, 1, 2], tmp_path / "runs", tmp_path / "r.json")
    summary = {s["spec"]: s for s in study_statistics.summarise(rows)}
    s = summary["crystalformer:max@cpu_small"]
    assert s["baseline"] == "crystalformer:none@cpu_small" and s["paired_seeds"] == [0, 1, 2]
    # the fake errors of max are those of none + 0.01 for every structure and seed
    assert s["diff_mean"] == pytest.approx(0.01) and s["diff_boot_low"] == pytest.approx(0.01) and s["diff_boot_high"] == pytest.approx(0.01)
    assert "diff_mean" not in summary["crystalformer:none@cpu_small"]
    table = study_tables.summary_table(rows)
    assert "| `crystalformer:max@cpu_small` | 3 |" in table and "+0.0100" in table
    # any two specs compared the same way (a setting against the preset it changes)
    pair = study_tables.comparison_table(rows, [("crystalformer:max@cpu_small", "crystalformer:none@cpu_small")])
    assert "| `crystalformer:max@cpu_small` | `crystalformer:none@cpu_small` | - | 3 |" in pair and "| +0.0100 | [+0.0100, +0.0100] |" in pair
    assert study_tables.comparison_table(rows, [("ecomformer:max@cpu_small", "ecomformer:none@cpu_small")]) == "(no finished pairs)\n"


def test_the_target_table_has_a_column_per_target_and_pairs_within_each(calls, tmp_path):
    """The papers' Table 1 layout: rows = models, columns = targets; a target set by override
    pairs its frame rows with the backbone of the same target, runs of other budgets stay out."""
    specs = ["crystalformer:none@cpu_small", "crystalformer:max@cpu_small"]
    rows = study.run_grid(specs, [], [0, 1, 2], tmp_path / "runs", tmp_path / "r.json")
    rows = study.run_grid(specs, ["data.target=mp2018_gap_pbe"], [0, 1], tmp_path / "runs", tmp_path / "r.json")
    rows = study.run_grid(specs[1:], ["trainer.epochs=5"], [0], tmp_path / "runs", tmp_path / "r.json")
    table = study_tables.target_table(rows).splitlines()
    assert "`mp2018_e_form` test MAE (eV) (seeds)" in table[0] and "`mp2018_gap_pbe` test MAE (eV) (seeds)" in table[0]
    assert len(table) == 4  # header, rule, two models: the 5-epoch run is not a third
    max_row = next(line for line in table if line.startswith("| `crystalformer:max@cpu_small`"))
    cells = [c.strip() for c in max_row.strip("|").split("|")]
    assert cells[1].endswith("(3)") and cells[2].startswith("+0.0100 [+0.0100, +0.0100]")
    assert cells[3].endswith("(2)") and cells[4].startswith("+0.0200 [+0.0200, +0.0200]")
    none_row = next(line for line in table if line.startswith("| `crystalformer:none@cpu_small`"))
    assert [c.strip() for c in none_row.strip("|").split("|")][2] == "-"
    # the per-target tables: one per target, each with its own target line
    full = study_tables.summary_table(rows)
    assert full.count("Target `mp2018_e_form`") == 1 and full.count("Target `mp2018_gap_pbe`") == 1
    pairs = study_tables.comparison_table(rows, [("crystalformer:max@cpu_small", "crystalformer:none@cpu_small")])
    assert "| data.target=mp2018_gap_pbe | 2 |" in pairs and "| +0.0200 |" in pairs and "| - | 3 |" in pairs


def test_a_run_trained_under_another_spelling_joins_its_spec_and_rows_group_by_backbone(calls, tmp_path):
    """A finished folder whose metrics say `...@cpu_small` (a run made elsewhere, e.g. the zoo's,
    linked into the runs folder) becomes a row of the canonical `...+qr@cpu_small`; the table
    lists each backbone's rows together, its baseline first, whatever order runs landed in."""
    import crystalframes.train.run as run

    canonical = "ecomformer:spframe_quaternion+qr@cpu_small"
    run.train(type("C", (), {"model": type("M", (), {"spec": "ecomformer:spframe_quaternion@cpu_small"}),
                             "trainer": type("T", (), {"seed": 0, "epochs": 3, "batch_size": 8})}), tmp_path / "elsewhere")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / study._folder_name(canonical, 0, [])).symlink_to(tmp_path / "elsewhere")
    specs = ["crystalformer:max@cpu_small", canonical, "crystalformer:none@cpu_small", "ecomformer:none@cpu_small"]
    rows = study.run_grid(specs, [], [0], tmp_path / "runs", tmp_path / "r.json")
    assert len(calls) == 4  # the linked run was collected, not trained again
    assert {r["spec"] for r in rows} == set(specs)
    assert [s["spec"] for s in study_statistics.summarise(rows)] == [
        "crystalformer:none@cpu_small", "crystalformer:max@cpu_small", "ecomformer:none@cpu_small", canonical]


def test_t_interval_and_paired_bootstrap():
    mean, lo, hi = study_statistics.t_interval(np.array([1.0, 2.0, 3.0]))
    assert mean == 2.0 and hi - mean == pytest.approx(4.302652729911275 * 1.0 / math.sqrt(3))
    assert math.isnan(study_statistics.t_interval(np.array([1.0]))[1])
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 400)
    mean, lo, hi = study_statistics.paired_bootstrap(a + 0.5, a)
    assert mean == pytest.approx(0.5) and lo == pytest.approx(0.5) and hi == pytest.approx(0.5)
    b = rng.normal(0, 1, 400)
    mean, lo, hi = study_statistics.paired_bootstrap(a, b)
    half = 1.96 * np.std(a - b) / np.sqrt(400)
    assert lo < mean < hi and (hi - lo) / 2 == pytest.approx(half, rel=0.15)


def test_a_real_run_becomes_a_row(demo_subset, tmp_path):
    """One tiny real training: the row reads the real run folder (errors, per-epoch curve)."""
    data = demo_subset(60, 20)
    overrides = [f"data.source={data}", "trainer.epochs=2", "trainer.threads=1",
                 "model.options={hidden: 8, scalars: 4, vectors: 2, rbf_bins: 8}"]
    rows = study.run_grid(["ecomformer:none@cpu_small"], overrides, [0], tmp_path / "runs", tmp_path / "r.json")
    (row,) = rows
    assert row["epochs"] == 2 and len(row["val_mae_per_epoch"]) == 2 and len(row["test_ids"]) == len(row["test_abs_errors"]) == 6
    assert row["test_mae"] == pytest.approx(np.mean(row["test_abs_errors"]), abs=1e-5)


def test_frame_usage_measures_relative_rotations_of_neighbours():
    """Identical frames give 0 degrees; a 90 degree rotation between the two atoms of an edge
    gives 90; without edges all pairs of a crystal count."""
    import types

    import torch

    from crystalframes.train.module import frame_usage

    eye = torch.eye(3).expand(2, 3, 3)
    turn = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    with_edges = types.SimpleNamespace(edge_index=torch.tensor([[0, 1], [1, 0]]), batch=torch.zeros(2, dtype=torch.long))
    assert frame_usage([eye], with_edges)["frame_angle_median"] == pytest.approx(0.0, abs=1e-3)
    rotated = torch.stack([torch.eye(3), turn])
    assert frame_usage([rotated], with_edges)["frame_angle_p90"] == pytest.approx(90.0, abs=1e-3)
    no_edges = types.SimpleNamespace(edge_index=None, batch=torch.tensor([0, 0, 1]))
    three = torch.stack([torch.eye(3), turn, turn])  # atom 2 is alone in its crystal: one pair
    assert frame_usage([three], no_edges)["frame_angle_median"] == pytest.approx(90.0, abs=1e-3)


def test_frame_usage_is_logged_for_frames_built_bucket_by_bucket(demo_subset, tmp_path):
    """Crystalformer builds its max frames per bucket of centres: the validation log still gets
    the frame angles (this crashed a training's sanity check before the frames were put together per layer)."""
    import csv as csv_module

    from crystalframes.train.config import load_config
    from crystalframes.train.run import train

    data = demo_subset(40, 10)
    cfg = load_config(None, [f"data.source={data}", "model.spec=crystalformer:max@cpu_small", "trainer.epochs=1",
                             "trainer.threads=1", "model.options={memory_budget: 2000}"])
    train(cfg, tmp_path / "run")
    rows = [r for r in csv_module.DictReader(open(tmp_path / "run" / "logs" / "metrics.csv")) if r.get("frame_angle_median")]
    assert rows and 0.0 <= float(rows[0]["frame_angle_median"]) <= 180.0
