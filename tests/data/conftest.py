"""Fixtures for the data tests: the shared real-data folder and JARVIS figshare-style archives."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import pytest



def read_jsonl_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.fixture(scope="session")
def jarvis_sample_records(shared_data) -> list[dict]:
    return read_jsonl_gz(shared_data / "jarvis_dft_3d_sample.jsonl.gz")


@pytest.fixture(scope="session")
def mp_sample_records(shared_data) -> list[dict]:
    return read_jsonl_gz(shared_data / "mp_2018_sample.jsonl.gz")


JARVIS_TARGETS = (
    "formation_energy_peratom",
    "optb88vdw_total_energy",
    "optb88vdw_bandgap",
    "mbj_bandgap",
    "ehull",
    "bulk_modulus_kv",
    "shear_modulus_gv",
)


def to_figshare_record(record: dict) -> dict:
    """A shared-sample record rewritten the way the JARVIS figshare JSON stores it
    (``jid``, ``atoms`` dict, one key per target, ``"na"`` when missing)."""
    out = {
        "jid": record["id"],
        "atoms": {
            "lattice_mat": record["lattice"],
            "coords": record["frac_coords"],
            "elements": record["species"],
            "cartesian": False,
        },
    }
    for name in JARVIS_TARGETS:
        out[name] = record["targets"].get(name, "na")
    return out


def write_zip(path: Path, member: str, payload: bytes | str) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, payload)
    return path


@pytest.fixture(name="write_zip", scope="session")
def write_zip_fixture():
    """``write_zip(path, member, payload)``: a one-member deflated zip."""
    return write_zip


@pytest.fixture(scope="session")
def jarvis_figshare_records(jarvis_sample_records) -> list[dict]:
    return [to_figshare_record(r) for r in jarvis_sample_records]


@pytest.fixture(scope="session")
def jarvis_zip(tmp_path_factory, jarvis_figshare_records) -> Path:
    """A zip laid out like figshare file 29204826, holding the 1,325 shared JARVIS records."""
    folder = tmp_path_factory.mktemp("figshare")
    return write_zip(folder / "29204826.zip", "jdft_3d-8-18-2021.json", json.dumps(jarvis_figshare_records))
