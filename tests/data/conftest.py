"""Fixtures for the data tests: the shared real-data folder and JARVIS figshare-style archives."""

from __future__ import annotations

import gzip
import http.server
import json
import threading
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


class LocalServer:
    """An HTTP server on 127.0.0.1 in a thread, serving ``files`` (URL path -> bytes).

    ``fail_first[path] = n`` answers the first n requests for ``path`` with HTTP 500 (a flaky
    server); ``short[path] = n`` announces the full length but closes after n bytes (a dropped
    connection). Unknown paths get 404. ``hits`` lists the paths requested.
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.fail_first: dict[str, int] = {}
        self.short: dict[str, int] = {}
        self.hits: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                path = self.path.split("?", 1)[0]
                server.hits.append(path)
                if server.fail_first.get(path, 0) > 0:
                    server.fail_first[path] -= 1
                    return self._send(500, b"busy")
                if path not in server.files:
                    return self._send(404, b"not found")
                body = server.files[path]
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if path in server.short:
                    self.wfile.write(body[: server.short[path]])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def _send(self, status, body):
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # keep the test output clean
                pass

        class QuietServer(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # a client that hangs up (the dropped-connection tests) is expected here

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def serve(self, path: str, data: bytes | Path) -> str:
        """Serve ``data`` (bytes or a file's content) at ``path``; return its URL."""
        self.files[path] = data.read_bytes() if isinstance(data, Path) else data
        return self.url(path)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def http_server():
    server = LocalServer()
    yield server
    server.close()


