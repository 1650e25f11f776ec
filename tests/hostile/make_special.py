"""The hostile inputs git cannot hold, made at test time next to a copy of the committed corpus.

``build(folder)`` copies ``files/`` into ``folder`` and adds a FIFO, a self-looping symlink, a
symlink to a missing file, a non-UTF-8 file name, a 250-character file name, a 3 MB JSON array
of a million zeros and an unreadable (chmod 000) file. It returns manifest entries for them in the
format of ``manifest.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = HERE / "files"

# b"\xe9" is Latin-1 "e acute": not valid UTF-8, so the name decodes to a lone surrogate (defect 2).
NON_UTF8_NAME = os.fsdecode(b"special_x_\xe9.cif")
# 250 characters: a legal name whose ".{name}.XXXXXXXX.part" temporary would pass 255 (defect 11).
LONG_NAME = "special_" + "l" * (250 - len("special_") - len(".cif")) + ".cif"


def manifest() -> list[dict]:
    return json.loads((HERE / "manifest.json").read_text())


def build(folder: Path) -> list[dict]:
    """Copy the corpus into ``folder`` and add the special files; return their manifest entries."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(FILES.iterdir()):
        shutil.copyfile(path, folder / path.name)
    entries = []

    fifo = folder / "special_fifo.cif"
    os.mkfifo(fifo)  # nobody writes to it: reading it blocks forever unless the reader refuses it
    entries.append({"file": fifo.name, "expect": "bad", "defect": "12", "note": "named pipe", "match": "pipe|FIFO|not a regular file"})

    loop = folder / "special_loop.cif"
    loop.symlink_to(loop.name)
    entries.append({"file": loop.name, "expect": "bad", "defect": "13", "note": "symlink to itself",
                    "match": "loop|symbolic link|symlink"})

    dangling = folder / "special_dangling.vasp"
    dangling.symlink_to("no_such_target.vasp")
    entries.append({"file": dangling.name, "expect": "bad", "defect": "", "note": "symlink to a missing file",
                    "match": "not found|missing|no such|broken|dangling"})

    shutil.copyfile(FILES / "good_nacl.cif", folder / NON_UTF8_NAME)
    entries.append({"file": NON_UTF8_NAME, "expect": "good", "defect": "2", "note": "non-UTF-8 file name"})

    shutil.copyfile(FILES / "good_si.cif", folder / LONG_NAME)
    entries.append({"file": LONG_NAME, "expect": "good", "defect": "11", "note": "250-character file name"})

    # 2 MB, so made here rather than committed: a million numbers used to be parsed whole and
    # reported as a million bad records (12 s, 2 GB, a million lines); now refused at once
    zeros = folder / "special_million_zeros.json"
    zeros.write_text("[" + ", ".join(["0"] * 1_000_000) + "]")
    entries.append({"file": zeros.name, "expect": "bad", "defect": "24", "note": "JSON array of a million zeros",
                    "match": "not structure records"})

    unreadable = folder / "special_unreadable.cif"
    shutil.copyfile(FILES / "good_crlf.cif", unreadable)
    unreadable.chmod(0)
    # root reads it anyway: then it is simply a good file
    readable = os.access(unreadable, os.R_OK)
    entries.append({"file": unreadable.name, "expect": "good" if readable else "bad", "defect": "",
                    "note": "chmod 000", "match": "permission|cannot read|not readable"})
    return entries


if __name__ == "__main__":
    import sys

    for e in build(Path(sys.argv[1])):
        print(e)
