"""`live_session`: the task that runs one live session on this worker until it ends (``realtime.worker``).

A task module like ``handlers/<task>.py`` (``load``, ``describe``, ``run``), added to the task table by
``realtime.serve_live_sessions()``. The session runs on the process's session host
(``realtime.manager``): at most ``REALTIME_MAX_SESSIONS`` at once, sharing this process's engines.
"""

from __future__ import annotations

from typing import Any

from handlers import Progress
from handlers.engine_choice import AUTO, choose
from handlers.runtime import WorkerRuntime
from handlers.schemas import LiveSessionRequest, LiveSessionResult
from realtime.manager import process_host
from realtime.worker import live_engine


def load(runtime: WorkerRuntime) -> None:
    import aiortc  # noqa: F401  (a broken install fails here, at start, not in the first session)

    live_engine(AUTO, runtime)


def describe(runtime: WorkerRuntime) -> dict[str, Any]:
    host = process_host()
    limits = host.limits
    name, reason = choose(AUTO, runtime)
    image_name, image_reason = choose(AUTO, runtime, portrait=True)
    return {
        "engine": {"name": name, "reason": reason},  # what `auto` renders a stored avatar with
        "image_engine": {"name": image_name, "reason": image_reason},  # ... and a portrait image
        "max_sessions": limits.max_sessions,
        "sessions": host.count,
        "max_duration_s": limits.max_duration_s,
        "ice_transport_policy": limits.ice_transport_policy,
    }


def run(request: LiveSessionRequest, runtime: WorkerRuntime, progress: Progress) -> LiveSessionResult:
    progress("live", 0.0)
    return process_host().run(request, runtime)
