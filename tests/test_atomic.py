import pytest

from crystalframes.atomic import atomic_write


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(path, "w") as fh:
            fh.write("half")
            raise RuntimeError("interrupted")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    with atomic_write(path, "w") as fh:
        fh.write("new")
    assert path.read_text() == "new"


def test_written_files_get_the_usual_permissions(tmp_path):
    """Outputs are readable like any file the user writes (umask applied), not mkstemp's 0600."""
    import os

    from crystalframes.atomic import atomic_write

    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "out.csv", "w") as fh:
            fh.write("a,b\n")
    finally:
        os.umask(old)
    assert (tmp_path / "out.csv").stat().st_mode & 0o777 == 0o644


def test_a_legal_250_character_name_is_written(tmp_path):
    """The temporary name used to be '.{name}.XXXXXXXX.part', past the 255-byte limit."""
    path = tmp_path / ("p" * 246 + ".csv")
    with atomic_write(path, "w") as fh:
        fh.write("a,b\n")
    assert path.read_text() == "a,b\n"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_text_with_a_non_utf8_file_name_is_written_whole(tmp_path):
    import os

    name = os.fsdecode(b"x_\xe9.cif")  # how Python spells a Latin-1 file name on a UTF-8 system
    with atomic_write(tmp_path / "out.csv", "w") as fh:
        fh.write(f"{name},1.5\nnext,2.5\n")
    text = (tmp_path / "out.csv").read_text(encoding="utf-8")  # valid UTF-8
    assert text == "x_\\udce9.cif,1.5\nnext,2.5\n"


def test_a_folder_is_not_replaced(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(IsADirectoryError):
        with atomic_write(tmp_path / "out", "w") as fh:
            fh.write("x")
    assert (tmp_path / "out").is_dir() and [p.name for p in tmp_path.iterdir()] == ["out"]
