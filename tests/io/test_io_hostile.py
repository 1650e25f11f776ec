"""Hostile files: named pipes, symlink loops, odd encodings, odd file names, malicious zips.

Each case must end in one clear InputError / DatasetError naming the file and the problem (or be
read correctly), never hang or mislead. Cases that would hang without the fix run in a child
process with a timeout.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import zipfile

import pytest

from crystalframes.io import DatasetError, InputError, read_dataset, read_structure



def _nacl(fmt: str) -> str:
    """Rock-salt NaCl as CIF or POSCAR text (written by pymatgen)."""
    from pymatgen.core import Lattice, Structure

    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return nacl.to(fmt=fmt)


def _records_json(make_record, n: int) -> str:
    return json.dumps([make_record(id=f"r{i}") for i in range(n)])


# Runs ``fn(path)`` for fn in (read_structure, read_dataset) in a fresh interpreter and prints the
# error it raised: a reader that blocks on a FIFO makes the parent's timeout fire instead.
_CHILD = """
import sys
from crystalframes.io import InputError, read_dataset, read_structure
fn = {"read_structure": read_structure, "read_dataset": read_dataset}[sys.argv[1]]
try:
    fn(sys.argv[2])
except InputError as err:
    print(type(err).__name__, err)
else:
    print("accepted")
"""


def _in_child(fn: str, path) -> str:
    proc = subprocess.run([sys.executable, "-c", _CHILD, fn, str(path)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return proc.stdout.strip()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this platform")
@pytest.mark.parametrize("fn, name", [("read_structure", "pipe.cif"), ("read_structure", "POSCAR"),
                                      ("read_dataset", "pipe.jsonl"), ("read_dataset", "pipe.json.gz")])
def test_named_pipe_is_refused_not_read(tmp_path, fn, name):
    """Nobody writes to the pipe: opening it for reading would block forever."""
    path = tmp_path / name
    os.mkfifo(path)
    out = _in_child(fn, path)
    assert str(path) in out and "named pipe" in out and "not a regular file" in out, out


def test_self_looping_symlink_says_so(tmp_path):
    loop = tmp_path / "loop.cif"
    os.symlink(loop.name, loop)
    with pytest.raises(InputError) as info:
        read_structure(loop)
    assert info.value.source == str(loop) and "symlink loop" in info.value.problem
    os.symlink("loop.jsonl", tmp_path / "loop.jsonl")
    with pytest.raises(DatasetError) as info:
        read_dataset(tmp_path / "loop.jsonl")
    assert "symlink loop" in str(info.value) and "not found" not in str(info.value)


def test_broken_symlink_says_where_it_points(tmp_path):
    link = tmp_path / "gone.cif"
    os.symlink("nowhere.cif", link)
    with pytest.raises(InputError) as info:
        read_structure(link)
    assert "broken symbolic link" in info.value.problem and "nowhere.cif" in info.value.problem


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"])
@pytest.mark.parametrize("name, fmt", [("nacl.cif", "cif"), ("POSCAR", "poscar")])
def test_byte_order_marks_and_utf16_are_read(tmp_path, encoding, name, fmt):
    """UTF-16 without a BOM (-le / -be) is recognised by its NUL bytes."""
    path = tmp_path / name
    path.write_bytes(_nacl(fmt).encode(encoding))
    crystal = read_structure(path)
    assert sorted(crystal.atomic_numbers.tolist())[-1] == 17  # Cl


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_jsonl_with_byte_order_mark(tmp_path, make_record, encoding):
    path = tmp_path / "recs.jsonl"
    lines = [json.dumps(make_record(id=f"r{i}")) for i in range(3)]
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    result = read_dataset(path)
    assert [c.id for c in result.crystals] == ["r0", "r1", "r2"] and result.errors == []


def test_binary_file_is_named_binary(tmp_path):
    path = tmp_path / "image.cif"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(InputError) as info:
        read_structure(path)
    assert "binary" in info.value.problem


# ------------------------------------------------------------------------------- folder mode


@pytest.mark.skipif(sys.platform != "linux", reason="byte file names and FIFOs as on Linux")
def test_folder_lists_what_it_skipped(tmp_path, make_record, caplog):
    folder = tmp_path / "structures"
    folder.mkdir()
    (folder / "a.cif").write_text(_nacl("cif"))
    odd = os.fsdecode(b"x_\xe9.cif")  # a Latin-1 file name on a UTF-8 system
    (folder / odd).write_text(_nacl("cif"))
    (folder / "record.json").write_text(json.dumps(make_record()))
    (folder / "notes.txt").write_text("not a structure")
    os.symlink("loop.cif", folder / "loop.cif")
    os.mkfifo(folder / "pipe.cif")
    with caplog.at_level(logging.INFO, logger="crystalframes.io"):
        result = read_dataset(folder)
    assert sorted(c.id for c in result.crystals) == ["a", "x_\\xe9"]
    for c in result.crystals:
        c.source.encode("utf-8")  # printable: no lone surrogates left
    assert result.errors == []
    skipped = {e.source.rsplit("/", 1)[-1]: e.problem for e in result.skipped}
    assert sorted(skipped) == ["loop.cif", "notes.txt", "pipe.cif", "record.json"]
    assert "symlink loop" in skipped["loop.cif"] and "named pipe" in skipped["pipe.cif"]
    assert "not a structure file" in skipped["record.json"]
    summary = result.summary()
    assert "4 files skipped" in summary and all(name in summary for name in skipped)
    logged = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(logged) == 1 and all(name in logged[0] for name in skipped)


def test_non_utf8_file_name_reads_with_printable_id(tmp_path):
    path = tmp_path / os.fsdecode(b"x_\xe9.cif")
    path.write_text(_nacl("cif"))
    crystal = read_structure(path)
    assert crystal.id == "x_\\xe9"
    crystal.source.encode("utf-8")


# ------------------------------------------------------------------------------------- zips


@pytest.mark.parametrize("evil", ["../../evil.json", "/abs/evil.json", "data/../../evil.json"])
def test_zip_with_escaping_member_names_is_refused(tmp_path, make_record, evil):
    path = tmp_path / "jdft_3d.json.zip"
    body = _records_json(make_record, 2)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("jdft_3d.json", body)
        zf.writestr(zipfile.ZipInfo(evil), body)
    with pytest.raises(DatasetError) as info:
        read_dataset(path)
    assert str(path) in str(info.value) and evil in info.value.problem


def test_zip_duplicate_member_names_are_refused(tmp_path, make_record):
    path = tmp_path / "dup.zip"
    body = _records_json(make_record, 2)
    with zipfile.ZipFile(path, "w") as zf, pytest.warns(UserWarning):
        zf.writestr("jdft_3d.json", body)
        zf.writestr("jdft_3d.json", body)
    with pytest.raises(DatasetError, match="more than once"):
        read_dataset(path)


def test_zip_reads_only_the_expected_member(tmp_path, make_record):
    path = tmp_path / "jdft_3d.json.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("jdft_3d.json", _records_json(make_record, 2))
        zf.writestr("extra/other.json", _records_json(make_record, 3))
    assert len(read_dataset(path, member="jdft_3d.json").crystals) == 2
    with pytest.raises(DatasetError, match="does not contain missing.json"):
        read_dataset(path, member="missing.json")



def test_absurdly_nested_json_is_a_clean_error(tmp_path):
    """'[[[[...' 100,000 deep used to escape the readers as RecursionError (a traceback in
    predict): a JSON dataset, a JSONL line (the good line beside it kept) and a JSON record."""
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "deep.json").write_text(deep)
    with pytest.raises(DatasetError, match="deep.json.*not valid JSON"):
        read_dataset(tmp_path / "deep.json")
    good = json.dumps({"id": "Na", "lattice": [[4, 0, 0], [0, 4, 0], [0, 0, 4]], "species": ["Na"], "frac_coords": [[0, 0, 0]]})
    (tmp_path / "deep.jsonl").write_text(deep + "\n" + good + "\n")
    result = read_dataset(tmp_path / "deep.jsonl")
    assert [c.id for c in result.crystals] == ["Na"] and "deep.jsonl:1" in str(result.errors[0])
    (tmp_path / "one.json").write_text(deep)
    with pytest.raises(InputError, match="one.json.*not valid JSON"):
        read_structure(tmp_path / "one.json")
