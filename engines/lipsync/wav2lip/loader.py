"""Checkpoint I/O: read a Wav2Lip checkpoint safely, check its keys strictly, prepare the model for inference."""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

import torch

from engines.checkpoints import check_state, key_mismatch, module_shapes, read_tensors
from engines.lipsync.wav2lip.model import VARIANTS, Wav2Lip, build_model, fold_batchnorm

log = logging.getLogger(__name__)

STATE_DICT_KEY = "state_dict"
DATA_PARALLEL_PREFIX = "module."


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of an official checkpoint dict (``state_dict`` key) or of a bare state dict.

    ``weights_only=True`` refuses pickled code: the official checkpoints hold only tensors, ints,
    floats, tuples and dicts (the Adam optimizer state included), which that loader accepts.
    """
    state = read_tensors(path, "Wav2Lip checkpoint", nested_key=STATE_DICT_KEY)
    return {k.removeprefix(DATA_PARALLEL_PREFIX): v for k, v in state.items()}


@cache
def expected_shapes(variant: str) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of ``variant`` and its shape (built on the meta device: no memory)."""
    with torch.device("meta"):
        return module_shapes(build_model(variant))


def _key_mismatch(state: dict[str, torch.Tensor], variant: str) -> tuple[list[str], list[str], list[str]]:
    return key_mismatch(state, expected_shapes(variant))


def infer_variant(state: dict[str, torch.Tensor]) -> str:
    """The variant whose keys and shapes the state dict matches best."""
    return min(VARIANTS, key=lambda v: sum(len(part) for part in _key_mismatch(state, v)))


def check_state_dict(state: dict[str, torch.Tensor], variant: str, path: str | Path) -> None:
    """Strict: the exact key set and shapes of ``variant``, finite values; else ``invalid_checkpoint``."""
    check_state(state, expected_shapes(variant), path, variant)


def prepare_for_inference(
    model: Wav2Lip, device: str | torch.device, dtype: torch.dtype = torch.float32, channels_last: bool = True
) -> Wav2Lip:
    """Fold BatchNorm into the convs, then move to ``device``/``dtype`` in channels-last layout."""
    fold_batchnorm(model)
    model = model.to(device=device, dtype=dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.eval().requires_grad_(False)


def load_wav2lip(
    path: str | Path,
    variant: str | None = None,
    device: str | torch.device = "cpu",
    optimize: bool = False,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
) -> Wav2Lip:
    """Load a Wav2Lip checkpoint strictly, inferring the variant from its keys when not given.

    Returns the eval-mode model on ``device``; ``optimize`` also folds BatchNorm and applies
    ``dtype`` and the channels-last layout (see ``prepare_for_inference``).
    """
    state = read_state_dict(path)
    if variant is None:
        variant = infer_variant(state)
    elif variant not in VARIANTS:
        raise ValueError(f"unknown Wav2Lip variant {variant!r}: use one of {', '.join(VARIANTS)}")
    check_state_dict(state, variant, path)
    with torch.device("meta"):
        model = build_model(variant)
    model.load_state_dict(state, strict=True, assign=True)
    model = model.float().eval()
    log.info("loaded %s checkpoint %s", variant, path)
    if optimize:
        return prepare_for_inference(model, device, dtype, channels_last)
    return model.to(device).requires_grad_(False)
