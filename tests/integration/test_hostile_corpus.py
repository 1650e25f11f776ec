"""The hostile-input corpus (tests/hostile/) through `data info`, `predict` and `check`.

One subprocess per command over the whole corpus (100+ files: every format the readers accept,
each defect of issue 12 and more of their kind, plus good crystals). Each runs with a timeout and
an address-space limit, because some of these inputs used to hang or to take 10 GB. Asserted for
each: no traceback, no hang, every good file keeps its (finite) result next to the bad ones, every
bad file is named with its problem, and nothing is lost (one result or error per input record).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
sys.path.insert(0, str(ROOT / "tests" / "hostile"))
import make_special  # noqa: E402  (tests/hostile is not a package: its files are data)

TIMEOUT = 120  # seconds per command; the whole corpus takes a few seconds when nothing hangs
MEMORY_LIMIT = 6 * 2**30  # address space per command: a 10 GB allocation must fail, not swap
PREDICT_SPEC = "ecomformer:none@cpu_small"  # encodes Z <= 100
CHECK_SPEC = "crystalformer:none@cpu_small"  # encodes Z <= 98: Es (99) and Fm (100) are rejected here
MAX_Z = {"readers": 118, PREDICT_SPEC: 100, CHECK_SPEC: 98}
STRUCTURE_FILE = re.compile(r"(\.(cif|vasp|poscar|xyz|extxyz)(\.gz)?$)|(^(poscar|contcar))", re.IGNORECASE)


def _limit_resources():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def crystalframes(*args, cwd: Path) -> subprocess.CompletedProcess:
    """``crystalframes *args`` in a fresh interpreter; fails the test (not hangs) past TIMEOUT."""
    env = dict(os.environ, PYTHONPATH=str(SRC), CRYSTALFRAMES_CACHE_DIR=str(cwd / "cache"), OMP_NUM_THREADS="1",
               PYTHONWARNINGS="ignore")
    try:
        proc = subprocess.run([sys.executable, "-m", "crystalframes", *map(str, args)], cwd=cwd, env=env,
                              capture_output=True, timeout=TIMEOUT, preexec_fn=_limit_resources)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-2000:].decode("utf-8", "replace")
        pytest.fail(f"crystalframes {args[0]} did not finish within {TIMEOUT} s (hang). stderr tail:\n{tail}")
    proc.out = proc.stdout.decode("utf-8", "surrogateescape")
    proc.err = proc.stderr.decode("utf-8", "surrogateescape")
    # Collected, not asserted here, so one run reports every problem of the command at once.
    proc.problems = []
    if proc.returncode != 0:
        how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        proc.problems.append(f"crystalframes {args[0]}: {how}; stderr tail: {proc.err[-800:]}")
    if "Traceback" in proc.out + proc.err:
        tb = (proc.out + proc.err)[(proc.out + proc.err).index("Traceback"):]
        proc.problems.append(f"crystalframes {args[0]}: traceback: {tb[-1500:]}")
    return proc


def json_output(proc):
    try:
        return json.loads(proc.out)
    except ValueError:
        pytest.fail("no JSON on stdout\n" + "\n".join(proc.problems) + f"\nstdout tail: {proc.out[-1000:]}")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(folder, entries): a copy of the committed files plus the special ones, and every file's
    manifest entry."""
    folder = tmp_path_factory.mktemp("hostile") / "corpus"
    entries = make_special.manifest() + make_special.build(folder)
    assert sorted(os.listdir(folder)) == sorted(e["file"] for e in entries), "manifest.json and files/ disagree"
    return folder, entries


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An untrained eComFormer small enough to predict the whole corpus in seconds."""
    import torch

    from crystalframes.api import save_model_file
    from crystalframes.data.normalise import TargetNormaliser
    from crystalframes.models.specs import build_model

    options = {"hidden": 16, "scalars": 8, "vectors": 2, "rbf_bins": 16}
    torch.manual_seed(0)
    model = build_model(PREDICT_SPEC, **options).double()
    path = tmp_path_factory.mktemp("model") / "model.pt"
    return save_model_file(path, model, PREDICT_SPEC, options, TargetNormaliser(-1.0, 1.0), ["e_form"], ["eV/atom"])


def expectations(entry: dict, max_z: int) -> list[dict]:
    """One expectation per record of the file, for a consumer that accepts elements up to ``max_z``."""
    records = entry["records"] if entry["expect"] == "records" else [entry]
    out = []
    for r in records:
        r = dict(r)
        if r["expect"] != "bad" and r.get("max_z", 0) > max_z:
            r["expect"], r["match"] = "bad", r"element|encode|Z ?="
        out.append(r)
    return out


def renderings(path: str) -> set[str]:
    """How a path may show in output: itself, or with a non-UTF-8 byte replaced or escaped."""
    raw = os.fsencode(path)
    return {path, raw.decode("utf-8", "replace"), raw.decode("utf-8", "backslashreplace"), raw.decode("latin-1"),
            raw.decode("utf-8", "surrogateescape")}


def belongs(source: str, path: str) -> bool:
    """True if an output ``source`` names ``path`` (the file itself, ``path:line``, ``path [id]``
    or ``path[i]``, the i-th record of a JSON list or table)."""
    return any(source == p or source.startswith((p + ":", p + " ", p + "[")) for p in renderings(path))


def named(text: str, path: str) -> bool:
    """True if ``text`` names ``path`` itself (not a longer name such as ``path.gz``)."""
    return any(re.search(re.escape(p) + r"(?![\w.-])", text) for p in renderings(path))


def counts(expected: list[dict]) -> tuple[int, int, int]:
    kinds = [r["expect"] for r in expected]
    return kinds.count("good"), kinds.count("bad"), kinds.count("either")


def record_id(folder: Path, entry: dict) -> str | None:
    """The id a single-structure file's result carries: its own id field (JSON), else its stem."""
    name = entry["file"]
    if name.endswith(".json") and entry["expect"] != "records":
        try:
            data = json.loads((folder / name).read_text())
            if isinstance(data, dict) and (data.get("id") or data.get("jid")):
                return str(data.get("id") or data.get("jid"))
        except (OSError, ValueError, UnicodeDecodeError):
            return None
    stem = name[:-3] if name.lower().endswith(".gz") else name
    base, dot, ext = stem.rpartition(".")
    return base if dot and ext.lower() in ("cif", "vasp", "poscar", "xyz", "extxyz", "json") else stem


def test_predict_keeps_every_good_result_and_names_every_bad_input(corpus, tiny_model, tmp_path):
    folder, entries = corpus
    out = tmp_path / "out.csv"
    proc = crystalframes("predict", tiny_model, *(folder / e["file"] for e in entries), "-o", out, cwd=tmp_path)
    if not out.exists():
        pytest.fail("no CSV written\n" + "\n".join(proc.problems))
    with open(out, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        rows = list(csv.DictReader(fh))
    value_cols = [c for c in rows[0] if c not in ("id", "source", "formula", "n_atoms", "error")] if rows else []
    assert value_cols, "no prediction column"

    problems, used = proc.problems, set()
    for e in entries:
        path = str(folder / e["file"])
        mine = [i for i, r in enumerate(rows) if belongs(r["source"], path)]
        used.update(mine)
        pred = [rows[i] for i in mine if not rows[i]["error"]]
        err = [rows[i] for i in mine if rows[i]["error"]]
        good, bad, either = counts(expectations(e, MAX_Z[PREDICT_SPEC]))
        label = f"{e['file']} (defect {e['defect'] or '-'})"
        if e.get("may_keep"):
            if not err:
                problems.append(f"{label}: no error row")
            continue
        if not (good <= len(pred) <= good + either and bad <= len(err) <= bad + either and len(mine) == good + bad + either):
            problems.append(f"{label}: expected {good} predicted + {bad} errors (+{either} either way), "
                            f"got {len(pred)} predicted + {len(err)} errors: {[r['error'] for r in err][:3]}")
        for r in pred:
            if not all(math.isfinite(float(r[c])) for c in value_cols):
                problems.append(f"{label}: non-finite prediction {[r[c] for c in value_cols]}")
        for r in expectations(e, MAX_Z[PREDICT_SPEC]):
            if r["expect"] != "good" and r.get("match") and err and not any(
                    re.search(r["match"], x["error"], re.IGNORECASE) for x in err):
                problems.append(f"{label}: error {err[0]['error']!r} does not say /{r['match']}/")
    # the one-line summary on stderr gives both counts (issue: "n predicted, n failed, where the errors are")
    n_pred, n_err = sum(1 for r in rows if not r["error"]), sum(1 for r in rows if r["error"])
    if not any(re.search(rf"\b{n_pred}\b", line) and re.search(rf"\b{n_err}\b", line) and "predict" in line.lower()
               for line in proc.err.splitlines()):
        problems.append(f"no stderr summary line giving {n_pred} predicted and {n_err} failed")
    unclaimed = [rows[i]["source"] for i in range(len(rows)) if i not in used]
    assert not problems and not unclaimed, "\n".join(problems + [f"row naming no input: {s}" for s in unclaimed])


def test_check_measures_every_good_structure_and_names_every_bad_one(corpus, tmp_path):
    from crystalframes.io.files import printable  # a non-UTF-8 name's id is shown with \xNN escapes
    from crystalframes.testing import DEFAULT_TOLERANCES

    folder, entries = corpus
    proc = crystalframes("check", CHECK_SPEC, *(folder / e["file"] for e in entries), "--trials", "1", "--json", cwd=tmp_path)
    report = json_output(proc)
    ids = [s["id"] for s in report["structures"]]
    bad_text = "\n".join(report["bad_inputs"])
    problems = proc.problems
    n_good = n_either = n_bad = 0
    for e in entries:
        expected = expectations(e, MAX_Z[CHECK_SPEC])
        good, bad, either = counts(expected)
        n_good, n_bad, n_either = n_good + good, n_bad + bad, n_either + either
        path, label = str(folder / e["file"]), f"{e['file']} (defect {e['defect'] or '-'})"
        if bad and not named(bad_text, path):
            problems.append(f"{label}: not named among the bad inputs")
        if e["expect"] == "good" and good == 1 and not {record_id(folder, e), printable(record_id(folder, e))} & set(ids):
            problems.append(f"{label}: no result for id {record_id(folder, e)!r}")
    tolerance = report["tolerance"]
    for s in report["structures"]:
        for key, value in s.items():
            if key in ("id", "notes"):  # notes: trials check could not run (e.g. no integer basis change)
                continue
            if value is None or not math.isfinite(value):
                problems.append(f"{s['id']}: {key} = {value}")
            elif key != "mirror_difference" and value > tolerance:
                problems.append(f"{s['id']}: {key} = {value:.3g} > {tolerance:g}")
    assert tolerance == DEFAULT_TOLERANCES["float64"]
    # nothing lost: every record is measured or reported (the truncated gzip may keep what it read)
    total = len(ids) + len(report["bad_inputs"])
    if not (n_good <= len(ids) and n_bad <= len(report["bad_inputs"]) and n_good + n_bad + n_either <= total):
        problems.append(f"{len(ids)} measured + {len(report['bad_inputs'])} bad; expected >= {n_good} + {n_bad} "
                        f"(+{n_either} either way)")
    assert not problems, "\n".join(problems)


def test_data_info_counts_the_good_and_names_every_bad_or_skipped_file(corpus, tmp_path):
    folder, entries = corpus
    proc = crystalframes("data", "info", folder, "--json", cwd=tmp_path)
    summary = json_output(proc)
    text = proc.out + proc.err + json.dumps(summary, ensure_ascii=False)
    low = high = records = other_good = 0
    problems, unlisted = proc.problems, []
    for e in entries:
        good, bad, either = counts(expectations(e, MAX_Z["readers"]))
        path, label = str(folder / e["file"]), f"{e['file']} (defect {e['defect'] or '-'})"
        if STRUCTURE_FILE.search(e["file"]):
            low, high, records = low + good, high + good + either, records + good + bad + either
            if bad and not named(text, path):
                problems.append(f"{label}: bad file not named")
        else:
            # folder mode reads structure files; any other file is read or listed as skipped (defect 13)
            high, other_good = high + good + either, other_good + good
            if not named(text, path):
                unlisted.append(label)
    if unlisted and summary["num_structures"] < low + other_good:
        problems.append("skipped without being listed: " + ", ".join(unlisted))
    if not low <= summary["num_structures"] <= high:
        problems.append(f"{summary['num_structures']} structures read; expected {low}..{high}")
    # a pipe or a looping symlink is listed as skipped (not a structure file), not as a bad record
    accounted = summary["num_structures"] + summary["num_bad_records"] + len(summary["skipped"])
    if accounted < records:
        problems.append(f"{summary['num_structures']} read + {summary['num_bad_records']} bad + "
                        f"{len(summary['skipped'])} skipped < {records} structure records")
    assert not problems, "\n".join(problems)
