"""Avatar directories and TARs: round trip, LiveTalking archives, determinism, validation, hostile archives."""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from storage.avatar import archive
from storage.avatar.archive import ArchiveLimits, pack_avatar, unpack_avatar
from storage.avatar.cache import AvatarCache
from storage.avatar.layout import COORDS, FACE_IMGS, FULL_IMGS, LANDMARKS, image_size, read_coords, write_coords
from storage.avatar.reader import load_avatar, validate_avatar_dir
from storage.errors import StorageError
from tests.storage.avatar_factory import (
    FACE_SIZE,
    FRAME_H,
    FRAME_W,
    add_bytes,
    livetalking_tar,
    make_avatar_dir,
    write_tar,
)


def all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_round_trip_pack_unpack_load(tmp_path: Path) -> None:
    src = make_avatar_dir(tmp_path / "build", "av1", frames=3)
    tar_path = tmp_path / "av1.tar"
    pack_avatar(src, tar_path)

    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
    assert names[0] == "av1"
    assert f"av1/{COORDS}" in names and f"av1/{FULL_IMGS}/00000002.png" in names
    assert all(n == "av1" or n.startswith("av1/") for n in names)

    cache = tmp_path / "cache"
    target = unpack_avatar(tar_path, cache, "restored")
    assert target == cache / "restored"
    avatar = load_avatar(target)
    assert avatar.info.num_frames == 3
    assert (avatar.info.width, avatar.info.height, avatar.info.img_size) == (FRAME_W, FRAME_H, FACE_SIZE)
    assert avatar.coords == [(4, 36, 8, 40), (5, 36, 8, 39), (6, 36, 8, 38)]
    assert all(type(v) is int for box in avatar.coords for v in box)
    assert [p.name for p in avatar.full_frame_paths] == ["00000000.png", "00000001.png", "00000002.png"]
    assert avatar.face_crop_paths[2].read_bytes() == (src / FACE_IMGS / "00000002.png").read_bytes()
    np.testing.assert_array_equal(avatar.landmarks, np.load(src / LANDMARKS))
    assert avatar.meta == {"fps": 25, "source": "test"} and avatar.info.has_landmarks
    assert all_files(cache) == ["restored", *(f"restored/{n}" for n in all_files(src))]


def test_pack_is_deterministic(tmp_path: Path) -> None:
    src = make_avatar_dir(tmp_path, "av1")
    pack_avatar(src, tmp_path / "a.tar")
    for path in src.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
    pack_avatar(src, tmp_path / "b.tar")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.uid, m.gid, m.uname, m.mtime) for m in members} == {(0, 0, "", 1_577_836_800)}


@pytest.mark.parametrize("prefix", ["./", "", "some_other_name/", "./lt_avatar/"])
def test_reads_livetalking_archives(tmp_path: Path, prefix: str) -> None:
    tar_path = livetalking_tar(tmp_path / "lt.tar", frames=2, prefix=prefix)
    avatar = load_avatar(unpack_avatar(tar_path, tmp_path / "cache", "lt"))
    assert avatar.coords == [(2, 30, 3, 33), (2, 30, 3, 33)]
    assert avatar.landmarks is None and avatar.meta == {}


def test_read_coords_accepts_numpy_and_refuses_other_globals(tmp_path: Path) -> None:
    path = tmp_path / COORDS
    path.write_bytes(pickle.dumps(np.array([[1, 5, 2, 6]], dtype=np.int64)))
    assert read_coords(path) == [(1, 5, 2, 6)]
    marker = tmp_path / "pwned"
    path.write_bytes(pickle.dumps([(1, 2, 3, 4), _Evil(str(marker))]))
    with pytest.raises(StorageError) as err:
        read_coords(path)
    assert err.value.code == "invalid_avatar" and "posix.system" in err.value.message
    assert not marker.exists()


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("atomic_swap", [True, False])
def test_unpack_replaces_existing_avatar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, atomic_swap: bool) -> None:
    if not atomic_swap:  # platforms without renameat2(RENAME_EXCHANGE) take the move-aside path
        monkeypatch.setattr(archive, "_exchange", lambda a, b: False)
    cache = tmp_path / "cache"
    pack_avatar(make_avatar_dir(tmp_path / "v1", "av", frames=3), tmp_path / "v1.tar")
    pack_avatar(make_avatar_dir(tmp_path / "v2", "av", frames=2, landmarks=False), tmp_path / "v2.tar")
    unpack_avatar(tmp_path / "v1.tar", cache, "av")
    unpack_avatar(tmp_path / "v2.tar", cache, "av")
    assert validate_avatar_dir(cache / "av").num_frames == 2
    assert os.listdir(cache) == ["av"]


def test_cache_install_moves_and_replaces(tmp_path: Path) -> None:
    """Class: cache: an install moves the folder in as a new version; the replaced one goes (unheld)."""
    cache = AvatarCache(tmp_path / "cache")
    first = cache.install(make_avatar_dir(tmp_path / "b1", "x", frames=3), "file:///store/avatars/u/av.tar")
    src = make_avatar_dir(tmp_path / "b2", "x", frames=2)
    second = cache.install(src, "file:///store/avatars/u/av.tar")
    assert second != first and not first.exists() and not src.exists()
    assert validate_avatar_dir(second).num_frames == 2
    assert cache.current_path("file:///store/avatars/u/av.tar") == second


def _drop_frame(avatar: Path, index: int) -> None:
    for folder in (FULL_IMGS, FACE_IMGS):
        (avatar / folder / f"{index:08d}.png").unlink()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda a: (_drop_frame(a, 1), write_coords(a / COORDS, [(4, 36, 8, 40)] * 2)), "gap"),
        (lambda a: write_coords(a / COORDS, [(4, 36, 8, 40)] * 2), "frame counts differ"),
        (lambda a: (a / FACE_IMGS / "00000002.png").unlink(), "frame counts differ"),
        (lambda a: write_coords(a / COORDS, [(4, 36, 8, 400)] * 3), "outside the 48x40 frame"),
        (lambda a: np.save(a / LANDMARKS, np.zeros((3, 5, 2))), "shape (3, 5, 2)"),
        (lambda a: (a / FULL_IMGS / "notes.txt").write_text("x"), "unexpected entry"),
        (lambda a: (a / COORDS).unlink(), "missing coords.pkl"),
    ],
)
def test_invalid_layouts(tmp_path: Path, damage, message: str) -> None:
    avatar = make_avatar_dir(tmp_path / "build", "av", frames=3)
    damage(avatar)
    with pytest.raises(StorageError) as err:
        validate_avatar_dir(avatar)
    assert err.value.code == "invalid_avatar" and message in err.value.message


def test_unpack_of_invalid_layout_leaves_nothing(tmp_path: Path) -> None:
    avatar = make_avatar_dir(tmp_path / "build", "av", frames=3)
    write_tar(tmp_path / "bad.tar", lambda tar: tar.add(avatar / FULL_IMGS, arcname="av/full_imgs"))
    cache = tmp_path / "cache"
    with pytest.raises(StorageError) as err:
        unpack_avatar(tmp_path / "bad.tar", cache, "av")
    assert err.value.code == "invalid_avatar"
    assert os.listdir(cache) == []


def _good_entries(tar: tarfile.TarFile, avatar: Path) -> None:
    tar.add(avatar, arcname="av")


def _evil_cases(outside: Path) -> dict:
    device = {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}
    return {
        "traversal": (lambda t: add_bytes(t, "av/../escaped.txt", b"x"), "'..'"),
        "absolute": (lambda t: add_bytes(t, str(outside / "abs.txt"), b"x"), "absolute"),
        "symlink": (
            lambda t: add_bytes(t, "av/face_imgs/00000009.png", b"", type=tarfile.SYMTYPE, linkname="/etc/passwd"),
            "symlink",
        ),
        "hardlink": (
            lambda t: add_bytes(t, "av/meta.json", b"", type=tarfile.LNKTYPE, linkname="av/coords.pkl"),
            "hardlink",
        ),
        "device": (lambda t: add_bytes(t, "av/full_imgs/00000009.png", b"", **device), "device"),
        "outside_layout": (lambda t: add_bytes(t, "av/run.sh", b"#!/bin/sh"), "outside the avatar layout"),
        "second_top_folder": (lambda t: add_bytes(t, "other/coords.pkl", b"x"), "top folder"),
        "newline_in_name": (lambda t: add_bytes(t, "av/full_imgs/00000002.png\n", b"x"), "outside the avatar layout"),
        # Arabic-Indic zeros: int() reads them as 0, so they would alias frame 00000000.
        "non_ascii_digits": (lambda t: add_bytes(t, "av/face_imgs/" + "\u0660" * 8 + ".png", b"x"), "avatar layout"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "traversal",
        "absolute",
        "symlink",
        "hardlink",
        "device",
        "outside_layout",
        "second_top_folder",
        "newline_in_name",
        "non_ascii_digits",
    ],
)
def test_refuses_unsafe_entries(tmp_path: Path, case: str) -> None:
    outside, cache = tmp_path / "outside", tmp_path / "cache"
    outside.mkdir()
    avatar = make_avatar_dir(tmp_path / "build", "av", frames=2)
    evil, message = _evil_cases(outside)[case]
    tar_path = write_tar(tmp_path / "evil.tar", lambda tar: (_good_entries(tar, avatar), evil(tar)))
    with pytest.raises(StorageError) as err:
        unpack_avatar(tar_path, cache, "av")
    assert err.value.code == "unsafe_archive" and message in err.value.message
    assert os.listdir(cache) == [] and os.listdir(outside) == []
    assert not list(tmp_path.rglob("escaped.txt"))


@pytest.mark.parametrize(
    ("limits", "message"),
    [(ArchiveLimits(max_entries=5), "limit of 5 entries"), (ArchiveLimits(max_bytes=3000), "past 3000 bytes")],
)
def test_refuses_bombs(tmp_path: Path, limits: ArchiveLimits, message: str) -> None:
    avatar = make_avatar_dir(tmp_path / "build", "av", frames=4)
    tar_path = tmp_path / "av.tar"
    pack_avatar(avatar, tar_path)
    cache = tmp_path / "cache"
    with pytest.raises(StorageError) as err:
        unpack_avatar(tar_path, cache, "av", limits)
    assert err.value.code == "unsafe_archive" and message in err.value.message
    assert os.listdir(cache) == []


def test_refuses_a_file_that_is_not_a_tar(tmp_path: Path) -> None:
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(StorageError) as err:
        unpack_avatar(tmp_path / "junk.tar", tmp_path / "cache", "av")
    assert err.value.code == "invalid_archive"
    assert os.listdir(tmp_path / "cache") == []


@pytest.mark.parametrize("avatar_id", ["", "..", ".hidden", "a/b"])
def test_refuses_unsafe_avatar_ids(tmp_path: Path, avatar_id: str) -> None:
    with pytest.raises(StorageError) as err:
        unpack_avatar(livetalking_tar(tmp_path / "lt.tar"), tmp_path / "cache", avatar_id)
    assert err.value.code == "invalid_avatar_id"


@pytest.mark.parametrize("data", [b"\xff\xd8\xff\xc0\x00\x11\x08\x00", b"\xff\xd8\xff\xe0\x00", b"\xff\xd8"])
def test_truncated_jpeg_is_an_invalid_avatar(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "frame.jpg").write_bytes(data)
    with pytest.raises(StorageError) as err:
        image_size(tmp_path / "frame.jpg")
    assert err.value.code == "invalid_avatar" and "JPEG" in err.value.message
