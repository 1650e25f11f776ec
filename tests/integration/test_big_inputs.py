"""Issue 24, big inputs: a JSON array that holds no records is refused at once (bounded time and
memory, a few lines of output) and lists of bad inputs are capped."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_CPU_SECONDS = 10  # CPU time, not wall time: the machine may be shared (the old code: 18 s and more)
MAX_RSS_MB = 600


# Runs the command and, at exit, writes its own peak RSS (VmHWM: the high-water mark of this
# process's memory map). Not ru_maxrss from wait4: Linux carries the parent's high-water mark
# across fork and exec into the child's ru_maxrss, so a child of a large pytest worker would
# report the worker's memory, not its own.
_RUN_AND_REPORT_PEAK = """
import atexit, runpy, sys
report = sys.argv.pop(1)
def peak():
    with open("/proc/self/status") as fh:
        kb = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    with open(report, "w") as out:
        out.write(str(kb))
atexit.register(peak)
sys.argv[0] = "crystalframes"
runpy.run_module("crystalframes", run_name="__main__")
"""


def measured(args, cwd: Path):
    """(exit code, stdout, stderr, CPU seconds, peak RSS in MB) of ``crystalframes *args`` in a
    fresh interpreter: its own CPU time (os.wait4) and its own peak memory (VmHWM)."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux's /proc to measure a process's own peak memory")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               CRYSTALFRAMES_CACHE_DIR=str(cwd / "cache"))
    out, err, peak = cwd / "stdout.txt", cwd / "stderr.txt", cwd / "peak_kb.txt"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        # a CPU-time limit: the old code's 200 MB case ran for minutes; the test must end anyway
        proc = subprocess.Popen([sys.executable, "-c", _RUN_AND_REPORT_PEAK, str(peak), *map(str, args)], cwd=cwd, env=env,
                                stdout=fo, stderr=fe,
                                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CPU, (120, 120)))
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = usage.ru_utime + usage.ru_stime
    rss = int(peak.read_text()) / 1024 if peak.exists() else float("inf")  # no report: killed before exit
    return proc.returncode, out.read_text(errors="replace"), err.read_text(errors="replace"), seconds, rss


@pytest.fixture
def million_zeros(tmp_path):
    path = tmp_path / "zeros.json"
    path.write_text(json.dumps([0] * 1_000_000))  # 3 MB, made here rather than committed
    return path


@pytest.mark.parametrize("command", [["data", "info"], ["predict", "mp_e_form"]])
def test_a_million_zeros_is_refused_at_once(tmp_path, million_zeros, command):
    code, out, err, seconds, rss = measured([*command, million_zeros], tmp_path)
    assert code in (1, 2), err[-2000:]
    assert "Traceback" not in out + err
    assert seconds < MAX_CPU_SECONDS and rss < MAX_RSS_MB, f"{seconds:.1f} s, {rss:.0f} MB"
    assert len((out + err).splitlines()) < 10, (out + err)[:2000]
    assert "zeros.json: a JSON array whose first 8 elements are numbers, not structure records" in err


def test_an_array_whose_first_elements_are_not_records_is_refused_as_a_whole(tmp_path, run):
    small = tmp_path / "three.json"
    small.write_text('["a", null, [1]]')
    code, out, err = run("data", "info", small)
    assert code == 2
    assert "three.json: a JSON array whose 3 elements are arrays / nulls / strings, not structure records" in err
    # an array that holds a record among its first elements keeps its per-record errors
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps([0, {"id": "x"}]))
    code, out, err = run("data", "info", mixed)
    assert code == 0, err
    assert "mixed.json[0]: record must be a JSON object, got int" in out
    assert "not structure records" not in out + err


def test_check_lists_the_first_bad_inputs_and_counts_the_rest(tmp_path, run, nacl):
    lines = [json.dumps({"id": "nacl", "lattice": nacl.lattice.tolist(), "species": ["Na"] * 4 + ["Cl"] * 4,
                         "frac_coords": nacl.frac_coords.tolist()})]
    lines += [json.dumps({"id": f"bad{i}"}) for i in range(30)]
    src = tmp_path / "many_bad.jsonl"
    src.write_text("\n".join(lines) + "\n")
    code, out, err = run("check", "crystalformer:none@cpu_small", src, "--trials", "1")
    assert code == 0, err
    listed = [line for line in err.splitlines() if line.startswith("bad input:")]
    assert len(listed) == 20
    assert "... and 10 more bad inputs (--json lists all)" in err
