"""Avatar TARs: deterministic packing, and unpacking that trusts nothing.

The bucket keeps an avatar as an uncompressed TAR at ``avatars/{user_id}/{avatar_id}.tar``. Archives come
from users' buckets, so unpacking checks every entry against the layout before a byte is written.
"""

from __future__ import annotations

import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from storage.avatar.layout import FRAME_DIRS, TOP_FILES, check_avatar_id, layout_rel
from storage.avatar.validate import AvatarInfo, frame_files, validate_avatar_dir
from storage.base import atomic_file
from storage.errors import StorageError

ARCHIVE_MTIME = 1_577_836_800  # 2020-01-01: a fixed stamp keeps packed archives byte-identical
FILE_MODE = 0o644
DIR_MODE = 0o755
COPY_CHUNK_BYTES = 1024 * 1024
TAR_OVERHEAD_PER_ENTRY = 4096  # header, PAX header and padding, generously


@dataclass(frozen=True)
class ArchiveLimits:
    """What an avatar TAR may hold before it is refused as a bomb."""

    max_entries: int = 200_000
    max_bytes: int = 20 * 1024**3

    @property
    def max_archive_bytes(self) -> int:
        """The largest TAR file that can hold ``max_entries`` entries of ``max_bytes`` in all."""
        return self.max_bytes + (self.max_entries + 1) * TAR_OVERHEAD_PER_ENTRY


# --- packing ------------------------------------------------------------------------------------------


def _layout_files(avatar_dir: Path) -> list[str]:
    """Relative paths of everything an archive of ``avatar_dir`` holds, directories first, sorted."""
    names = [f for f in TOP_FILES if (avatar_dir / f).is_file()]
    for folder in FRAME_DIRS:
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


# --- unpacking ----------------------------------------------------------------------------------------


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


class _Extraction:
    """Copies the entries of one archive into ``dest``, refusing anything that is not the avatar layout."""

    def __init__(self, source: str, dest: Path, limits: ArchiveLimits) -> None:
        self.source, self.dest, self.limits = source, dest, limits
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
            raise _unsafe(self.source, member.name, "is an absolute path")
        if name in ("", "."):
            return ""  # the archive's own root entry
        parts = name.split("/")
        if ".." in parts:
            raise _unsafe(self.source, member.name, "contains '..'")
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
        rel = self.relative_name(member)
        problem = _member_problem(member)
        if problem:
            raise _unsafe(self.source, member.name, problem)
        if layout_rel(rel, member.isdir()) is None:
            raise _unsafe(self.source, member.name, "is outside the avatar layout (coords.pkl, full_imgs/, ...)")
        if member.isdir():
            (self.dest / rel).mkdir(exist_ok=True)
            return
        if rel in self.seen:
            raise _unsafe(self.source, member.name, "appears twice")
        self.seen.add(rel)
        self.declared_bytes += member.size
        if self.declared_bytes > self.limits.max_bytes:
            raise _unsafe(self.source, member.name, f"takes the archive past {self.limits.max_bytes} bytes")
        self._copy(tar, member, rel)

    def _copy(self, tar: tarfile.TarFile, member: tarfile.TarInfo, rel: str) -> None:
        target = self.dest / rel
        target.parent.mkdir(exist_ok=True)
        source = tar.extractfile(member)
        if source is None:
            raise _unsafe(self.source, member.name, "has no readable data")
        with source, target.open("xb") as out:
            written = 0
            while chunk := source.read(COPY_CHUNK_BYTES):
                written += len(chunk)
                self.written_bytes += len(chunk)
                # Counted as written, not only as declared: the declaration is the archive's word.
                if written > member.size or self.written_bytes > self.limits.max_bytes:
                    raise _unsafe(self.source, member.name, "holds more data than declared or allowed")
                out.write(chunk)


def extract_avatar(
    tar_path: Path, dest: Path, limits: ArchiveLimits | None = None, source: str | None = None
) -> AvatarInfo:
    """Extract an avatar TAR (ours or LiveTalking's) into the empty directory ``dest`` and validate it.

    ``source`` (the TAR's store URI) names the archive in errors; on failure ``dest`` holds a partial
    extraction: the caller removes it.
    """
    source = source or tar_path.name
    extraction = _Extraction(source, dest, limits or ArchiveLimits())
    try:
        with tarfile.open(tar_path, mode="r|*") as tar:
            while (member := tar.next()) is not None:
                extraction.add(tar, member)
                tar.members.clear()  # stream mode needs no index; keep memory flat for large archives
    except (tarfile.TarError, EOFError) as exc:
        raise StorageError("invalid_archive", f"archive {source} is not a readable TAR: {exc}") from exc
    return validate_avatar_dir(dest, label=source)
