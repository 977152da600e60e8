"""file:// stores, and fetch() of file://, data: and http(s):// URIs (against a real local HTTP server)."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

import storage
from storage import StorageError, StorageSettings, fetch, open_store
from storage.base import HashingReader
from storage.http import check_url_allowed
from storage.local import LocalStore
from tests.storage.http_servers import QuietHandler, serving
from tests.storage.store_checks import check_stat_tracks_replacement

PAYLOAD = os.urandom(10_000)


def test_local_store_round_trip(tmp_path: Path) -> None:
    store = open_store((tmp_path / "store").as_uri())
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)

    put = store.put(src, "avatars/u1/a b.tar")
    assert put.bytes == len(PAYLOAD) and put.sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    assert put.uri == (tmp_path / "store" / "avatars/u1/a b.tar").as_uri()
    assert store.exists("avatars/u1/a b.tar") and not store.exists("avatars/u1/none.tar")
    store.put(src, "avatars/u2/b.tar")
    store.put(src, "videos/c.mp4")
    assert [o.key for o in store.list("avatars/")] == ["avatars/u1/a b.tar", "avatars/u2/b.tar"]
    assert [o.key for o in store.list("avatars/u1/a")] == ["avatars/u1/a b.tar"]
    assert {o.size for o in store.list()} == {len(PAYLOAD)}

    assert store.get("avatars/u1/a b.tar", tmp_path / "out" / "got.bin").read_bytes() == PAYLOAD
    assert fetch(put.uri, tmp_path / "fetched.bin").read_bytes() == PAYLOAD
    assert store.signed_url("videos/c.mp4", 60) is None
    store.delete("videos/c.mp4")
    store.delete("videos/c.mp4")
    assert not store.exists("videos/c.mp4")


def test_relative_file_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("file://./var/store")
    assert isinstance(store, LocalStore) and store.root == tmp_path / "var/store"
    (tmp_path / "x.bin").write_bytes(b"abc")
    store.put(tmp_path / "x.bin", "k/x.bin")
    assert fetch("file://./var/store/k/x.bin", tmp_path / "y.bin").read_bytes() == b"abc"


def test_failed_put_keeps_old_object_and_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store((tmp_path / "store").as_uri())
    old, new = tmp_path / "old.bin", tmp_path / "new.bin"
    old.write_bytes(b"old contents")
    new.write_bytes(os.urandom(3 * 1024 * 1024))
    store.put(old, "a/obj")
    original_read = HashingReader.read

    def failing_read(self: HashingReader, size: int | None = -1) -> bytes:
        if self.tell() >= 1024 * 1024:
            raise OSError("disk read error")
        return original_read(self, size)

    monkeypatch.setattr(HashingReader, "read", failing_read)
    with pytest.raises(OSError):
        store.put(new, "a/obj")
    assert (tmp_path / "store/a/obj").read_bytes() == b"old contents"
    assert os.listdir(tmp_path / "store/a") == ["obj"]


@pytest.mark.parametrize("key", ["../escape", "/etc/passwd", "a/../../x", "a//b", "", "./a", "a\\..\\b"])
def test_keys_must_stay_under_root(tmp_path: Path, key: str) -> None:
    store = open_store((tmp_path / "store").as_uri())
    (tmp_path / "src").write_bytes(b"x")
    calls = [
        lambda: store.put(tmp_path / "src", key),
        lambda: store.get(key, tmp_path / "o"),
        lambda: store.exists(key),
        lambda: store.delete(key),
    ]
    for call in calls:
        with pytest.raises(StorageError) as err:
            call()
        assert err.value.code == "invalid_key"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_symlink_out_of_root_is_refused(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    (tmp_path / "secret").write_text("s")
    (tmp_path / "store" / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(StorageError) as err:
        open_store((tmp_path / "store").as_uri()).get("link", tmp_path / "o")
    assert err.value.code == "invalid_key"


def test_open_store_and_fetch_refuse_unknown_uris(tmp_path: Path) -> None:
    for uri, code in [
        ("ftp://x/y", "unsupported_uri"),
        ("file://host/x", "invalid_uri"),
        ("nothing", "unsupported_uri"),
    ]:
        with pytest.raises(StorageError) as err:
            open_store(uri)
        assert err.value.code == code
    with pytest.raises(StorageError) as err:
        fetch("ftp://x/y", tmp_path / "o")
    assert err.value.code == "unsupported_uri"


def test_fetch_missing_and_too_large_file(tmp_path: Path) -> None:
    missing = (tmp_path / "nope.mp4").as_uri()
    with pytest.raises(StorageError) as err:
        fetch(missing, tmp_path / "o")
    assert err.value.code == "not_found" and missing in err.value.message
    (tmp_path / "big").write_bytes(PAYLOAD)
    with pytest.raises(StorageError) as err:
        fetch((tmp_path / "big").as_uri(), tmp_path / "o", max_bytes=100)
    assert err.value.code == "too_large" and not (tmp_path / "o").exists()


# --- data: URIs ---


def test_data_uris(tmp_path: Path) -> None:
    b64 = base64.b64encode(PAYLOAD).decode()
    assert fetch(f"data:video/mp4;base64,{b64}", tmp_path / "a").read_bytes() == PAYLOAD
    urlsafe = base64.urlsafe_b64encode(PAYLOAD).decode().rstrip("=")
    assert fetch(f"data:;base64,{urlsafe}", tmp_path / "b").read_bytes() == PAYLOAD
    assert fetch("data:text/plain," + quote("héllo, world"), tmp_path / "c").read_text() == "héllo, world"


@pytest.mark.parametrize(
    ("uri", "code"),
    [
        ("data:;base64,@@@notbase64", "invalid_data_uri"),
        ("data:image/png;base64", "invalid_data_uri"),
        ("data:;base64," + base64.b64encode(bytes(5000)).decode(), "too_large"),
        ("data:," + "a" * 5000, "too_large"),
    ],
)
def test_bad_data_uris(tmp_path: Path, uri: str, code: str) -> None:
    with pytest.raises(StorageError) as err:
        fetch(uri, tmp_path / "o", max_bytes=1000)
    assert err.value.code == code and not (tmp_path / "o").exists()


# --- http(s):// ---


class _Handler(QuietHandler):
    def do_GET(self) -> None:
        if self.path == "/file":
            self._send(200, PAYLOAD, {"Content-Length": str(len(PAYLOAD))})
        elif self.path == "/no-length":
            self._send(200, PAYLOAD, {})
        elif self.path == "/redirect":
            self._send(302, b"", {"Location": "/file", "Content-Length": "0"})
        elif self.path == "/redirect-to-file-scheme":
            self._send(302, b"", {"Location": "file:///etc/passwd", "Content-Length": "0"})
        elif self.path == "/slow":
            time.sleep(1.0)
            self._send(200, b"late", {})
        else:
            self._send(404, b"no", {"Content-Length": "2"})


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    with serving(_Handler) as url:
        yield url


ALLOW_PRIVATE = StorageSettings(allow_private_urls=True, http_timeout_s=0.5)


def test_http_fetch_refuses_private_addresses_by_default(tmp_path: Path, http_url: str) -> None:
    with pytest.raises(StorageError) as err:
        fetch(f"{http_url}/file?token=secret", tmp_path / "o", StorageSettings(allow_private_urls=False))
    assert err.value.code == "url_refused"
    assert "ALLOW_PRIVATE_URLS=1" in err.value.message and "secret" not in err.value.message
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "url",
    ["http://10.1.2.3/x", "http://169.254.169.254/latest", "http://[::1]/x", "http://[::ffff:127.0.0.1]/x",
     "http://224.0.0.1/x", "http://0.0.0.0/x", "http://100.64.0.1/x", "https://localhost/x"],
)  # fmt: skip
def test_non_public_addresses_are_refused(url: str) -> None:
    with pytest.raises(StorageError) as err:
        check_url_allowed(url, StorageSettings(allow_private_urls=False))
    assert err.value.code == "url_refused"


def test_public_address_passes_the_check() -> None:
    check_url_allowed("https://93.184.216.34/video.mp4", StorageSettings(allow_private_urls=False))


def test_http_fetch_allowed_with_private_urls(tmp_path: Path, http_url: str) -> None:
    assert fetch(f"{http_url}/file", tmp_path / "a", ALLOW_PRIVATE).read_bytes() == PAYLOAD
    assert fetch(f"{http_url}/redirect", tmp_path / "b", ALLOW_PRIVATE).read_bytes() == PAYLOAD
    assert fetch(f"{http_url}/no-length", tmp_path / "c", ALLOW_PRIVATE).read_bytes() == PAYLOAD


@pytest.mark.parametrize(
    ("path", "max_bytes", "code"),
    [
        ("/file", 1000, "too_large"),
        ("/no-length", 1000, "too_large"),
        ("/missing", None, "not_found"),
        ("/redirect-to-file-scheme", None, "url_refused"),
        ("/slow", None, "download_failed"),
    ],
)
def test_http_fetch_failures(tmp_path: Path, http_url: str, path: str, max_bytes: int | None, code: str) -> None:
    with pytest.raises(StorageError) as err:
        fetch(f"{http_url}{path}", tmp_path / "o", ALLOW_PRIVATE, max_bytes=max_bytes)
    assert err.value.code == code
    assert os.listdir(tmp_path) == []


def test_settings_cap_applies_without_max_bytes(tmp_path: Path, http_url: str) -> None:
    settings = StorageSettings(allow_private_urls=True, http_max_bytes=500)
    with pytest.raises(StorageError) as err:
        fetch(f"{http_url}/no-length", tmp_path / "o", settings)
    assert err.value.code == "too_large"


def test_import_storage_is_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, storage; print(sorted(m for m in ('boto3', 'google.cloud.storage', 'httpx') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(storage.__file__).parents[1]
    )
    assert out.stdout.strip() == "[]"


def test_file_inputs_can_be_disabled(tmp_path):
    from storage import StorageError, StorageSettings, fetch

    src = tmp_path / "secret.txt"
    src.write_text("x")
    settings = StorageSettings(ALLOW_FILE_URIS=False)
    try:
        fetch(src.as_uri(), tmp_path / "out.txt", settings)
    except StorageError as exc:
        assert exc.code == "url_refused" and "ALLOW_FILE_URIS" in exc.message
    else:
        raise AssertionError("file:// fetch was not refused")
    assert not (tmp_path / "out.txt").exists()


def test_stat_fingerprint_changes_when_the_object_is_replaced(tmp_path: Path) -> None:
    check_stat_tracks_replacement(open_store((tmp_path / "store").as_uri()), tmp_path)
