"""The workers' local avatar cache: unpacked TARs keyed by owner, immutable while any render holds them.

Layout under the cache root (``AVATAR_LOCAL_PATH``)::

    {avatar_id}/                   LiveTalking's layout placed by hand: served as it is (one with an owner
                                   record, .{avatar_id}.owner, came from a store TAR and is ignored)
    .owners/{sha256(owner)}/       one folder per owner, the store URI of the avatar's TAR
        current                    the version new renders use, and its TAR's store fingerprint
        owner.txt                  the owner URI, for people looking at the disk
        v{ns}-{hex}/               immutable versions: a replacement installs a new one
    .locks/{00..63}.lock           a fixed set of lock stripes (one download per owner at a time)
    .tmp/                          work folders, each flock-ed by the process using it

A render holds its version with a shared ``flock`` on the version folder (across threads and processes);
old versions are removed once nobody holds them: by whoever releases or installs next, or at start.
Before reuse, a cached version is checked against the store (one HEAD per owner every ``revalidate_s``
seconds, per process): a TAR replaced since (re-preprocessed on any worker) installs a new version.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from storage import keys
from storage.avatar.archive import ArchiveLimits, extract_avatar, owner_record
from storage.avatar.layout import check_avatar_id
from storage.avatar.reader import validate_avatar_dir
from storage.base import ObjectStore
from storage.errors import StorageError

log = logging.getLogger(__name__)


OWNERS = ".owners"


LOCKS = ".locks"


TMP = ".tmp"


CURRENT = "current"


OWNER_NOTE = "owner.txt"


LOCK_STRIPES = 64


HOLD_RETRIES = 5


STRAY_FILE_AGE_S = 60


REVALIDATE_S = 30.0


class Hold(NamedTuple):
    path: Path  # a version folder
    fd: int  # the descriptor whose shared lock keeps it
    fingerprint: str  # the store fingerprint of the TAR it came from ("" when unknown)


def _open_dir(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _try_exclusive(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class AvatarCache:
    """One cache root. ``acquire`` is the reader's door, ``install`` the writer's (preprocess_avatar)."""

    def __init__(self, root: Path, limits: ArchiveLimits | None = None, revalidate_s: float = REVALIDATE_S) -> None:
        self.root = Path(root)
        self.limits = limits or ArchiveLimits()
        self.revalidate_s = revalidate_s
        self._checked: dict[str, float] = {}  # owner -> time.monotonic() of its last revalidation
        self._checked_lock = threading.Lock()
        self._tmp = self.root / TMP
        self._owners = self.root / OWNERS
        for folder in (self._tmp, self._owners, self.root / LOCKS):
            folder.mkdir(parents=True, exist_ok=True)
        self.sweep()

    # --- readers --------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def acquire(self, store: ObjectStore, user_id: str, avatar_id: str, hand_placed: str = "all") -> Iterator[Path]:
        """The avatar's folder for as long as the ``with`` block runs, downloading its TAR once if needed.

        The folder never changes while held; a cached version is checked against the store's TAR at most once
        per ``revalidate_s``. An avatar placed by hand in ``{root}/{avatar_id}`` is used as it is, by the users
        ``hand_placed`` (HAND_PLACED_AVATARS, ``flat.hand_placed_avatar``) lets use it (one unpacked there from
        a store TAR, with an owner record, is not: its TAR is served from here).
        """
        key = keys.avatar_key(user_id, check_avatar_id(avatar_id))
        owner = store.uri(key)
        flat = hand_placed_avatar(self.root, avatar_id, user_id, hand_placed)
        if flat is not None:
            yield flat
            return
        held = self._hold(owner)
        if held is not None and not self._still_current(store, key, owner, held.fingerprint):
            os.close(held.fd)
            held = None
        if held is None:
            held = self._fetch(store, key, avatar_id, owner)
        try:
            yield held.path
        finally:
            os.close(held.fd)  # drops the shared lock
            self._collect(self._owner_dir(owner))

    def current_path(self, owner: str) -> Path | None:
        """The version folder new renders of ``owner``'s avatar would get (not held: for inspection)."""
        current = self.current_version(owner)
        return None if current is None else current[0]

    def current_version(self, owner: str) -> tuple[Path, str] | None:
        """(version folder, the store fingerprint of its TAR) that new renders would get (not held)."""
        record = self._current_record(self._owner_dir(owner))
        return None if record is None else (self._owner_dir(owner) / record[0], record[1])

    # --- writers --------------------------------------------------------------------------------------

    def install(self, src_dir: Path, owner: str, fingerprint: str = "") -> Path:
        """Move a freshly built avatar folder in as ``owner``'s new version (copying across filesystems);
        ``fingerprint`` is the store's for the TAR it matches ("" if unknown: the next revalidation fetches)."""
        validate_avatar_dir(src_dir)
        with self._workdir() as work:
            staged = work / "avatar"
            try:
                os.rename(src_dir, staged)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                shutil.copytree(src_dir, staged)
                shutil.rmtree(src_dir)
            held = self._commit(staged, owner, fingerprint)
        os.close(held.fd)
        self._collect(self._owner_dir(owner))
        return held.path

    def download(self, store: ObjectStore, key: str, avatar_id: str) -> Path:
        """Install the store's TAR at ``key`` as a new version, even when the current one came from the same TAR
        (recover-avatars replaces broken versions so); returns the new version's folder."""
        owner = store.uri(key)
        with self._stripe(owner), self._not_found_as_avatar(avatar_id, owner):
            held = self._download(store, key, avatar_id, owner, store.stat(key).fingerprint)
        os.close(held.fd)
        self._collect(self._owner_dir(owner))
        return held.path

    def sweep(self) -> None:
        """Remove what killed processes left: work folders nobody locks, versions nobody holds."""
        for entry in self._tmp.iterdir():
            self._remove_if_unheld(entry)
        for owner_dir in self._owners.iterdir():
            self._collect(owner_dir)

    # --- internals ------------------------------------------------------------------------------------

    def _owner_dir(self, owner: str) -> Path:
        return self._owners / hashlib.sha256(owner.encode()).hexdigest()

    @classmethod
    def _current(cls, owner_dir: Path) -> str | None:
        record = cls._current_record(owner_dir)
        return None if record is None else record[0]

    @staticmethod
    def _current_record(owner_dir: Path) -> tuple[str, str] | None:
        """(version, fingerprint) from ``current``: the version's name, then the fingerprint on a second line."""
        try:
            version, _, fingerprint = (owner_dir / CURRENT).read_text().partition("\n")
        except (FileNotFoundError, NotADirectoryError):
            return None
        return (version.strip(), fingerprint.strip()) if version.strip() else None

    def _hold(self, owner: str) -> Hold | None:
        """A shared lock on the current version, or None when there is none; retried when a replacement
        removes the version between reading ``current`` and locking it."""
        owner_dir = self._owner_dir(owner)
        for _ in range(HOLD_RETRIES):
            record = self._current_record(owner_dir)
            if record is None:
                return None
            version, fingerprint = record
            path = owner_dir / version
            fd = _open_dir(path)
            if fd is None:
                continue
            fcntl.flock(fd, fcntl.LOCK_SH)
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return Hold(path, fd, fingerprint)
            os.close(fd)
        return None

    def _still_current(self, store: ObjectStore, key: str, owner: str, fingerprint: str) -> bool:
        """False when the store's TAR has changed since ``fingerprint``; asks at most once per ``revalidate_s``.
        A store that cannot answer leaves the cached version in use."""
        now = time.monotonic()
        with self._checked_lock:
            last = self._checked.get(owner)
            if last is not None and now - last < self.revalidate_s:
                return True
            self._checked[owner] = now
        try:
            latest = store.stat(key).fingerprint
        except StorageError as exc:
            log.warning("cannot revalidate avatar %s (%s); using the cached version", owner, exc.message)
            return True
        if latest == fingerprint:
            return True
        log.info("avatar %s changed in the store; fetching the new version", owner)
        return False

    def _fetch(self, store: ObjectStore, key: str, avatar_id: str, owner: str) -> Hold:
        with self._stripe(owner), self._not_found_as_avatar(avatar_id, owner):
            # Stat before the download: a TAR replaced in between is only fetched again later, never missed.
            fingerprint = store.stat(key).fingerprint
            held = self._hold(owner)  # installed by another thread or process while we waited
            if held is not None and held.fingerprint == fingerprint:
                return held
            if held is not None:
                os.close(held.fd)
            held = self._download(store, key, avatar_id, owner, fingerprint)
        with self._checked_lock:
            self._checked[owner] = time.monotonic()
        return held

    def _download(self, store: ObjectStore, key: str, avatar_id: str, owner: str, fingerprint: str) -> Hold:
        """Fetch, unpack and commit one TAR as a new version (the caller holds the owner's stripe)."""
        with self._workdir() as work:
            tar_path = work / "avatar.tar"
            store.get(key, tar_path, max_bytes=self.limits.max_archive_bytes)
            log.info("downloaded %s (%d bytes)", owner, tar_path.stat().st_size)
            staged = work / "avatar"
            staged.mkdir()
            info = extract_avatar(tar_path, staged, self.limits, source=owner)
            tar_path.unlink()
            held = self._commit(staged, owner, fingerprint)
        log.info("cached avatar %s (%d frames) from %s in %s", avatar_id, info.num_frames, owner, held.path)
        return held

    @contextlib.contextmanager
    def _not_found_as_avatar(self, avatar_id: str, owner: str) -> Iterator[None]:
        try:
            yield
        except StorageError as exc:
            if exc.code != "not_found":
                raise
            raise StorageError(
                "avatar_not_found",
                f"avatar {avatar_id!r} is neither in the local cache ({self.root / avatar_id}) "
                f"nor in the store ({owner})",
            ) from exc

    def _commit(self, staged: Path, owner: str, fingerprint: str) -> Hold:
        """Rename a validated folder in as a new version and point ``current`` at it; the shared lock is
        taken before the rename, so no collector can remove the version before ``current`` names it."""
        fd = os.open(staged, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(fd, fcntl.LOCK_SH)
        owner_dir = self._owner_dir(owner)
        owner_dir.mkdir(exist_ok=True)
        path = owner_dir / f"v{time.time_ns()}-{secrets.token_hex(4)}"
        os.rename(staged, path)
        self._write_small(owner_dir / OWNER_NOTE, owner)
        self._write_small(owner_dir / CURRENT, f"{path.name}\n{fingerprint}")
        return Hold(path, fd, fingerprint)

    def _write_small(self, target: Path, text: str) -> None:
        staged = self._tmp / f"{target.name}.{secrets.token_hex(8)}"
        staged.write_text(text)
        os.replace(staged, target)

    def _collect(self, owner_dir: Path) -> None:
        """Remove the versions of one owner that are not current and that nobody holds."""
        current = self._current(owner_dir)
        with contextlib.suppress(FileNotFoundError):
            for entry in owner_dir.iterdir():
                if entry.name.startswith("v") and entry.name != current:
                    self._remove_if_unheld(entry)

    def _remove_if_unheld(self, path: Path) -> None:
        """Delete ``path`` if an exclusive lock on it can be had now; it is moved into .tmp first, so
        nobody sees a half-deleted folder."""
        fd = _open_dir(path)
        if fd is None:  # a file: a crashed _write_small's, if old enough not to be a live one
            with contextlib.suppress(FileNotFoundError):
                if time.time() - path.stat().st_mtime > STRAY_FILE_AGE_S:
                    path.unlink()
            return
        try:
            if not _try_exclusive(fd):
                return
            trash = path if path.parent == self._tmp else self._tmp / f"trash-{secrets.token_hex(8)}"
            with contextlib.suppress(FileNotFoundError):
                if trash != path:
                    os.rename(path, trash)
                shutil.rmtree(trash)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _workdir(self) -> Iterator[Path]:
        """A fresh folder in .tmp, locked while in use so a sweep in another process leaves it alone."""
        path = self._tmp / f"work-{secrets.token_hex(8)}"
        path.mkdir()
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            os.close(fd)

    @contextlib.contextmanager
    def _stripe(self, owner: str) -> Iterator[None]:
        """One of LOCK_STRIPES lock files, chosen by owner: serialises downloads across threads and processes
        without a lock file per avatar id."""
        stripe = int(hashlib.sha256(owner.encode()).hexdigest()[:8], 16) % LOCK_STRIPES
        with open(self.root / LOCKS / f"{stripe:02d}.lock", "a") as lock_file:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
            yield


_caches: dict[str, AvatarCache] = {}


_caches_guard = threading.Lock()


def open_cache(root: Path, revalidate_s: float = REVALIDATE_S) -> AvatarCache:
    """The process's cache for ``root``: created (and swept) on first use, then shared."""
    with _caches_guard:
        key = str(Path(root).resolve())
        if key not in _caches:
            _caches[key] = AvatarCache(Path(root))
        _caches[key].revalidate_s = revalidate_s
        return _caches[key]


HAND_PLACED_RULES = ("all", "owned", "none")


def hand_placed_avatar(root: Path, avatar_id: str, user_id: str | None = None, rule: str = "all") -> Path | None:
    """``root/avatar_id`` when it is a valid avatar placed by hand that ``user_id`` may use, else None; a broken
    folder is logged and left alone. A folder with an owner record was unpacked from a store TAR: that TAR is
    the versioned cache's to serve (and to check for replacements), so such a folder is not used.

    Who may use one (``rule``, HAND_PLACED_AVATARS): a users file beside it (``.{avatar_id}.users``, one user id
    a line) limits it to those users; ``all`` serves folders without one to everyone, ``owned`` serves only
    folders with one, ``none`` never serves hand-placed folders."""
    folder = root / avatar_id
    if rule == "none" or not folder.is_dir() or owner_record(root, avatar_id).exists():
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


def _listed_users(root: Path, avatar_id: str) -> frozenset[str] | None:
    """The user ids in ``.{avatar_id}.users`` (one a line), or None when there is no such file."""
    try:
        text = (root / f".{avatar_id}.users").read_text(encoding="utf-8", errors="replace")[:1_000_000]
    except (FileNotFoundError, IsADirectoryError):
        return None
    return frozenset(line.strip() for line in text.splitlines() if line.strip())
