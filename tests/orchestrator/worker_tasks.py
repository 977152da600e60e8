"""Task runners for local worker processes in tests: ``handlers.dispatch``, except for jobs of two test users.

They run inside the worker processes (the pool pickles them by reference), so they must stay top-level.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import handlers

CRASH_USER = "crash-worker"  # a render_emotion job of this user kills its worker process natively
BLOCK_USER = "block-worker"  # ... of this user blocks until the file its `image` URI names exists


def dispatch_or_crash(payload: dict[str, Any], runtime: handlers.WorkerRuntime, progress: Any) -> dict[str, Any]:
    if payload.get("user_id") == CRASH_USER:
        progress("about to crash", 0.1)
        os.kill(os.getpid(), signal.SIGSEGV)
    if payload.get("user_id") == BLOCK_USER:
        release = Path(payload["image"].removeprefix("file://"))
        while not release.exists():
            progress("blocked", 0.0)  # a cancelled job stops here
            time.sleep(0.1)
    return handlers.dispatch(payload, runtime, progress)


HANG_USER = "hang-worker"  # ... of this user hangs without ever reporting progress (a stuck native call)


def dispatch_or_hang(payload: dict[str, Any], runtime: handlers.WorkerRuntime, progress: Any) -> dict[str, Any]:
    if payload.get("user_id") == HANG_USER:
        progress("hanging", 0.5)
        while True:
            time.sleep(1)
    return dispatch_or_crash(payload, runtime, progress)
