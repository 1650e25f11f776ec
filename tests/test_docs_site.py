"""The API reference site (mkdocs + mkdocstrings, ``mkdocs.yml``) builds in strict mode, and
strict mode does fail on a broken reference (so the first check can fail)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(root: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=root, capture_output=True, text=True, timeout=600)


def test_the_docs_site_builds_strictly(tmp_path):
    proc = build(ROOT, tmp_path / "site")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "index.html").read_text().count("frame_names") > 0


def test_strict_mode_fails_on_a_broken_reference(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    (copy / "src").symlink_to(ROOT / "src")
    with open(copy / "docs" / "reference.md", "a") as fh:
        fh.write("\n::: crystalframes.no_such_module\n")
    proc = build(copy, tmp_path / "site")
    assert proc.returncode != 0 and "no_such_module" in proc.stderr
