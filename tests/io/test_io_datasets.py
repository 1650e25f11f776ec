"""iter_records / read_dataset on every supported source type, with hand-made records."""

from __future__ import annotations

import gzip
import json
import logging
import math
import zipfile

import numpy as np
import pytest

from crystalframes.io import Crystal, DatasetError, InputError, ReadResult, iter_records, read_dataset

NACL_POSCAR = """NaCl
1.0
  5.64 0.00 0.00
  0.00 5.64 0.00
  0.00 0.00 5.64
Na Cl
1 1
direct
  0.0 0.0 0.0
  0.5 0.5 0.5
"""


def _write_jsonl(path, lines: list[str]) -> None:
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def _mixed_lines(make_record) -> list[str]:
    """3 good and 2 bad records: line 2 is not JSON, line 4 has a species/coords mismatch."""
    bad = make_record(id="bad-1")
    bad["species"] = bad["species"][:-1]
    return [
        json.dumps(make_record(id="good-1")),
        '{"id": "broken", "lattice": [[1, 0, 0]',
        json.dumps(make_record(id="good-2", targets={"e_form": "na", "gap": 1.0})),
        json.dumps(bad),
        json.dumps(make_record(id="good-3")),
    ]


# ------------------------------------------------------------------------------------------ JSONL


@pytest.mark.parametrize("name", ["mixed.jsonl", "mixed.jsonl.gz"])
def test_jsonl_three_good_two_bad(tmp_path, make_record, name, caplog):
    path = tmp_path / name
    _write_jsonl(path, _mixed_lines(make_record))
    with caplog.at_level(logging.WARNING, logger="crystalframes.io"):
        result = read_dataset(path)
    assert isinstance(result, ReadResult)
    assert result.source == str(path)
    assert [c.id for c in result.crystals] == ["good-1", "good-2", "good-3"]
    assert len(result.errors) == 2
    first, second = result.errors
    assert first.source == f"{path}:2" and "not valid JSON" in first.problem
    assert str(second) == f"{path}:4 [bad-1]: 'frac_coords' has 8 rows but 'species' has 7"
    # one warning summarises the bad records (each is kept in result.errors)
    logged = [r.getMessage() for r in caplog.records if r.name == "crystalframes.io"]
    assert len(logged) == 1 and "2 bad records" in logged[0]
    summary = result.summary()
    assert "3 crystals read, 2 bad records" in summary
    assert "1 x not valid JSON" in summary
    assert "1 x 'frac_coords' has N rows but 'species' has N" in summary


def test_strict_raises_first_error(tmp_path, make_record):
    path = tmp_path / "mixed.jsonl"
    _write_jsonl(path, _mixed_lines(make_record))
    with pytest.raises(InputError) as info:
        read_dataset(path, strict=True)
    assert info.value.source == f"{path}:2"


def test_target_filter_drops_missing(tmp_path, make_record, caplog):
    """Records without the target are set aside and counted in one INFO line, not reported as
    bad records in a WARNING; a target no record has (a typo) is one WARNING."""
    path = tmp_path / "mixed.jsonl"
    _write_jsonl(path, _mixed_lines(make_record))
    with caplog.at_level(logging.INFO, logger="crystalframes.io"):
        result = read_dataset(path, target="e_form")
    assert [c.id for c in result.crystals] == ["good-1", "good-3"]
    assert [str(e) for e in result.missing_target] == [f"{path}:3 [good-2]: missing target 'e_form' (no value)"]
    assert len(result.errors) == 2  # the two broken lines, and nothing else
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos == [f"{path}: 1 records have no e_form value; skipped"]
    assert "1 records have no e_form value; skipped" in result.summary()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="crystalframes.io"):
        typo = read_dataset(path, target="eform")
    assert typo.crystals == []
    assert "missing target 'eform' (record has: e_form, gap)" in str(typo.missing_target[-1])
    assert "3 records have no eform value" in typo.summary()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("no record has a value for target 'eform'" in m for m in warned)


def test_demo_set_reads_without_warnings(caplog):
    """The embedded demo set has records without the default target: that is one INFO line, so the
    default `crystalframes train` does not open with a WARNING listing them."""
    from crystalframes.data.datasets import get_dataset_info
    from crystalframes.data.sources import load_dataset

    target = get_dataset_info("mp_2018_demo").default_target
    with caplog.at_level(logging.INFO, logger="crystalframes"):
        result = load_dataset("mp_2018_demo", target=target)
    assert result.crystals and result.missing_target and result.errors == []
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert sum(f"have no {target} value; skipped" in m for m in infos) == 1


def test_progress_bar_only_on_a_terminal(tmp_path, make_record, monkeypatch):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    path = tmp_path / "recs.jsonl"
    _write_jsonl(path, [json.dumps(make_record(id=f"r{i}")) for i in range(3)])
    for stream, shown in ((Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        assert len(read_dataset(path)) == 3
        assert ("reading recs.jsonl" in stream.getvalue()) is shown


def test_iter_records_yields_errors_in_order(tmp_path, make_record):
    path = tmp_path / "mixed.jsonl"
    _write_jsonl(path, _mixed_lines(make_record))
    kinds = [type(item) for item in iter_records(path)]
    assert kinds == [Crystal, InputError, Crystal, InputError, Crystal]


def test_non_finite_coordinates_and_bad_target_in_jsonl(tmp_path, make_record):
    rec_nan = make_record(id="nan-coords")
    rec_nan["frac_coords"][3] = [float("nan"), 0.5, 0.0]
    path = tmp_path / "bad.jsonl"
    _write_jsonl(path, [json.dumps(rec_nan), json.dumps(make_record(id="bad-target", targets={"gap": "abc"})),
                        json.dumps(make_record(species=["Na"] * 4 + ["Cl"] * 3 + ["Xx"], id="xx"))])
    result = read_dataset(path)
    assert result.crystals == []
    messages = [str(e) for e in result.errors]
    assert messages[0] == f"{path}:1 [nan-coords]: coordinates contain non-finite values (nan/inf)"
    assert messages[1] == f"{path}:2 [bad-target]: target 'gap' is not a number: 'abc'"
    assert messages[2] == f"{path}:3 [xx]: unknown element 'Xx'"


def test_truncated_jsonl_gz_keeps_good_records(tmp_path, make_record):
    lines = [json.dumps(make_record(id=f"r{i}")) for i in range(400)]
    whole = gzip.compress(("\n".join(lines) + "\n").encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])
    items = list(iter_records(path))
    good = [i for i in items if isinstance(i, Crystal)]
    errors = [i for i in items if isinstance(i, InputError)]
    assert 0 < len(good) < 400
    assert [c.id for c in good] == [f"r{i}" for i in range(len(good))]
    assert len(errors) == 1 and items[-1] is errors[0]
    assert errors[0].source == str(path)
    assert "file is truncated / corrupt gzip" in errors[0].problem


def test_jsonl_last_line_without_newline(tmp_path, make_record):
    path = tmp_path / "nonl.jsonl"
    path.write_text(json.dumps(make_record(id="a")) + "\n\n" + json.dumps(make_record(id="b")))
    assert [c.id for c in read_dataset(path).crystals] == ["a", "b"]


# ----------------------------------------------------------------------------------- bad sources


def test_missing_source_raises_dataset_error(tmp_path):
    with pytest.raises(DatasetError) as info:
        iter_records(tmp_path / "nope.jsonl")  # raises at call time, before iteration
    assert str(tmp_path / "nope.jsonl") in str(info.value)
    with pytest.raises(DatasetError):
        read_dataset(tmp_path / "nope")


def test_unrecognised_source_raises_dataset_error(tmp_path):
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(DatasetError, match="unrecognised dataset type"):
        iter_records(path)
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(DatasetError, match="neither id_prop.csv nor structure files"):
        iter_records(empty)


def test_unusable_json_and_zip_raise_dataset_error(tmp_path):
    bad_json = tmp_path / "broken.json"
    bad_json.write_text('[{"jid": "JVASP-1", ')
    with pytest.raises(DatasetError, match="not valid JSON"):
        iter_records(bad_json)
    bad_zip = tmp_path / "broken.zip"
    bad_zip.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DatasetError, match="not a readable zip archive"):
        iter_records(bad_zip)
    no_json = tmp_path / "nojson.zip"
    with zipfile.ZipFile(no_json, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(DatasetError, match="no .json"):
        iter_records(no_json)


# ---------------------------------------------------------------------------------- JSON and zip


def _jarvis_list(make_record, n: int) -> list[dict]:
    out = []
    for i in range(n):
        rec = make_record()
        out.append({
            "jid": f"JVASP-{i}",
            "atoms": {"lattice_mat": rec["lattice"], "coords": (np.asarray(rec["frac_coords"]) * 5.64).tolist(),
                      "elements": rec["species"], "cartesian": True},
            "optb88vdw_bandgap": "na" if i == 1 else 5.0 + i,
            "formula": "NaCl",
        })
    return out


def test_json_list_of_jarvis_records(tmp_path, make_record):
    path = tmp_path / "jdft_3d.json.gz"
    path.write_bytes(gzip.compress(json.dumps(_jarvis_list(make_record, 4)).encode()))
    result = read_dataset(path, target="optb88vdw_bandgap")
    assert [c.id for c in result.crystals] == ["JVASP-0", "JVASP-2", "JVASP-3"]
    assert result.errors == []
    assert [str(e) for e in result.missing_target] == [
        f"{path}[1] [JVASP-1]: missing target 'optb88vdw_bandgap' (no value)"]
    assert np.allclose(result.crystals[0].frac_coords, make_record()["frac_coords"])


def test_zip_holding_a_json_list(tmp_path, make_record):
    records = _jarvis_list(make_record, 3)
    records[2]["atoms"]["elements"] = records[2]["atoms"]["elements"][:-1]
    path = tmp_path / "jdft_3d-8-18-2021.json.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("jdft_3d-8-18-2021.json", json.dumps(records))
        zf.writestr("__MACOSX/._jdft_3d-8-18-2021.json", "junk")
    result = read_dataset(path)
    assert [c.id for c in result.crystals] == ["JVASP-0", "JVASP-1"]
    assert math.isnan(result.crystals[1].targets["optb88vdw_bandgap"])
    assert "formula" not in result.crystals[0].targets
    assert len(result.errors) == 1
    assert result.errors[0].source == f"{path}:jdft_3d-8-18-2021.json[2] [JVASP-2]"


# ---------------------------------------------------------------------------------- folders


def test_id_prop_folder(tmp_path):
    folder = tmp_path / "cgcnn"
    folder.mkdir()
    (folder / "b.vasp").write_text(NACL_POSCAR)
    (folder / "POSCAR-c").write_text(NACL_POSCAR)
    (folder / "d").write_text(NACL_POSCAR)
    (folder / "e.vasp").write_text(NACL_POSCAR)
    (folder / "id_prop.csv").write_text("b,1.5\nc,2.5\nd,3.5\ne,abc\nmissing,4.5\n\ne.vasp,0.25\n")
    result = read_dataset(folder)
    assert [(c.id, c.targets) for c in result.crystals] == [
        ("b", {"target": 1.5}), ("c", {"target": 2.5}), ("d", {"target": 3.5}), ("e", {"target": 0.25})]
    assert result.crystals[0].source == str(folder / "b.vasp")
    csv_path = folder / "id_prop.csv"
    assert [str(e) for e in result.errors[:1]] == [f"{csv_path}:4 [e]: target 'target' is not a number: 'abc'"]
    assert result.errors[1].source == f"{csv_path}:5 [missing]"
    assert "structure file not found" in result.errors[1].problem


def test_id_prop_multi_target_and_header(tmp_path):
    folder = tmp_path / "multi"
    folder.mkdir()
    (folder / "x.vasp").write_text(NACL_POSCAR)
    (folder / "id_prop.csv").write_text("x,1,2\nx.vasp,3,na\nx,5\n")
    result = read_dataset(folder)
    assert [c.targets for c in result.crystals][0] == {"target_0": 1.0, "target_1": 2.0}
    assert math.isnan(result.crystals[1].targets["target_1"])
    assert "row has 1 target values, expected 2" in str(result.errors[0])
    (folder / "id_prop.csv").write_text("id,e_form\nx,-1.25\n")
    header = read_dataset(folder / "id_prop.csv")  # the csv itself is accepted as the source too
    assert header.errors == [] and header.crystals[0].targets == {"e_form": -1.25}


def test_id_prop_bad_structure_file_names_the_file(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "x.cif").write_text("garbage\n")
    (folder / "id_prop.csv").write_text("x,1.0\n")
    result = read_dataset(folder)
    assert result.crystals == []
    assert result.errors[0].source == str(folder / "x.cif")
    assert "cannot parse as CIF" in result.errors[0].problem


def test_plain_folder_of_structures(tmp_path):
    (tmp_path / "POSCAR").write_text(NACL_POSCAR)
    (tmp_path / "b.vasp").write_text(NACL_POSCAR)
    (tmp_path / "c.cif").write_text("not a cif\n")
    (tmp_path / "notes.txt").write_text("ignored")
    result = read_dataset(tmp_path)
    assert sorted(c.id for c in result.crystals) == ["POSCAR", "b"]
    assert all(c.targets == {} for c in result.crystals)
    assert [e.source for e in result.errors] == [str(tmp_path / "c.cif")]


def test_readers_module_still_re_exports_the_api():
    """readers.py was split into coercion / structures / datasets; code importing it keeps working."""
    import crystalframes.io as public
    from crystalframes.io import readers

    assert set(readers.__all__) <= set(public.__all__)
    assert all(getattr(readers, name) is getattr(public, name) for name in readers.__all__)
