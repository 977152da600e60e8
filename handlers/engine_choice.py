"""Which lip-sync engine serves a request, and why (``engine: auto`` and explicit names)."""

from __future__ import annotations

from functools import cache
from typing import Any

from engines.lipsync import LipSyncEngine
from handlers.errors import TaskError
from handlers.settings import Settings

CPU_ENGINE = "viseme_warp"


@cache
def _cpu_engine() -> LipSyncEngine:
    from engines.lipsync import viseme_warp

    return viseme_warp.VisemeWarpEngine.load()


def choose(requested: str, settings: Settings) -> tuple[str, str]:
    """(engine name, reason) for a requested engine name, without loading anything."""
    if requested in ("auto", CPU_ENGINE):
        return CPU_ENGINE, "requested" if requested == CPU_ENGINE else "no neural lip-sync weights configured"
    raise TaskError(
        "engine_unavailable", f"Engine `{requested}` is not available in this build; use `auto` or `{CPU_ENGINE}`."
    )


def lipsync_engine(requested: str, settings: Settings) -> tuple[LipSyncEngine, dict[str, Any]]:
    """The loaded engine (cached per process) and the info the result reports."""
    name, reason = choose(requested, settings)
    engine = _cpu_engine()
    return engine, {"name": engine.name, "version": engine.version, "reason": reason}


def describe(settings: Settings) -> dict[str, Any]:
    name, reason = choose("auto", settings)
    return {"engine": name, "reason": reason}
