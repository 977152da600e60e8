"""LiveTalking's own layout of unpacked avatars: ``{root}/{avatar_id}/``, one folder per avatar id.

People place avatars there by hand, and the worker cache (``cache.py``) serves those as they are. A folder
written by :func:`unpack_avatar` (earlier ``avatarctl recover-avatars`` too) may carry an owner record beside
it (``.{avatar_id}.owner``: the store URI of the TAR it came from); the cache leaves such folders alone and
serves their TAR through its versions, so replacements in the store are noticed.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import tempfile
from pathlib import Path

from storage.avatar.archive import ArchiveLimits, extract_avatar
from storage.avatar.layout import check_avatar_id
from storage.avatar.validate import validate_avatar_dir
from storage.errors import StorageError

log = logging.getLogger(__name__)

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


HAND_PLACED_RULES = ("all", "owned", "none")


def hand_placed_avatar(root: Path, avatar_id: str, user_id: str | None = None, rule: str = "all") -> Path | None:
    """``root/avatar_id`` when it is a valid avatar placed by hand that ``user_id`` may use, else None; a broken
    folder is logged and left alone. A folder with an owner record was unpacked from a store TAR: that TAR is
    the versioned cache's to serve (and to check for replacements), so such a folder is not used.

    Who may use one (``rule``, HAND_PLACED_AVATARS): a users file beside it (``.{avatar_id}.users``, one user id
    a line) limits it to those users; ``all`` serves folders without one to everyone, ``owned`` serves only
    folders with one, ``none`` never serves hand-placed folders."""
    folder = root / avatar_id
    if rule == "none" or not folder.is_dir() or _owner_file(root, avatar_id).exists():
        return None
    users = _listed_users(root, avatar_id)
    if (users is None and rule != "all") or (users is not None and user_id not in users):
        return None
    try:
        validate_avatar_dir(folder)
    except StorageError as exc:
        log.warning("avatar folder %s is unusable, ignoring it: %s", folder, exc.message)
        return None
    return folder


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


def _listed_users(root: Path, avatar_id: str) -> frozenset[str] | None:
    """The user ids in ``.{avatar_id}.users`` (one a line), or None when there is no such file."""
    try:
        text = (root / f".{avatar_id}.users").read_text(encoding="utf-8", errors="replace")[:1_000_000]
    except (FileNotFoundError, IsADirectoryError):
        return None
    return frozenset(line.strip() for line in text.splitlines() if line.strip())


def _owner_file(root: Path, avatar_id: str) -> Path:
    return root / f".{avatar_id}.owner"


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
