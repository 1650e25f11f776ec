"""crystalframes.locks.file_lock: the one lock helper (study results, study runs, auto stores)."""

from __future__ import annotations

import fcntl

from crystalframes.locks import file_lock


def test_a_held_lock_is_refused_without_waiting_and_taken_once_released(tmp_path):
    path = tmp_path / "run.lock"
    with open(path, "w") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another open file description: as another process
        with file_lock(path, blocking=False) as held:
            assert held is False
    with file_lock(path, blocking=False) as held:
        assert held is True
        with file_lock(path, blocking=False) as again:  # a second taker while we hold it
            assert again is False
    with file_lock(path) as held:
        assert held is True


def test_the_lock_file_is_created_and_never_truncated(tmp_path):
    path = tmp_path / "results.json.lock"
    with file_lock(path):
        assert path.exists()
    path.write_text("someone's note")
    with file_lock(path):
        pass
    assert path.read_text() == "someone's note"
