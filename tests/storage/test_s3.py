"""s3:// against moto's S3 server over real HTTP."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import boto3
import httpx
import pytest
from boto3.s3.transfer import TransferConfig

from storage import StorageError, StorageSettings, fetch, open_store
from storage.base import HashingReader
from storage.s3 import S3Store, s3_client
from tests.storage.store_checks import check_stat_tracks_replacement

MIB = 1024 * 1024


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "src.bin"
    path.write_bytes(os.urandom(50_000))
    return path


def raw_client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def test_put_get_exists_delete(s3_bucket: str, s3_env: str, src: Path, tmp_path: Path) -> None:
    store = open_store(f"{s3_bucket}/root")
    put = store.put(src, "avatars/u1/a1.tar", content_type="application/x-tar")
    data = src.read_bytes()
    assert put.uri == f"{s3_bucket}/root/avatars/u1/a1.tar"
    assert (put.bytes, put.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    head = raw_client(s3_env).head_object(Bucket=s3_bucket[5:], Key="root/avatars/u1/a1.tar")
    assert head["ContentType"] == "application/x-tar"

    assert store.exists("avatars/u1/a1.tar") and not store.exists("avatars/u1/zz.tar")
    assert store.get("avatars/u1/a1.tar", tmp_path / "d" / "out.bin").read_bytes() == data
    assert fetch(put.uri, tmp_path / "fetched.bin").read_bytes() == data
    store.delete("avatars/u1/a1.tar")
    store.delete("avatars/u1/a1.tar")
    assert not store.exists("avatars/u1/a1.tar")


def test_get_missing_and_too_large(s3_bucket: str, src: Path, tmp_path: Path) -> None:
    store = open_store(s3_bucket)
    with pytest.raises(StorageError) as err:
        store.get("nope/x.mp4", tmp_path / "o")
    assert err.value.code == "not_found" and f"{s3_bucket}/nope/x.mp4" in err.value.message
    store.put(src, "big.bin")
    with pytest.raises(StorageError) as err:
        fetch(f"{s3_bucket}/big.bin", tmp_path / "o", max_bytes=1000)
    assert err.value.code == "too_large"
    assert os.listdir(tmp_path) == ["src.bin"]


def test_list_with_prefix_and_pagination(s3_bucket: str, s3_env: str, src: Path) -> None:
    store = S3Store(s3_bucket[5:], "root", StorageSettings(), page_size=2)
    for key in ["avatars/u1/a.tar", "avatars/u1/b.tar", "avatars/u2/c.tar", "videos/v.mp4", "avatars/u1/d.tar"]:
        store.put(src, key)
    raw_client(s3_env).put_object(Bucket=s3_bucket[5:], Key="outside-root.txt", Body=b"x")
    assert [o.key for o in store.list("avatars/u1/")] == ["avatars/u1/a.tar", "avatars/u1/b.tar", "avatars/u1/d.tar"]
    everything = list(store.list())
    assert len(everything) == 5 and {o.size for o in everything} == {src.stat().st_size}


def test_signed_url_serves_the_object(s3_bucket: str, src: Path) -> None:
    store = open_store(s3_bucket)
    store.put(src, "generated-videos/u1/v1.mp4")
    url = store.signed_url("generated-videos/u1/v1.mp4", 600)
    assert url and "X-Amz-Signature=" in url and "X-Amz-Expires=600" in url
    response = httpx.get(url)
    assert response.status_code == 200 and response.content == src.read_bytes()


def _fail_after(monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    original = HashingReader.read

    def read(self: HashingReader, size: int | None = -1) -> bytes:
        if self.tell() >= limit:
            raise OSError("source disk failed mid-read")
        return original(self, size)

    monkeypatch.setattr(HashingReader, "read", read)


@pytest.mark.parametrize("multipart", [False, True])
def test_failed_upload_leaves_no_object(
    s3_bucket: str, s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, multipart: bool
) -> None:
    transfer = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB, max_concurrency=2)
    store = S3Store(s3_bucket[5:], "", StorageSettings(), transfer=transfer)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(11 * MIB if multipart else MIB))
    _fail_after(monkeypatch, 6 * MIB if multipart else 0)
    with pytest.raises(StorageError) as err:
        store.put(big, "videos/partial.mp4")
    assert err.value.code == "upload_failed" and "mid-read" in err.value.message
    assert not store.exists("videos/partial.mp4")
    uploads = raw_client(s3_env).list_multipart_uploads(Bucket=s3_bucket[5:])
    assert uploads.get("Uploads", []) == []


def test_multipart_upload_hashes_whole_file(s3_bucket: str, tmp_path: Path) -> None:
    transfer = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB, max_concurrency=2)
    store = S3Store(s3_bucket[5:], "", StorageSettings(), transfer=transfer)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(11 * MIB))
    put = store.put(big, "big.bin")
    assert put.sha256 == hashlib.sha256(big.read_bytes()).hexdigest() and put.bytes == 11 * MIB
    assert hashlib.sha256(store.get("big.bin", tmp_path / "back").read_bytes()).hexdigest() == put.sha256


@pytest.mark.parametrize("key", ["../x", "/abs", "a//b", "a/./b"])
def test_invalid_keys(s3_bucket: str, key: str, src: Path) -> None:
    with pytest.raises(StorageError) as err:
        open_store(s3_bucket).put(src, key)
    assert err.value.code == "invalid_key"


def test_client_is_cached_per_endpoint_and_credentials(s3_env: str) -> None:
    settings = StorageSettings()
    assert s3_client(settings) is s3_client(StorageSettings())
    assert s3_client(settings) is not s3_client(StorageSettings(s3_access_key_id="other"))


def test_stat_fingerprint_changes_when_the_object_is_replaced(s3_bucket: str, tmp_path: Path) -> None:
    check_stat_tracks_replacement(open_store(f"{s3_bucket}/root"), tmp_path)
