"""Reading single entries of an avatar folder within the layout's limits: frame lists, frame sizes, JSON."""

from __future__ import annotations

import json
from pathlib import Path

from storage.avatar.images import image_size
from storage.avatar.layout import FRAME_NAME_RE, MAX_ENTRY_BYTES, MAX_FRAME_PIXELS, MAX_META_DEPTH, is_stray_os_file
from storage.errors import StorageError


def invalid(path: Path, problem: str) -> StorageError:
    return StorageError("invalid_avatar", f"avatar {path}: {problem}")


def frame_files(avatar: Path, folder: str) -> list[Path]:
    """The frames of ``folder`` in index order; names must run 00000000, 00000001, ... without gaps."""
    directory = avatar / folder
    if not directory.is_dir():
        raise invalid(avatar, f"missing {folder}/")
    by_index: dict[int, Path] = {}
    for entry in directory.iterdir():
        if is_stray_os_file(entry.name):
            continue
        match = FRAME_NAME_RE.match(entry.name)
        if not match or not entry.is_file():
            raise invalid(avatar, f"unexpected entry {folder}/{entry.name} (frames are NNNNNNNN.png or .jpg)")
        index = int(match.group(1))
        if index in by_index:
            raise invalid(avatar, f"{folder}/ has frame {index} twice ({by_index[index].name}, {entry.name})")
        by_index[index] = entry
    for expected in range(len(by_index)):
        if expected not in by_index:
            raise invalid(avatar, f"{folder}/ has a gap: frame {expected:08d} is missing")
    return [by_index[i] for i in range(len(by_index))]


def _json_depth(value: object) -> int:
    """Nesting depth of parsed JSON, walked without recursion."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        deepest = max(deepest, depth)
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        pending.extend((child, depth + 1) for child in children)
    return deepest


def read_json_object(avatar: Path, name: str) -> dict:
    """The JSON object in ``avatar/name`` ({} when absent), within its size cap and nesting depth."""
    path = avatar / name
    if not path.exists():
        return {}
    if path.stat().st_size > MAX_ENTRY_BYTES[name]:
        raise invalid(avatar, f"{name} is over {MAX_ENTRY_BYTES[name]} bytes")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise invalid(avatar, f"{name} is not valid JSON: {type(exc).__name__}") from None
    if not isinstance(value, dict):
        raise invalid(avatar, f"{name} must hold a JSON object")
    if _json_depth(value) > MAX_META_DEPTH:
        raise invalid(avatar, f"{name} is nested deeper than {MAX_META_DEPTH} levels")
    return value


def frame_size(avatar: Path, frame: Path) -> tuple[int, int]:
    """A frame's (width, height) from its header; ``invalid_avatar`` past MAX_FRAME_PIXELS."""
    width, height = image_size(frame)
    if width * height > MAX_FRAME_PIXELS or not width or not height:
        raise invalid(avatar, f"{frame.parent.name}/{frame.name} declares {width}x{height} pixels")
    return width, height
