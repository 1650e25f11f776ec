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


# --------------------------------------------------------------------------------------------
# pooch: HTTP errors, retries, dropped connections, progress


def test_http_404_is_a_clear_error(cache, http_server, monkeypatch):
    point_registry(monkeypatch, http_server.url("/missing.zip"))
    with pytest.raises(DatasetError, match=r"download failed: HTTP 404 .* from http://127\.0\.0\.1:\d+/missing\.zip.*--file LOCAL"):
        fetch_dataset(NAME, progress=False)
    assert leftovers(cache) == []


def test_failed_download_is_retried(cache, http_server, monkeypatch, jarvis_zip):
    monkeypatch.setattr(download_mod, "DOWNLOAD_RETRIES", 1)
    point_registry(monkeypatch, http_server.serve("/29204826.zip", jarvis_zip))
    http_server.fail_first["/29204826.zip"] = 1  # a flaky server: HTTP 500 once, then the file
    path = fetch_dataset(NAME, progress=False)
    assert sha256_of(path) == sha256_of(jarvis_zip)
    assert http_server.hits == ["/29204826.zip", "/29204826.zip"]


def test_dropped_connection_keeps_nothing(cache, http_server, monkeypatch, jarvis_zip):
    point_registry(monkeypatch, http_server.serve("/29204826.zip", jarvis_zip))
    http_server.short["/29204826.zip"] = 5000  # Content-Length says more than is sent
    with pytest.raises(DatasetError, match="download failed"):
        fetch_dataset(NAME, progress=False)
    assert leftovers(cache) == []


def test_user_agent_is_ours(cache, monkeypatch, jarvis_zip, http_server):
    import pooch

    seen = {}
    real = pooch.HTTPDownloader.__init__

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        real(self, *args, **kwargs)

    monkeypatch.setattr(pooch.HTTPDownloader, "__init__", spy)
    point_registry(monkeypatch, http_server.serve("/29204826.zip", jarvis_zip))
    fetch_dataset(NAME, progress=False)
    assert seen["headers"]["User-Agent"].startswith("crystalframes/") and seen["progressbar"] is False


class FakeTerminal(__import__("io").StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_terminal(cache, http_server, monkeypatch, jarvis_zip):
    point_registry(monkeypatch, http_server.serve("/29204826.zip", jarvis_zip))
    terminal = FakeTerminal()
    monkeypatch.setattr("sys.stderr", terminal)
    fetch_dataset(NAME, progress=True)
    assert "100%" in terminal.getvalue()  # tqdm's bar, through pooch


def test_sha256_argument_is_checked_before_downloading(cache, http_server, monkeypatch, jarvis_zip):
    point_registry(monkeypatch, http_server.serve("/29204826.zip", jarvis_zip))
    with pytest.raises(DatasetError, match=r"--sha256: 'abc' is not a sha256 \(64 hexadecimal digits\)"):
        fetch_dataset(NAME, sha256="abc", progress=False)
    assert http_server.hits == [] and leftovers(cache) == []
    # the pooch-style prefix and upper case are accepted
    path = fetch_dataset(NAME, sha256="SHA256:" + sha256_of(jarvis_zip).upper(), progress=False)
    assert sha256_of(path) == sha256_of(jarvis_zip)


# --------------------------------------------------------------------------------------------
# a failed fetch never touches a valid cached archive


@pytest.mark.parametrize("failure", ["404", "corrupt", "wrong_sha256", "dropped", "extra_member"])
def test_failed_fetch_keeps_the_valid_cached_archive(
    cache, http_server, monkeypatch, jarvis_zip, jarvis_figshare_records, tmp_path, failure
):
    point_registry(monkeypatch, http_server.serve("/29204826.zip", jarvis_zip))
    good = fetch_dataset(NAME, progress=False)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in cache.iterdir()}
    sha256 = None
    if failure == "404":
        point_registry(monkeypatch, http_server.url("/gone.zip"))
    elif failure == "corrupt":
        point_registry(monkeypatch, http_server.serve("/bad.zip", jarvis_zip.read_bytes()[:-100]))
    elif failure == "wrong_sha256":
        sha256 = "0" * 64
    elif failure == "dropped":
        http_server.short["/29204826.zip"] = 1000
    else:
        evil = tmp_path / "evil.zip"
        with zipfile.ZipFile(evil, "w") as zf:
            zf.writestr(MEMBER, json.dumps(jarvis_figshare_records[:20]))
            zf.writestr("more.json", json.dumps(jarvis_figshare_records[:20]))
        point_registry(monkeypatch, http_server.serve("/evil.zip", evil))
    with pytest.raises(DatasetError):
        fetch_dataset(NAME, force=True, sha256=sha256, progress=False)
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in cache.iterdir()} == before
    assert resolve_source(NAME) == good


# --------------------------------------------------------------------------------------------
# defect 5: only the expected member, no unsafe member names


def evil_zip(path, records, *extra_names):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MEMBER, json.dumps(records))
        for name in extra_names:
            zf.writestr(name, json.dumps(records))
    return path


@pytest.mark.parametrize(
    "extra, message",
    [
        (("../../evil.json", "/abs/evil.json"), r"unsafe member names \(absolute or '\.\.'\): '\.\./\.\./evil\.json', '/abs/evil\.json'"),
        (("data/../../evil.json",), "unsafe member names"),
        (("C:\\evil.json",), "unsafe member names"),
        (("extra.json",), f"holds data members besides {MEMBER}: 'extra.json'; only the expected member is accepted"),
        (("sub/records.jsonl.gz",), "holds data members besides"),
        ((f"copy/{MEMBER}",), "holds data members besides"),
        ((MEMBER,), f"holds data members besides {MEMBER}: '{MEMBER}'"),  # a duplicated name
    ],
)
def test_archive_with_other_members_is_rejected(
    cache, http_server, monkeypatch, jarvis_figshare_records, tmp_path, extra, message
):
    import warnings as w

    with w.catch_warnings():
        w.simplefilter("ignore")  # zipfile warns about the duplicated name
        path = evil_zip(tmp_path / "evil.zip", jarvis_figshare_records, *extra)
    point_registry(monkeypatch, http_server.serve("/evil.zip", path))
    with pytest.raises(DatasetError, match=message):
        fetch_dataset(NAME, progress=False)
    assert leftovers(cache) == []
    with pytest.raises(DatasetError, match=message):
        fetch_dataset(NAME, file=path, progress=False)
    assert leftovers(cache) == []


def test_harmless_extra_members_are_accepted(cache, http_server, monkeypatch, jarvis_zip, tmp_path):
    """A README, a folder entry and macOS metadata (which the reader skips) are not records."""
    path = tmp_path / "with_readme.zip"
    with zipfile.ZipFile(jarvis_zip) as src, zipfile.ZipFile(path, "w") as zf:
        zf.writestr("jarvis/", b"")
        zf.writestr(f"jarvis/{MEMBER}", src.read(MEMBER))
        zf.writestr("jarvis/README.txt", "JARVIS-DFT 3D")
        zf.writestr(f"__MACOSX/jarvis/._{MEMBER}", b"\0\5\26\7")
    point_registry(monkeypatch, http_server.serve("/with_readme.zip", path))
    assert len(load_dataset(fetch_dataset(NAME, progress=False)).crystals) == 1325


def test_data_info_never_counts_extra_members(cache, http_server, monkeypatch, jarvis_figshare_records, tmp_path, run):
    records = jarvis_figshare_records[:40]
    path = evil_zip(tmp_path / "evil.zip", records, "../../evil.json", "/abs/evil.json")
    point_registry(monkeypatch, http_server.serve("/evil.zip", path), n_records=40)
    code, _, err = run("data", "fetch", NAME)
    assert code == 2 and "unsafe member names" in err and "Traceback" not in err
    assert leftovers(cache) == []
    code, _, err = run("data", "info", NAME)
    assert code == 2 and "not downloaded yet" in err
    # An archive cached by a release that checked only the expected member (its sidecar hash
    # matches) is refused when read, not read as three times the records.
    cache.mkdir(parents=True, exist_ok=True)
    (cache / f"{NAME}.zip").write_bytes(path.read_bytes())
    (cache / f"{NAME}.sha256").write_text(f"{sha256_of(path)}  {NAME}.zip\n")
    code, out, err = run("data", "info", NAME, "--json")
    assert code == 2 and "unsafe member names" in err and "--force" in err and out == ""
    # fetching again replaces it with a valid copy; data info then counts each record once
    good = write_zip_bytes(records)
    point_registry(monkeypatch, http_server.serve("/good.zip", good), n_records=40)
    code, _, err = run("data", "fetch", NAME)
    assert code == 0, err
    code, out, _ = run("data", "info", NAME, "--json")
    assert code == 0 and json.loads(out)["num_structures"] == 40


def write_zip_bytes(records):
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(MEMBER, json.dumps(records))
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# defect 8: a read-only cache folder


def make_read_only(folder, monkeypatch):
    """chmod 0o555; as root (where chmod does not stop writes) the writes are made to fail."""
    import os

    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root: temporary files and folders there are refused instead
        import tempfile

        for name in ("mkdtemp", "mkstemp"):
            real = getattr(tempfile, name)

            def refuse(*args, dir=None, _real=real, **kwargs):
                if dir is not None and os.path.realpath(dir) == os.path.realpath(folder):
                    raise PermissionError(13, "Permission denied", str(folder))
                return _real(*args, dir=dir, **kwargs)

            monkeypatch.setattr(tempfile, name, refuse)


def test_fetch_into_a_read_only_cache_is_a_clean_error(cache, http_server, monkeypatch, jarvis_zip, run):
    point_registry(monkeypatch, http_server.serve("/29204826.zip", jarvis_zip))
    make_read_only(cache, monkeypatch)
    try:
        with pytest.raises(DatasetError, match=rf"{cache}: cannot write to the dataset cache folder .*CRYSTALFRAMES_CACHE_DIR"):
            fetch_dataset(NAME, progress=False)
        assert http_server.hits == []  # found before downloading anything
        code, out, err = run("data", "fetch", NAME, "--file", jarvis_zip)
        assert code == 2 and str(cache) in err and "Traceback" not in err and out == ""
    finally:
        cache.chmod(0o755)
    assert leftovers(cache) == []


def test_disk_full_during_download_is_not_blamed_on_the_network(cache, http_server, monkeypatch, jarvis_zip):
    import pooch

    def full(self, url, output_file, pooch_obj, check_only=False):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pooch.HTTPDownloader, "__call__", full)
    point_registry(monkeypatch, http_server.serve("/29204826.zip", jarvis_zip))
    with pytest.raises(DatasetError, match=rf"{cache}: cannot write to the dataset cache folder \(No space left on device\)"):
        fetch_dataset(NAME, progress=False)
    assert leftovers(cache) == []


def test_staging_left_by_a_killed_fetch_is_removed(cache, http_server, monkeypatch, jarvis_zip):
    import os

    stale = cache / ".incoming-killed"
    (stale / "x").mkdir(parents=True)
    os.utime(stale, (0, 0))
    recent = cache / ".incoming-running"
    recent.mkdir()
    point_registry(monkeypatch, http_server.serve("/29204826.zip", jarvis_zip))
    fetch_dataset(NAME, progress=False)
    assert leftovers(cache) == [".incoming-running", f"{NAME}.sha256", f"{NAME}.zip"]
