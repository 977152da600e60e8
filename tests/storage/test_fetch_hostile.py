"""Hostile HTTP servers and URIs against the worker's one fetch function (issue 11: hostile inputs).

Each test names the class it guards: bad ports and redirects refused as `url_refused`, a slow-drip server
bounded by HTTP_TIMEOUT_S for the whole download, encodings other than identity refused, and inputs
outside ALLOWED_INPUT_PREFIXES refused.
"""

from __future__ import annotations

import gzip
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage import StorageError, StorageSettings, fetch
from tests.storage.http_servers import serving
from tests.storage.test_local_and_fetch import _Handler as PlainHandler

BODY = b"x" * 2048


class _Hostile(PlainHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        routes = {
            "/file": lambda: self._send(200, BODY, {"Content-Length": str(len(BODY))}),
            "/drip": self._drip,
            "/gzip": lambda: self._send(200, gzip.compress(BODY), {"Content-Encoding": "gzip"}),
            "/to-data": lambda: self._send(302, b"", {"Location": "data:text/plain;base64,aGk="}),
            "/to-bad-port": lambda: self._send(302, b"", {"Location": "http://127.0.0.1:99999/file"}),
        }
        routes.get(self.path, lambda: self._send(404, b"", {}))()

    def _drip(self) -> None:
        """One byte every 50 ms for 3 s: each read is quick, the download is not."""
        self.send_response(200)
        self.send_header("Content-Length", "60")
        self.end_headers()
        for _ in range(60):
            self.wfile.write(b"d")
            self.wfile.flush()
            time.sleep(0.05)

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        super()._send(status, body, {"Content-Length": str(len(body)), **headers})


@pytest.fixture(scope="module")
def hostile_url() -> Iterator[str]:
    with serving(_Hostile) as url:
        yield url


LOCAL = StorageSettings(allow_private_urls=True, http_timeout_s=1.0)


def refused(uri: str, dest: Path, settings: StorageSettings = LOCAL) -> StorageError:
    with pytest.raises(StorageError) as err:
        fetch(uri, dest / "out", settings)
    assert os.listdir(dest) == []  # nothing half-written
    return err.value


def test_slow_drip_is_bounded_by_the_timeout_for_the_whole_download(hostile_url: str, tmp_path: Path) -> None:
    """Class: HTTP_TIMEOUT_S bounds the whole download, not each read."""
    started = time.monotonic()
    error = refused(f"{hostile_url}/drip", tmp_path)
    assert error.code == "download_failed" and "HTTP_TIMEOUT_S" in error.message
    assert time.monotonic() - started < 2.0  # the drip lasts 3 s; each byte arrives well within the read timeout


def test_content_encoding_other_than_identity_is_refused(hostile_url: str, tmp_path: Path) -> None:
    """Class: compressed bodies would escape the byte caps, which count stored bytes."""
    error = refused(f"{hostile_url}/gzip", tmp_path)
    assert error.code == "download_failed" and "gzip" in error.message


@pytest.mark.parametrize("path", ["/to-data", "/to-bad-port"])
def test_redirects_to_data_or_a_bad_port_are_refused(hostile_url: str, tmp_path: Path, path: str) -> None:
    """Class: redirects that leave http(s) or name an impossible port are `url_refused`, never internal."""
    assert refused(f"{hostile_url}{path}", tmp_path).code == "url_refused"


@pytest.mark.parametrize("uri", ["http://127.0.0.1:99999/x", "https://example.com:70000/x", "http://[::1]:-1/x"])
def test_ports_out_of_range_are_refused(tmp_path: Path, uri: str) -> None:
    assert refused(uri, tmp_path).code == "url_refused"


def test_inputs_outside_the_allowed_prefixes_are_refused(hostile_url: str, tmp_path: Path) -> None:
    """Class: ALLOWED_INPUT_PREFIXES keeps callers from making workers read what their credentials reach."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "in.bin").write_bytes(BODY)
    (tmp_path / "secret.bin").write_bytes(b"secret")
    settings = LOCAL.model_copy(update={"allowed_input_prefixes": f"{allowed.as_uri()}/, {hostile_url}/file"})
    out = tmp_path / "out"
    assert fetch(f"{allowed.as_uri()}/in.bin", out / "a", settings).read_bytes() == BODY
    assert fetch(f"{hostile_url}/file", out / "b", settings).read_bytes() == BODY
    assert fetch("data:;base64,aGk=", out / "c", settings).read_bytes() == b"hi"  # inline: reads nothing
    for n, uri in enumerate(((tmp_path / "secret.bin").as_uri(), f"{hostile_url}/gzip", "s3://other/key.mp4")):
        (tmp_path / f"refused{n}").mkdir()
        error = refused(uri, tmp_path / f"refused{n}", settings)
        assert error.code == "url_refused" and "ALLOWED_INPUT_PREFIXES" in error.message
        assert allowed.as_uri() in error.message


def test_a_redirect_out_of_the_allowed_prefixes_is_refused(hostile_url: str, tmp_path: Path) -> None:
    settings = LOCAL.model_copy(update={"allowed_input_prefixes": f"{hostile_url}/to-"})
    assert refused(f"{hostile_url}/to-bad-port", tmp_path, settings).code == "url_refused"
