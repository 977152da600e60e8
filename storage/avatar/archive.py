"""Avatar TARs: deterministic packing, and unpacking that trusts nothing.

The bucket keeps an avatar as an uncompressed TAR at ``avatars/{user_id}/{avatar_id}.tar``. Archives come
from users' buckets, so unpacking checks every entry against the layout before a byte is written.

``unpack_avatar`` installs one in LiveTalking's own layout of unpacked avatars, ``{root}/{avatar_id}/`` (what
``avatarctl recover-avatars`` writes), replacing the folder atomically, with an owner record beside it
(``.{avatar_id}.owner``: the store URI of the TAR it came from). The cache (``cache.py``) leaves such folders
alone and serves their TAR through its versions, so replacements in the store are noticed.
"""

from __future__ import annotations

import bz2
import ctypes
import errno
import gzip
import io
import logging
import lzma
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from storage.avatar.layout import (
    FRAME_DIRS,
    IGNORED_DIRS,
    TOP_FILES,
    VARIABLE_SIZE_DIRS,
    check_avatar_id,
    frame_files,
    frame_size,
    is_stray_os_file,
    layout_rel,
    max_entry_bytes,
)
from storage.avatar.reader import AvatarInfo, validate_avatar_dir
from storage.base import atomic_file
from storage.errors import StorageError

ARCHIVE_MTIME = 1_577_836_800  # 2020-01-01: a fixed stamp keeps packed archives byte-identical


FILE_MODE = 0o644


DIR_MODE = 0o755


COPY_CHUNK_BYTES = 1024 * 1024


TAR_OVERHEAD_PER_ENTRY = 4096  # header, PAX header and padding, generously


HEADER_BUDGET_BYTES = 4 * COPY_CHUNK_BYTES  # PAX / long-name headers between two members (and read-ahead)


LIVETALKING_ROOT = ("data", "avatars")  # `tar cf x.tar data/avatars/<id>` in LiveTalking's repository


COMPRESSED_SIGNATURES = (
    (b"\x1f\x8b", lambda raw: gzip.GzipFile(fileobj=raw)),
    (b"BZh", bz2.BZ2File),
    (b"\xfd7zXZ\x00", lzma.LZMAFile),
)


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchiveLimits:
    """What an avatar TAR may hold before it is refused as a bomb."""

    max_entries: int = 200_000
    max_bytes: int = 20 * 1024**3
    # A compressed TAR may expand to max_expansion times its size (at least expansion_floor_bytes): PNG and
    # JPEG frames barely compress, so more is a decompression bomb.
    max_expansion: int = 64
    expansion_floor_bytes: int = 256 * 1024**2

    @property
    def max_archive_bytes(self) -> int:
        """The largest TAR file that can hold ``max_entries`` entries of ``max_bytes`` in all."""
        return self.max_bytes + (self.max_entries + 1) * TAR_OVERHEAD_PER_ENTRY

    def stream_budget(self, file_bytes: int, compressed: bool) -> int:
        """How many decompressed bytes a TAR file of ``file_bytes`` may stream."""
        if not compressed:
            return self.max_archive_bytes
        return min(self.max_archive_bytes, max(self.expansion_floor_bytes, self.max_expansion * file_bytes))


def _layout_files(avatar_dir: Path) -> list[str]:
    """Relative paths of everything an archive of ``avatar_dir`` holds, directories first, sorted."""
    names = [f for f in TOP_FILES if (avatar_dir / f).is_file()]
    for folder in (f for f in FRAME_DIRS if (avatar_dir / f).is_dir()):
        names.append(f"{folder}/")
        names.extend(f"{folder}/{p.name}" for p in frame_files(avatar_dir, folder))
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
    check_avatar_id(top)
    with atomic_file(tar_path) as out, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_tar_entry(f"{top}/", is_dir=True))
        for rel in _layout_files(avatar_dir):
            if rel.endswith("/"):
                tar.addfile(_tar_entry(f"{top}/{rel}", is_dir=True))
                continue
            src = avatar_dir / rel
            with src.open("rb") as fh:
                tar.addfile(_tar_entry(f"{top}/{rel}", size=os.fstat(fh.fileno()).st_size), fh)


def _unsafe(source: str, name: str, problem: str) -> StorageError:
    return StorageError("unsafe_archive", f"archive {source}: entry {name!r} {problem}")


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


class _BudgetReader(io.RawIOBase):
    """The decompressed TAR stream, refused past ``budget`` bytes in all and past ``header_budget`` bytes
    between two members (PAX and GNU long-name headers are read whole into memory by tarfile)."""

    def __init__(self, inner: BinaryIO, budget: int, header_budget: int) -> None:
        self.inner, self.budget, self.header_budget = inner, budget, header_budget
        self.total = 0
        self.since_member = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        data = self.inner.read(min(len(view), COPY_CHUNK_BYTES))
        self.total += len(data)
        self.since_member += len(data)
        if self.total > self.budget:
            raise _Refused(f"expands past {self.budget} bytes")
        if self.since_member > self.header_budget:
            raise _Refused(f"has a header or skipped entry over {self.header_budget} bytes")
        view[: len(data)] = data
        return len(data)


class _Refused(Exception):
    """Raised inside tarfile's reads; turned into ``unsafe_archive`` outside it."""


def _open_decompressed(tar_path: Path) -> tuple[BinaryIO, bool]:
    """The TAR stream of a plain, gzip, bzip2 or xz file, and whether it was compressed."""
    raw = tar_path.open("rb")
    magic = raw.read(6)
    raw.seek(0)
    for signature, opener in COMPRESSED_SIGNATURES:
        if magic.startswith(signature):
            return opener(raw), True
    return raw, False


class _Extraction:
    """Copies the entries of one archive into ``dest``, refusing anything that is not the avatar layout."""

    def __init__(self, source: str, dest: Path, limits: ArchiveLimits, reader: _BudgetReader) -> None:
        self.source, self.dest, self.limits, self.reader = source, dest, limits, reader
        self.entries = 0
        self.declared_bytes = 0
        self.top: str | None = None
        self.seen: set[str] = set()
        self.frame_sizes: dict[str, tuple[int, int]] = {}

    def relative_name(self, member: tarfile.TarInfo) -> str | None:
        """The entry's path inside the avatar folder, whether the archive has one top folder, none, or
        LiveTalking's ``data/avatars/<id>/``; None for that prefix's own folders."""
        name = member.name
        while name.startswith("./"):
            name = name[2:]
        name = name.rstrip("/") if member.isdir() else name
        if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
            raise _unsafe(self.source, member.name, "is an absolute path")
        if name in ("", "."):
            return ""  # the archive's own root entry
        parts = name.split("/")
        if ".." in parts:
            raise _unsafe(self.source, member.name, "contains '..'")
        root = list(LIVETALKING_ROOT)
        if member.isdir() and parts == root[: len(parts)]:
            return None  # `data/`, `data/avatars/`: the folders above an avatar in LiveTalking's repository
        if parts[: len(root)] == root and len(parts) > len(root):
            top = "/".join(parts[: len(root) + 1])
            parts = parts[len(root) + 1 :]
        else:
            top = "" if parts[0] in (*TOP_FILES, *FRAME_DIRS) else parts.pop(0)
        if self.top is None:
            self.top = top
        elif top != self.top:
            where = [repr(t) if t else "the archive root" for t in (self.top, top)]
            raise _unsafe(self.source, member.name, f"is outside the archive's top folder ({where[0]} vs {where[1]})")
        return "/".join(parts)

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise _unsafe(self.source, member.name, f"is past the limit of {self.limits.max_entries} entries")
        self._count(member)
        if member.isreg() and is_stray_os_file(member.name.rsplit("/", 1)[-1]):
            self._skip(tar, member)
            return
        rel = self.relative_name(member)
        problem = _member_problem(member)
        if problem:
            raise _unsafe(self.source, member.name, problem)
        if rel is None:
            return
        if rel.split("/", 1)[0] in IGNORED_DIRS:
            if member.isreg():
                self._skip(tar, member, "MuseTalk's output file")
            return
        if layout_rel(rel, member.isdir()) is None:
            raise _unsafe(self.source, member.name, "is outside the avatar layout (coords.pkl, full_imgs/, ...)")
        if member.isdir():
            (self.dest / rel).mkdir(exist_ok=True)
            return
        if member.size > max_entry_bytes(rel):
            raise _unsafe(self.source, member.name, f"declares {member.size} bytes, over {max_entry_bytes(rel)}")
        if rel in self.seen:
            raise _unsafe(self.source, member.name, "appears twice")
        self.seen.add(rel)
        self._copy(tar, member, rel)
        if "/" in rel:
            self._check_frame(rel)

    def _count(self, member: tarfile.TarInfo) -> None:
        self.declared_bytes += max(member.size, 0)
        if self.declared_bytes > self.limits.max_bytes:
            raise _unsafe(self.source, member.name, f"takes the archive past {self.limits.max_bytes} bytes")

    def _skip(self, tar: tarfile.TarFile, member: tarfile.TarInfo, what: str = "the stray OS file") -> None:
        """Read past a file an avatar does not use (within the budgets) and note it."""
        source = tar.extractfile(member)
        if source is not None:
            with source:
                while source.read(COPY_CHUNK_BYTES):
                    self.reader.since_member = 0
        log.info("archive %s: skipped %s %r", self.source, what, member.name)

    def _copy(self, tar: tarfile.TarFile, member: tarfile.TarInfo, rel: str) -> None:
        target = self.dest / rel
        target.parent.mkdir(exist_ok=True)
        source = tar.extractfile(member)
        if source is None:
            raise _unsafe(self.source, member.name, "has no readable data")
        with source, target.open("xb") as out:
            while chunk := source.read(COPY_CHUNK_BYTES):
                self.reader.since_member = 0  # member data, not headers: the total budget still counts it
                out.write(chunk)

    def _check_frame(self, rel: str) -> None:
        """A frame's header declares a sane size, the same as the first frame of its folder: refused here,
        before the rest is written and long before anything decodes it."""
        folder = rel.split("/", 1)[0]
        try:
            size = frame_size(self.dest, self.dest / rel)
        except StorageError as exc:
            raise StorageError(exc.code, exc.message.replace(str(self.dest), self.source)) from None
        expected = self.frame_sizes.setdefault(folder, size)
        if size != expected and folder not in VARIABLE_SIZE_DIRS:
            raise StorageError(
                "invalid_avatar",
                f"archive {self.source}: {rel} is {size[0]}x{size[1]}, other {folder} are {expected[0]}x{expected[1]}",
            )


def extract_avatar(
    tar_path: Path, dest: Path, limits: ArchiveLimits | None = None, source: str | None = None
) -> AvatarInfo:
    """Extract an avatar TAR (ours or LiveTalking's; plain, .gz, .bz2 or .xz) into the empty directory ``dest``
    and validate it. Budgets count decompressed bytes as they stream.

    ``source`` (the TAR's store URI) names the archive in errors; on failure ``dest`` holds a partial
    extraction: the caller removes it.
    """
    source = source or tar_path.name
    limits = limits or ArchiveLimits()
    stream, compressed = _open_decompressed(tar_path)
    budget = limits.stream_budget(tar_path.stat().st_size, compressed)
    reader = _BudgetReader(stream, budget, HEADER_BUDGET_BYTES)
    extraction = _Extraction(source, dest, limits, reader)
    try:
        with stream, tarfile.open(fileobj=io.BufferedReader(reader), mode="r|") as tar:
            while (member := tar.next()) is not None:
                extraction.add(tar, member)
                tar.members.clear()  # stream mode needs no index; keep memory flat for large archives
                reader.since_member = 0
    except _Refused as exc:
        raise StorageError("unsafe_archive", f"archive {source} {exc}") from None
    except (tarfile.TarError, EOFError, OSError, lzma.LZMAError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # a disk error of ours, not the archive's fault
        raise StorageError("invalid_archive", f"archive {source} is not a readable TAR: {exc}") from exc
    return validate_avatar_dir(dest, label=source)


AT_FDCWD = -100


RENAME_EXCHANGE = 2


def unpack_avatar(
    tar_path: Path, root: Path, avatar_id: str, limits: ArchiveLimits | None = None, owner: str | None = None
) -> Path:
    """Safely extract an avatar TAR (ours or LiveTalking's) into ``root/avatar_id``, replacing it atomically;
    ``owner`` (the TAR's URI in the store) is recorded beside the folder and named in errors."""
    target = root / check_avatar_id(avatar_id)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{avatar_id}.unpack-"))
    try:
        unpacked = staging / avatar_id
        unpacked.mkdir()
        info = extract_avatar(tar_path, unpacked, limits, source=owner)
        _install_owned(unpacked, target, owner)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("unpacked avatar %s (%d frames) into %s", avatar_id, info.num_frames, target)
    return target


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


def owner_record(root: Path, avatar_id: str) -> Path:
    return root / f".{avatar_id}.owner"


def _install_owned(new: Path, target: Path, owner: str | None) -> None:
    """Swap ``new`` in as ``target`` and record its owner; the stale record goes first, so no reader pairs
    the new directory with the previous owner (a missing record reads as a hand-placed avatar)."""
    owner_file = owner_record(target.parent, target.name)
    owner_file.unlink(missing_ok=True)
    _replace_dir(new, target)
    if owner is not None:
        staged = owner_file.with_name(f"{owner_file.name}.tmp")
        staged.write_text(owner)
        os.replace(staged, owner_file)
