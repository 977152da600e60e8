"""The workers' local avatar cache: unpacked TARs in LiveTalking's ``{root}/{avatar_id}`` layout.

Installs are atomic (a directory swapped in whole); an owner record beside each directory says which
store TAR it came from, so one user's avatar is never served for another's of the same id.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from storage import keys
from storage.avatar.archive import ArchiveLimits, extract_avatar
from storage.avatar.layout import check_avatar_id
from storage.avatar.validate import validate_avatar_dir
from storage.base import ObjectStore
from storage.errors import StorageError

log = logging.getLogger(__name__)

AT_FDCWD = -100
RENAME_EXCHANGE = 2


def unpack_avatar(
    tar_path: Path, cache_root: Path, avatar_id: str, limits: ArchiveLimits | None = None, owner: str | None = None
) -> Path:
    """Safely extract an avatar TAR (ours or LiveTalking's) into ``cache_root/avatar_id``, replacing it atomically.

    ``owner`` (the TAR's URI in the store) is recorded beside the directory: see ``ensure_avatar_local``.
    """
    target = cache_root / check_avatar_id(avatar_id)
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache_root, prefix=f".{avatar_id}.unpack-"))
    try:
        unpacked = staging / avatar_id
        unpacked.mkdir()
        info = extract_avatar(tar_path, unpacked, limits)
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


def install_avatar(src_dir: Path, cache_root: Path, avatar_id: str, owner: str | None = None) -> Path:
    """Move a freshly built avatar directory into ``cache_root/avatar_id`` atomically (copying across filesystems).

    ``owner`` (the TAR's URI in the store) is recorded beside the directory: see ``ensure_avatar_local``.
    """
    target = cache_root / check_avatar_id(avatar_id)
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
    target = cache_root / check_avatar_id(avatar_id)
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
