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
