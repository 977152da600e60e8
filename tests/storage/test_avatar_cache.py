"""AvatarCache: downloads once (threads, processes), keyed by owner, versions immutable while held,
leftovers of killed processes swept, LiveTalking's hand-placed {root}/{avatar_id} still read."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from storage import ObjectInfo, ObjectStore, PutResult, StorageError, open_store
from storage.avatar.archive import pack_avatar, unpack_avatar
from storage.avatar.cache import LOCK_STRIPES, AvatarCache
from storage.avatar.reader import load_avatar
from storage.keys import avatar_key
from tests.storage.avatar_factory import make_avatar_dir


class CountingStore(ObjectStore):
    """A real store that counts get() calls (in memory, and optionally in a file shared across processes)."""

    def __init__(self, inner: ObjectStore, delay_s: float = 0.0, count_file: Path | None = None) -> None:
        self.inner, self.root_uri = inner, inner.root_uri
        self.delay_s, self.count_file = delay_s, count_file
        self.gets = self.stats = 0
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

    def stat(self, key: str) -> ObjectInfo:
        with self._lock:
            self.stats += 1
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def signed_url(self, key: str, ttl_s: int) -> str | None:
        return self.inner.signed_url(key, ttl_s)


def upload_avatar(store: ObjectStore, tmp_path: Path, user_id: str, avatar_id: str, frames: int = 3) -> None:
    avatar = make_avatar_dir(tmp_path / f"build-{user_id}-{avatar_id}-{frames}", avatar_id, frames=frames)
    pack_avatar(avatar, tmp_path / f"{avatar_id}.tar")
    store.put(tmp_path / f"{avatar_id}.tar", avatar_key(user_id, avatar_id), "application/x-tar")


def files_with_bytes(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.stat().st_size)


def frames_of(cache: AvatarCache, store: ObjectStore, user: str, avatar_id: str = "av") -> int:
    with cache.acquire(store, user, avatar_id) as path:
        return load_avatar(path).info.num_frames


def test_hand_placed_avatar_is_used_without_touching_the_store(tmp_path: Path) -> None:
    """Class: LiveTalking layout: {root}/{avatar_id} placed by hand is read as it is."""
    root = tmp_path / "cache"
    make_avatar_dir(root, "av", frames=2)
    store = CountingStore(open_store((tmp_path / "empty").as_uri()))
    with AvatarCache(root).acquire(store, "u1", "av") as path:
        assert path == root / "av"
    assert store.gets == 0


@pytest.mark.parametrize(
    ("rule", "users_file", "served_to"),
    [
        ("all", None, {"u1", "u2", "u3"}),
        ("all", "u1\n", {"u1"}),
        ("owned", None, set()),
        ("owned", "u1\nu3\n", {"u1", "u3"}),
        ("none", "u1\n", set()),
        ("none", None, set()),
    ],
)
def test_hand_placed_avatars_are_served_to_the_users_the_rule_allows(
    tmp_path: Path, rule: str, users_file: str | None, served_to: set[str]
) -> None:
    """Class: hand-placed folders served to every tenant: HAND_PLACED_AVATARS (all, owned, none) and a
    `.{avatar_id}.users` file decide who gets {root}/{avatar_id}; the others get their own avatar or none."""
    root = tmp_path / "cache"
    make_avatar_dir(root, "av", frames=2)
    if users_file is not None:
        (root / ".av.users").write_text(users_file)
    store = open_store((tmp_path / "empty").as_uri())
    for user in ("u1", "u2", "u3"):
        if user in served_to:
            with AvatarCache(root).acquire(store, user, "av", rule) as path:
                assert path == root / "av"
            continue
        with pytest.raises(StorageError) as err, AvatarCache(root).acquire(store, user, "av", rule):
            pass
        assert err.value.code == "avatar_not_found", (rule, user)


def test_downloads_from_s3_once_and_leaves_no_temp_files(s3_bucket: str, tmp_path: Path) -> None:
    """Class: cache: one download, then hits; only the version, its pointer and the owner note stay."""
    store = CountingStore(open_store(s3_bucket))
    upload_avatar(store, tmp_path, "u1", "av")
    cache = AvatarCache(tmp_path / "cache")
    with cache.acquire(store, "u1", "av") as first:
        assert load_avatar(first).info.num_frames == 3
    with cache.acquire(store, "u1", "av") as second:
        assert second == first
    assert store.gets == 1
    owner = store.uri(avatar_key("u1", "av"))
    assert cache.current_path(owner) == first
    files = files_with_bytes(tmp_path / "cache")
    assert all(f.startswith(".owners/") for f in files)
    assert not list((tmp_path / "cache" / ".tmp").iterdir())


def test_broken_hand_placed_folder_is_ignored_and_kept(s3_bucket: str, tmp_path: Path) -> None:
    """Class: cache: a broken {root}/{avatar_id} is not served; the store's TAR is."""
    store = open_store(s3_bucket)
    upload_avatar(store, tmp_path, "u1", "av", frames=2)
    root = tmp_path / "cache"
    (root / "av" / "full_imgs").mkdir(parents=True)
    assert frames_of(AvatarCache(root), store, "u1") == 2
    assert (root / "av" / "full_imgs").is_dir()


def test_not_found_says_where_it_looked_and_leaves_nothing(s3_bucket: str, tmp_path: Path) -> None:
    """Class: no lock file per unknown avatar id; nothing left behind by a failed fetch."""
    root = tmp_path / "cache"
    cache = AvatarCache(root)
    for i in range(LOCK_STRIPES + 20):
        with pytest.raises(StorageError) as err, cache.acquire(open_store(s3_bucket), "u1", f"ghost{i}"):
            pass
        assert err.value.code == "avatar_not_found"
    assert str(root / f"ghost{i}") in err.value.message
    assert f"{s3_bucket}/avatars/u1/ghost{i}.tar" in err.value.message
    assert files_with_bytes(root) == [] and not list((root / ".owners").iterdir())
    assert len(list((root / ".locks").iterdir())) <= LOCK_STRIPES
    assert not any("ghost" in p.name for p in root.rglob("*"))


def test_concurrent_threads_download_once(s3_bucket: str, tmp_path: Path) -> None:
    """Class: cache: concurrent first requests in one process download once."""
    store = CountingStore(open_store(s3_bucket), delay_s=0.2)
    upload_avatar(store, tmp_path, "u1", "av")
    cache = AvatarCache(tmp_path / "cache")
    with ThreadPoolExecutor(max_workers=6) as pool:
        counts = list(pool.map(lambda _: frames_of(cache, store, "u1"), range(6)))
    assert counts == [3] * 6 and store.gets == 1


def _acquire_in_child(store_uri: str, cache: str, count_file: str, barrier) -> None:  # noqa: ANN001
    store = CountingStore(open_store(store_uri), delay_s=0.3, count_file=Path(count_file))
    barrier.wait()
    with AvatarCache(Path(cache)).acquire(store, "u1", "av"):
        pass


def test_concurrent_processes_download_once(tmp_path: Path) -> None:
    """Class: cache: concurrent first requests in several processes download once (flock stripes)."""
    store_uri = (tmp_path / "store").as_uri()
    upload_avatar(open_store(store_uri), tmp_path, "u1", "av")
    cache, count_file = tmp_path / "cache", tmp_path / "gets.log"
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(3)
    procs = [
        ctx.Process(target=_acquire_in_child, args=(store_uri, str(cache), str(count_file), barrier)) for _ in range(3)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=30)
    assert [proc.exitcode for proc in procs] == [0, 0, 0]
    assert len(count_file.read_text().splitlines()) == 1


def test_same_avatar_id_of_two_users_is_kept_apart(tmp_path: Path) -> None:
    """Class: tenant isolation: the cache is keyed by owner (the TAR's store URI), not by avatar id."""
    store = open_store((tmp_path / "store").as_uri())
    upload_avatar(store, tmp_path, "u1", "av", frames=3)
    upload_avatar(store, tmp_path, "u2", "av", frames=5)
    cache = AvatarCache(tmp_path / "cache")
    with cache.acquire(store, "u1", "av") as one, cache.acquire(store, "u2", "av") as two:
        assert one != two
        assert load_avatar(one).info.num_frames == 3 and load_avatar(two).info.num_frames == 5
    assert frames_of(cache, store, "u1") == 3
    with pytest.raises(StorageError) as err:
        frames_of(cache, store, "u3")
    assert err.value.code == "avatar_not_found"


def test_a_held_version_stays_unchanged_while_replaced(tmp_path: Path) -> None:
    """Class: tenant isolation: an install never changes a folder a render holds; the old version goes
    once released."""
    store = open_store((tmp_path / "store").as_uri())
    upload_avatar(store, tmp_path, "u1", "av", frames=3)
    cache = AvatarCache(tmp_path / "cache")
    owner = store.uri(avatar_key("u1", "av"))
    with cache.acquire(store, "u1", "av") as held:
        before = {p: p.read_bytes() for p in held.rglob("*") if p.is_file()}
        cache.install(make_avatar_dir(tmp_path / "new", "av", frames=4), owner)
        assert {p: p.read_bytes() for p in held.rglob("*") if p.is_file()} == before
        assert frames_of(cache, store, "u1") == 4
    assert not held.exists()
    assert [p.name for p in held.parent.iterdir() if p.name.startswith("v")] == [cache.current_path(owner).name]


def _hold_in_child(root: str, store_uri: str, held: multiprocessing.synchronize.Event, release) -> None:  # noqa: ANN001
    with AvatarCache(Path(root)).acquire(open_store(store_uri), "u1", "av"):
        held.set()
        release.wait(30)


def test_a_version_held_by_another_process_survives_until_released(tmp_path: Path) -> None:
    """Class: tenant isolation across processes: shared flocks keep a version until its holder exits."""
    store_uri = (tmp_path / "store").as_uri()
    store = open_store(store_uri)
    upload_avatar(store, tmp_path, "u1", "av", frames=3)
    root = tmp_path / "cache"
    cache = AvatarCache(root)
    owner = store.uri(avatar_key("u1", "av"))
    with cache.acquire(store, "u1", "av") as first:
        pass
    ctx = multiprocessing.get_context("fork")
    held, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold_in_child, args=(str(root), store_uri, held, release))
    child.start()
    assert held.wait(30)
    cache.install(make_avatar_dir(tmp_path / "new", "av", frames=2), owner)
    cache.sweep()
    assert load_avatar(first).info.num_frames == 3
    release.set()
    child.join(30)
    assert child.exitcode == 0
    assert not first.exists() and frames_of(cache, store, "u1") == 2


def test_leftovers_of_killed_processes_are_swept_at_start(tmp_path: Path) -> None:
    """Class: temp files from killed processes: swept when a cache opens; a live process's work kept."""
    root = tmp_path / "cache"
    AvatarCache(root)
    dead = root / ".tmp" / "work-dead"
    (dead / "avatar").mkdir(parents=True)
    (dead / "avatar.tar").write_bytes(b"x" * 1000)
    live = root / ".tmp" / "work-live"
    live.mkdir()
    fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a live worker's _workdir holds it
    stale_version = root / ".owners" / ("f" * 64) / "v1-dead"  # an owner whose install was killed
    stale_version.mkdir(parents=True)
    (stale_version / "coords.pkl").write_bytes(b"x")
    try:
        AvatarCache(root)
        assert not dead.exists() and live.exists() and not stale_version.exists()
    finally:
        os.close(fd)


def versions_of(cache: AvatarCache, owner: str) -> list[str]:
    owner_dir = cache.current_path(owner).parent
    return sorted(p.name for p in owner_dir.iterdir() if p.name.startswith("v"))


@pytest.mark.parametrize("scheme", ["s3", "file"])
def test_a_tar_replaced_in_the_store_is_fetched_again(scheme: str, s3_bucket: str, tmp_path: Path) -> None:
    """Class: stale cache: re-preprocessing an avatar (on any worker) replaces its TAR; the next render here
    gets the new frames, a render holding the old version keeps it, and the old version goes once released."""
    store = CountingStore(open_store(s3_bucket if scheme == "s3" else (tmp_path / "store").as_uri()))
    upload_avatar(store, tmp_path, "u1", "av", frames=3)
    cache = AvatarCache(tmp_path / "cache", revalidate_s=0)
    owner = store.uri(avatar_key("u1", "av"))
    with cache.acquire(store, "u1", "av") as old:
        assert frames_of(cache, store, "u1") == 3 and store.gets == 1  # unchanged: a HEAD, no download
        upload_avatar(store, tmp_path, "u1", "av", frames=5)
        assert frames_of(cache, store, "u1") == 5 and store.gets == 2
        assert load_avatar(old).info.num_frames == 3
    assert not old.exists() and versions_of(cache, owner) == [cache.current_path(owner).name]
    assert frames_of(cache, store, "u1") == 5 and store.gets == 2


def test_revalidation_asks_the_store_at_most_once_per_interval(tmp_path: Path) -> None:
    """Class: stale cache: the HEAD is rate-limited per owner (AVATAR_REVALIDATE_S); 0 asks every request."""
    store = CountingStore(open_store((tmp_path / "store").as_uri()))
    upload_avatar(store, tmp_path, "u1", "av", frames=3)
    cache = AvatarCache(tmp_path / "cache", revalidate_s=3600)
    assert frames_of(cache, store, "u1") == 3
    stats_after_download = store.stats
    upload_avatar(store, tmp_path, "u1", "av", frames=4)
    assert [frames_of(cache, store, "u1") for _ in range(3)] == [3, 3, 3]
    assert store.stats == stats_after_download and store.gets == 1
    cache.revalidate_s = 0
    assert [frames_of(cache, store, "u1") for _ in range(2)] == [4, 4]
    assert store.gets == 2


class UnreachableStore(CountingStore):
    """A store whose HEAD fails as a network outage would."""

    def stat(self, key: str) -> ObjectInfo:
        raise StorageError("storage_unavailable", f"{self.uri(key)}: connection refused")


def test_a_store_that_cannot_answer_leaves_the_cached_version_in_use(tmp_path: Path) -> None:
    """Class: stale cache: revalidation is best effort; an outage does not fail renders of cached avatars."""
    store = CountingStore(open_store((tmp_path / "store").as_uri()))
    upload_avatar(store, tmp_path, "u1", "av", frames=3)
    cache = AvatarCache(tmp_path / "cache", revalidate_s=0)
    assert frames_of(cache, store, "u1") == 3
    assert frames_of(cache, UnreachableStore(store.inner), "u1") == 3


def test_an_install_records_the_fingerprint_it_was_given(tmp_path: Path) -> None:
    """Class: stale cache: preprocess_avatar's own install (fingerprint known) is not fetched again."""
    store = CountingStore(open_store((tmp_path / "store").as_uri()))
    upload_avatar(store, tmp_path, "u1", "av", frames=3)
    key = avatar_key("u1", "av")
    cache = AvatarCache(tmp_path / "cache", revalidate_s=0)
    cache.install(make_avatar_dir(tmp_path / "built", "av", frames=3), store.uri(key), store.stat(key).fingerprint)
    assert frames_of(cache, store, "u1") == 3 and store.gets == 0
    cache.install(make_avatar_dir(tmp_path / "built2", "av", frames=2), store.uri(key))  # fingerprint unknown
    assert frames_of(cache, store, "u1") == 3 and store.gets == 1


def test_a_flat_folder_unpacked_from_the_store_is_not_served_stale(tmp_path: Path) -> None:
    """Class: stale cache: {root}/{avatar_id} written from a store TAR (owner record beside it, as earlier
    recover-avatars did) never shadows that TAR: renders use the versioned cache, which notices replacements."""
    store = CountingStore(open_store((tmp_path / "store").as_uri()))
    upload_avatar(store, tmp_path, "u1", "av", frames=3)
    root = tmp_path / "cache"
    key = avatar_key("u1", "av")
    unpack_avatar(store.inner.get(key, tmp_path / "av.tar"), root, "av", owner=store.uri(key))
    cache = AvatarCache(root, revalidate_s=0)
    with cache.acquire(store, "u1", "av") as path:
        assert path == cache.current_path(store.uri(key)) and store.gets == 1
    upload_avatar(store, tmp_path, "u1", "av", frames=2)
    assert frames_of(cache, store, "u1") == 2
    assert load_avatar(root / "av").info.num_frames == 3  # left alone
