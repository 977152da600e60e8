"""LiveTalking-compatible avatar directories and their TAR archives.

An avatar is a directory ``<avatar_id>/`` holding ``full_imgs/NNNNNNNN.png`` (every frame),
``face_imgs/NNNNNNNN.png`` (the face crop of each frame, ``img_size`` square), ``coords.pkl`` (a pickled
list of ``(y1, y2, x1, x2)`` face boxes) and optionally ``landmarks.npy`` ((N, 68, 2)) and ``meta.json``.
The bucket keeps it as an uncompressed TAR at ``avatars/{user_id}/{avatar_id}.tar``; workers keep an
unpacked copy in a local cache directory. Archives come from users' buckets, so unpacking trusts nothing:
entries are checked against the layout before a byte is written, and nothing is left behind on failure.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import importlib
import json
import logging
import os
import pickle
import re
import shutil
import struct
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from storage import keys
from storage.base import ObjectStore, atomic_file
from storage.errors import StorageError

log = logging.getLogger(__name__)

FULL_IMGS = "full_imgs"
FACE_IMGS = "face_imgs"
COORDS = "coords.pkl"
LANDMARKS = "landmarks.npy"
META = "meta.json"
FRAME_DIRS = (FULL_IMGS, FACE_IMGS)
TOP_FILES = (COORDS, LANDMARKS, META)
# ASCII digits only, and \Z: "$" would also accept a name ending in a newline.
FRAME_NAME_RE = re.compile(r"^([0-9]{8})\.(png|jpg)\Z")
LANDMARK_POINTS = 68

ARCHIVE_MTIME = 1_577_836_800  # 2020-01-01: a fixed stamp keeps packed archives byte-identical
FILE_MODE = 0o644
DIR_MODE = 0o755
COPY_CHUNK_BYTES = 1024 * 1024
MAX_COORDS_BYTES = 64 * 1024 * 1024
TAR_OVERHEAD_PER_ENTRY = 4096  # header, PAX header and padding, generously

# Globals a coords.pkl may reference: numpy integer scalars and arrays (older upstream) and nothing else.
SAFE_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("_codecs", "encode"),
    ("builtins", "int"),
    ("builtins", "tuple"),
    ("builtins", "list"),
}

Box = tuple[int, int, int, int]


def frame_name(i: int) -> str:
    """The file name of frame ``i``: ``00000000.png``."""
    return f"{i:08d}.png"


@dataclass(frozen=True)
class ArchiveLimits:
    """What an avatar TAR may hold before it is refused as a bomb."""

    max_entries: int = 200_000
    max_bytes: int = 20 * 1024**3

    @property
    def max_archive_bytes(self) -> int:
        """The largest TAR file that can hold ``max_entries`` entries of ``max_bytes`` in all."""
        return self.max_bytes + (self.max_entries + 1) * TAR_OVERHEAD_PER_ENTRY


@dataclass
class AvatarInfo:
    path: Path
    num_frames: int
    img_size: int
    width: int
    height: int
    has_landmarks: bool
    meta: dict = field(default_factory=dict)


@dataclass
class LoadedAvatar:
    info: AvatarInfo
    coords: list[Box]
    full_frame_paths: list[Path]
    face_crop_paths: list[Path]
    landmarks: np.ndarray | None
    meta: dict


# --- coords.pkl ---------------------------------------------------------------------------------------


def write_coords(path: Path, coords: list[tuple[int, int, int, int]]) -> None:
    """Pickle ``coords`` as a list of plain-int ``(y1, y2, x1, x2)`` tuples (what upstream LiveTalking reads)."""
    boxes = [tuple(int(v) for v in box) for box in coords]
    if any(len(box) != 4 for box in boxes):
        raise ValueError("every coords entry must be (y1, y2, x1, x2)")
    with atomic_file(path) as fh:
        pickle.dump(boxes, fh, protocol=4)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in SAFE_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in coords.pkl")
        if module == "numpy.core.multiarray":  # numpy >= 2 moved it; avoid the deprecated alias
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return getattr(importlib.import_module(module), name)


def read_coords(path: Path) -> list[tuple[int, int, int, int]]:
    """Read ``coords.pkl`` (plain ints or numpy int64) without unpickling anything but numbers and lists."""
    if path.stat().st_size > MAX_COORDS_BYTES:
        raise StorageError("invalid_avatar", f"{path} is larger than {MAX_COORDS_BYTES} bytes")
    try:
        with path.open("rb") as fh:
            raw = _RestrictedUnpickler(fh).load()
    except Exception as exc:  # a hostile or corrupt pickle can raise almost anything
        raise StorageError("invalid_avatar", f"{path} is not a readable coords pickle: {exc}") from exc
    return _as_boxes(raw, path)


def _as_boxes(raw: Any, path: Path) -> list[Box]:
    if isinstance(raw, np.ndarray):
        raw = raw.tolist()
    if not isinstance(raw, (list, tuple)):
        raise StorageError("invalid_avatar", f"{path} holds a {type(raw).__name__}, expected a list of boxes")
    boxes: list[Box] = []
    for i, box in enumerate(raw):
        values = box.tolist() if isinstance(box, np.ndarray) else box
        if (
            not isinstance(values, (list, tuple))
            or len(values) != 4
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values)
        ):
            raise StorageError("invalid_avatar", f"{path}: entry {i} is {box!r}, expected (y1, y2, x1, x2) integers")
        boxes.append((int(values[0]), int(values[1]), int(values[2]), int(values[3])))
    return boxes


# --- validation and loading ---------------------------------------------------------------------------


def _invalid(path: Path, problem: str) -> StorageError:
    return StorageError("invalid_avatar", f"avatar {path}: {problem}")


def _frame_files(avatar: Path, folder: str) -> list[Path]:
    """The frames of ``folder`` in index order; names must run 00000000, 00000001, ... without gaps."""
    directory = avatar / folder
    if not directory.is_dir():
        raise _invalid(avatar, f"missing {folder}/")
    by_index: dict[int, Path] = {}
    for entry in directory.iterdir():
        match = FRAME_NAME_RE.match(entry.name)
        if not match or not entry.is_file():
            raise _invalid(avatar, f"unexpected entry {folder}/{entry.name} (frames are NNNNNNNN.png or .jpg)")
        index = int(match.group(1))
        if index in by_index:
            raise _invalid(avatar, f"{folder}/ has frame {index} twice ({by_index[index].name}, {entry.name})")
        by_index[index] = entry
    for expected in range(len(by_index)):
        if expected not in by_index:
            raise _invalid(avatar, f"{folder}/ has a gap: frame {expected:08d} is missing")
    return [by_index[i] for i in range(len(by_index))]


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG or JPEG read from its header, without decoding the pixels."""
    with path.open("rb") as fh:
        head = fh.read(24)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            width, height = struct.unpack(">II", head[16:24])
            return width, height
        if head[:2] == b"\xff\xd8":
            fh.seek(2)
            return _jpeg_size(fh, path)
    raise StorageError("invalid_avatar", f"{path} is neither a PNG nor a JPEG")


def _jpeg_size(fh: BinaryIO, path: Path) -> tuple[int, int]:
    sof_markers = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
    while True:
        marker = fh.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            raise StorageError("invalid_avatar", f"{path}: JPEG without a frame header")
        if marker[1] in (0xD8, 0x01) or 0xD0 <= marker[1] <= 0xD7:
            continue
        length_bytes = fh.read(2)
        if len(length_bytes) < 2:
            raise StorageError("invalid_avatar", f"{path}: truncated JPEG")
        (length,) = struct.unpack(">H", length_bytes)
        if length < 2:
            raise StorageError("invalid_avatar", f"{path}: corrupt JPEG segment length")
        if marker[1] in sof_markers:
            header = fh.read(5)
            if len(header) < 5:
                raise StorageError("invalid_avatar", f"{path}: truncated JPEG")
            _precision, height, width = struct.unpack(">BHH", header)
            return width, height
        fh.seek(length - 2, os.SEEK_CUR)


def _check_boxes(avatar: Path, coords: list[Box], width: int, height: int) -> None:
    for i, (y1, y2, x1, x2) in enumerate(coords):
        if not (0 <= y1 < y2 <= height and 0 <= x1 < x2 <= width):
            raise _invalid(
                avatar, f"box {i} (y1, y2, x1, x2) = {(y1, y2, x1, x2)} is outside the {width}x{height} frame"
            )


def _read_landmarks_shape(avatar: Path) -> tuple[int, ...] | None:
    path = avatar / LANDMARKS
    if not path.exists():
        return None
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False).shape
    except Exception as exc:
        raise _invalid(avatar, f"{LANDMARKS} is not a readable .npy array: {exc}") from exc


def _read_meta(avatar: Path) -> dict:
    path = avatar / META
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _invalid(avatar, f"{META} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise _invalid(avatar, f"{META} must hold a JSON object")
    return meta


def _inspect(avatar: Path) -> tuple[AvatarInfo, list[Box], list[Path], list[Path]]:
    if not avatar.is_dir():
        raise _invalid(avatar, "not a directory")
    for entry in avatar.iterdir():
        if entry.name not in (*TOP_FILES, *FRAME_DIRS):
            raise _invalid(avatar, f"unexpected entry {entry.name!r} (allowed: {', '.join((*FRAME_DIRS, *TOP_FILES))})")
    if not (avatar / COORDS).is_file():
        raise _invalid(avatar, f"missing {COORDS}")
    coords = read_coords(avatar / COORDS)
    full, faces = _frame_files(avatar, FULL_IMGS), _frame_files(avatar, FACE_IMGS)
    if not coords:
        raise _invalid(avatar, "has no frames")
    if not len(full) == len(faces) == len(coords):
        raise _invalid(
            avatar, f"frame counts differ: {FULL_IMGS} {len(full)}, {FACE_IMGS} {len(faces)}, {COORDS} {len(coords)}"
        )
    width, height = image_size(full[0])
    face_w, face_h = image_size(faces[0])
    if face_w != face_h:
        raise _invalid(avatar, f"face crops must be square, {faces[0].name} is {face_w}x{face_h}")
    _check_boxes(avatar, coords, width, height)
    shape = _read_landmarks_shape(avatar)
    if shape is not None and shape != (len(coords), LANDMARK_POINTS, 2):
        raise _invalid(avatar, f"{LANDMARKS} has shape {shape}, expected ({len(coords)}, {LANDMARK_POINTS}, 2)")
    info = AvatarInfo(avatar, len(coords), face_w, width, height, shape is not None, _read_meta(avatar))
    return info, coords, full, faces


def validate_avatar_dir(path: Path) -> AvatarInfo:
    """Check the layout (names, counts, sizes) of an avatar directory; StorageError ``invalid_avatar`` if wrong."""
    return _inspect(path)[0]


def load_avatar(path: Path) -> LoadedAvatar:
    """Validate and describe an avatar: coords, frame paths, landmarks; frames stay on disk, undecoded."""
    info, coords, full, faces = _inspect(path)
    landmarks = np.load(path / LANDMARKS, allow_pickle=False) if info.has_landmarks else None
    return LoadedAvatar(info, coords, full, faces, landmarks, info.meta)


# --- packing ------------------------------------------------------------------------------------------


def _layout_files(avatar_dir: Path) -> list[str]:
    """Relative paths of everything an archive of ``avatar_dir`` holds, directories first, sorted."""
    names = [f for f in TOP_FILES if (avatar_dir / f).is_file()]
    for folder in FRAME_DIRS:
        names.append(f"{folder}/")
        names.extend(f"{folder}/{p.name}" for p in _frame_files(avatar_dir, folder))
    return sorted(names)


def _tar_entry(name: str, size: int = 0, is_dir: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.size = 0 if is_dir else size
    info.mode = DIR_MODE if is_dir else FILE_MODE
    info.mtime = ARCHIVE_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def pack_avatar(avatar_dir: Path, tar_path: Path, top_folder: str | None = None) -> None:
    """Write ``avatar_dir`` as a deterministic uncompressed TAR under ``{top_folder or avatar_dir.name}/``."""
    validate_avatar_dir(avatar_dir)
    top = top_folder or avatar_dir.name
    _check_avatar_id(top)
    with atomic_file(tar_path) as out, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_tar_entry(f"{top}/", is_dir=True))
        for rel in _layout_files(avatar_dir):
            if rel.endswith("/"):
                tar.addfile(_tar_entry(f"{top}/{rel}", is_dir=True))
                continue
            src = avatar_dir / rel
            with src.open("rb") as fh:
                tar.addfile(_tar_entry(f"{top}/{rel}", size=os.fstat(fh.fileno()).st_size), fh)


# --- unpacking ----------------------------------------------------------------------------------------


def _check_avatar_id(avatar_id: str) -> str:
    if not avatar_id or len(avatar_id) > 255 or avatar_id.startswith(".") or any(c in avatar_id for c in "/\\\x00"):
        raise StorageError(
            "invalid_avatar_id", f"avatar id {avatar_id!r} must be a plain folder name (no '/', not starting with '.')"
        )
    return avatar_id


def _unsafe(tar_path: Path, name: str, problem: str) -> StorageError:
    return StorageError("unsafe_archive", f"archive {tar_path.name}: entry {name!r} {problem}")


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """Why a member's type is refused, or None for a plain file or directory."""
    if member.issym():
        return f"is a symlink (to {member.linkname!r})"
    if member.islnk():
        return f"is a hardlink (to {member.linkname!r})"
    if member.ischr() or member.isblk():
        return "is a device file"
    if member.isfifo():
        return "is a FIFO"
    if member.issparse():
        return "is a sparse file"
    if not (member.isreg() or member.isdir()):
        return f"has an unsupported type {member.type!r}"
    return None


def _layout_rel(name: str, is_dir: bool) -> str | None:
    """``name`` (relative to the avatar folder) if the layout allows it for this entry type, else None."""
    if is_dir:
        return name if name in ("", *FRAME_DIRS) else None
    if name in TOP_FILES:
        return name
    folder, _, file_name = name.partition("/")
    return name if folder in FRAME_DIRS and FRAME_NAME_RE.match(file_name) else None


class _Extraction:
    """Copies the entries of one archive into ``dest``, refusing anything that is not the avatar layout."""

    def __init__(self, tar_path: Path, dest: Path, limits: ArchiveLimits) -> None:
        self.tar_path, self.dest, self.limits = tar_path, dest, limits
        self.entries = 0
        self.declared_bytes = 0
        self.written_bytes = 0
        self.top: str | None = None
        self.seen: set[str] = set()

    def relative_name(self, member: tarfile.TarInfo) -> str:
        """The entry's path inside the avatar folder, whether the archive has one top folder or none."""
        name = member.name
        while name.startswith("./"):
            name = name[2:]
        name = name.rstrip("/") if member.isdir() else name
        if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
            raise _unsafe(self.tar_path, member.name, "is an absolute path")
        if name in ("", "."):
            return ""  # the archive's own root entry
        parts = name.split("/")
        if ".." in parts:
            raise _unsafe(self.tar_path, member.name, "contains '..'")
        top = "" if parts[0] in (*TOP_FILES, *FRAME_DIRS) else parts.pop(0)
        if self.top is None:
            self.top = top
        elif top != self.top:
            where = [repr(t) if t else "the archive root" for t in (self.top, top)]
            raise _unsafe(self.tar_path, member.name, f"is outside the archive's top folder ({where[0]} vs {where[1]})")
        return "/".join(parts)

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise _unsafe(self.tar_path, member.name, f"is past the limit of {self.limits.max_entries} entries")
        rel = self.relative_name(member)
        problem = _member_problem(member)
        if problem:
            raise _unsafe(self.tar_path, member.name, problem)
        if _layout_rel(rel, member.isdir()) is None:
            raise _unsafe(self.tar_path, member.name, "is outside the avatar layout (coords.pkl, full_imgs/, ...)")
        if member.isdir():
            (self.dest / rel).mkdir(exist_ok=True)
            return
        if rel in self.seen:
            raise _unsafe(self.tar_path, member.name, "appears twice")
        self.seen.add(rel)
        self.declared_bytes += member.size
        if self.declared_bytes > self.limits.max_bytes:
            raise _unsafe(self.tar_path, member.name, f"takes the archive past {self.limits.max_bytes} bytes")
        self._copy(tar, member, rel)

    def _copy(self, tar: tarfile.TarFile, member: tarfile.TarInfo, rel: str) -> None:
        target = self.dest / rel
        target.parent.mkdir(exist_ok=True)
        source = tar.extractfile(member)
        if source is None:
            raise _unsafe(self.tar_path, member.name, "has no readable data")
        with source, target.open("xb") as out:
            written = 0
            while chunk := source.read(COPY_CHUNK_BYTES):
                written += len(chunk)
                self.written_bytes += len(chunk)
                # Counted as written, not only as declared: the declaration is the archive's word.
                if written > member.size or self.written_bytes > self.limits.max_bytes:
                    raise _unsafe(self.tar_path, member.name, "holds more data than declared or allowed")
                out.write(chunk)


def _extract(tar_path: Path, dest: Path, limits: ArchiveLimits) -> None:
    extraction = _Extraction(tar_path, dest, limits)
    try:
        with tarfile.open(tar_path, mode="r|*") as tar:
            while (member := tar.next()) is not None:
                extraction.add(tar, member)
                tar.members.clear()  # stream mode needs no index; keep memory flat for large archives
    except (tarfile.TarError, EOFError) as exc:
        raise StorageError("invalid_archive", f"archive {tar_path.name} is not a readable TAR: {exc}") from exc


def unpack_avatar(
    tar_path: Path, cache_root: Path, avatar_id: str, limits: ArchiveLimits | None = None, owner: str | None = None
) -> Path:
    """Safely extract an avatar TAR (ours or LiveTalking's) into ``cache_root/avatar_id``, replacing it atomically.

    ``owner`` (the TAR's URI in the store) is recorded beside the directory: see ``ensure_avatar_local``.
    """
    target = cache_root / _check_avatar_id(avatar_id)
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache_root, prefix=f".{avatar_id}.unpack-"))
    try:
        unpacked = staging / avatar_id
        unpacked.mkdir()
        _extract(tar_path, unpacked, limits or ArchiveLimits())
        info = validate_avatar_dir(unpacked)
        _install_owned(unpacked, target, owner)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("unpacked avatar %s (%d frames) into %s", avatar_id, info.num_frames, target)
    return target


# --- installing into the cache ------------------------------------------------------------------------

AT_FDCWD = -100
RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the platform or filesystem can't."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    return renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0


def _replace_dir(new: Path, target: Path) -> None:
    """Move directory ``new`` to ``target``; an existing ``target`` is swapped out atomically and deleted."""
    try:
        os.rename(new, target)
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise
    if not _exchange(new, target):
        # No atomic swap here: move the old one aside first; readers see no avatar for an instant.
        old = new.with_name(f"{new.name}.old")
        os.rename(target, old)
        os.rename(new, target)
        new = old
    if new.is_dir() and not new.is_symlink():
        shutil.rmtree(new)
    else:
        new.unlink()


def install_avatar(src_dir: Path, cache_root: Path, avatar_id: str, owner: str | None = None) -> Path:
    """Move a freshly built avatar directory into ``cache_root/avatar_id`` atomically (copying across filesystems).

    ``owner`` (the TAR's URI in the store) is recorded beside the directory: see ``ensure_avatar_local``.
    """
    target = cache_root / _check_avatar_id(avatar_id)
    validate_avatar_dir(src_dir)
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache_root, prefix=f".{avatar_id}.install-"))
    try:
        moved = staging / avatar_id
        try:
            os.rename(src_dir, moved)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            shutil.copytree(src_dir, moved)
            shutil.rmtree(src_dir)
        _install_owned(moved, target, owner)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _owner_file(cache_root: Path, avatar_id: str) -> Path:
    return cache_root / f".{avatar_id}.owner"


def _install_owned(new: Path, target: Path, owner: str | None) -> None:
    """Swap ``new`` in as ``target`` and record its owner; the stale record goes first, so no reader pairs
    the new directory with the previous owner (a missing record reads as a hand-placed avatar)."""
    owner_file = _owner_file(target.parent, target.name)
    owner_file.unlink(missing_ok=True)
    _replace_dir(new, target)
    if owner is not None:
        staged = owner_file.with_name(f"{owner_file.name}.tmp")
        staged.write_text(owner)
        os.replace(staged, owner_file)


def _owned_by(cache_root: Path, avatar_id: str, owner: str) -> bool:
    """Whether the cached avatar came from ``owner``; avatars placed by hand (no record) are trusted."""
    try:
        recorded = _owner_file(cache_root, avatar_id).read_text()
    except FileNotFoundError:
        return True
    if recorded != owner:
        log.info("cached avatar %s came from %s, not %s: fetching it", avatar_id, recorded, owner)
        return False
    return True


_thread_locks: dict[tuple[str, str], threading.Lock] = {}
_thread_locks_guard = threading.Lock()


@contextlib.contextmanager
def _avatar_lock(cache_root: Path, avatar_id: str) -> Iterator[None]:
    """Serialise fetching one avatar across threads (a lock) and processes (flock on a file in the cache)."""
    with _thread_locks_guard:
        lock = _thread_locks.setdefault((str(cache_root.resolve()), avatar_id), threading.Lock())
    with lock, open(cache_root / f".{avatar_id}.lock", "a") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        yield


def _cached(target: Path) -> bool:
    if not target.is_dir():
        return False
    try:
        validate_avatar_dir(target)
    except StorageError as exc:
        log.warning("cached avatar is unusable, fetching it again: %s", exc.message)
        return False
    return True


def ensure_avatar_local(
    store: ObjectStore, user_id: str, avatar_id: str, cache_root: Path, limits: ArchiveLimits | None = None
) -> Path:
    """The avatar's cache directory, downloading and unpacking its TAR from ``store`` once if needed.

    The cache keeps LiveTalking's ``{cache_root}/{avatar_id}`` layout, so a cached avatar is only used when
    it came from this user's TAR in this store (recorded in ``.{avatar_id}.owner``); another user's avatar of
    the same id is replaced by this one. Avatars placed by hand (no record) are used as they are.
    """
    target = cache_root / _check_avatar_id(avatar_id)
    owner = store.uri(keys.avatar_key(user_id, avatar_id))
    if _cached(target) and _owned_by(cache_root, avatar_id, owner):
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    with _avatar_lock(cache_root, avatar_id):
        if _cached(target) and _owned_by(cache_root, avatar_id, owner):  # fetched while we waited
            return target
        return _download(store, user_id, avatar_id, cache_root, limits or ArchiveLimits())


def _download(store: ObjectStore, user_id: str, avatar_id: str, cache_root: Path, limits: ArchiveLimits) -> Path:
    key = keys.avatar_key(user_id, avatar_id)
    fd, tmp_name = tempfile.mkstemp(dir=cache_root, prefix=f".{avatar_id}.download-", suffix=".tar")
    os.close(fd)
    tar_path = Path(tmp_name)
    try:
        try:
            store.get(key, tar_path, max_bytes=limits.max_archive_bytes)
        except StorageError as exc:
            if exc.code != "not_found":
                raise
            raise StorageError(
                "avatar_not_found",
                f"avatar {avatar_id!r} of user {user_id!r} is neither in the local cache ({cache_root / avatar_id}) "
                f"nor in the store ({store.uri(key)})",
            ) from exc
        log.info("downloaded %s (%d bytes)", store.uri(key), tar_path.stat().st_size)
        return unpack_avatar(tar_path, cache_root, avatar_id, limits, owner=store.uri(key))
    finally:
        tar_path.unlink(missing_ok=True)
