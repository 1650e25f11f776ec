"""Pretrained models shipped inside the package (no download at run time).

``index.json`` maps a name (``mp_e_form``...) to its entry: the member model files (an
ensemble: one or more specs, each with several seeds; float16 where that is exact to 1e-3),
target, units, spec and model card. Names resolve in
``crystalframes.load_model(name)``, ``crystalframes predict NAME ...`` and ``train --init NAME``;
``crystalframes models --pretrained`` lists them. ``benchmarks/train_zoo.py`` trains and writes
them (the card records the command, the commit and a hash of the training data).
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path


def _root() -> Path:
    return Path(str(files("crystalframes.zoo")))


def pretrained() -> dict[str, dict]:
    """Name -> entry of every model this installation ships (empty when it ships none)."""
    index = _root() / "index.json"
    return json.loads(index.read_text()) if index.exists() else {}


def member_paths(name: str) -> list[Path]:
    """The model files of the pretrained model ``name`` (KeyError if it is not one)."""
    return [_root() / f for f in pretrained()[name]["members"]]


def card(name: str) -> str:
    """The model card (Markdown) of the pretrained model ``name``."""
    return (_root() / pretrained()[name]["card"]).read_text()
