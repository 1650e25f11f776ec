"""Per-record problems cost only that record: elements the model cannot encode and targets of
non-physical size are reported by record and skipped; an unwritable graph cache only warns."""

import json
import logging

import pytest

from crystalframes.train.run import train
from tiny import tiny_config


def with_records(tiny_data, tmp_path, edits):
    """A copy of the tiny data where record i gets ``edits[i](record)``."""
    records = [json.loads(l) for l in tiny_data.read_text().splitlines()]
    for i, edit in edits.items():
        edit(records[i])
    path = tmp_path / "edited.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path, [records[i]["id"] for i in edits]


def oganesson(record):
    record["species"][0] = "Og"  # Z = 118: the readers accept it, eComFormer encodes Z <= 100


def tennessine(record):
    record["species"][-1] = "Ts"


def huge_target(record):
    record["targets"]["mp2018_e_form"] = 1e308  # overflows the standardisation (squares)


def large_target(record):
    record["targets"]["mp2018_e_form"] = -2e7


def test_unencodable_elements_are_reported_and_skipped(tiny_data, tmp_path, caplog):
    data, ids = with_records(tiny_data, tmp_path, {0: oganesson, 5: tennessine, 31: oganesson})  # 2 train, 1 val
    with caplog.at_level(logging.WARNING, logger="crystalframes.train"):
        result = train(tiny_config(data, 1), tmp_path / "run")
    assert result.metrics["num_bad_records"] == 3 and result.metrics["epochs_completed"] == 1
    report = caplog.text
    assert "skipped 3 records" in report and all(i in report for i in ids) and "Og (Z=118)" in report and "Ts (Z=117)" in report
    assert result.metrics["val"]["n"] == 9


@pytest.mark.parametrize("edit, shown", [(huge_target, "1e+308"), (large_target, "-2e+07")])
def test_non_physical_targets_are_rejected_by_record(tiny_data, tmp_path, caplog, edit, shown):
    data, ids = with_records(tiny_data, tmp_path, {3: edit})
    with caplog.at_level(logging.WARNING, logger="crystalframes.train"):
        result = train(tiny_config(data, 1), tmp_path / "run")
    assert result.metrics["num_bad_records"] == 1
    assert ids[0] in caplog.text and f"target 'mp2018_e_form' = {shown} is not a physical value" in caplog.text
    assert result.metrics["val"]["mae"] < 10


def test_an_unwritable_graph_cache_only_warns(tiny_data, tmp_path, monkeypatch, caplog):
    """As root the tests cannot make a folder read-only: the cache file's writer raises
    PermissionError as it would there."""
    import crystalframes.data.cache as cache

    def read_only(path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cache, "save_torch", read_only)
    with caplog.at_level(logging.WARNING, logger="crystalframes"):
        result = train(tiny_config(tiny_data, 1), tmp_path / "run")
    assert result.metrics["epochs_completed"] == 1
    assert "cannot write the graph cache" in caplog.text and "Permission denied" in caplog.text


def test_a_cache_folder_that_cannot_exist_only_warns(tiny_data, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("CRYSTALFRAMES_CACHE_DIR", str(blocker / "cache"))
    with caplog.at_level(logging.WARNING, logger="crystalframes"):
        result = train(tiny_config(tiny_data, 1), tmp_path / "run")
    assert result.metrics["epochs_completed"] == 1 and "cannot write the graph cache" in caplog.text
