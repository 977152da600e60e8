"""Checkpoint I/O: read a Wav2Lip checkpoint safely, check its keys strictly, prepare the model for inference."""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

import torch

from engines.errors import EngineError
from engines.lipsync.wav2lip.model import VARIANTS, Wav2Lip, build_model, fold_batchnorm

log = logging.getLogger(__name__)

STATE_DICT_KEY = "state_dict"
DATA_PARALLEL_PREFIX = "module."
KEYS_SHOWN = 5  # how many offending keys an error message lists


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of an official checkpoint dict (``state_dict`` key) or of a bare state dict.

    ``weights_only=True`` refuses pickled code: the official checkpoints hold only tensors, ints,
    floats, tuples and dicts (the Adam optimizer state included), which that loader accepts.
    """
    path = Path(path)
    if not path.is_file():
        raise EngineError("weights_missing", f"Wav2Lip checkpoint `{path}` does not exist.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file: zip, pickle, EOF, runtime
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise EngineError(
            "invalid_checkpoint", f"`{path}` is not a readable PyTorch checkpoint of tensors ({reason})."
        ) from None
    state = obj.get(STATE_DICT_KEY, obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state:
        raise EngineError("invalid_checkpoint", f"`{path}` holds no state dict (expected a dict of tensors).")
    non_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise EngineError("invalid_checkpoint", f"`{path}`: entries that are not tensors: {non_tensors[:KEYS_SHOWN]}.")
    return {k.removeprefix(DATA_PARALLEL_PREFIX): v for k, v in state.items()}


@cache
def expected_shapes(variant: str) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of ``variant`` and its shape (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = build_model(variant)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _key_mismatch(state: dict[str, torch.Tensor], variant: str) -> tuple[list[str], list[str], list[str]]:
    expected = expected_shapes(variant)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} != {expected[k]}"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    ]
    return missing, unexpected, wrong_shape


def infer_variant(state: dict[str, torch.Tensor]) -> str:
    """The variant whose keys and shapes the state dict matches best."""
    return min(VARIANTS, key=lambda v: sum(len(part) for part in _key_mismatch(state, v)))


def _listing(label: str, keys: list[str]) -> str:
    more = f" and {len(keys) - KEYS_SHOWN} more" if len(keys) > KEYS_SHOWN else ""
    return f"{len(keys)} {label} ({', '.join(keys[:KEYS_SHOWN])}{more})"


def check_state_dict(state: dict[str, torch.Tensor], variant: str, path: str | Path) -> None:
    """Strict: the exact key set and shapes of ``variant``, finite values; else ``invalid_checkpoint``."""
    missing, unexpected, wrong_shape = _key_mismatch(state, variant)
    problems = [
        _listing(label, keys)
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong_shape))
        if keys
    ]
    if problems:
        raise EngineError("invalid_checkpoint", f"`{path}` is not a {variant} checkpoint: {'; '.join(problems)}.")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise EngineError("invalid_checkpoint", f"`{path}` has non-finite values in {bad[:KEYS_SHOWN]}.")


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
