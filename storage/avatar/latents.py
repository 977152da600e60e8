"""``latents.pt``: a user's ``torch.save`` of per-frame MuseTalk input latents, read without trusting it.

Checked before anything is copied, concatenated or converted, so a small file cannot make the reader
allocate more than it holds:

1. The file, unopened by torch: a zip (torch's format since 1.6; the legacy format allocates storages of
   declared size before reading them) whose records are all stored uncompressed (no record can expand),
   whose pickle (``data.pkl``) and record count are what ``num_frames`` latents need at most.
2. ``torch.load(weights_only=True)``: no code runs; torch checks each storage against its record's size.
3. Each tensor: floating point, shape ``(8, 32, 32)`` or ``(n, 8, 32, 32)``, strides that never repeat an
   element (no zero strides), a storage that holds every element it claims; all tensors together claim no
   more bytes than their distinct storages own (no list of references to one tensor); and exactly
   ``num_frames`` latents.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from storage.avatar.entries import invalid
from storage.avatar.layout import LATENTS, MAX_ENTRY_BYTES

if TYPE_CHECKING:
    import torch

LATENT_SHAPE = (8, 32, 32)
LATENT_ELEMENTS = math.prod(LATENT_SHAPE)
PICKLE_BYTES_PER_LATENT = 256  # torch.save spends about 88 bytes of data.pkl on each tensor of a list
PICKLE_SLACK_BYTES = 8192
RECORDS_SLACK = 16  # data.pkl, version, byteorder, ... beside one record per storage
MAX_ELEMENT_BYTES = 8  # float64


def read_latents(avatar: Path, num_frames: int) -> torch.Tensor:
    """``latents.pt`` as float32 (N, 8, 32, 32): a list of (1, 8, 32, 32) tensors or one stacked tensor,
    N == ``num_frames``; StorageError ``invalid_avatar`` (see the module docstring) otherwise."""
    import torch

    path = avatar / LATENTS
    _check_container(avatar, path, num_frames)
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad or hostile pickle
        raise invalid(avatar, f"{LATENTS} is not a list of tensors ({type(exc).__name__})") from None
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items or len(items) > num_frames or not all(isinstance(t, torch.Tensor) for t in items):
        raise invalid(avatar, f"{LATENTS} must hold a list of float tensors, one per frame ({num_frames})")
    count = sum(_latents_in(avatar, t) for t in items)
    if count != num_frames:
        raise invalid(
            avatar,
            f"{LATENTS} has {count} latents for {num_frames} frames "
            "(LiveTalking skips frames without a face: prepare the avatar again)",
        )
    latents = torch.cat([t.reshape(-1, *LATENT_SHAPE) for t in items]).float()  # now known to be num_frames
    if not torch.isfinite(latents).all():
        raise invalid(avatar, f"{LATENTS} holds NaN or infinite values")
    return latents


def _check_container(avatar: Path, path: Path, num_frames: int) -> None:
    """The zip's own declarations, read without torch: sizes, compression and the pickle's length."""
    size = path.stat().st_size
    limit = min(MAX_ENTRY_BYTES[LATENTS], num_frames * LATENT_ELEMENTS * MAX_ELEMENT_BYTES + 1024 * 1024)
    if size > limit:
        raise invalid(avatar, f"{LATENTS} is {size} bytes, more than {num_frames} latents take ({limit})")
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        raise invalid(avatar, f"{LATENTS} is not a torch.save zip file (save it with torch 1.6 or later)") from None
    if len(records) > num_frames + RECORDS_SLACK:
        raise invalid(avatar, f"{LATENTS} has {len(records)} records, more than {num_frames} latents need")
    pickle_limit = PICKLE_BYTES_PER_LATENT * num_frames + PICKLE_SLACK_BYTES
    for record in records:
        if record.compress_type != zipfile.ZIP_STORED or record.file_size != record.compress_size:
            raise invalid(avatar, f"{LATENTS}: record {record.filename!r} is compressed (torch.save stores them)")
        if record.filename.endswith("data.pkl") and record.file_size > pickle_limit:
            raise invalid(avatar, f"{LATENTS}: its pickle is {record.file_size} bytes, over {pickle_limit}")
    if sum(record.file_size for record in records) > size:
        raise invalid(avatar, f"{LATENTS}: its records declare more bytes than the file holds")


def _latents_in(avatar: Path, tensor: torch.Tensor) -> int:
    """How many (8, 32, 32) latents ``tensor`` holds, from its shape and strides alone (nothing is read)."""
    shape = tuple(tensor.shape)
    if not tensor.is_floating_point() or str(tensor.layout) != "torch.strided":
        raise invalid(avatar, f"{LATENTS} must hold dense float tensors")
    if shape[-3:] != LATENT_SHAPE or len(shape) not in (3, 4):
        raise invalid(avatar, f"{LATENTS} holds a tensor of shape {list(shape)}, expected (1, 8, 32, 32)")
    if any(stride < 1 for size, stride in zip(shape, tensor.stride(), strict=True) if size > 1):
        raise invalid(avatar, f"{LATENTS} holds a tensor with zero strides (it repeats elements it does not hold)")
    span = 1 + sum((size - 1) * stride for size, stride in zip(shape, tensor.stride(), strict=True) if size > 0)
    needed = (tensor.storage_offset() + span) * tensor.element_size() if tensor.numel() else 0
    if needed > tensor.untyped_storage().nbytes() or tensor.numel() > span:
        raise invalid(avatar, f"{LATENTS} holds a tensor claiming more elements than its storage holds")
    return shape[0] if len(shape) == 4 else 1
