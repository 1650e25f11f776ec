"""The GPU check script's CPU form (benchmarks/gpu_check.py --reduced) runs, prints one JSON
object with every check, and every check passes: the script is never dead code."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
CHECKS = {"forward_backward", "invariance_float64", "train_32", "train_bf16_mixed", "train_compiled", "ddp"}


def test_gpu_check_cpu_form():
    # ~35 s alone on 2 cores; the watchdog makes a stall fail with every thread's stack on stderr
    # (shown below) well before the subprocess timeout would kill it without a word
    done = subprocess.run([sys.executable, str(SCRIPT), "--reduced", "--device", "cpu", "--watchdog", "600"],
                          capture_output=True, text=True, timeout=900)
    assert done.stdout.strip(), done.stderr[-6000:]  # the watchdog fired, or the script died before its report
    report = json.loads(done.stdout)  # one JSON object, nothing else on stdout
    assert set(report) == {"form", "device", "device_name", "torch", "checks", "passed", "seconds"}
    assert report["form"] == "reduced" and report["device"] == "cpu"
    assert set(report["checks"]) == CHECKS
    failed = {k: v for k, v in report["checks"].items() if not v["passed"]}
    assert not failed, failed
    assert report["passed"] is True and done.returncode == 0, done.stderr[-2000:]
    for mode in ("train_32", "train_bf16_mixed", "train_compiled"):
        assert all(row["ms_per_structure"] > 0 for row in report["checks"][mode]["specs"].values())
    assert report["checks"]["ddp"]["world_size"] == 2 and report["checks"]["ddp"]["max_difference_across_ranks"] == 0.0
