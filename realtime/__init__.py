"""Real-time avatar sessions over WebRTC (the ``realtime`` extra: aiortc).

A package of its own, between handlers and the orchestrator: it renders through the engines and the
handlers' avatar and speech helpers (like a task), but holds long-lived, stateful peer connections.
On a worker a live session is the task ``live_session`` (``realtime.live_session``), which an entry point
adds to the handlers' task table with ``serve_live_sessions()``; the session dials out to the
orchestrator's control URL (``realtime.control``) and never accepts connections itself.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType
from typing import TYPE_CHECKING

import handlers
from handlers.schemas import LIVE_SESSION_TASK

if TYPE_CHECKING:
    from realtime.limits import RealtimeSettings


def available() -> bool:
    """Whether aiortc (the ``realtime`` extra) is installed."""
    try:
        return importlib.util.find_spec("aiortc") is not None
    except (ImportError, ValueError):  # ValueError: a module entry set to None (made unimportable)
        return False


def serve_live_sessions(limits: RealtimeSettings | None = None) -> bool:
    """Serve ``live_session`` in this process (limits read from the environment when None); returns False,
    serving nothing, when aiortc is not installed."""
    if not available():
        return False
    from realtime.manager import process_host

    process_host(limits)
    handlers.register_task(LIVE_SESSION_TASK, _live_session_task)
    return True


def _live_session_task() -> ModuleType:
    from realtime import live_session

    return live_session
