"""Checks every ObjectStore implementation must pass, run by each scheme's test module against a real server."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage import ObjectStore, StorageError


def check_stat_tracks_replacement(store: ObjectStore, tmp_path: Path) -> None:
    """stat gives the size and a fingerprint that list agrees with and that changes when the object is replaced."""
    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    first.write_bytes(b"one version" * 100)
    second.write_bytes(b"another one" * 100)
    store.put(first, "avatars/u1/av.tar")
    before = store.stat("avatars/u1/av.tar")
    assert (before.key, before.size) == ("avatars/u1/av.tar", 1100) and before.fingerprint
    assert [o.fingerprint for o in store.list("avatars/u1/")] == [before.fingerprint]
    assert store.stat("avatars/u1/av.tar") == before
    store.put(second, "avatars/u1/av.tar")
    assert store.stat("avatars/u1/av.tar").fingerprint != before.fingerprint
    with pytest.raises(StorageError) as err:
        store.stat("avatars/u1/missing.tar")
    assert err.value.code == "not_found"
