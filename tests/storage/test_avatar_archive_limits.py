"""Avatar TARs as users and attackers make them: compressed archives with budgets on decompressed bytes,
per-entry and header caps, frame headers checked before decoding, install-time checks (meta depth,
non-finite landmarks, mixed frame sizes), LiveTalking's repository-root prefix and stray OS files."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import logging
import lzma
import struct
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from storage import StorageError, open_store
from storage.avatar.archive import ArchiveLimits, pack_avatar, unpack_avatar
from storage.avatar.cache import AvatarCache
from storage.avatar.layout import FULL_IMGS, LANDMARKS, META
from storage.avatar.reader import load_avatar, validate_avatar_dir
from storage.keys import avatar_key
from tests.storage.avatar_factory import FRAME_H, FRAME_W, add_bytes, make_avatar_dir, write_tar

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}


def files_with_bytes(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.stat().st_size] if root.exists() else []


def refused(tar_path: Path, tmp_path: Path, limits: ArchiveLimits | None = None) -> StorageError:
    with pytest.raises(StorageError) as err:
        unpack_avatar(tar_path, tmp_path / "cache", "av", limits)
    assert files_with_bytes(tmp_path / "cache") == []  # nothing half-written stays
    return err.value


def packed(tmp_path: Path, damage: Callable[[Path], object] | None = None, frames: int = 3) -> Path:
    avatar = make_avatar_dir(tmp_path / "build", "av", frames=frames)
    if damage is not None:
        damage(avatar)
    tar_path = tmp_path / "av.tar"
    write_tar(tar_path, lambda tar: tar.add(avatar, arcname="av"))
    return tar_path


def png_declaring(width: int, height: int) -> bytes:
    """A small real PNG whose IHDR (CRC fixed up) claims ``width`` x ``height`` pixels."""
    data = bytearray(cv2.imencode(".png", np.zeros((FRAME_H, FRAME_W, 3), np.uint8))[1].tobytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_compressed_archives_are_read(tmp_path: Path, kind: str) -> None:
    """Class: compressed TARs: .tar.gz, .tar.bz2 and .tar.xz unpack like plain TARs."""
    pack_avatar(make_avatar_dir(tmp_path / "build", "av", frames=3), tmp_path / "av.tar")
    compressed = tmp_path / f"av.tar.{kind}"
    compressed.write_bytes(COMPRESSORS[kind]((tmp_path / "av.tar").read_bytes()))
    assert load_avatar(unpack_avatar(compressed, tmp_path / "cache", "av")).info.num_frames == 3


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_decompression_bomb_is_refused_on_decompressed_bytes(tmp_path: Path, kind: str) -> None:
    """Class: compressed TARs: the budget counts decompressed bytes while streaming."""
    bomb = io.BytesIO()
    with tarfile.open(fileobj=bomb, mode="w") as tar:
        for i in range(4):
            add_bytes(tar, f"av/full_imgs/{i:08d}.png", b"\0" * (3 * 1024 * 1024))
    path = tmp_path / f"bomb.tar.{kind}"
    path.write_bytes(COMPRESSORS[kind](bomb.getvalue()))
    limits = ArchiveLimits(max_expansion=4, expansion_floor_bytes=2 * 1024 * 1024)
    err = refused(path, tmp_path, limits)
    assert err.code == "unsafe_archive" and "expands past 2097152 bytes" in err.message


def test_entry_over_its_layout_cap_is_refused_before_writing(tmp_path: Path) -> None:
    """Class: compressed TARs: a frame declaring more than a frame may hold is refused at its header."""
    bomb = io.BytesIO()
    with tarfile.open(fileobj=bomb, mode="w") as tar:
        add_bytes(tar, "av/meta.json", b" " * (2 * 1024 * 1024))
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(gzip.compress(bomb.getvalue()))
    err = refused(path, tmp_path)
    assert err.code == "unsafe_archive" and "declares 2097152 bytes, over 1048576" in err.message


def test_oversized_pax_header_is_refused(tmp_path: Path) -> None:
    """Class: decode bombs: tarfile reads PAX headers whole; one over the header budget is refused."""
    path = tmp_path / "pax.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("av/coords.pkl")
        info.pax_headers = {"comment": "x" * (5 * 1024 * 1024)}
        tar.addfile(info, io.BytesIO(b""))
    err = refused(path, tmp_path)
    assert err.code == "unsafe_archive" and "header" in err.message


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (png_declaring(60_000, 60_000), "declares 60000x60000 pixels"),
        (png_declaring(FRAME_W * 4, FRAME_H * 4), f"is {FRAME_W * 4}x{FRAME_H * 4}, other full_imgs are"),
        (b"GIF89a" + b"\0" * 100, "neither a PNG nor a JPEG"),
    ],
)
def test_frame_header_bombs_are_refused_before_decoding(tmp_path: Path, frame: bytes, message: str) -> None:
    """Class: PNG header bombs: a frame declaring more pixels than the avatar's frame size never installs."""
    tar_path = packed(tmp_path, lambda a: (a / FULL_IMGS / "00000001.png").write_bytes(frame))
    if "60000" in message:  # the first frame sets the size: a huge one is refused by the pixel cap
        tar_path = packed(tmp_path / "first", lambda a: (a / FULL_IMGS / "00000000.png").write_bytes(frame))
    err = refused(tar_path, tmp_path)
    assert err.code == "invalid_avatar" and message in err.message


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda a: (a / META).write_text('{"a": ' + "[" * 100 + "]" * 100 + "}"), "nested deeper than 32"),
        (lambda a: (a / META).write_text('{"a":' * 100_000 + "1" + "}" * 100_000), "not valid JSON"),
        (lambda a: (a / META).write_text("[1, 2]"), "must hold a JSON object"),
        (lambda a: np.save(a / LANDMARKS, np.full((3, 68, 2), np.nan, np.float32)), "NaN or infinite"),
        (lambda a: np.save(a / LANDMARKS, np.full((3, 68, 2), np.inf)), "NaN or infinite"),
        (lambda a: np.save(a / LANDMARKS, np.zeros((3, 68, 2), np.complex64)), "expected numbers"),
        (
            lambda a: cv2.imwrite(str(a / FULL_IMGS / "00000002.png"), np.zeros((FRAME_H + 2, FRAME_W, 3), np.uint8)),
            f"is {FRAME_W}x{FRAME_H + 2}, other full_imgs are {FRAME_W}x{FRAME_H}",
        ),
    ],
)
def test_broken_avatars_are_refused_at_install_time(tmp_path: Path, damage, message: str) -> None:
    """Class: install-time checks: deep meta.json, non-finite landmarks, mixed frame sizes -> invalid_avatar."""
    err = refused(packed(tmp_path, damage), tmp_path)
    assert err.code == "invalid_avatar" and message in err.message


def test_broken_avatar_never_stays_cached_and_errors_name_the_store_uri(tmp_path: Path) -> None:
    """Class: a broken avatar is not cached; errors name the user's TAR by its store URI."""
    store = open_store((tmp_path / "store").as_uri())
    tar_path = packed(tmp_path, lambda a: np.save(a / LANDMARKS, np.full((3, 68, 2), np.nan, np.float32)))
    store.put(tar_path, avatar_key("u1", "av"))
    root = tmp_path / "cache"
    cache = AvatarCache(root)
    for _ in range(2):  # refused again on the next request: nothing broken was kept
        with pytest.raises(StorageError) as err, cache.acquire(store, "u1", "av"):
            pass
        assert err.value.code == "invalid_avatar"
        assert store.uri(avatar_key("u1", "av")) in err.value.message and str(root) not in err.value.message
        assert files_with_bytes(root) == []


def _livetalking_root_tar(tmp_path: Path, extra: Callable[[tarfile.TarFile], None] | None = None) -> Path:
    avatar = make_avatar_dir(tmp_path / "build", "lt_avatar", frames=2, landmarks=False)

    def build(tar: tarfile.TarFile) -> None:
        add_bytes(tar, "data/", b"", type=tarfile.DIRTYPE)
        add_bytes(tar, "data/avatars/", b"", type=tarfile.DIRTYPE)
        tar.add(avatar, arcname="data/avatars/lt_avatar")
        if extra is not None:
            extra(tar)

    return write_tar(tmp_path / "lt.tar", build)


def test_livetalking_repository_root_tar_is_accepted(tmp_path: Path) -> None:
    """Class: LiveTalking avatars as users make them: `tar cf x.tar data/avatars/<id>` from the repo root."""
    avatar = load_avatar(unpack_avatar(_livetalking_root_tar(tmp_path), tmp_path / "cache", "av"))
    assert avatar.info.num_frames == 2


@pytest.mark.parametrize(
    "outside", ["data/avatars/another/coords.pkl", "data/other.txt", "data/avatars/stray.txt", "coords.pkl"]
)
def test_livetalking_prefix_still_refuses_anything_outside_the_avatar(tmp_path: Path, outside: str) -> None:
    """Class: LiveTalking avatars as users make them: only one data/avatars/<id>/ folder is accepted."""
    err = refused(_livetalking_root_tar(tmp_path, lambda tar: add_bytes(tar, outside, b"x")), tmp_path)
    assert err.code == "unsafe_archive" and ("top folder" in err.message or "layout" in err.message)


def test_stray_os_files_are_skipped_with_a_note(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Class: stray OS files (.DS_Store, Thumbs.db, AppleDouble ._*) are skipped, not refused."""
    strays = ["av/.DS_Store", "av/full_imgs/._00000000.png", "av/face_imgs/Thumbs.db", "._av", "av/._coords.pkl"]
    tar_path = packed(tmp_path)
    with tarfile.open(tar_path, "a") as tar:
        for name in strays:
            add_bytes(tar, name, b"\0\5\26\7 Mac OS X metadata")
    with caplog.at_level(logging.INFO, logger="storage.avatar.archive"):
        target = unpack_avatar(tar_path, tmp_path / "cache", "av")
    assert validate_avatar_dir(target).num_frames == 3
    assert not [p for p in target.rglob("*") if "DS_Store" in p.name or p.name.startswith(("._", "Thumbs"))]
    assert all(name in caplog.text for name in strays) and "stray OS file" in caplog.text


def test_hand_placed_folder_with_stray_os_files_is_valid(tmp_path: Path) -> None:
    """Class: stray OS files in a LiveTalking folder on disk are ignored by validation."""
    avatar = make_avatar_dir(tmp_path, "av", frames=2)
    (avatar / ".DS_Store").write_bytes(b"x")
    (avatar / FULL_IMGS / "._00000000.png").write_bytes(b"x")
    assert validate_avatar_dir(avatar).num_frames == 2
    assert json.loads((avatar / META).read_text())["fps"] == 25
