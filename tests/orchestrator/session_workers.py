"""A stand-in for the live-session worker, speaking the control contract of ``handlers/schemas.py`` over HTTP.

It runs where a real worker would (a local session process, an emulated RunPod worker), dials out to the task's
control URL with its token and does what a worker does, without media: posts an SDP answer, long-polls the
commands, answers each ``say`` with ``said`` (or ``error``), beats with statistics and posts its end when the
orchestrator answers 410. What it does differently depends on the session's ``user_id`` (the MODES below), so
tests can make a worker crash, hang, refuse, or never answer. Top-level functions: the worker pool pickles
them by reference.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import httpx

ANSWER_SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\n"
BEAT_S = 0.3
SECONDS_PER_CHAR = 0.06
PLAY_S = 1.5

# user_id -> what the worker does
CRASH = "crash-worker"  # answers, then dies natively (SIGSEGV)
SILENT = "silent-worker"  # answers, then hangs without a heartbeat
NEVER_ANSWERS = "mute-worker"  # never answers
REFUSES = "refusing-worker"  # ends the session with avatar_not_found before answering
BAD_ANSWER = "garbled-worker"  # posts an answer that is not an SDP
MEMORY_HOG = "hungry-worker"  # answers, then allocates 2 GiB (past the local session memory cap)
SLOW = "slow-worker"  # answers after 0.5 s (widens the window of racing creates)


def _stats(started: float, said: int) -> dict[str, Any]:
    seconds = time.monotonic() - started
    return {"seconds": round(seconds, 3), "frames_sent": int(seconds * 25), "utterances": said, "engine": "fake"}


def serve_session(payload: dict[str, Any], runtime: Any = None, progress: Any = None) -> dict[str, Any]:
    """One live session as a worker runs it; returns the task's LiveSessionResult (or an error dict)."""
    control = payload["control"]
    user = payload["user_id"]
    headers = {"Authorization": f"Bearer {control['token']}"}
    with httpx.Client(base_url=control["url"], headers=headers, timeout=30, trust_env=False) as http:
        if user == NEVER_ANSWERS:
            time.sleep(3600)
        if user == REFUSES:
            end = {"reason": "error", "error_code": "avatar_not_found", "error": "No avatar 'nobody' for this user."}
            http.post("/end", json=end)
            return {"error": end["error"], "error_code": "avatar_not_found"}
        if user == SLOW:
            time.sleep(0.5)
        sdp = "this is not an SDP" if user == BAD_ANSWER else ANSWER_SDP
        answered = http.post("/answer", json={"answer": {"sdp": sdp, "type": "answer"}, "engine": {"name": "fake"}})
        if answered.status_code != 200:
            return {"error": f"answer refused ({answered.status_code})", "error_code": "control_refused"}
        _misbehave(user)
        try:
            return _run(http, payload, progress)
        except httpx.TransportError as exc:  # the orchestrator went away (a test ending)
            return {"error": f"control lost: {exc}", "error_code": "control_lost"}


def _misbehave(user: str) -> None:
    if user == CRASH:
        os.kill(os.getpid(), signal.SIGSEGV)
    if user == SILENT:
        time.sleep(3600)
    if user == MEMORY_HOG:
        import numpy as np

        np.ones(2 * 2**30, dtype=np.uint8)  # touches every page: MemoryError under RLIMIT_AS


def _run(http: httpx.Client, payload: dict[str, Any], progress: Any) -> dict[str, Any]:
    started, said, seq, next_beat = time.monotonic(), 0, 0, 0.0
    while True:
        if progress is not None:
            progress("live", 0.0)  # a cancelled local job stops here
        if time.monotonic() >= next_beat:
            beat = {"kind": "heartbeat", "stats": _stats(started, said)}
            if http.post("/events", json={"events": [beat]}).status_code == 410:
                break
            next_beat = time.monotonic() + BEAT_S
        answer = http.get("/commands", params={"after": seq, "wait": BEAT_S})
        if answer.status_code == 410:
            break
        events = []
        for command in answer.json()["commands"]:
            seq = command["seq"]
            if command["kind"] == "say" and command["text"].strip() == "refuse":
                events.append({"kind": "error", "seq": seq, "error_code": "empty_text", "error": "Nothing to say."})
            elif command["kind"] == "say":
                said += 1
                events.append({"kind": "said", "seq": seq, "duration_s": len(command["text"]) * SECONDS_PER_CHAR})
            elif command["kind"] == "play":  # a speech file in the store: played for PLAY_S
                said += 1
                events.append({"kind": "said", "seq": seq, "duration_s": PLAY_S})
        if events:
            http.post("/events", json={"events": events})
    stats = _stats(started, said)
    http.post("/end", json={"reason": "stopped", "stats": stats})
    return {"session_id": payload["session_id"], "reason": "stopped", "stats": stats}


def runpod_session_handler(job: dict[str, Any]) -> dict[str, Any]:
    """The same worker as a RunPod handler (for the emulator)."""
    return serve_session(job["input"])
