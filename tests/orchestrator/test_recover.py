"""recover_avatars against a moto S3 bucket holding avatars packed by storage.avatar.archive, installing
through the workers' versioned avatar cache."""

from __future__ import annotations

from pathlib import Path

import pytest

import storage
from orchestrator.core.models import OrchestratorError
from orchestrator.core.recover import recover_avatars
from storage.avatar.archive import pack_avatar
from storage.avatar.cache import AvatarCache
from storage.avatar.reader import load_avatar, validate_avatar_dir
from storage.keys import avatar_key
from tests.storage.avatar_factory import make_avatar_dir

AVATARS = [("u1", "a1", 2), ("u1", "a2", 3), ("u2", "b1", 2)]
CORRUPT_KEY = "avatars/u2/bad.tar"


@pytest.fixture
def store(s3_bucket: str, tmp_path: Path) -> storage.ObjectStore:
    """A bucket with three good avatars, one corrupt TAR and keys that are not avatars."""
    store = storage.open_store(s3_bucket)
    src = tmp_path / "src"
    for user_id, avatar_id, frames in AVATARS:
        tar = tmp_path / f"{avatar_id}.tar"
        pack_avatar(make_avatar_dir(src, avatar_id, frames=frames, landmarks=False), tar)
        store.put(tar, avatar_key(user_id, avatar_id))
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"this is not a tar archive" * 40)
    for key in (CORRUPT_KEY, "avatars/readme.tar.txt", "generated-videos/u1/v.mp4"):
        store.put(junk, key)
    return store


def cache_entries(store: storage.ObjectStore, cache: Path) -> list[str]:
    """The avatar ids installed in the cache; nothing else is there (no flat folders, no temp files)."""
    assert sorted(p.name for p in cache.iterdir()) == [".locks", ".owners", ".tmp"]
    assert not list((cache / ".tmp").iterdir())
    return [avatar_id for avatar_id, _ in sorted(installed(store, cache).items())]


def installed(store: storage.ObjectStore, cache: Path) -> dict[str, Path]:
    """avatar id -> the version folder renders would get, for every avatar key in the store."""
    found = {}
    for info in store.list("avatars/"):
        path = AvatarCache(cache).current_path(store.uri(info.key))
        if path is not None:
            found[info.key.rsplit("/", 1)[1].removesuffix(".tar")] = path
    return found


def reupload(store: storage.ObjectStore, tmp_path: Path, user_id: str, avatar_id: str, frames: int) -> None:
    tar = tmp_path / f"{avatar_id}-{frames}.tar"
    pack_avatar(make_avatar_dir(tmp_path / f"new-{frames}", avatar_id, frames=frames, landmarks=False), tar)
    store.put(tar, avatar_key(user_id, avatar_id))


def test_list_only_finds_every_avatar_and_writes_nothing(store, tmp_path):
    events = []
    summary = recover_avatars(store, tmp_path / "cache", list_only=True, on_event=events.append)
    assert summary.total == 4 and (summary.downloaded, summary.skipped, summary.failed) == (0, 0, 0)
    assert [(e.avatar.user_id, e.avatar.avatar_id) for e in events] == [
        ("u1", "a1"),
        ("u1", "a2"),
        ("u2", "b1"),
        ("u2", "bad"),
    ]
    assert {e.action for e in events} == {"found"} and not (tmp_path / "cache").exists()


def test_dry_run_plans_without_downloading(store, tmp_path):
    cache = tmp_path / "cache"
    recover_avatars(store, cache, avatar_id="a1")
    summary = recover_avatars(store, cache, dry_run=True)
    assert (summary.skipped, summary.would_download, summary.downloaded, summary.total) == (1, 3, 0, 4)
    assert cache_entries(store, cache) == ["a1"]
    assert recover_avatars(store, tmp_path / "none", dry_run=True).would_download == 4
    assert not (tmp_path / "none").exists()


def test_recovery_downloads_skips_and_counts_failures(store, tmp_path):
    cache = tmp_path / "cache"
    recover_avatars(store, cache, avatar_id="a1")
    events = []
    summary = recover_avatars(store, cache, on_event=events.append)
    assert (summary.downloaded, summary.skipped, summary.failed, summary.total) == (2, 1, 1, 4)
    assert CORRUPT_KEY in summary.failures
    assert summary.lines() == ["Downloaded: 2", "Skipped:    1", "Failed:     1", "Total:      4"]
    frames = {e.avatar.avatar_id: e.num_frames for e in events if e.action == "downloaded"}
    assert frames == {"a2": 3, "b1": 2}
    assert [e.message for e in events if e.action == "skipped"] == ["already exists locally"]
    assert cache_entries(store, cache) == ["a1", "a2", "b1"]  # no temp dirs, nothing for `bad`
    assert validate_avatar_dir(installed(store, cache)["a2"]).num_frames == 3
    assert [e.message for e in events if e.action == "downloaded"][0] == f"extracted to {installed(store, cache)['a2']}"


def test_user_and_avatar_filters(store, tmp_path):
    by_user = recover_avatars(store, tmp_path / "c1", user_id="u2")
    assert (by_user.total, by_user.downloaded, by_user.failed) == (2, 1, 1)
    assert cache_entries(store, tmp_path / "c1") == ["b1"]
    one = recover_avatars(store, tmp_path / "c2", user_id="u1", avatar_id="a2")
    assert (one.total, one.downloaded) == (1, 1)
    assert recover_avatars(store, tmp_path / "c3", user_id="nobody").total == 0
    with pytest.raises(OrchestratorError) as refused:
        recover_avatars(store, tmp_path / "c4", user_id="../u1")
    assert refused.value.code == "invalid_input"


def test_a_broken_cached_avatar_is_downloaded_again(store, tmp_path):
    cache = tmp_path / "cache"
    recover_avatars(store, cache, avatar_id="a1")
    broken = installed(store, cache)["a1"]
    (broken / "coords.pkl").write_bytes(b"junk")
    summary = recover_avatars(store, cache, avatar_id="a1")
    assert (summary.downloaded, summary.skipped) == (1, 0)
    assert validate_avatar_dir(installed(store, cache)["a1"]).num_frames == 2
    assert not broken.exists()


def test_a_tar_replaced_in_the_store_is_downloaded_again(store, tmp_path):
    """Class: stale cache: an avatar re-preprocessed since the last recover is not skipped."""
    cache = tmp_path / "cache"
    recover_avatars(store, cache, avatar_id="a1")
    reupload(store, tmp_path, "u1", "a1", frames=4)
    summary = recover_avatars(store, cache, avatar_id="a1")
    assert (summary.downloaded, summary.skipped) == (1, 0)
    assert validate_avatar_dir(installed(store, cache)["a1"]).num_frames == 4
    assert recover_avatars(store, cache, avatar_id="a1").skipped == 1


def test_recover_beside_a_render_never_changes_the_folder_it_holds(store, tmp_path):
    """Class: tenant isolation: recover installs new versions, owned by the TAR's store URI, that renders use;
    a version a render holds stays as it was until released."""
    cache = AvatarCache(tmp_path / "cache")
    with cache.acquire(store, "u1", "a1") as held:
        before = {p: p.read_bytes() for p in held.rglob("*") if p.is_file()}
        reupload(store, tmp_path, "u1", "a1", frames=5)
        assert recover_avatars(store, cache.root, avatar_id="a1").downloaded == 1
        assert {p: p.read_bytes() for p in held.rglob("*") if p.is_file()} == before
        with cache.acquire(store, "u1", "a1") as recovered:
            assert recovered == installed(store, cache.root)["a1"] != held
            assert load_avatar(recovered).info.num_frames == 5
    assert not held.exists()
    assert not (cache.root / "a1").exists()  # no flat LiveTalking folder written
