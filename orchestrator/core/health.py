"""The job service's health report: database, object store and each task's backend."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import handlers
import storage
from orchestrator.core.backends import Backend
from orchestrator.core.db import JobStore

STORE_PROBE_KEY = ".healthz"


def health_report(
    store: JobStore, settings: handlers.Settings, backend_for_task: Callable[[str], Backend], polling: bool
) -> dict[str, Any]:
    """``status`` is ``ok`` when every part is, else ``degraded``; each part says ``ok`` and why not."""
    report: dict[str, Any] = {"db": _checked(lambda: {"ok": store.ping(), "url": store.safe_url()})}
    report["store"] = _checked(lambda: _store_health(settings))
    backends: dict[str, Any] = {}
    for task in handlers.REQUEST_MODELS:
        backend = backend_for_task(task)
        backends.setdefault(backend.spec, {"tasks": [], **_checked(backend.health)})["tasks"].append(task)
    report["backends"] = backends
    healthy = all(part.get("ok") for part in (report["db"], report["store"], *backends.values()))
    warnings = _remote_without_bucket(settings.avatar_store_uri, backends)
    return {"status": "ok" if healthy else "degraded", "polling": polling, **report, "warnings": warnings}


def _remote_without_bucket(store_uri: str, backends: dict[str, Any]) -> list[str]:
    """A warning per remote backend writing to a file:// store: its outputs stay on the remote worker's disk."""
    if not store_uri.lower().startswith("file:"):
        return []
    return [
        f"backend {spec} runs {', '.join(part['tasks'])} on remote workers, but AVATAR_STORE_URI is {store_uri}: "
        "their outputs stay inside the workers' containers. Use an s3:// or gs:// bucket (images/README.md, "
        "'Buckets')."
        for spec, part in backends.items()
        if not spec.startswith("local")
    ]


def _store_health(settings: handlers.Settings) -> dict[str, Any]:
    uri = settings.avatar_store_uri
    storage.open_store(uri, settings.storage).exists(STORE_PROBE_KEY)
    return {"ok": True, "uri": uri}


def _checked(check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return check()
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
