"""ensure_avatar_local: cache hits, downloads from moto S3, not-found messages, one download under concurrency."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from storage import ObjectInfo, ObjectStore, PutResult, StorageError, open_store
from storage.avatar.archive import pack_avatar
from storage.avatar.cache import ensure_avatar_local, install_avatar
from storage.avatar.validate import load_avatar
from storage.keys import avatar_key
from tests.storage.avatar_factory import make_avatar_dir


class CountingStore(ObjectStore):
    """A real store that counts get() calls (in memory, and optionally in a file shared across processes)."""

    def __init__(self, inner: ObjectStore, delay_s: float = 0.0, count_file: Path | None = None) -> None:
        self.inner, self.root_uri = inner, inner.root_uri
        self.delay_s, self.count_file = delay_s, count_file
        self.gets = 0
        self._lock = threading.Lock()

    def get(self, key: str, dest: Path, max_bytes: int | None = None) -> Path:
        with self._lock:
            self.gets += 1
        if self.count_file:
            with self.count_file.open("a") as fh:
                fh.write(f"{os.getpid()}\n")
        time.sleep(self.delay_s)  # widen the window in which a second caller could start a download
        return self.inner.get(key, dest, max_bytes)

    def put(self, src: Path, key: str, content_type: str | None = None) -> PutResult:
        return self.inner.put(src, key, content_type)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def signed_url(self, key: str, ttl_s: int) -> str | None:
        return self.inner.signed_url(key, ttl_s)


def upload_avatar(store: ObjectStore, tmp_path: Path, user_id: str, avatar_id: str, frames: int = 3) -> None:
    avatar = make_avatar_dir(tmp_path / f"build-{avatar_id}", avatar_id, frames=frames)
    pack_avatar(avatar, tmp_path / f"{avatar_id}.tar")
    store.put(tmp_path / f"{avatar_id}.tar", avatar_key(user_id, avatar_id), "application/x-tar")


def test_cache_hit_does_not_touch_the_store(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    install_avatar(make_avatar_dir(tmp_path / "build", "av", frames=2), cache, "av")
    store = CountingStore(open_store((tmp_path / "empty").as_uri()))
    assert ensure_avatar_local(store, "u1", "av", cache) == cache / "av"
    assert store.gets == 0


def test_downloads_from_s3_once(s3_bucket: str, tmp_path: Path) -> None:
    store = CountingStore(open_store(s3_bucket))
    upload_avatar(store, tmp_path, "u1", "av")
    cache = tmp_path / "cache"
    path = ensure_avatar_local(store, "u1", "av", cache)
    assert load_avatar(path).info.num_frames == 3
    assert ensure_avatar_local(store, "u1", "av", cache) == path
    assert store.gets == 1
    assert sorted(os.listdir(cache)) == [".av.lock", ".av.owner", "av"]  # no temp files left behind


def test_broken_cache_is_replaced(s3_bucket: str, tmp_path: Path) -> None:
    store = open_store(s3_bucket)
    upload_avatar(store, tmp_path, "u1", "av", frames=2)
    cache = tmp_path / "cache"
    (cache / "av" / "full_imgs").mkdir(parents=True)
    assert load_avatar(ensure_avatar_local(store, "u1", "av", cache)).info.num_frames == 2


def test_not_found_says_where_it_looked(s3_bucket: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(StorageError) as err:
        ensure_avatar_local(open_store(s3_bucket), "u1", "ghost", cache)
    assert err.value.code == "avatar_not_found"
    assert str(cache / "ghost") in err.value.message and f"{s3_bucket}/avatars/u1/ghost.tar" in err.value.message
    assert os.listdir(cache) == [".ghost.lock"]


def test_concurrent_threads_download_once(s3_bucket: str, tmp_path: Path) -> None:
    store = CountingStore(open_store(s3_bucket), delay_s=0.2)
    upload_avatar(store, tmp_path, "u1", "av")
    cache = tmp_path / "cache"
    with ThreadPoolExecutor(max_workers=6) as pool:
        paths = list(pool.map(lambda _: ensure_avatar_local(store, "u1", "av", cache), range(6)))
    assert set(paths) == {cache / "av"}
    assert store.gets == 1


def _ensure_in_child(store_uri: str, cache: str, count_file: str, barrier: multiprocessing.synchronize.Barrier) -> None:
    store = CountingStore(open_store(store_uri), delay_s=0.3, count_file=Path(count_file))
    barrier.wait()
    ensure_avatar_local(store, "u1", "av", Path(cache))


def test_concurrent_processes_download_once(tmp_path: Path) -> None:
    store_uri = (tmp_path / "store").as_uri()
    upload_avatar(open_store(store_uri), tmp_path, "u1", "av")
    cache, count_file = tmp_path / "cache", tmp_path / "gets.log"
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(3)
    procs = [
        ctx.Process(target=_ensure_in_child, args=(store_uri, str(cache), str(count_file), barrier)) for _ in range(3)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=30)
    assert [proc.exitcode for proc in procs] == [0, 0, 0]
    assert len(count_file.read_text().splitlines()) == 1
    assert load_avatar(cache / "av").info.num_frames == 3


def test_same_avatar_id_of_another_user_is_not_served_from_the_cache(tmp_path):
    """The cache keeps LiveTalking's {root}/{avatar_id} layout; ownership decides whether a hit counts."""
    from storage import open_store
    from storage.avatar.archive import pack_avatar
    from storage.avatar.cache import ensure_avatar_local
    from storage.avatar.validate import load_avatar
    from storage.errors import StorageError
    from storage.keys import avatar_key
    from tests.storage.avatar_factory import make_avatar_dir

    store_root = tmp_path / "store"
    store_root.mkdir()
    store = open_store(store_root.as_uri())
    cache = tmp_path / "cache"
    for user, frames in (("u1", 3), ("u2", 5)):
        built = make_avatar_dir(tmp_path / user, avatar_id="av", frames=frames)
        tar = tmp_path / f"{user}.tar"
        pack_avatar(built, tar)
        store.put(tar, avatar_key(user, "av"))

    assert load_avatar(ensure_avatar_local(store, "u1", "av", cache)).info.num_frames == 3
    assert load_avatar(ensure_avatar_local(store, "u2", "av", cache)).info.num_frames == 5
    assert load_avatar(ensure_avatar_local(store, "u1", "av", cache)).info.num_frames == 3
    try:
        ensure_avatar_local(store, "u3", "av", cache)
    except StorageError as exc:
        assert exc.code == "avatar_not_found"
    else:
        raise AssertionError("u3 was served another user's cached avatar")
