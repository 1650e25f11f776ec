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
    from crystalframes.data.sources import load_dataset
    from crystalframes.models import build_model, num_parameters

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
        # trainable parameters, as the papers count them (Crystalformer's 12 frozen numbers left out)
        assert row["params"] == num_parameters(build_model(row["spec"], num_targets=1)), row
        assert row["structures"] == 8
        for key in ("infer_ms_per_structure", "graph_ms_per_structure", "train_ms_per_structure", "peak_mem_mb"):
            assert math.isfinite(row[key]) and row[key] > 0, (key, row)
        assert row["graph_ms_per_structure"] < row["infer_ms_per_structure"]  # graphs are part of inference
        assert math.isclose(row["s_per_epoch"], row["train_ms_per_structure"] * demo_size / 1e3)


def _cli(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(SRC))
    return subprocess.run([sys.executable, "-m", "crystalframes", *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_bench_models_with_a_bad_spec_fails_fast_instead_of_hanging():
    """It used to hang forever: the child raised and the parent waited on queue.get()."""
    proc = _cli("bench", "models", "ecomformer:nonsense", "--n", "2")
    assert proc.returncode == 2, proc.stderr
    assert "unknown frame 'nonsense'" in proc.stderr and "Traceback" not in proc.stderr


def test_bench_models_rejects_bad_numbers_and_dtypes():
    for args in (["--n", "0"], ["--batch-size", "-5"], ["--threads", "0"], ["--repeats", "0"], ["--dtype", "float16"]):
        proc = _cli("bench", "models", "ecomformer:none@cpu_small", *args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert args[0] in proc.stderr, (args, proc.stderr)


def _spawned(target, args):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue) if target is not os._exit else args)
    proc.start()
    return proc, queue


def test_a_failing_or_dying_bench_child_ends_the_wait_with_its_error(tmp_path):
    import pytest

    from crystalframes.bench import _measure, _wait_for_child
    from crystalframes.io.errors import UserError

    # a child that dies without a word (killed, out of memory): the parent notices
    proc, queue = _spawned(os._exit, (3,))
    with pytest.raises(UserError, match="exit code 3"):
        _wait_for_child(proc, queue, "spec", poll_seconds=0.2)
    # a child that raises a user error (here: a missing dataset file) passes its message on
    proc, queue = _spawned(_measure, ("ecomformer:none@cpu_small", str(tmp_path / "missing.jsonl"), 2, 1, 1, "float32", 1))
    with pytest.raises(UserError, match="missing.jsonl"):
        _wait_for_child(proc, queue, "spec", poll_seconds=0.2)
    # a child that hits a bug passes its traceback on
    proc, queue = _spawned(_measure, ("ecomformer:none@cpu_small", "mp_2018_demo", 2, 1, 1, "no_such_dtype", 1))
    with pytest.raises(RuntimeError, match="no_such_dtype"):
        _wait_for_child(proc, queue, "spec", poll_seconds=0.2)
