"""The dataset registry, the embedded demo dataset and source resolution."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest

from crystalframes.data import (
    benchmark_split_key,
    get_dataset_info,
    list_datasets,
    load_dataset,
    resolve_source,
    target_units,
)
from crystalframes.io.errors import DatasetError

DEMO_SHA256 = "9cd1a163687fe5cb985112f4b9c55634f8a2c4826f85ddbaa427b7b295e09c6b"


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CRYSTALFRAMES_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def demo_e_form():
    return load_dataset("mp_2018_demo", target="mp2018_e_form")


def test_registry_lists_the_three_datasets():
    assert [info.name for info in list_datasets()] == ["mp_2018_demo", "jarvis_dft_3d_2021", "mp_2018", "perov_5", "carbon_24",
                                                    "mp_dielectric", "mp_elastic", "mp_piezo"]
    jarvis = get_dataset_info("jarvis_dft_3d_2021")
    assert jarvis.url == "https://ndownloader.figshare.com/files/29204826"
    assert jarvis.member == "jdft_3d-8-18-2021.json"
    assert jarvis.id_key == "jid" and jarvis.default_target == "formation_energy_peratom"
    assert 55000 < jarvis.n_records < 56000 and jarvis.sha256 is None
    megnet = get_dataset_info("mp_2018")
    assert megnet.url == "https://ndownloader.figshare.com/files/26724977"
    assert megnet.member == "megnet.json" and megnet.id_key == "id"
    assert megnet.n_records == 60000 + 5000 + 4239
    assert megnet.targets == {"e_form": "eV/atom", "gap pbe": "eV"}
    demo = get_dataset_info("mp_2018_demo")
    assert demo.url is None and demo.is_embedded and demo.default_target == "mp2018_e_form"
    for info in list_datasets():
        assert info.citation and info.description
        assert all(unit == target_units(name) for name, unit in info.targets.items())


def test_aliases():
    assert get_dataset_info("megnet").name == "mp_2018"
    assert get_dataset_info("dft_3d_2021").name == "jarvis_dft_3d_2021"
    with pytest.raises(DatasetError, match="unknown dataset; known datasets: mp_2018_demo, jarvis_dft_3d_2021, mp_2018"):
        get_dataset_info("qm9")


@pytest.mark.parametrize(
    "name, unit",
    [
        ("formation_energy_peratom", "eV/atom"),
        ("optb88vdw_bandgap", "eV"),
        ("mbj_bandgap", "eV"),
        ("bulk_modulus_kv", "GPa"),
        ("e_form", "eV/atom"),
        ("gap pbe", "eV"),
        ("gap_pbe", "eV"),  # loose spelling
        ("mp2018_gap_pbe", "eV"),
        ("K_VRH", "GPa"),
        ("log10_G_VRH", "log10(GPa)"),
        ("LOG10_G_VRH", "log10(GPa)"),
        ("no_such_target", ""),
    ],
)
def test_target_units(name, unit):
    assert target_units(name) == unit


def test_benchmark_split_keys(shared_data):
    import gzip
    import json

    with gzip.open(shared_data / "benchmark_splits.json.gz", "rt") as fh:
        keys = set(json.load(fh))
    for info in list_datasets():
        for target, key in info.split_keys.items():
            assert key in keys, (info.name, target)
    assert benchmark_split_key("mp_2018_demo", "mp2018_gap_pbe") == "megnet_gappbe"
    assert benchmark_split_key("jarvis_dft_3d_2021", "mbj_bandgap") == "dft_3d_mbj_bandgap"
    assert benchmark_split_key("mp_2018_demo", "K_VRH") is None


def test_embedded_demo_is_the_shared_sample_with_attribution(shared_data):
    path = resolve_source("mp_2018_demo")
    assert path.name == "mp_2018_demo.jsonl.gz"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == DEMO_SHA256
    assert path.read_bytes() == (shared_data / "mp_2018_sample.jsonl.gz").read_bytes()
    attribution = (path.parent / "ATTRIBUTION.md").read_text()
    for must in ("matminer 0.3.3", "CC-BY 4.0", "mp.2018.6.1", "jarvis-leaderboard 2024.10.30", "test"):
        assert must in attribution


def test_embedded_files_are_package_data():
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    text = pyproject.read_text()
    assert '"data/embedded/*.jsonl.gz"' in text and '"data/embedded/*.md"' in text


def test_load_embedded_demo(demo_e_form):
    assert len(demo_e_form.crystals) == 5915  # 40 records lack the mp.2018.6.1 label
    assert len(demo_e_form.missing_target) == 40 and demo_e_form.errors == []
    assert all("missing target 'mp2018_e_form'" in str(e) for e in demo_e_form.missing_target)
    first = demo_e_form.crystals[0]
    assert first.id == "mp-10003" and first.num_atoms == 12
    assert first.targets["mp2018_e_form"] == pytest.approx(-0.34317810666666776)
    assert first.targets["log10_K_VRH"] == pytest.approx(2.288403246130755)
    assert {c.split for c in demo_e_form.crystals} == {"train", "val"}  # no benchmark test records


def test_resolve_existing_path_is_itself(tmp_path):
    folder = tmp_path / "mp_2018"  # a path wins over the registered name it looks like
    folder.mkdir()
    assert resolve_source(folder) == folder
    assert resolve_source(str(folder)) == folder


def test_resolve_not_downloaded_names_the_command():
    with pytest.raises(DatasetError) as info:
        resolve_source("megnet")
    assert info.value.source == "mp_2018"
    assert "not downloaded yet: run `crystalframes data fetch mp_2018`" in info.value.problem
    assert "--file LOCAL" in info.value.problem


def test_resolve_unknown_source(tmp_path):
    missing = tmp_path / "nothing.jsonl"
    with pytest.raises(DatasetError, match="no such dataset or file; known datasets: mp_2018_demo, jarvis_dft_3d_2021"):
        resolve_source(missing)


def test_load_dataset_from_a_path(shared_data):
    result = load_dataset(shared_data / "jarvis_dft_3d_sample.jsonl.gz", target="mbj_bandgap")
    assert len(result.crystals) == 687
    assert all(not math.isnan(c.targets["mbj_bandgap"]) for c in result.crystals)

