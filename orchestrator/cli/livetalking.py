"""``avatarctl export-livetalking``: an avatar from the store rewritten for one of LiveTalking's loaders.

Runs where the operator works (no worker, no engine): the avatar TAR is fetched and unpacked with the same
checks as everywhere (``storage.avatar.archive``), rewritten by ``storage.avatar.livetalking`` and written as a
folder (``--output DIR`` -> ``DIR/<avatar_id>/``, ready to drop into LiveTalking's ``data/avatars/``), a TAR
(``--output x.tar``), or by default into the store at ``livetalking/{user_id}/{model}/{avatar_id}.tar``.
"""

import json
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer

import handlers
from handlers.schemas import DEFAULT_USER_ID, AvatarModel
from orchestrator.cli.console import EXIT_OK, JsonOption, StoreOption, UserOption, fail, handled_errors, out
from storage import ObjectStore, open_store
from storage.avatar.archive import extract_avatar, pack_avatar
from storage.avatar.layout import check_avatar_id
from storage.avatar.livetalking import export_livetalking
from storage.keys import avatar_key, livetalking_key

OutputOption = Annotated[
    Path | None,
    typer.Option("--output", help="A folder to write <avatar_id>/ into, or a .tar file; default: into the store."),
]


def export_livetalking_command(
    avatar_id: Annotated[str, typer.Argument(help="The avatar: avatars/{user_id}/{avatar_id}.tar in the store.")],
    model: Annotated[AvatarModel, typer.Option("--model", help="LiveTalking's loader: musetalk or wav2lip.")],
    user_id: UserOption = DEFAULT_USER_ID,
    store: StoreOption = None,
    output: OutputOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write an avatar LiveTalking plays unchanged (its musetalk loader reads coords.pkl in its own order)."""
    with handled_errors():
        settings = handlers.Settings()
        check_avatar_id(avatar_id)
        bucket = open_store(store or settings.avatar_store_uri, settings.storage)
        with tempfile.TemporaryDirectory(prefix="avatarctl-export-") as tmp:
            work = Path(tmp)
            key = avatar_key(user_id, avatar_id)
            bucket.get(key, work / "avatar.tar")
            (work / "in" / avatar_id).mkdir(parents=True)
            extract_avatar(work / "avatar.tar", work / "in" / avatar_id, source=bucket.uri(key))
            info = export_livetalking(work / "in" / avatar_id, work / "out" / avatar_id, model.value)
            where = _write(work / "out" / avatar_id, output, bucket, livetalking_key(user_id, avatar_id, model.value))
    report = {"avatar_id": avatar_id, "model": model.value, "num_frames": info.num_frames, "output": where}
    if as_json:
        typer.echo(json.dumps(report))
    else:
        out.print(
            f"{avatar_id}: {info.num_frames} frames for LiveTalking's {model.value} loader -> {where}", markup=False
        )
    raise typer.Exit(EXIT_OK)


def _write(folder: Path, output: Path | None, bucket: ObjectStore, key: str) -> str:
    if output is None:
        tar = folder.parent / f"{folder.name}.tar"
        pack_avatar(folder, tar)
        return bucket.put(tar, key, content_type="application/x-tar").uri
    if output.suffix == ".tar":
        pack_avatar(folder, output)
        return str(output)
    target = output / folder.name
    if target.exists():
        raise fail("output_exists", f"{target} exists already: remove it or choose another --output")
    output.mkdir(parents=True, exist_ok=True)
    shutil.copytree(folder, target)
    return str(target)
