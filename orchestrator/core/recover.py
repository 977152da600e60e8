"""Restore avatars from the object store into the local avatar cache (seed 000's recovery script).

Avatars live in the store as ``avatars/{user_id}/{avatar_id}.tar`` and are installed through the workers'
avatar cache (``storage.avatar.cache``): keyed by owner (the TAR's store URI), a new immutable version per
install, so a recover running beside renders never changes a folder one of them holds. An avatar whose
current version came from the TAR the store lists now (same fingerprint) and validates is skipped; a
missing, stale (the TAR was replaced) or broken one is downloaded again.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from handlers.schemas import ID_PATTERN
from orchestrator.core.models import OrchestratorError
from storage.base import ObjectStore
from storage.errors import StorageError
from storage.keys import AVATARS_PREFIX, parse_avatar_key

if TYPE_CHECKING:  # the avatar modules load only when avatars are recovered
    from storage.avatar.cache import AvatarCache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AvatarEntry:
    user_id: str
    avatar_id: str
    key: str
    size: int
    fingerprint: str


@dataclass(frozen=True)
class RecoveryEvent:
    """One step, for progress output: ``found`` (list-only), ``downloading``, ``downloaded``,
    ``skipped``, ``would_download`` (dry run) or ``failed``."""

    action: str
    index: int
    total: int
    avatar: AvatarEntry
    message: str = ""
    num_frames: int | None = None


@dataclass
class RecoverySummary:
    downloaded: int = 0
    skipped: int = 0
    failed: int = 0
    would_download: int = 0
    total: int = 0
    avatars: list[AvatarEntry] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The summary block as seed 000 prints it."""
        rows = [("Downloaded", self.downloaded), ("Skipped", self.skipped), ("Failed", self.failed)]
        if self.would_download:
            rows.append(("Would download", self.would_download))
        rows.append(("Total", self.total))
        width = max(len(name) for name, _ in rows) + 2
        return [f"{name + ':':<{width}}{count}" for name, count in rows]


def _check_id(name: str, value: str | None) -> None:
    if value is not None and not re.fullmatch(ID_PATTERN, value):
        raise OrchestratorError("invalid_input", f"`{name}` {value!r} is not an id: use letters, digits, _ and -.")


def list_avatars(store: ObjectStore, *, user_id: str | None = None, avatar_id: str | None = None) -> list[AvatarEntry]:
    """Avatar TARs in the store, optionally for one user and/or one avatar id, sorted by key."""
    _check_id("user_id", user_id)
    _check_id("avatar_id", avatar_id)
    prefix = f"{AVATARS_PREFIX}{user_id}/" if user_id else AVATARS_PREFIX
    found = []
    for info in store.list(prefix):
        parsed = parse_avatar_key(info.key)
        if parsed is None or (avatar_id is not None and parsed[1] != avatar_id):
            continue
        found.append(AvatarEntry(parsed[0], parsed[1], info.key, info.size, info.fingerprint))
    return sorted(found, key=lambda entry: entry.key)


def _cached_frames(cache: AvatarCache | None, store: ObjectStore, entry: AvatarEntry) -> int | None:
    """Frame count of the installed version of ``entry``'s TAR, or None when it is absent, stale or broken."""
    from storage.avatar.reader import validate_avatar_dir

    current = None if cache is None else cache.current_version(store.uri(entry.key))
    if current is None:
        return None
    path, fingerprint = current
    if fingerprint != entry.fingerprint:
        log.info("cached avatar %s was made from an earlier %s; it will be downloaded again", path, entry.key)
        return None
    try:
        return validate_avatar_dir(path).num_frames
    except (StorageError, FileNotFoundError) as exc:  # FileNotFoundError: replaced and removed meanwhile
        log.warning("cached avatar %s is unusable (%s); it will be downloaded again", path, exc)
        return None


def _download(store: ObjectStore, entry: AvatarEntry, cache: AvatarCache) -> tuple[Path, int]:
    """Fetch and install one avatar as a new cache version; returns its folder and frame count."""
    from storage.avatar.reader import validate_avatar_dir

    if not re.fullmatch(ID_PATTERN, entry.avatar_id):
        raise StorageError("invalid_avatar", f"Avatar id {entry.avatar_id!r} in {entry.key} is not a safe name.")
    path = cache.download(store, entry.key, entry.avatar_id)
    return path, validate_avatar_dir(path).num_frames


def _open_cache(cache_root: Path) -> AvatarCache:
    from storage.avatar.cache import open_cache

    return open_cache(cache_root)


def recover_avatars(
    store: ObjectStore,
    cache_root: Path,
    *,
    list_only: bool = False,
    dry_run: bool = False,
    user_id: str | None = None,
    avatar_id: str | None = None,
    on_event: Callable[[RecoveryEvent], None] | None = None,
) -> RecoverySummary:
    """List (``list_only``), plan (``dry_run``) or restore the store's avatars into ``cache_root``."""
    avatars = list_avatars(store, user_id=user_id, avatar_id=avatar_id)
    summary = RecoverySummary(total=len(avatars), avatars=avatars)
    cache_root = Path(cache_root)
    # A dry run looks into an existing cache and creates none.
    use_cache = not list_only and (not dry_run or cache_root.is_dir())
    cache = _open_cache(cache_root) if use_cache else None

    def emit(action: str, index: int, entry: AvatarEntry, message: str = "", frames: int | None = None) -> None:
        if on_event is not None:
            on_event(RecoveryEvent(action, index, len(avatars), entry, message, frames))

    for index, entry in enumerate(avatars, start=1):
        if list_only:
            emit("found", index, entry, f"{entry.size} bytes")
            continue
        frames = _cached_frames(cache, store, entry)
        if frames is not None:
            summary.skipped += 1
            emit("skipped", index, entry, "already exists locally", frames)
        elif dry_run:
            summary.would_download += 1
            emit("would_download", index, entry, f"would download {entry.key}")
        else:
            emit("downloading", index, entry, f"downloading {entry.key}")
            assert cache is not None  # opened whenever this is not a dry run or a listing
            try:
                path, frames = _download(store, entry, cache)
            except Exception as exc:  # one bad avatar must not stop the others
                message = exc.message if isinstance(exc, StorageError) else f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, StorageError):
                    log.exception("recovering %s failed", entry.key)
                summary.failed += 1
                summary.failures[entry.key] = message
                emit("failed", index, entry, message)
                continue
            summary.downloaded += 1
            emit("downloaded", index, entry, f"extracted to {path}", frames)
    return summary
