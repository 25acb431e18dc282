"""Downloads against a local HTTP server on 127.0.0.1: md5 good and bad, a dropped
connection resumed with an HTTP Range request, and a server that ignores ranges."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from odenets import cli
from odenets.data import load_cifar
from odenets.data.archives import download_cifar
from odenets.data.download import download_file
from odenets.errors import DataError

PAYLOAD = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


class Server:
    """Serves PAYLOAD at any path. `drop_first`: the first response stops after `drop_at`
    bytes and closes the connection. `ranges`: honour Range headers (206)."""

    def __init__(self, *, drop_first=False, drop_at=100_000, ranges=True):
        self.drop_first, self.drop_at, self.ranges = drop_first, drop_at, ranges
        self.requests: list[str | None] = []  # the Range header of each request
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a stuck client cannot hold the server

            def do_GET(self):
                header = self.headers.get("Range")
                server.requests.append(header)
                if self.path.endswith("/missing"):
                    self.send_error(404)
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", header or "")
                if match and server.ranges:
                    start = int(match.group(1))
                    if start >= len(PAYLOAD):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/*")
                else:
                    self.send_response(200)
                body = PAYLOAD[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.drop_first and len(server.requests) == 1:
                    self.wfile.write(body[: server.drop_at])
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/cifar-10-python.tar.gz"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        # Bounded: whatever happens in a test, the server stops after 60 s.
        self.stopper = threading.Timer(60, self.httpd.shutdown)

    def __enter__(self):
        self.thread.start()
        self.stopper.start()
        return self

    def __exit__(self, *exc):
        self.stopper.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def test_good_md5_lands_under_the_final_name(tmp_path):
    dest = tmp_path / "a" / "file.tar.gz"
    with Server() as server:
        assert download_file(server.url, dest, md5=MD5, progress=False) == dest
        assert dest.read_bytes() == PAYLOAD
        assert not (tmp_path / "a" / "file.tar.gz.part").exists()
        # A verified copy is not fetched again.
        download_file(server.url, dest, md5=MD5, progress=False)
        assert len(server.requests) == 1


def test_bad_md5_removes_the_partial_file_and_keeps_the_old_one(tmp_path):
    dest = tmp_path / "file.tar.gz"
    dest.write_bytes(b"what was there before")
    with Server() as server, pytest.raises(DataError) as info:
        download_file(server.url, dest, md5="0" * 32, progress=False)
    message = str(info.value)
    assert f"has md5 {MD5}, expected {'0' * 32}" in message
    assert "removed the partial file" in message and "file.tar.gz.part" in message
    assert not (tmp_path / "file.tar.gz.part").exists()
    assert dest.read_bytes() == b"what was there before"


def test_official_md5_is_checked(tmp_path):
    """download_cifar verifies against the md5 of the CIFAR page (the payload is not CIFAR)."""
    with (
        Server() as server,
        pytest.raises(DataError, match="expected c58f30108f718f92721af3b95e74349a"),
    ):
        download_cifar("cifar10", tmp_path, url=server.url, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_dropped_connection_is_resumed_with_a_range_request(tmp_path):
    dest = tmp_path / "file.tar.gz"
    with Server(drop_first=True, drop_at=123_456) as server:
        download_file(server.url, dest, md5=MD5, retries=2, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [None, "bytes=123456-"]


def test_interrupted_download_keeps_the_part_and_the_next_call_resumes(tmp_path):
    dest = tmp_path / "file.tar.gz"
    part = tmp_path / "file.tar.gz.part"
    with Server(drop_first=True, drop_at=50_000) as server:
        with pytest.raises(DataError, match=r"interrupted after 50,000 bytes.*resumes from it"):
            download_file(server.url, dest, md5=MD5, retries=0, progress=False)
        assert part.read_bytes() == PAYLOAD[:50_000] and not dest.exists()
        download_file(server.url, dest, md5=MD5, retries=0, progress=False)
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert server.requests == [None, "bytes=50000-"]


def test_server_without_range_support_starts_over(tmp_path):
    dest = tmp_path / "file.tar.gz"
    (tmp_path / "file.tar.gz.part").write_bytes(b"stale bytes from elsewhere")
    with Server(ranges=False) as server:
        download_file(server.url, dest, md5=MD5, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_file_is_verified_without_refetching(tmp_path):
    dest = tmp_path / "file.tar.gz"
    (tmp_path / "file.tar.gz.part").write_bytes(PAYLOAD)
    with Server() as server:
        download_file(server.url, dest, md5=MD5, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [f"bytes={len(PAYLOAD)}-"]


def test_load_cifar_download_uses_the_configured_mirror(tmp_path, monkeypatch):
    with Server() as server:
        monkeypatch.setenv("ODENETS_CIFAR_URL", server.url.rsplit("/", 1)[0])
        with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz has md5"):
            load_cifar("cifar10", tmp_path, split="test", download=True)
    assert server.requests == [None]


def test_cli_download_reports_the_error_without_traceback(tmp_path, capsys):
    with Server() as server:
        rc = cli.main(
            ["data", "download", "cifar100", "--root", str(tmp_path), "--url", server.url]
        )
    err = capsys.readouterr().err
    assert rc == 1
    assert "odenets data: error: the file downloaded from" in err
    assert "expected eb9058c3a382ffc7106e4002c42a8d85" in err and "Traceback" not in err


def test_http_error_is_named_and_leaves_nothing(tmp_path):
    with Server() as server, pytest.raises(DataError, match=r"/missing failed: HTTP 404"):
        download_file(server.url.rsplit("/", 1)[0] + "/missing", tmp_path / "f", md5=MD5)
    assert list(tmp_path.iterdir()) == []


def test_no_connection_mentions_no_partial_file(tmp_path):
    with socket.socket() as s:  # a port nothing listens on: the connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"
    with pytest.raises(DataError) as info:
        download_file(url, tmp_path / "file.tar.gz", md5=MD5, retries=0, progress=False)
    message = str(info.value)
    assert message.startswith(f"downloading {url} failed (") and "partial" not in message
    assert list(tmp_path.iterdir()) == []
