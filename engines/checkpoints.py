"""Reading weights files safely and checking them strictly against a module's state dict.

Shared by the neural engines: ``.safetensors`` through safetensors (no code can run), anything else
through ``torch.load(weights_only=True)``, which refuses pickled code; then the exact key set and
shapes the module expects, and finite values, or an ``invalid_checkpoint`` error that names the keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from engines.errors import EngineError

KEYS_SHOWN = 5  # how many offending keys an error message lists


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def read_tensors(path: str | Path, what: str, nested_key: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (``nested_key``'s dict when the file holds one under that key)."""
    path = Path(path)
    if not path.is_file():
        raise EngineError("weights_missing", f"{what} `{path}` does not exist.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch/safetensors raise many types for a bad file: zip, pickle, EOF, runtime
        raise EngineError(
            "invalid_checkpoint", f"`{path}` is not a readable {what} of tensors ({_first_line(exc)})."
        ) from None
    state = obj.get(nested_key, obj) if isinstance(obj, dict) and nested_key else obj
    if not isinstance(state, dict) or not state:
        raise EngineError("invalid_checkpoint", f"`{path}` holds no state dict (expected a dict of tensors).")
    non_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise EngineError("invalid_checkpoint", f"`{path}`: entries that are not tensors: {non_tensors[:KEYS_SHOWN]}.")
    return state


def module_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of ``module`` and its shape (build it on the meta device: no memory)."""
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def key_mismatch(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]
) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, wrong-shape) keys of ``state`` against ``expected``."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} != {expected[k]}"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    ]
    return missing, unexpected, wrong_shape


def _listing(label: str, keys: list[str]) -> str:
    more = f" and {len(keys) - KEYS_SHOWN} more" if len(keys) > KEYS_SHOWN else ""
    return f"{len(keys)} {label} ({', '.join(keys[:KEYS_SHOWN])}{more})"


def check_state(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], path: str | Path, what: str
) -> None:
    """Strict: exactly the expected keys and shapes, finite values; else ``invalid_checkpoint``."""
    missing, unexpected, wrong_shape = key_mismatch(state, expected)
    problems = [
        _listing(label, keys)
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong_shape))
        if keys
    ]
    if problems:
        raise EngineError("invalid_checkpoint", f"`{path}` is not a {what} checkpoint: {'; '.join(problems)}.")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise EngineError("invalid_checkpoint", f"`{path}` has non-finite values in {bad[:KEYS_SHOWN]}.")
