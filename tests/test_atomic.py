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


# --- outputs that are not regular files: never replaced -------------------------------------


def test_a_symlink_stays_a_link_and_its_target_is_replaced(tmp_path):
    import os

    (tmp_path / "real.csv").write_text("old")
    os.symlink("real.csv", tmp_path / "link.csv")
    with atomic_write(tmp_path / "link.csv", "w") as fh:
        fh.write("new")
    assert (tmp_path / "link.csv").is_symlink() and os.readlink(tmp_path / "link.csv") == "real.csv"
    assert (tmp_path / "real.csv").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.csv", "real.csv"]


def test_a_dangling_symlink_gets_its_target_created(tmp_path):
    import os

    os.symlink("made.csv", tmp_path / "link.csv")
    with atomic_write(tmp_path / "link.csv", "w") as fh:
        fh.write("new")
    assert (tmp_path / "link.csv").is_symlink() and (tmp_path / "made.csv").read_text() == "new"


def test_a_named_pipe_receives_the_output_and_stays_a_pipe(tmp_path):
    import os
    import stat
    import threading

    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    import time

    time.sleep(0.2)  # let the reader open its end
    with atomic_write(fifo, "w") as fh:
        fh.write("a,b\n" * 1000)
    reader.join(10)
    assert got == [b"a,b\n" * 1000]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.fifo"]


def test_a_named_pipe_nobody_reads_is_refused_at_once_not_a_hang(tmp_path):
    import os
    import stat

    from crystalframes.io.errors import UserError

    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="no process is reading"):
        with atomic_write(fifo, "w") as fh:
            fh.write("x")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_character_device_is_written_in_place_never_replaced(tmp_path):
    """A copy of /dev/null's node made in the test's folder (root can mknod; the real
    /dev/null is never touched)."""
    import os
    import stat

    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        with open(node, "wb") as probe:
            probe.write(b"x")
    except OSError as exc:  # not root, or a nodev mount
        pytest.skip(f"cannot make a working character device here: {exc}")
    with atomic_write(node, "w") as fh:
        fh.write("a,b\n")
    assert stat.S_ISCHR(os.stat(node).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null"]


def test_a_socket_is_refused_by_name(tmp_path):
    import socket
    import stat
    import os

    from crystalframes.io.errors import UserError

    path = tmp_path / "s.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    try:
        with pytest.raises(UserError, match="socket"):
            with atomic_write(path, "w") as fh:
                fh.write("x")
        assert stat.S_ISSOCK(os.stat(path).st_mode)
    finally:
        sock.close()


def test_a_failed_torch_save_names_the_os_reason(tmp_path, monkeypatch):
    """torch's zip writer hides ENOSPC in a RuntimeError; save_torch raises the OSError."""
    import errno
    import os

    from crystalframes.atomic import describe_os_error, save_torch

    real_open = open

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.fh.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("builtins.open", lambda *a, **k: Full(real_open(*a, **k)))
    with pytest.raises(OSError) as info:
        save_torch({"x": 1}, tmp_path / "m.pt")
    monkeypatch.undo()
    assert describe_os_error(info.value, tmp_path / "m.pt") == f"{tmp_path / 'm.pt'}: no space left on the device (ENOSPC)"
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_names_the_output_not_the_temporary_file(tmp_path):
    import errno

    with pytest.raises(OSError) as info:
        with atomic_write(tmp_path / "out.csv", "w"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert info.value.filename == str(tmp_path / "out.csv")
