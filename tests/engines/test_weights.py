"""Weights manifest, resolver (checksums once per process) and fetch-weights against a local HTTP server."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from engines import weights
from engines.errors import EngineError

PAYLOAD = os.urandom(3 * 1024 * 1024 + 123)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class RangeServer(ThreadingHTTPServer):
    """Serves PAYLOAD at any path; honours ``Range: bytes=N-``; can cut the first response short."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.cut_first_after: int | None = None


class RangeHandler(BaseHTTPRequestHandler):
    server: RangeServer

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        header = self.headers.get("Range")
        self.server.requests.append((self.path, header))
        if self.path.endswith(".html"):  # what a file host's sign-in or confirmation page looks like
            page = b"<html><body>Sign in to continue</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return
        start = int(re.fullmatch(r"bytes=(\d+)-", header).group(1)) if header else 0
        if start >= len(PAYLOAD):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
            self.end_headers()
            return
        body = PAYLOAD[start:]
        self.send_response(206 if header else 200)
        if header:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        cut = self.server.cut_first_after
        if cut is not None:
            self.server.cut_first_after = None
            self.wfile.write(body[:cut])  # then drop the connection mid-body
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[RangeServer]:
    srv = RangeServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def url_of(srv: RangeServer, name: str = "wav2lip256.pth") -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/{name}"


def test_fetch_resumes_a_partial_download(server: RangeServer, tmp_path: Path) -> None:
    (tmp_path / "wav2lip256.pth.part").write_bytes(PAYLOAD[:1_000_000])
    argv = ["wav2lip256", "--dest", str(tmp_path), "--url", url_of(server), "--sha256", PAYLOAD_SHA, "--quiet"]
    assert weights.fetch_weights_cli(argv) == 0
    assert (tmp_path / "wav2lip256.pth").read_bytes() == PAYLOAD
    assert server.requests == [("/wav2lip256.pth", "bytes=1000000-")]
    assert not (tmp_path / "wav2lip256.pth.part").exists()
    assert (tmp_path / "wav2lip256.pth.sha256").read_text().split()[0] == PAYLOAD_SHA


def test_an_interrupted_download_resumes_where_it_stopped(server: RangeServer, tmp_path: Path) -> None:
    server.cut_first_after = 777_777
    [path] = weights.fetch_weights(["wav2lip256"], tmp_path, base_url=url_of(server, ""), show_progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("/wav2lip256.pth", None), ("/wav2lip256.pth", "bytes=777777-")]


def test_checksum_mismatch_keeps_nothing(
    server: RangeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["wav2lip256", "--dest", str(tmp_path), "--url", url_of(server), "--sha256", "0" * 64, "--quiet"]
    assert weights.fetch_weights_cli(argv) == 1
    assert "checksum_mismatch" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_web_page_instead_of_the_file_is_refused(
    server: RangeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["wav2lip256", "--dest", str(tmp_path), "--url", url_of(server, "download.html"), "--quiet"]
    assert weights.fetch_weights_cli(argv) == 1
    assert "download_failed" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_present_verified_file_is_not_fetched_again(server: RangeServer, tmp_path: Path) -> None:
    (tmp_path / "wav2lip256.pth").write_bytes(PAYLOAD)
    weights.fetch_weights(["wav2lip256"], tmp_path, url=url_of(server), sha256=PAYLOAD_SHA, show_progress=False)
    assert server.requests == []


def test_cli_lists_manifest_and_refuses_bad_arguments(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert weights.fetch_weights_cli(["--list"]) == 0
    listing = capsys.readouterr().out
    assert "wav2lip_gan.pth" in listing and "Non-commercial" in listing and "unpinned" in listing
    assert weights.fetch_weights_cli(["nope", "--dest", str(tmp_path)]) == 1
    assert "unknown_weights" in capsys.readouterr().err
    assert weights.fetch_weights_cli(["wav2lip96", "wav2lip256", "--dest", str(tmp_path), "--sha256", "ab"]) == 1
    assert "invalid_arguments" in capsys.readouterr().err
    monkeypatch.delenv("WEIGHTS_DIR", raising=False)
    with pytest.raises(SystemExit) as exit_:
        weights.fetch_weights_cli(["wav2lip96"])  # no --dest and no WEIGHTS_DIR
    assert exit_.value.code == 2
    assert "--dest" in capsys.readouterr().err


def test_manifest_facts() -> None:
    for entry in weights.MANIFEST:
        assert entry.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
        assert entry.url.startswith("https://")
    assert not weights.BY_NAME["wav2lip96"].commercial_use
    assert "Non-commercial" in weights.BY_NAME["wav2lip96_gan"].licence
    assert weights.BY_NAME["wav2lip256"].sha256 is None  # not published: pinned at fetch time


# ---- resolver -----------------------------------------------------------------------------------


@pytest.fixture
def pinned(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> weights.WeightsFile:
    """The wav2lip96 entry pinned to a small generated file written into tmp_path."""
    entry = dataclasses.replace(weights.BY_NAME["wav2lip96"], sha256=PAYLOAD_SHA, size=len(PAYLOAD))
    monkeypatch.setitem(weights.BY_NAME, "wav2lip96", entry)
    (tmp_path / entry.filename).write_bytes(PAYLOAD)
    return entry


def test_resolve_verifies_once_per_process(
    pinned: weights.WeightsFile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real_sha256 = hashlib.sha256

    def counting_sha256(*args: object) -> object:
        calls.append(1)
        return real_sha256(*args)

    monkeypatch.setattr(hashlib, "sha256", counting_sha256)
    first = weights.resolve("wav2lip96", tmp_path)
    second = weights.resolve("wav2lip96", tmp_path)
    assert first.path == tmp_path / "wav2lip.pth" and first.verified and second.verified
    assert len(calls) == 1


def test_changed_file_is_a_checksum_mismatch(pinned: weights.WeightsFile, tmp_path: Path) -> None:
    assert weights.resolve("wav2lip96", tmp_path).verified
    path = tmp_path / pinned.filename
    path.write_bytes(b"x" + PAYLOAD[1:])  # same size, new mtime: hashed again
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    with pytest.raises(EngineError) as err:
        weights.resolve("wav2lip96", tmp_path)
    assert err.value.code == "checksum_mismatch"
    assert PAYLOAD_SHA in err.value.message and "fetch-weights wav2lip96" in err.value.message
    path.write_bytes(PAYLOAD[:100])
    with pytest.raises(EngineError, match="100 bytes") as err:
        weights.resolve("wav2lip96", tmp_path)
    assert err.value.code == "checksum_mismatch"


def test_missing_weights_name_the_fetch_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    volume = tmp_path / "runpod-volume"  # stands in for the real mounts, which a worker image may have filled
    monkeypatch.setattr(weights, "MOUNT_DIRS", (volume,))
    with pytest.raises(EngineError) as err:
        weights.resolve("wav2lip96_gan", tmp_path)
    assert err.value.code == "weights_missing"
    assert f"fetch-weights wav2lip96_gan --dest {tmp_path}" in err.value.message
    assert str(volume) in err.value.message
    volume.mkdir()
    (volume / "wav2lip256.pth").write_bytes(PAYLOAD)
    assert weights.resolve("wav2lip256", tmp_path / "empty").path == volume / "wav2lip256.pth"


def test_unpinned_entry_uses_the_fetch_time_sidecar(tmp_path: Path) -> None:
    path = tmp_path / "wav2lip256.pth"
    path.write_bytes(PAYLOAD)
    assert weights.resolve("wav2lip256", tmp_path).verified is False  # nothing pins it
    (tmp_path / "wav2lip256.pth.sha256").write_text(f"{PAYLOAD_SHA}  wav2lip256.pth\n")
    assert weights.resolve("wav2lip256", tmp_path).verified is True
    (tmp_path / "wav2lip256.pth.sha256").write_text("f" * 64 + "\n")
    with pytest.raises(EngineError) as err:
        weights.resolve("wav2lip256", tmp_path)
    assert err.value.code == "checksum_mismatch"


def test_search_order_prefers_the_configured_dir(tmp_path: Path) -> None:
    dirs = weights.search_dirs(tmp_path)
    assert dirs[0] == tmp_path
    assert dirs[1:] == [Path("/weights"), Path("/runpod-volume/weights"), Path("/runpod-volume")]
    (tmp_path / "wav2lip.pth").write_bytes(b"1")
    (tmp_path / "wav2lip_gan.pth").write_bytes(b"2")
    entry, path = weights.find_for_engine("wav2lip96", tmp_path)
    assert entry.name == "wav2lip96_gan" and path.name == "wav2lip_gan.pth"


def test_an_empty_sidecar_counts_as_unpinned(server: RangeServer, tmp_path: Path) -> None:
    path = tmp_path / "wav2lip256.pth"
    path.write_bytes(PAYLOAD[:1000])  # a different file: an interrupted fetch left its sidecar empty
    (tmp_path / "wav2lip256.pth.sha256").write_text("")
    assert weights.resolve("wav2lip256", tmp_path).verified is False
    [fetched] = weights.fetch_weights(["wav2lip256"], tmp_path, url=url_of(server), show_progress=False)
    assert fetched.read_bytes() == PAYLOAD and server.requests == [("/wav2lip256.pth", None)]
    assert (tmp_path / "wav2lip256.pth.sha256").read_text().split()[0] == PAYLOAD_SHA


def test_fetch_weights_musetalk_fills_upstreams_layout(server: RangeServer, tmp_path: Path) -> None:
    """`fetch-weights musetalk` fetches the whole set into musetalk/ (download_weights.sh's layout), pinned."""
    assert weights.find_for_engine("musetalk", tmp_path) is None
    paths = weights.fetch_weights(["musetalk"], tmp_path, base_url=url_of(server, ""), show_progress=False)
    assert {p.relative_to(tmp_path / "musetalk").as_posix() for p in paths} >= {
        "musetalkV15/unet.pth",
        "musetalkV15/musetalk.json",
        "sd-vae/diffusion_pytorch_model.bin",
        "whisper/pytorch_model.bin",
        "whisper/preprocessor_config.json",
        "face-parse-bisent/79999_iter.pth",
    }
    assert all(p.with_name(p.name + ".sha256").is_file() for p in paths)
    assert weights.find_musetalk_root(tmp_path) == tmp_path / "musetalk"
    entry, path = weights.find_for_engine("musetalk", tmp_path)
    assert entry.name == "musetalk_unet" and entry.commercial_use and path == tmp_path / "musetalk/musetalkV15/unet.pth"
    assert weights.resolve("musetalk_vae", tmp_path).verified
    assert weights.verify_engine_files(entry, path)  # the whole set, from the file the resolver found
    (tmp_path / "musetalk/sd-vae/config.json").write_text("{}")
    with pytest.raises(EngineError) as err:
        weights.verify_engine_files(entry, path)
    assert err.value.code == "checksum_mismatch" and "config.json" in err.value.message
    (tmp_path / "musetalk/whisper/pytorch_model.bin").unlink()  # a set without its whisper file serves nothing
    assert weights.find_musetalk_root(tmp_path) is None
