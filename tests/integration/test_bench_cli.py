"""`crystalframes bench models`: one row of figures per spec, each measured in its own process."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
SPECS = ["ecomformer:spframe_quaternion@cpu_small", "crystalformer:max@cpu_small"]


def test_bench_models_measures_every_spec(tmp_path):
    from crystalframes.data.datasets import load_dataset
    from crystalframes.models import build_model

    env = dict(os.environ, PYTHONPATH=str(SRC), CRYSTALFRAMES_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run(
        [sys.executable, "-m", "crystalframes", "bench", "models", *SPECS, "--n", "8", "--batch-size", "4", "--threads", "1", "--json"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout)
    assert [r["spec"] for r in rows] == SPECS
    demo_size = len(load_dataset("mp_2018_demo").crystals)
    for row in rows:
        # every registered parameter, as the papers count them (Crystalformer has a few frozen ones)
        assert row["params"] == sum(p.numel() for p in build_model(row["spec"], num_targets=1).parameters()), row
        assert row["structures"] == 8
        for key in ("infer_ms_per_structure", "graph_ms_per_structure", "train_ms_per_structure", "peak_mem_mb"):
            assert math.isfinite(row[key]) and row[key] > 0, (key, row)
        assert row["graph_ms_per_structure"] < row["infer_ms_per_structure"]  # graphs are part of inference
        assert math.isclose(row["s_per_epoch"], row["train_ms_per_structure"] * demo_size / 1e3)
