"""Real-time avatar sessions over WebRTC (the ``realtime`` extra: aiortc).

A package of its own, between handlers and the orchestrator: it renders through the engines and the
handlers' avatar and speech helpers (like a task), but holds long-lived, stateful peer connections
that have no place in the one-shot task contract or in the serverless workers' images. The
orchestrator's API mounts its routes (``realtime.api``) when aiortc is installed.
"""


def available() -> bool:
    """Whether aiortc (the ``realtime`` extra) is installed."""
    import importlib.util

    return importlib.util.find_spec("aiortc") is not None
