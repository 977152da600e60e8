"""recover_avatars against a moto S3 bucket holding avatars packed by storage.avatar.archive."""

from __future__ import annotations

from pathlib import Path

import pytest

import storage
from orchestrator.models import OrchestratorError
from orchestrator.recover import recover_avatars
from storage.avatar.archive import pack_avatar
from storage.avatar.validate import validate_avatar_dir
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


def cache_entries(cache: Path) -> list[str]:
    """What the cache holds besides the owner records written beside each avatar."""
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".owner"))


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
    assert cache_entries(cache) == ["a1"]


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
    assert cache_entries(cache) == ["a1", "a2", "b1"]  # no temp dirs, nothing for `bad`
    assert validate_avatar_dir(cache / "a2").num_frames == 3


def test_user_and_avatar_filters(store, tmp_path):
    by_user = recover_avatars(store, tmp_path / "c1", user_id="u2")
    assert (by_user.total, by_user.downloaded, by_user.failed) == (2, 1, 1)
    assert cache_entries(tmp_path / "c1") == ["b1"]
    one = recover_avatars(store, tmp_path / "c2", user_id="u1", avatar_id="a2")
    assert (one.total, one.downloaded) == (1, 1)
    assert recover_avatars(store, tmp_path / "c3", user_id="nobody").total == 0
    with pytest.raises(OrchestratorError) as refused:
        recover_avatars(store, tmp_path / "c4", user_id="../u1")
    assert refused.value.code == "invalid_input"


def test_a_broken_cached_avatar_is_downloaded_again(store, tmp_path):
    cache = tmp_path / "cache"
    (cache / "a1" / "full_imgs").mkdir(parents=True)
    (cache / "a1" / "coords.pkl").write_bytes(b"junk")
    summary = recover_avatars(store, cache, avatar_id="a1")
    assert (summary.downloaded, summary.skipped) == (1, 0)
    assert validate_avatar_dir(cache / "a1").num_frames == 2
