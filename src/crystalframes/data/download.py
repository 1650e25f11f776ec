"""Downloading the registered datasets into a local cache, safely.

A file only ever enters the cache after it has been checked: it is streamed into a temporary
file next to its final place, hashed while streaming, validated (pinned sha256 if any, zip
integrity, the expected JSON member, a JSON list of JARVIS-format records), and only then
moved into place with an atomic :func:`os.replace`. On any failure the temporary file is
deleted, so a truncated download can never poison the cache (the classic ``BadZipFile`` trap
of re-reading a half-written archive on every later run).

Cache folder: ``$CRYSTALFRAMES_CACHE_DIR/datasets`` if that variable is set, otherwise
``platformdirs.user_cache_dir("crystalframes")/datasets``. Folders are created on first write,
never at import.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import IO, Iterator

from crystalframes.atomic import atomic_write
from crystalframes.data.paths import CACHE_ENV as CACHE_ENV_VAR
from crystalframes.data.paths import cache_root
from crystalframes.data.datasets import DatasetInfo, embedded_path, get_dataset_info
from crystalframes.io.errors import DatasetError

__all__ = [
    "CACHE_ENV_VAR",
    "cache_dir",
    "cached_dataset",
    "fetch_dataset",
    "validate_archive",
    "file_sha256",
]

CHUNK_SIZE = 1 << 20
TIMEOUT_SECONDS = 60.0
# A record count outside [expected / FACTOR, expected * FACTOR] is suspicious enough to warn about.
COUNT_WARNING_FACTOR = 2.0
# Share of records allowed to lack the required structure keys before the archive is rejected.
MAX_BAD_RECORD_FRACTION = 0.01
# A single JSON record larger than this means the file is not the record list we expect.
MAX_RECORD_CHARS = 64 << 20
REQUIRED_ATOMS_KEYS = ("lattice_mat", "coords", "elements")


def _user_agent() -> str:
    from crystalframes import __version__

    return f"crystalframes/{__version__} (dataset download; Python urllib)"


def cache_dir() -> Path:
    """Folder holding downloaded datasets (not created here)."""
    return cache_root() / "datasets"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".zip") + ".sha256")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def _read_sidecar(path: Path) -> str | None:
    try:
        text = _sidecar(path).read_text().split()
    except OSError:
        return None
    return text[0].lower() if text else None


def _write_sidecar(path: Path, digest: str) -> None:
    with atomic_write(_sidecar(path), "w") as fh:
        fh.write(f"{digest}  {path.name}\n")


def cached_dataset(name: str) -> Path | None:
    """The cached archive of a downloadable dataset, or ``None`` if it has not been fetched.

    A cached file is only trusted if it still matches the hash recorded when it was validated
    (a file merely existing is not enough); a mismatch raises a :class:`DatasetError`.
    """
    info = get_dataset_info(name)
    if info.is_embedded:
        return embedded_path(info)
    path = cache_dir() / info.filename
    if not path.is_file():
        return None
    recorded = _read_sidecar(path)
    if recorded is None or recorded != file_sha256(path):
        raise DatasetError(
            str(path),
            "cached file does not match the hash recorded when it was validated (changed or corrupted): "
            f"run `crystalframes data fetch {info.name} --force`",
        )
    return path


# --------------------------------------------------------------------------------------------
# validation


def _iter_json_array(fh: IO[str], where: str) -> Iterator[object]:
    """Yield the items of a top-level JSON array one at a time, without holding the whole list.

    The full JARVIS file is several hundred MB of JSON; parsing it record by record keeps the
    validation's memory at one record.
    """
    decoder = json.JSONDecoder()
    buf = ""
    pos = 0
    eof = False

    def fill() -> bool:
        nonlocal buf, pos, eof
        if eof:
            return False
        chunk = fh.read(CHUNK_SIZE)
        if not chunk:
            eof = True
            return False
        buf = buf[pos:] + chunk
        pos = 0
        return True

    def skip_ws() -> bool:
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":
                pos += 1
            if pos < len(buf):
                return True
            if not fill():
                return False

    if not skip_ws() or buf[pos] != "[":
        raise DatasetError(where, "is not a JSON list of records (expected the file to start with '[')")
    pos += 1
    first = True
    while True:
        if not skip_ws():
            raise DatasetError(where, "JSON ends before the list is closed (truncated?)")
        if buf[pos] == "]":
            pos += 1
            if skip_ws():
                raise DatasetError(where, "unexpected data after the JSON list")
            return
        if not first:
            if buf[pos] != ",":
                raise DatasetError(where, f"malformed JSON list (expected ',' but found {buf[pos]!r})")
            pos += 1
            if not skip_ws():
                raise DatasetError(where, "JSON ends before the list is closed (truncated?)")
        first = False
        while True:
            try:
                item, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as exc:
                # Either the record runs past the buffer (read more) or the JSON is broken.
                if len(buf) - pos > MAX_RECORD_CHARS:
                    raise DatasetError(where, f"malformed JSON: {exc.msg}") from None
                if fill():
                    continue
                raise DatasetError(where, f"malformed or truncated JSON: {exc.msg}") from None
            # A number at the very end of the buffer may continue in the next chunk.
            if end == len(buf) and not isinstance(item, (dict, list, str)) and fill():
                continue
            break
        pos = end
        yield item


def _record_problem(record: object) -> str | None:
    if not isinstance(record, dict):
        return f"is a {type(record).__name__}, not a JSON object"
    atoms = record.get("atoms")
    if not isinstance(atoms, dict):
        return "has no 'atoms' object"
    missing = [key for key in REQUIRED_ATOMS_KEYS if key not in atoms]
    if missing:
        return f"'atoms' lacks {', '.join(missing)}"
    return None


def _find_member(zf: zipfile.ZipFile, member: str) -> str | None:
    names = zf.namelist()
    if member in names:
        return member
    # Tolerate the JSON sitting in a folder inside the archive.
    for candidate in names:
        if candidate.rsplit("/", 1)[-1] == member:
            return candidate
    return None


def validate_archive(
    path: str | os.PathLike,
    info: DatasetInfo,
    *,
    sha256: str | None = None,
    what: str = "download",
    digest: str | None = None,
) -> str:
    """Check ``path`` is a usable archive of dataset ``info``; return its sha256.

    Raises :class:`DatasetError` when the hash differs from a pinned one (``sha256`` argument,
    else ``info.sha256``), the file is not an intact zip, lacks ``info.member``, the member is not
    a JSON list of JARVIS-format records (``atoms`` with ``lattice_mat``, ``coords``, ``elements``),
    or holds no records. Warns when the record count is far from ``info.n_records``.
    ``digest`` is the file's sha256 if already computed (while downloading).
    """
    path = Path(path)
    name = info.name
    if digest is None:
        digest = file_sha256(path)
    pinned = (sha256 or info.sha256 or "").strip().lower() or None
    if pinned is not None and digest != pinned:
        raise DatasetError(
            name, f"{what} sha256 mismatch: expected {pinned}, got {digest} (corrupted, truncated or changed upstream)"
        )
    if info.member is None:
        return digest
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise DatasetError(name, f"{what} is a corrupt zip archive: member {bad} fails its CRC check")
            member = _find_member(zf, info.member)
            if member is None:
                held = ", ".join(zf.namelist()[:5]) or "nothing"
                raise DatasetError(name, f"{what} archive does not contain {info.member} (it holds: {held})")
            where = f"{name}: {member}"
            n_records = n_bad = 0
            first_problem = None
            with zf.open(member) as raw:
                text = io.TextIOWrapper(raw, encoding="utf-8")
                for record in _iter_json_array(text, where):
                    problem = _record_problem(record)
                    if problem is not None:
                        n_bad += 1
                        if first_problem is None:
                            rid = record.get(info.id_key, "?") if isinstance(record, dict) else "?"
                            first_problem = f"record {n_records} ({info.id_key} {rid}) {problem}"
                    n_records += 1
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise DatasetError(name, f"{what} is not a valid zip archive (truncated?): {exc}") from None
    except UnicodeDecodeError:
        raise DatasetError(name, f"{what}: {info.member} is not UTF-8 text") from None
    except NotImplementedError as exc:  # e.g. an unsupported compression method
        raise DatasetError(name, f"{what} zip archive cannot be read: {exc}") from None

    if n_records == 0:
        raise DatasetError(name, f"{what}: {info.member} holds no records")
    if n_bad > MAX_BAD_RECORD_FRACTION * n_records:
        raise DatasetError(
            name,
            f"{what}: {n_bad} of {n_records} records are not JARVIS-format crystals "
            f"(first: {first_problem}); is this the right archive?",
        )
    if n_bad:
        warnings.warn(f"{name}: {n_bad} of {n_records} records lack a usable structure (first: {first_problem})")
    expected = info.n_records
    if expected and not (expected / COUNT_WARNING_FACTOR <= n_records <= expected * COUNT_WARNING_FACTOR):
        warnings.warn(
            f"{name}: {what} holds {n_records} records, far from the ~{expected} expected; "
            "check it is the right file (or pin its sha256)"
        )
    return digest


# --------------------------------------------------------------------------------------------
# fetching


def _progress(name: str, done: int, total: int | None, start: float) -> None:
    mb = done / 1e6
    rate = mb / max(time.monotonic() - start, 1e-6)
    if total:
        text = f"\r{name}: {mb:8.1f} / {total / 1e6:.1f} MB ({100 * done / total:5.1f}%) {rate:6.1f} MB/s"
    else:
        text = f"\r{name}: {mb:8.1f} MB {rate:6.1f} MB/s"
    sys.stderr.write(text)
    sys.stderr.flush()


def _copy_hashing(src: IO[bytes], dest: IO[bytes]) -> str:
    hasher = hashlib.sha256()
    while chunk := src.read(CHUNK_SIZE):
        hasher.update(chunk)
        dest.write(chunk)
    return hasher.hexdigest()


def _download(url: str, dest: IO[bytes], name: str, *, progress: bool, timeout: float) -> str:
    """Stream ``url`` into ``dest``; return the sha256 of what was written."""
    request = urllib.request.Request(url, headers={"User-Agent": _user_agent()})
    show = progress and sys.stderr.isatty()
    hint = f"; if you already have the archive, use `crystalframes data fetch {name} --file LOCAL`"
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            hasher = hashlib.sha256()
            start = time.monotonic()
            while chunk := response.read(CHUNK_SIZE):
                hasher.update(chunk)
                dest.write(chunk)
                done += len(chunk)
                if show:
                    _progress(name, done, total, start)
            if show:
                sys.stderr.write("\n")
    except urllib.error.HTTPError as exc:
        raise DatasetError(name, f"download failed: HTTP {exc.code} {exc.reason} from {url}{hint}") from None
    except urllib.error.URLError as exc:
        raise DatasetError(name, f"download failed: cannot reach {url} ({exc.reason}){hint}") from None
    except TimeoutError:
        raise DatasetError(name, f"download failed: no data from {url} for {timeout:.0f} s{hint}") from None
    except OSError as exc:  # connection reset, disk full...
        raise DatasetError(name, f"download failed: {exc}{hint}") from None
    if total is not None and done < total:
        raise DatasetError(name, f"download incomplete: got {done} of {total} bytes (connection dropped?){hint}")
    return hasher.hexdigest()


def fetch_dataset(
    name: str,
    *,
    file: str | os.PathLike | None = None,
    sha256: str | None = None,
    force: bool = False,
    progress: bool = True,
    timeout: float = TIMEOUT_SECONDS,
) -> Path:
    """Make dataset ``name`` available locally and return the path of its validated archive.

    Parameters
    ----------
    name
        Registered dataset (``jarvis_dft_3d_2021``, ``mp_2018``; an embedded dataset just returns
        its packaged file).
    file
        A local copy of the archive (e.g. downloaded by a browser) to validate and copy into the
        cache instead of downloading.
    sha256
        Expected sha256 of the archive; overrides the registry's pinned value.
    force
        Download (or copy) again even if a valid cached copy exists.
    progress
        Show download progress on stderr (only when stderr is a terminal).
    timeout
        Seconds without data before the download is abandoned.
    """
    info = get_dataset_info(name)
    if info.is_embedded:
        return embedded_path(info)
    folder = cache_dir()
    final = folder / info.filename
    pinned = (sha256 or info.sha256 or "").strip().lower() or None

    if final.is_file() and not force and file is None:
        digest = _read_sidecar(final)
        current = file_sha256(final)
        if digest is not None and digest == current and (pinned is None or pinned == current):
            return final
        # Unknown provenance (no/mismatched sidecar): keep it only if it validates.
        try:
            _write_sidecar(final, validate_archive(final, info, sha256=sha256, what="cached file"))
            return final
        except DatasetError:
            final.unlink(missing_ok=True)
            _sidecar(final).unlink(missing_ok=True)

    if info.url is None and file is None:
        raise DatasetError(info.name, "has no download URL; pass a local archive with --file")
    with atomic_write(final) as dest:
        if file is not None:
            local = Path(os.path.expanduser(os.fspath(file)))
            if not local.is_file():
                raise DatasetError(str(local), "no such file")
            with open(local, "rb") as src:
                streamed = _copy_hashing(src, dest)
        else:
            streamed = _download(info.url, dest, info.name, progress=progress, timeout=timeout)
        dest.flush()
        what = f"file {file}" if file is not None else "download"
        # Validated before the rename: a broken archive never reaches the cache.
        digest = validate_archive(Path(dest.name), info, sha256=sha256, what=what, digest=streamed)
    _write_sidecar(final, digest)
    return final
