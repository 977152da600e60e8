"""``coords.pkl``: face boxes ``(y1, y2, x1, x2)`` per frame, as LiveTalking pickles them.

Written with ``pickle`` (our own data); read with ``box_pickle``, which never runs pickle machinery.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

from storage.avatar.box_pickle import MAX_BOXES, MAX_PICKLE_BYTES, BoxPickleError, read_boxes_pickle
from storage.base import atomic_file
from storage.errors import StorageError

Box = tuple[int, int, int, int]


def write_coords(path: Path, coords: Sequence[Sequence[int]]) -> None:
    """Pickle ``coords`` as a list of plain-int ``(y1, y2, x1, x2)`` tuples (what upstream LiveTalking reads)."""
    boxes = [tuple(int(v) for v in box) for box in coords]
    if any(len(box) != 4 for box in boxes):
        raise ValueError("every coords entry must be (y1, y2, x1, x2)")
    with atomic_file(path) as fh:
        pickle.dump(boxes, fh, protocol=4)


def read_boxes_file(path: Path, max_bytes: int = MAX_PICKLE_BYTES, max_boxes: int = MAX_BOXES) -> list[Box]:
    """The boxes of a box-list pickle (``coords.pkl``, MuseTalk's ``mask_coords.pkl``); ``invalid_avatar`` else.
    ``max_boxes``: the avatar's frame count where known (the decoder's work and build budgets scale with it)."""
    with path.open("rb") as fh:
        data = fh.read(max_bytes + 1)
    try:
        boxes = read_boxes_pickle(data, max_bytes=max_bytes, max_boxes=max(1, max_boxes))
    except BoxPickleError as exc:
        raise StorageError("invalid_avatar", f"{path} is not a list of 4-integer boxes: {exc}") from None
    return [(int(a), int(b), int(c), int(d)) for a, b, c, d in boxes.tolist()]


def read_coords(path: Path, max_boxes: int = MAX_BOXES) -> list[Box]:
    """``coords.pkl`` as ``(y1, y2, x1, x2)`` tuples: plain ints, numpy int64 scalars or a 2-D int array."""
    return read_boxes_file(path, max_boxes=max_boxes)
