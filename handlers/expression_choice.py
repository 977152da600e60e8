"""Which expression engine serves render_emotion, and why (``engine: auto`` and explicit names).

auto: ``liveportrait`` when its weights are present and CUDA is available, else the CPU engine
``landmark_warp``; a LivePortrait that fails to load falls back with a logged warning. An explicit
``liveportrait`` without its weights is an ``engine_unavailable`` error naming the file and the
``fetch-weights`` command. The weights are found as for the lip-sync engine of the same name
(``LIVEPORTRAIT_DIR``, else ``WEIGHTS_DIR/liveportrait``), and loaded once per process.
"""

from __future__ import annotations

import logging
from typing import Any

from engines.expression import DEFAULT_ENGINE, ExpressionEngine
from handlers.engine_choice import (
    AUTO,
    CPU_ENGINE,
    cuda_available,
    find_weights,
    missing_message,
    neural_engine,
    present_weights,
)
from handlers.errors import TaskError
from handlers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

LIVEPORTRAIT = "liveportrait"


def choose(requested: str, runtime: WorkerRuntime) -> tuple[str, str]:
    """(engine name, reason) without loading anything."""
    settings = runtime.settings
    if requested == DEFAULT_ENGINE:
        return DEFAULT_ENGINE, "requested"
    found = present_weights(LIVEPORTRAIT, settings)
    if requested == LIVEPORTRAIT:
        if found is None:
            missing = missing_message(LIVEPORTRAIT, settings, find_weights(LIVEPORTRAIT, settings))
            raise TaskError("engine_unavailable", missing.replace(f"`{CPU_ENGINE}`", f"`{DEFAULT_ENGINE}`"))
        return LIVEPORTRAIT, "requested"
    if requested != AUTO:
        allowed = ", ".join((AUTO, LIVEPORTRAIT, DEFAULT_ENGINE))
        raise TaskError("engine_unavailable", f"Unknown expression engine `{requested}`: use one of {allowed}.")
    if found is None:
        return DEFAULT_ENGINE, "auto: no liveportrait weights"
    if not cuda_available():
        return DEFAULT_ENGINE, "auto: liveportrait weights found but no CUDA device"
    failure = runtime.engines.failures.get(found.key)
    if failure is not None:
        return DEFAULT_ENGINE, f"auto: liveportrait failed to load ({failure.code})"
    return LIVEPORTRAIT, f"auto: liveportrait weights found ({found.path}) and CUDA"


def _liveportrait(runtime: WorkerRuntime) -> ExpressionEngine:
    """The expression engine around the same loaded model as the ``liveportrait`` lip-sync engine."""
    from engines.liveportrait.expression import LivePortraitExpressionEngine

    engines = runtime.engines
    talking, found = neural_engine(LIVEPORTRAIT, runtime)  # loaded once per process, failures recorded
    faces, size = engines.face_analyzer(), runtime.settings.liveportrait_input_size
    return engines.once(("expression", *found.key), lambda: LivePortraitExpressionEngine(talking.lp, faces, size))


def expression_engine(requested: str, runtime: WorkerRuntime) -> tuple[ExpressionEngine, dict[str, Any]]:
    """The loaded engine (kept by the runtime) and the info the result reports."""
    name, reason = choose(requested, runtime)
    if name == LIVEPORTRAIT:
        try:
            engine = _liveportrait(runtime)
            return engine, {"name": engine.name, "version": engine.version, "reason": reason, **engine.info}
        except Exception as exc:  # auto must still serve: any load failure falls back to the CPU engine
            if requested != AUTO:
                raise
            code = getattr(exc, "code", type(exc).__name__)
            log.warning("auto expression engine: liveportrait failed to load (%s: %s); falling back", code, exc)
            reason = f"auto: liveportrait failed to load ({code})"
    engine = runtime.engines.expression_engine(DEFAULT_ENGINE)
    return engine, {"name": engine.name, "version": engine.version, "reason": reason}


def describe(runtime: WorkerRuntime) -> dict[str, Any]:
    """For ``health``: the engine auto would use and why (no loading, no hashing)."""
    name, reason = choose(AUTO, runtime)
    return {"engine": name, "reason": reason, "cuda": cuda_available()}
