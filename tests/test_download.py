from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gptmini.data.download import DownloadError, download
from helpers import sha256_of

BODY = b"First Citizen:\nBefore we proceed any further, hear me speak.\n" * 50


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/ok.txt":
            body = BODY
        elif self.path == "/corrupt.txt":
            body = BODY[:10] + b"X" + BODY[11:]
        elif self.path == "/truncated.txt":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY[: len(BODY) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def body_sha(tmp_path) -> str:
    path = tmp_path / "body"
    path.write_bytes(BODY)
    return sha256_of(path)


def test_fetch_verifies_and_writes(server, body_sha, tmp_path):
    dest = tmp_path / "out" / "input.txt"
    origin = download(f"{server}/ok.txt", body_sha, dest, mirror="")
    assert dest.read_bytes() == BODY
    assert origin.endswith("/ok.txt")


@pytest.mark.parametrize("path,message", [
    ("/corrupt.txt", "sha256 mismatch"),
    ("/truncated.txt", "truncated body|could not fetch"),
    ("/missing.txt", "HTTP Error 404|Not Found"),
])
def test_bad_transfers_write_nothing(server, body_sha, tmp_path, path, message):
    dest = tmp_path / "out" / "input.txt"
    with pytest.raises(DownloadError, match=message):
        download(f"{server}{path}", body_sha, dest, mirror="", timeout=10)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []
    # Once the cause is fixed, the same call succeeds.
    download(f"{server}/ok.txt", body_sha, dest, mirror="")
    assert dest.read_bytes() == BODY


def test_unreachable_host_names_the_mirror_variable(body_sha, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    dest = tmp_path / "input.txt"
    with pytest.raises(DownloadError, match="GPTMINI_DATA_MIRROR"):
        download(f"http://127.0.0.1:{port}/x.txt", body_sha, dest, mirror="", timeout=5)
    assert not dest.exists()


@pytest.mark.parametrize("form", ["dir", "file", "file-url"])
def test_mirror_is_used_before_the_network(tmp_path, body_sha, form):
    mirror_dir = tmp_path / "mirror"
    mirror_dir.mkdir()
    (mirror_dir / "other.txt").write_bytes(b"not it")
    (mirror_dir / "tinyshakespeare.txt").write_bytes(BODY)
    mirror = {"dir": str(mirror_dir), "file": str(mirror_dir / "tinyshakespeare.txt"),
              "file-url": (mirror_dir / "tinyshakespeare.txt").as_uri()}[form]
    dest = tmp_path / "input.txt"
    # The URL is unreachable on purpose: only the mirror can satisfy the call.
    origin = download("http://127.0.0.1:9/input.txt", body_sha, dest, mirror=mirror)
    assert dest.read_bytes() == BODY
    assert origin.startswith("mirror:")


def test_mirror_without_a_matching_file_fails_cleanly(tmp_path, body_sha):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "input.txt").write_bytes(b"wrong bytes")
    dest = tmp_path / "input.txt"
    with pytest.raises(DownloadError, match="no file with sha256"):
        download("http://127.0.0.1:9/input.txt", body_sha, dest, mirror=str(tmp_path / "m"))
    with pytest.raises(DownloadError, match="no such file or directory"):
        download("http://127.0.0.1:9/input.txt", body_sha, dest, mirror=str(tmp_path / "nope"))
    assert not dest.exists()


def test_environment_variable_names_the_mirror(tmp_path, body_sha, monkeypatch):
    (tmp_path / "input.txt").write_bytes(BODY)
    monkeypatch.setenv("GPTMINI_DATA_MIRROR", str(tmp_path))
    dest = tmp_path / "out" / "input.txt"
    download("http://127.0.0.1:9/input.txt", body_sha, dest)
    assert Path(dest).read_bytes() == BODY
