"""`preprocess_avatar`'s `export_livetalking`: besides our avatar TAR, TARs LiveTalking's loaders play unchanged.

Why an option of preprocess_avatar and not a task of its own: the export is a reformat of the folder the task
has just written (a copy of the frames and a rewrite of two box pickles), needing no engine and no second
download; a task would need its own backend route and worker setting for a file copy. Avatars already in
the store are exported where the operator works, without a worker: ``avatarctl export-livetalking``.
Each export lands at ``livetalking/{user_id}/{model}/{avatar_id}.tar`` (under its avatar id as top folder,
ready for ``data/avatars/``), apart from ``avatars/`` so nothing takes it for one of our avatars.
"""

from __future__ import annotations

import logging
from pathlib import Path

import storage
from handlers.outputs import upload
from handlers.schemas import StoredObject
from handlers.settings import Settings
from storage.avatar.archive import pack_avatar
from storage.avatar.livetalking import export_livetalking
from storage.keys import livetalking_key

log = logging.getLogger(__name__)

TAR_CONTENT_TYPE = "application/x-tar"


def export_tars(avatar_dir: Path, models: list[str], work: Path) -> dict[str, Path]:
    """One LiveTalking TAR per model, written under ``work``."""
    tars = {}
    for model in models:
        folder = work / f"livetalking-{model}" / avatar_dir.name
        export_livetalking(avatar_dir, folder, model)
        tars[model] = folder.parent / f"{avatar_dir.name}.tar"
        pack_avatar(folder, tars[model])
    return tars


def upload_with_exports(
    store: storage.ObjectStore,
    tar_path: Path,
    key: str,
    exports: dict[str, Path],
    user_id: str,
    settings: Settings,
    content_type: str,
) -> tuple[StoredObject, dict[str, StoredObject] | None]:
    """Upload the exports, then the avatar itself; a failed avatar upload takes the exports back out."""
    avatar_id = tar_path.stem
    stored = {
        m: upload(store, t, livetalking_key(user_id, avatar_id, m), settings, TAR_CONTENT_TYPE)
        for m, t in exports.items()
    }
    try:
        return upload(store, tar_path, key, settings, content_type), stored or None
    except BaseException:
        for model in stored:
            try:
                store.delete(livetalking_key(user_id, avatar_id, model))
            except Exception:
                log.warning("could not delete the LiveTalking export %s of %s", model, avatar_id, exc_info=True)
        raise
