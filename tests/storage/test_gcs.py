"""gs:// against gcp-storage-emulator over real HTTP."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from storage import StorageError, StorageSettings, fetch, open_store
from storage.gcs import GCSStore
from tests.storage.store_checks import check_stat_tracks_replacement


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "src.bin"
    path.write_bytes(os.urandom(40_000))
    return path


def test_put_get_exists_list_delete(gcs_bucket: str, src: Path, tmp_path: Path) -> None:
    store = open_store(f"{gcs_bucket}/root")
    data = src.read_bytes()
    put = store.put(src, "avatars/u1/a1.tar", content_type="application/x-tar")
    assert put.uri == f"{gcs_bucket}/root/avatars/u1/a1.tar"
    assert (put.bytes, put.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    store.put(src, "avatars/u1/a2.tar")
    store.put(src, "videos/v.mp4")

    assert store.exists("avatars/u1/a1.tar") and not store.exists("avatars/u1/zz.tar")
    assert [o.key for o in store.list("avatars/")] == ["avatars/u1/a1.tar", "avatars/u1/a2.tar"]
    assert len(list(GCSStore(gcs_bucket[5:], "root", StorageSettings(), page_size=1).list())) == 3
    assert store.get("avatars/u1/a1.tar", tmp_path / "out.bin").read_bytes() == data
    assert fetch(put.uri, tmp_path / "fetched.bin").read_bytes() == data

    store.delete("videos/v.mp4")
    store.delete("videos/v.mp4")
    assert not store.exists("videos/v.mp4")


def test_get_missing_and_too_large(gcs_bucket: str, src: Path, tmp_path: Path) -> None:
    store = open_store(gcs_bucket)
    with pytest.raises(StorageError) as err:
        store.get("missing.mp4", tmp_path / "o")
    assert err.value.code == "not_found" and f"{gcs_bucket}/missing.mp4" in err.value.message
    store.put(src, "big.bin")
    with pytest.raises(StorageError) as err:
        store.get("big.bin", tmp_path / "o", max_bytes=100)
    assert err.value.code == "too_large"
    assert os.listdir(tmp_path) == ["src.bin"]


def test_signed_url_none_without_key_and_public_url(
    gcs_bucket: str, src: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(gcs_bucket, StorageSettings(gcs_credentials_file=None, gcs_public=False))
    store.put(src, "emotions/u1/r1_happy.png")
    with caplog.at_level(logging.INFO, logger="storage.gcs"):
        assert store.signed_url("emotions/u1/r1_happy.png", 60) is None
    assert "GCS_CREDENTIALS_FILE" in caplog.text

    public = open_store(gcs_bucket, StorageSettings(gcs_credentials_file=None, gcs_public=True))
    url = public.signed_url("emotions/u1/r1 happy.png", 60)
    assert url == f"https://storage.googleapis.com/{gcs_bucket[5:]}/emotions/u1/r1%20happy.png"


def _service_account_file(path: Path) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": "signer@test-project.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    path.write_text(json.dumps(info))
    return path


def test_v4_signed_url_with_service_account_key(gcs_bucket: str, src: Path, tmp_path: Path) -> None:
    key_file = _service_account_file(tmp_path / "sa.json")
    store = open_store(gcs_bucket, StorageSettings(gcs_credentials_file=str(key_file)))
    store.put(src, "generated-videos/u1/v1.mp4")
    url = store.signed_url("generated-videos/u1/v1.mp4", 900)
    assert url and "X-Goog-Algorithm=GOOG4-RSA-SHA256" in url and "X-Goog-Expires=900" in url
    assert "signer%40test-project.iam.gserviceaccount.com" in url
    # The emulator serves the object at the signed path (it does not check signatures).
    response = httpx.get(url)
    assert response.status_code == 200 and response.content == src.read_bytes()


def test_failed_upload_leaves_no_object(gcs_bucket: str, src: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from storage.base import HashingReader

    def failing_read(self: HashingReader, size: int | None = -1) -> bytes:
        raise OSError("source disk failed mid-read")

    store = open_store(gcs_bucket)
    monkeypatch.setattr(HashingReader, "read", failing_read)
    with pytest.raises(StorageError) as err:
        store.put(src, "videos/partial.mp4")
    assert err.value.code == "upload_failed"
    monkeypatch.undo()
    assert not store.exists("videos/partial.mp4")


def test_stat_fingerprint_changes_when_the_object_is_replaced(gcs_bucket: str, tmp_path: Path) -> None:
    check_stat_tracks_replacement(open_store(f"{gcs_bucket}/root"), tmp_path)
