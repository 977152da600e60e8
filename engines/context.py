"""What an engine's ``load`` is given besides its weights: decided once by the caller, never read by the engine.

Every lip-sync engine loads as ``Engine.load(weights, context)``: ``weights`` the file (or, for a set, the
file that stands for it) the caller found, ``None`` for an engine without weights; ``context`` the device,
the precision and the engine's options, which the worker derives from its settings once
(``handlers.engine_choice``). Engines read no environment variables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.errors import EngineError


@dataclass(frozen=True)
class EngineContext:
    device: str = "cpu"  # a torch device name: "cpu", "cuda", "cuda:1"
    precision: str = "auto"  # auto (fp16 on CUDA, bf16 on CPUs that run it natively, else fp32), fp32, bf16, fp16
    options: Mapping[str, Any] = field(default_factory=dict)  # the engine's own (batch size, input size...)
    faces: Any = None  # the process's face analyzer, for engines that find faces themselves

    def option(self, name: str, default: Any = None) -> Any:
        return self.options.get(name, default)


def required_weights(weights: Path | None, engine: str) -> Path:
    """``weights`` as a Path; an engine that needs weights and got none is a caller's bug, said plainly."""
    if weights is None:
        raise EngineError("weights_missing", f"The {engine} engine needs its weights file; none was given.")
    return Path(weights)
