"""Downloads, tested offline: the registry URL points at a local HTTP server (127.0.0.1, in a thread)
serving zips built from real records."""

from __future__ import annotations

import hashlib
import json
import math
import warnings
import zipfile
from dataclasses import replace

import pytest

from crystalframes.data import datasets as datasets_mod
from crystalframes.data import download as download_mod
from crystalframes.data import fetch_dataset, load_dataset, resolve_source
from crystalframes.io.errors import DatasetError

NAME = "jarvis_dft_3d_2021"
MEMBER = "jdft_3d-8-18-2021.json"


@pytest.fixture(autouse=True)
def no_retries(monkeypatch):
    """pooch waits 1 s, 2 s... between retries; only the retry test wants them."""
    monkeypatch.setattr(download_mod, "DOWNLOAD_RETRIES", 0)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("CRYSTALFRAMES_CACHE_DIR", str(root))
    return root / "datasets"


def point_registry(monkeypatch, url, **changes):
    """Point the registered JARVIS dataset at ``url`` (its record count set to the sample's)."""
    info = replace(datasets_mod.DATASETS[NAME], url=url, **{"n_records": 1325, **changes})
    monkeypatch.setitem(datasets_mod.DATASETS, NAME, info)
    return info


def sha256_of(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_cache_dir_follows_env_var_and_is_not_created(cache, monkeypatch):
    assert download_mod.cache_dir() == cache
    with pytest.raises(DatasetError, match="not downloaded yet: run `crystalframes data fetch jarvis_dft_3d_2021`"):
        resolve_source(NAME)
    assert not cache.parent.exists()


def test_cache_dir_defaults_to_platform_cache(monkeypatch):
    import platformdirs

    monkeypatch.delenv("CRYSTALFRAMES_CACHE_DIR", raising=False)
    assert download_mod.cache_dir() == download_mod.Path(platformdirs.user_cache_dir("crystalframes")) / "datasets"


def test_fetch_then_load(cache, http_server, monkeypatch, jarvis_zip, jarvis_sample_records):
    point_registry(monkeypatch, http_server.serve("/29204826.zip", jarvis_zip))
    path = fetch_dataset(NAME, progress=False)
    assert path == cache / f"{NAME}.zip"
    assert path.read_bytes() == jarvis_zip.read_bytes()
    assert (cache / f"{NAME}.sha256").read_text().split() == [sha256_of(jarvis_zip), path.name]
    assert leftovers(cache) == [f"{NAME}.sha256", f"{NAME}.zip"]  # no temporary file left behind

    assert resolve_source(NAME) == path
    result = load_dataset(NAME)
    assert len(result.crystals) == len(jarvis_sample_records) == 1325
    first = result.crystals[0]
    assert first.id == "JVASP-48055"
    assert first.targets["formation_energy_peratom"] == pytest.approx(-1.65501)
    assert first.num_atoms == 18
    # 'na' in the figshare record is a missing value
    no_mbj = next(c for c in result.crystals if c.id == first.id)
    assert "mbj_bandgap" not in jarvis_sample_records[0]["targets"]
    assert "mbj_bandgap" in no_mbj.targets and math.isnan(no_mbj.targets["mbj_bandgap"])


def test_resolve_source_can_download(cache, http_server, monkeypatch, jarvis_zip):
    point_registry(monkeypatch, http_server.serve("/29204826.zip", jarvis_zip))
    assert resolve_source(NAME, download=True) == cache / f"{NAME}.zip"


def test_far_record_count_warns(cache, http_server, monkeypatch, jarvis_zip):
    point_registry(monkeypatch, http_server.serve("/29204826.zip", jarvis_zip), n_records=55713)
    with pytest.warns(UserWarning, match="1325 records, far from the ~55713 expected"):
        fetch_dataset(NAME, progress=False)


def test_wrong_sha256_is_rejected_and_nothing_is_kept(cache, http_server, monkeypatch, jarvis_zip):
    point_registry(monkeypatch, http_server.serve("/29204826.zip", jarvis_zip))
    with pytest.raises(DatasetError, match="sha256 mismatch: expected 0000"):
        fetch_dataset(NAME, sha256="0" * 64, progress=False)
    assert leftovers(cache) == []


def test_pinned_registry_sha256_is_checked(cache, http_server, monkeypatch, jarvis_zip):
    point_registry(monkeypatch, http_server.serve("/29204826.zip", jarvis_zip), sha256="f" * 64)
    with pytest.raises(DatasetError, match="sha256 mismatch"):
        fetch_dataset(NAME, progress=False)
    assert leftovers(cache) == []
    point_registry(monkeypatch, http_server.serve("/29204826.zip", jarvis_zip), sha256=sha256_of(jarvis_zip))
    assert fetch_dataset(NAME, progress=False).is_file()


def test_truncated_zip_is_rejected_and_nothing_is_kept(cache, http_server, monkeypatch, jarvis_zip, tmp_path):
    data = jarvis_zip.read_bytes()
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(data[: len(data) // 2])
    point_registry(monkeypatch, http_server.serve("/truncated.zip", truncated))
    with pytest.raises(DatasetError, match=r"download is not a valid zip archive \(truncated\?\)"):
        fetch_dataset(NAME, progress=False)
    assert leftovers(cache) == []
    with pytest.raises(DatasetError, match="not downloaded yet"):
        resolve_source(NAME)


def test_corrupt_member_is_rejected(cache, http_server, monkeypatch, jarvis_figshare_records, tmp_path):
    payload = json.dumps(jarvis_figshare_records[:50]).encode()
    path = tmp_path / "corrupt.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(MEMBER, payload)
    raw = bytearray(path.read_bytes())
    at = raw.index(payload[:200]) + 100  # flip a byte inside the stored JSON: the CRC no longer matches
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))
    point_registry(monkeypatch, http_server.serve("/archive.zip", path))
    with pytest.raises(DatasetError, match=f"corrupt zip archive: member {MEMBER} fails its CRC check"):
        fetch_dataset(NAME, progress=False)
    assert leftovers(cache) == []


def test_zip_without_the_member_is_rejected(cache, http_server, monkeypatch, jarvis_figshare_records, tmp_path, write_zip):
    path = write_zip(tmp_path / "other.zip", "something_else.json", json.dumps(jarvis_figshare_records[:5]))
    point_registry(monkeypatch, http_server.serve("/archive.zip", path))
    with pytest.raises(DatasetError, match=f"does not contain {MEMBER} \\(it holds: something_else.json\\)"):
        fetch_dataset(NAME, progress=False)
    assert leftovers(cache) == []


@pytest.mark.parametrize(
    "payload, message",
    [
        ('{"jid": "JVASP-1"}', "is not a JSON list of records"),
        ("[]", "holds no records"),
        ('[{"jid": "JVASP-1", "atoms": {"lattice_mat": [], "coords": []}}', "JSON ends before the list is closed"),
        ('[{"jid": "JVASP-1", "atoms": {"lattice', "malformed or truncated JSON"),
        ('[{"jid": "JVASP-1"} {"jid": "JVASP-2"}]', "expected ',' but found"),
        ("not json at all", "is not a JSON list of records"),
        ('[{"jid": "JVASP-1", "atoms": {"lattice_mat": [], "coords": []}}]', r"'atoms' lacks elements"),
        ('[{"jid": "JVASP-1"}, 3]', "2 of 2 records are not JARVIS-format crystals"),
    ],
)
def test_bad_json_member_is_rejected(cache, http_server, monkeypatch, tmp_path, write_zip, payload, message):
    path = write_zip(tmp_path / "bad.zip", MEMBER, payload)
    point_registry(monkeypatch, http_server.serve("/archive.zip", path))
    with pytest.raises(DatasetError, match=message):
        fetch_dataset(NAME, progress=False)
    assert leftovers(cache) == []


def test_unreachable_url_is_a_clear_error(cache, monkeypatch, tmp_path):
    point_registry(monkeypatch, "http://127.0.0.1:1/nowhere.zip")
    with pytest.raises(DatasetError, match="download failed: cannot reach .*--file LOCAL"):
        fetch_dataset(NAME, progress=False)
    assert leftovers(cache) == []


def test_local_file_is_validated_and_copied(cache, monkeypatch, jarvis_zip, tmp_path):
    point_registry(monkeypatch, "http://127.0.0.1:1/nowhere.zip")  # any download attempt would fail
    path = fetch_dataset(NAME, file=jarvis_zip, progress=False)
    assert path == cache / f"{NAME}.zip"
    assert sha256_of(path) == sha256_of(jarvis_zip)
    assert jarvis_zip.is_file()  # the user's file is copied, not moved
    assert len(load_dataset(NAME).crystals) == 1325


def test_bad_local_file_is_rejected(cache, monkeypatch, tmp_path):
    point_registry(monkeypatch, None)
    not_a_zip = tmp_path / "archive.zip"
    not_a_zip.write_text("<html>Too many requests</html>")
    with pytest.raises(DatasetError, match="is not a valid zip archive"):
        fetch_dataset(NAME, file=not_a_zip, progress=False)
    assert leftovers(cache) == []
    with pytest.raises(DatasetError, match="no such file"):
        fetch_dataset(NAME, file=tmp_path / "missing.zip", progress=False)


def test_cached_file_is_reused(cache, http_server, monkeypatch, jarvis_zip, tmp_path):
    point_registry(monkeypatch, http_server.serve("/29204826.zip", jarvis_zip))
    first = fetch_dataset(NAME, progress=False)
    stamp = first.stat().st_mtime_ns
    point_registry(monkeypatch, http_server.url("/gone.zip"))
    assert fetch_dataset(NAME, progress=False) == first  # no download attempted
    assert first.stat().st_mtime_ns == stamp
    # force=True does try again; its failure leaves the good cached copy in place
    with pytest.raises(DatasetError, match="download failed"):
        fetch_dataset(NAME, force=True, progress=False)
    assert sha256_of(first) == sha256_of(jarvis_zip)
    assert leftovers(cache) == [f"{NAME}.sha256", f"{NAME}.zip"]


def test_tampered_cache_is_not_trusted(cache, http_server, monkeypatch, jarvis_zip):
    point_registry(monkeypatch, http_server.serve("/29204826.zip", jarvis_zip))
    path = fetch_dataset(NAME, progress=False)
    path.write_bytes(path.read_bytes()[:1000])  # e.g. an interrupted manual copy over it
    with pytest.raises(DatasetError, match="does not match the hash recorded"):
        resolve_source(NAME)
    # fetching again notices, discards it and downloads a good copy
    assert sha256_of(fetch_dataset(NAME, progress=False)) == sha256_of(jarvis_zip)
    assert resolve_source(NAME) == path


def test_embedded_dataset_needs_no_fetch(cache):
    path = fetch_dataset("mp_2018_demo")
    assert path.name == "mp_2018_demo.jsonl.gz" and path.is_file()
    assert not cache.parent.exists()


def test_unknown_dataset(cache):
    with pytest.raises(DatasetError, match="unknown dataset; known datasets: mp_2018_demo, jarvis_dft_3d_2021, mp_2018"):
        fetch_dataset("dft_4d")


def test_progress_only_on_a_terminal(cache, http_server, monkeypatch, jarvis_zip, capsys):
    point_registry(monkeypatch, http_server.serve("/29204826.zip", jarvis_zip))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fetch_dataset(NAME, progress=True)  # stderr is captured (not a TTY): nothing printed
    assert capsys.readouterr().err == ""
