"""Downloading the registered datasets into a local cache, safely.

A file only ever enters the cache after it has been checked. ``pooch`` downloads it (retries,
a progress bar on a terminal, the pinned sha256 if the user gave one) into a private staging
folder inside the cache folder; there it is validated (zip integrity, exactly the expected JSON
member and no unsafe member names, a JSON list of JARVIS-format records) and only then moved
into place with an atomic :func:`os.replace`. On any failure the staging folder is deleted, so a
failed or truncated download never replaces or poisons a valid cached archive (the classic
``BadZipFile`` trap of re-reading a half-written archive on every later run).

A dataset published as one CSV table per split (``perov_5``, ``carbon_24``: the CDVAE files)
or as a few files (the tensor sets ``mp_dielectric``, ``mp_elastic``, ``mp_piezo``, checked by
:func:`~crystalframes.io.tensor_tables.validate_tensor_file` and cached under their upstream
names) goes the same way, file by file: every table is downloaded into the staging folder, checked (a
``cif`` column and the registered target columns, rows with a CIF) and only then is the whole
set moved into its cache folder ``<name>/`` as ``<name>_<split>.csv``, with one sha256 for the set.

No archive hash is pinned in the registry (the upstream files carry none we could verify once
for all); ``--sha256`` pins one when the user has it.

Cache folder: ``$CRYSTALFRAMES_CACHE_DIR/datasets`` if that variable is set, otherwise
``platformdirs.user_cache_dir("crystalframes")/datasets``. Folders are created on first write,
never at import.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO, Iterator

from crystalframes.atomic import atomic_write
from crystalframes.data.paths import CACHE_ENV as CACHE_ENV_VAR
from crystalframes.data.paths import cache_dir
from crystalframes.data.datasets import DatasetInfo, embedded_path, get_dataset_info
from crystalframes.io.errors import DatasetError
from crystalframes.io.tensor_tables import tensor_set_files, validate_tensor_file

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
# pooch retries a failed or corrupted download this many times (waiting 1 s, 2 s, ... between).
DOWNLOAD_RETRIES = 2
STAGING_PREFIX = ".incoming-"
# A staging folder untouched this long belongs to a fetch that was killed, not a running one.
STALE_STAGING_SECONDS = 24 * 3600
# A record count outside [expected / FACTOR, expected * FACTOR] is suspicious enough to warn about.
COUNT_WARNING_FACTOR = 2.0
# Share of records allowed to lack the required structure keys before the archive is rejected.
MAX_BAD_RECORD_FRACTION = 0.01
# A single JSON record larger than this means the file is not the record list we expect.
MAX_RECORD_CHARS = 64 << 20
REQUIRED_ATOMS_KEYS = ("lattice_mat", "coords", "elements")
# Archive members the dataset reader would read as records (it reads every one of them).
DATA_SUFFIXES = (".json", ".json.gz", ".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _user_agent() -> str:
    from crystalframes.version import __version__

    return f"crystalframes/{__version__} (dataset download; pooch)"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".zip") + ".sha256")


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file (of every file, in name order, for a folder), read in 1 MB chunks."""
    path = Path(path)
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        with open(f, "rb") as fh:
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
    if info.is_table_set:
        if not path.is_dir():
            return None
    elif not path.is_file():
        return None
    recorded = _read_sidecar(path)
    if recorded is None or recorded != file_sha256(path):
        raise DatasetError(
            str(path),
            "cached file does not match the hash recorded when it was validated (changed or corrupted): "
            f"run `crystalframes data fetch {info.name} --force`",
        )
    problem = None if info.is_table_set else _members_problem(path, info)
    if problem is not None:
        raise DatasetError(str(path), f"{problem}: run `crystalframes data fetch {info.name} --force`")
    return path


def _members_problem(path: Path, info: DatasetInfo) -> str | None:
    """Why the archive at ``path`` would be read as other records than its validated member
    (e.g. one cached by a release that checked only that member), or ``None``. Reads only the
    zip's directory, so it is cheap enough for every use of the cache."""
    if info.member is None:
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            _dataset_member(zf, info, "cached")
    except DatasetError as err:
        return err.problem
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return f"cached archive is not a readable zip ({_short(exc)})"
    return None


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


def _unsafe_member_name(name: str) -> bool:
    """An absolute name, a drive letter or a ``..`` step: extracting it would write outside the
    target folder, and no genuine dataset archive holds one."""
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    return (
        posix.is_absolute()
        or bool(windows.drive)
        or windows.root != ""
        or ".." in posix.parts
        or ".." in windows.parts
    )


def _is_data_member(name: str) -> bool:
    """A member the dataset reader reads as records. Folder entries and macOS metadata
    (``__MACOSX/``, ``._*``), which the reader skips, are not."""
    if name.endswith("/") or name.startswith("__MACOSX/") or PurePosixPath(name).name.startswith("._"):
        return False
    return name.lower().endswith(DATA_SUFFIXES)


def _dataset_member(zf: zipfile.ZipFile, info: DatasetInfo, what: str) -> str:
    """The one member holding the records of ``info``, after checking the archive holds nothing
    else the reader would read: validating one member while reading all of them would let
    extra members add records (duplicates that cross splits) unvalidated."""
    names = zf.namelist()
    unsafe = [n for n in names if _unsafe_member_name(n)]
    if unsafe:
        shown = ", ".join(repr(n) for n in unsafe[:3])
        raise DatasetError(info.name, f"{what} archive has unsafe member names (absolute or '..'): {shown}; refused")
    data = [n for n in names if _is_data_member(n)]
    # The JSON may sit in a folder inside the archive.
    expected = [n for n in data if PurePosixPath(n).name == info.member]
    if not expected:
        held = ", ".join(names[:5]) or "nothing"
        raise DatasetError(info.name, f"{what} archive does not contain {info.member} (it holds: {held})")
    extra = [n for n in data if n != expected[0]] + expected[1:]
    if extra:
        shown = ", ".join(repr(n) for n in extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
        raise DatasetError(
            info.name,
            f"{what} archive holds data members besides {expected[0]}: {shown}; "
            "only the expected member is accepted",
        )
    return expected[0]


def _check_sha256(value: str | None) -> str | None:
    """A user-supplied sha256, normalised; a clear error before any download if it cannot be one."""
    if value is None or not value.strip():
        return None
    digest = value.strip().lower().removeprefix("sha256:")
    if not _SHA256.fullmatch(digest):
        raise DatasetError("--sha256", f"{value!r} is not a sha256 (64 hexadecimal digits)")
    return digest


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
    else ``info.sha256``), the file is not an intact zip, has an absolute or ``..`` member name,
    lacks ``info.member`` or holds other JSON members the reader would read, the member is not
    a JSON list of JARVIS-format records (``atoms`` with ``lattice_mat``, ``coords``, ``elements``),
    or holds no records. Warns when the record count is far from ``info.n_records``.
    ``digest`` is the file's sha256 if already computed (while downloading).
    """
    path = Path(path)
    name = info.name
    if digest is None:
        digest = file_sha256(path)
    pinned = _check_sha256(sha256) or _check_sha256(info.sha256)
    if pinned is not None and digest != pinned:
        raise DatasetError(
            name, f"{what} sha256 mismatch: expected {pinned}, got {digest} (corrupted, truncated or changed upstream)"
        )
    if info.member is None:
        return digest
    try:
        with zipfile.ZipFile(path) as zf:
            member = _dataset_member(zf, info, what)
            bad = zf.testzip()
            if bad is not None:
                raise DatasetError(name, f"{what} is a corrupt zip archive: member {bad} fails its CRC check")
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


@contextmanager
def _staging_folder(folder: Path) -> Iterator[Path]:
    """A private folder inside the cache folder (same file system, so the final rename is atomic),
    removed with whatever it holds when the block ends. Creating it up front also finds a
    read-only cache before anything is downloaded."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder, prefix=STAGING_PREFIX))
    except OSError as exc:
        raise _unwritable(folder, exc) from None
    _remove_stale_staging(folder)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_stale_staging(folder: Path) -> None:
    """Staging folders of fetches killed before they could clean up (kill -9, power loss)."""
    now = time.time()
    for old in folder.glob(f"{STAGING_PREFIX}*"):
        try:
            if now - old.stat().st_mtime > STALE_STAGING_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass


def _unwritable(folder: Path, exc: OSError) -> DatasetError:
    return DatasetError(
        str(folder),
        f"cannot write to the dataset cache folder ({exc.strerror or exc}); make it writable "
        f"or set {CACHE_ENV_VAR} to a writable folder",
    )


@contextmanager
def _quiet_pooch() -> Iterator[None]:
    """pooch logs every download at INFO on stderr; ours says what it fetched (path on stdout,
    a progress bar on a terminal), so a pipe or a log stays clean."""
    import pooch

    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _download(url: str, staging: Path, info: DatasetInfo, pinned: str | None, *, progress: bool, timeout: float,
              fname: str | None = None) -> Path:
    """Download ``url`` with pooch into ``staging`` as ``fname`` (default: the archive's file
    name); return the downloaded file.

    pooch streams into a temporary file, checks the pinned hash (if any), moves it into
    ``staging`` and retries failed or corrupted downloads.
    """
    import pooch

    show = progress and sys.stderr.isatty()
    if url.lower().startswith(("http://", "https://")):
        downloader = pooch.HTTPDownloader(progressbar=show, timeout=timeout, headers={"User-Agent": _user_agent()})
    else:
        try:
            downloader = pooch.choose_downloader(url, progressbar=show)  # ftp, sftp, doi
        except ValueError as exc:
            raise DatasetError(info.name, f"cannot download {url}: {exc}") from None
    fname = fname or info.filename
    fetcher = pooch.create(
        path=staging,
        base_url="",
        registry={fname: f"sha256:{pinned}" if pinned else None},
        urls={fname: url},
        retry_if_failed=DOWNLOAD_RETRIES,
    )
    hint = f"; if you already have the archive, use `crystalframes data fetch {info.name} --file LOCAL`"
    try:
        with _quiet_pooch():
            return Path(fetcher.fetch(fname, downloader=downloader))
    except ValueError as exc:  # pooch's hash mismatch
        got = re.search(r"\(([0-9a-f]{64})\)", str(exc))
        if pinned is not None and "hash" in str(exc).lower():
            actual = got.group(1) if got else "another hash"
            raise DatasetError(
                info.name,
                f"download sha256 mismatch: expected {pinned}, got {actual} "
                "(corrupted, truncated or changed upstream)",
            ) from None
        raise DatasetError(info.name, f"download failed: {exc}{hint}") from None
    except OSError as exc:
        if not hasattr(exc, "request"):  # a local write (disk full, quota), not requests' error
            raise _unwritable(staging.parent, exc) from None
        response = getattr(exc, "response", None)  # requests' errors are OSErrors
        if response is not None:
            reason = f"HTTP {response.status_code} {response.reason or ''}".rstrip()
            raise DatasetError(info.name, f"download failed: {reason} from {url}{hint}") from None
        raise DatasetError(info.name, f"download failed: cannot reach {url} ({_short(exc)}){hint}") from None


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:197] + "..."


def _copy_local(file: str | os.PathLike, staging: Path, info: DatasetInfo) -> Path:
    local = Path(os.path.expanduser(os.fspath(file)))
    if not local.is_file():
        raise DatasetError(str(local), "no such file")
    incoming = staging / info.filename
    try:
        with open(local, "rb") as src:
            with open(incoming, "wb") as dest:
                shutil.copyfileobj(src, dest, CHUNK_SIZE)
    except OSError as exc:
        if not os.access(local, os.R_OK):
            raise DatasetError(str(local), f"cannot read file: {exc.strerror or exc}") from None
        raise _unwritable(staging.parent, exc) from None
    return incoming


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
        Registered dataset (``jarvis_dft_3d_2021``, ``mp_2018``, ``perov_5``, ``carbon_24``; an
        embedded dataset just returns its packaged file). A set of tables returns its cache folder.
    file
        A local copy of the archive (e.g. downloaded by a browser) to validate and copy into the
        cache instead of downloading; for a set of tables, a folder holding them
        (``train.csv``, ``val.csv``, ``test.csv`` as upstream, or ``<name>_<split>.csv[.gz]``).
    sha256
        Expected sha256 of the archive (64 hex digits, optionally prefixed ``sha256:``);
        overrides the registry's pinned value. For a set of tables: of the set as
        :func:`file_sha256` hashes a folder.
    force
        Download (or copy) again even if a valid cached copy exists.
    progress
        Show download progress on stderr (only when stderr is a terminal).
    timeout
        Seconds without data before a download attempt is abandoned.
    """
    info = get_dataset_info(name)
    if info.is_embedded:
        return embedded_path(info)
    if info.is_table_set:
        return _fetch_table_set(info, file=file, force=force, progress=progress, timeout=timeout,
                                sha256=_check_sha256(sha256))
    sha256 = _check_sha256(sha256)
    folder = cache_dir()
    final = folder / info.filename
    pinned = sha256 or _check_sha256(info.sha256)

    if final.is_file() and not force and file is None:
        current = file_sha256(final)
        if pinned is None or pinned == current:
            if _read_sidecar(final) == current and _members_problem(final, info) is None:
                return final
            # Unknown provenance (no or mismatched sidecar): keep it only if it validates.
            try:
                digest = validate_archive(final, info, sha256=sha256, what="cached file", digest=current)
            except DatasetError:
                pass  # fetched again below; replaced only once a valid copy has arrived
            else:
                try:
                    _write_sidecar(final, digest)
                except OSError as exc:
                    raise _unwritable(folder, exc) from None
                return final

    if info.url is None and file is None:
        raise DatasetError(info.name, "has no download URL; pass a local archive with --file")
    with _staging_folder(folder) as staging:
        if file is not None:
            incoming = _copy_local(file, staging, info)
            what = f"file {file}"
        else:
            incoming = _download(info.url, staging, info, pinned, progress=progress, timeout=timeout)
            what = "download"
        # Validated before the rename: a broken archive never reaches the cache.
        digest = validate_archive(incoming, info, sha256=sha256, what=what)
        try:
            os.replace(incoming, final)
            _write_sidecar(final, digest)
        except OSError as exc:
            raise _unwritable(folder, exc) from None
    return final


# --------------------------------------------------------------------------------------------
# sets of CSV tables (one per split)


def _open_table(path: Path) -> IO[str]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    return opener(path, "rt", encoding="utf-8-sig", newline="")


def validate_table(path: str | os.PathLike, info: DatasetInfo, *, what: str = "download") -> int:
    """Check ``path`` is one table of ``info`` and return its number of rows: a CSV whose header
    has a ``cif`` column and every registered target column, at least one row, and at most
    :data:`MAX_BAD_RECORD_FRACTION` of the rows without a CIF. The CIFs themselves are parsed
    when the dataset is read (a bad one is then one bad record, as in every dataset)."""
    path = Path(path)
    where = f"{info.name}: {what}"
    n_rows = n_bad = 0
    try:
        with _open_table(path) as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            if "cif" not in header:
                raise DatasetError(where, f"is not a table of CIFs (no 'cif' column; header: {', '.join(header[:8]) or 'none'})")
            missing = [t for t in info.targets if t not in header]
            if missing:
                raise DatasetError(where, f"table lacks the target column(s) {', '.join(missing)}; is this the right file?")
            at = header.index("cif")
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                n_rows += 1
                n_bad += len(row) <= at or "_cell_length_a" not in row[at]
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(where, f"unreadable or truncated table ({_short(exc)})") from None
    if n_rows == 0:
        raise DatasetError(where, "table holds no rows")
    if n_bad > MAX_BAD_RECORD_FRACTION * n_rows:
        raise DatasetError(where, f"{n_bad} of {n_rows} rows hold no CIF; is this the right file?")
    return n_rows


def _local_tables(folder: Path, info: DatasetInfo) -> dict[str, Path]:
    """Split -> table file in a user's folder: the upstream names (``train.csv``) or the cache's
    (``<name>_<split>.csv``), plain or gzipped; for a tensor set, file name -> its file (plain
    or gzipped)."""
    if info.is_tensor_set:
        files = tensor_set_files(folder, info.member) or []
        return {key: path for key in info.files for path in files if path.name in (key, key + ".gz")}
    found: dict[str, Path] = {}
    for split in info.files:
        for stem in (split, f"{info.name}_{split}"):
            for suffix in (".csv", ".csv.gz"):
                candidate = folder / f"{stem}{suffix}"
                if split not in found and candidate.is_file():
                    found[split] = candidate
    return found


def _upstream_names(info: DatasetInfo) -> str:
    return ", ".join(info.files if info.is_tensor_set else (f"{s}.csv" for s in info.files))


def _cached_table_name(info: DatasetInfo, key: str) -> str:
    """The name a table of a set is cached as: ``<name>_<split>.csv``, or a tensor set's file
    under its upstream name (the name its reader looks for)."""
    return key if info.is_tensor_set else f"{info.name}_{key}.csv"


def _fetch_table_set(info: DatasetInfo, *, file, force: bool, progress: bool, timeout: float,
                     sha256: str | None) -> Path:
    """:func:`fetch_dataset` for a dataset published as one table per split."""
    folder = cache_dir()
    final = folder / info.filename
    if final.is_dir() and not force and file is None:
        current = file_sha256(final)
        if _read_sidecar(final) == current and (sha256 is None or sha256 == current):
            return final
    if file is not None:
        local = Path(os.path.expanduser(os.fspath(file)))
        if not local.is_dir():
            raise DatasetError(str(local), f"--file for {info.name} must be a folder holding its tables "
                                           f"({_upstream_names(info)})")
        sources = _local_tables(local, info)
        if not sources:
            raise DatasetError(str(local), f"holds none of {info.name}'s tables "
                                           f"({_upstream_names(info)}" + ("[.gz])" if info.is_tensor_set else f" or {info.name}_<split>.csv[.gz])"))
    with _staging_folder(folder) as staging:
        incoming = staging / info.filename
        incoming.mkdir()
        n_rows = 0
        for split, url in info.files.items():
            if file is not None:
                if split not in sources:
                    warnings.warn(f"{info.name}: {file} holds no {split} table; the set is cached without it")
                    continue
                target = incoming / f"{_cached_table_name(info, split)}{'.gz' if sources[split].name.endswith('.gz') else ''}"
                try:
                    shutil.copyfile(sources[split], target)
                except OSError as exc:
                    raise _unwritable(folder, exc) from None
                what = f"file {sources[split]}"
            else:
                downloaded = _download(url, staging, info, None, progress=progress, timeout=timeout,
                                       fname=_cached_table_name(info, split))
                target = incoming / downloaded.name
                os.replace(downloaded, target)
                what = f"download of {url}"
            # checked before the set moves: a broken table never reaches the cache
            n_rows += (validate_tensor_file(target, info.member, what=f"{info.name}: {what}") if info.is_tensor_set
                       else validate_table(target, info, what=what))
        digest = file_sha256(incoming)
        if sha256 is not None and digest != sha256:
            raise DatasetError(info.name, f"sha256 mismatch: expected {sha256}, got {digest} (corrupted or changed upstream)")
        expected = info.n_records
        if expected and not (expected / COUNT_WARNING_FACTOR <= n_rows <= expected * COUNT_WARNING_FACTOR):
            warnings.warn(f"{info.name}: the tables hold {n_rows} rows, far from the ~{expected} expected")
        try:
            if final.exists():  # --force, or a set without a valid hash: swapped out, then removed
                old = staging / ".previous"
                os.replace(final, old)
            os.replace(incoming, final)
            _write_sidecar(final, digest)
        except OSError as exc:
            raise _unwritable(folder, exc) from None
    return final
