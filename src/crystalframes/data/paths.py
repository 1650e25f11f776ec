"""Where crystalframes keeps downloaded datasets and preprocessed graphs."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "CRYSTALFRAMES_CACHE_DIR"


def cache_root() -> Path:
    """``$CRYSTALFRAMES_CACHE_DIR`` or the platform's user cache dir. Not created here: nothing is
    created at import or lookup time, only when something is written."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("crystalframes"))


def cache_dir() -> Path:
    """Folder holding downloaded datasets (and copies of embedded ones from zipped installs);
    not created here."""
    return cache_root() / "datasets"
