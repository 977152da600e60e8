"""Hostile live-session input against a worker, for bench/hostile.py's ``sdps`` and ``sessions`` classes (issue 20).

The worker is ``runpod_handler.py --rp_serve_api`` in a process of its own (the RunPod entry point, live
sessions served concurrently), every case a ``live_session`` task posted to it, its control channel the
tests' control peer and its client an aiortc peer in this process.

- ``sdps``: oversized, many m-lines, malformed in several ways, random bytes, one huge line, a flood of
  remote candidates (UDP ports listening here: how many the worker checked, against the cap);
- ``sessions``: against one running session, data-channel floods (thousands of messages, huge messages,
  deeply nested JSON), a flood of say commands of 5,000 characters each, microphone audio sent many times
  faster than real time; after each, the session must still answer a say.

``run_live_class`` returns one row per case (result, the worker's RSS after it) and the verdicts: crashes
(the worker died), sessions still held at the end (leaks), the worker's peak RSS, and its threads above the
start (its thread pools, bounded, may grow by a few).
"""

from __future__ import annotations

import asyncio
import fractions
import json
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamTrack

from tests.conftest import free_port
from tests.entrypoints.test_runpod_handler import wait_until_serving
from tests.realtime.conftest import client_offer, ports_checked
from tests.realtime.control_peer import ControlPeer

REPO_ROOT = Path(__file__).resolve().parents[2]

CANDIDATE_FLOOD = 200
LONG_TEXT = ("A flood of long sentences that nobody will hear to the end, since the next one cuts it off. " * 60)[:5000]


class Worker:
    """The RunPod worker under the SDK's API server, and what /proc says about it."""

    def __init__(self, work: Path, portrait: str) -> None:
        self.portrait, self.port = portrait, free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
        env |= {"WORKER_TASKS": "live_session", "REALTIME_ALLOW_PRIVATE_CANDIDATES": "1", "LOG_LEVEL": "WARNING"}
        args = ["--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(self.port)]
        self.log = work / "worker.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "runpod_handler.py", *args], cwd=REPO_ROOT, env=env, stdout=out, stderr=out
            )
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        wait_until_serving(self.url, self.proc, self.log)

    def status(self, field: str) -> int:
        """VmRSS / VmHWM in MB, or Threads, of the worker process."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                value = int(line.split()[1])
                return value // 1024 if field.startswith("Vm") else value
        return 0

    def run(self, payload: dict, timeout_s: float = 120) -> dict:
        import httpx

        answer = httpx.post(f"{self.url}/runsync", json={"input": payload}, timeout=timeout_s).json()
        if answer.get("status") == "FAILED":
            return json.loads(answer["error"])
        return answer.get("output", answer)

    def sessions(self) -> int:
        return self.run({"task": "health"})["tasks"]["live_session"]["sessions"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def payload(control: Any, portrait: str, offer: dict) -> dict:
    session_id = uuid.uuid4().hex
    base = {"task": "live_session", "session_id": session_id, "user_id": "hostile", "image": portrait}
    return {**base, "offer": offer, "control": control.open(session_id)}


def lines_without(sdp: str, *prefixes: str) -> str:
    return "\r\n".join(line for line in sdp.splitlines() if not line.startswith(prefixes)) + "\r\n"


# ---- sdps ----------------------------------------------------------------------------------------


def sdp_cases(real: str) -> dict[str, tuple[str, set[str]]]:
    """name -> (offer SDP, the error codes that are a clean refusal)."""
    rng = random.Random(20)
    noise = bytes(rng.randrange(256) for _ in range(90_000)).decode("latin-1").replace("\nm=", "\nx=")
    return {
        "oversized (120k chars)": ("v=0\r\n" + "a=x\r\n" * 24_000, {"invalid_input"}),
        "400 m-lines": (
            real + "".join(f"m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:v{k}\r\n" for k in range(400)),
            {"offer_too_large"},
        ),
        "not sdp": ("hello there", {"invalid_sdp"}),
        "no media": ("v=0\r\ns=-\r\nt=0 0\r\n", {"invalid_sdp"}),
        "unreadable candidate": (real.replace("a=candidate:", "a=candidate:junk\r\na=candidate:", 1), {"invalid_sdp"}),
        "no ice credentials": (lines_without(real, "a=ice-ufrag", "a=ice-pwd"), {"invalid_sdp"}),
        "random bytes": ("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n" + noise, {"invalid_sdp"}),
        "one 99k line": ("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=" + "x" * 99_000 + "\r\n", {"invalid_sdp"}),
    }


def candidate_flood(worker: Worker, control: Any, real: str) -> str:
    """CANDIDATE_FLOOD loopback candidates, each a listening UDP port: the ports the worker sent checks to."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(CANDIDATE_FLOOD)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
    fake = "".join(
        f"a=candidate:{k} 1 udp {2**30 - k} 127.0.0.1 {s.getsockname()[1]} typ host\r\n" for k, s in enumerate(sockets)
    )
    sdp = lines_without(real, "a=candidate", "a=end-of-candidates").replace("a=ice-ufrag", fake + "a=ice-ufrag")
    task = payload(control, worker.portrait, {"sdp": sdp, "type": "offer"})
    results: list[dict] = []
    runner = _background(lambda: results.append(worker.run(task)))
    answered = control.answer(task["session_id"], 60.0) is not None
    hit = ports_checked(sockets, 5.0)
    control.command(task["session_id"], "stop")
    runner.join(60)
    for sock in sockets:
        sock.close()
    return f"answered, {len(hit)} of {CANDIDATE_FLOOD} ports checked" if answered else f"not answered: {results}"


def run_sdps(worker: Worker, control: Any, report: Callable[[str, str, bool], None]) -> None:
    _, offer = asyncio.run(client_offer(channel=True))
    for name, (sdp, clean) in sdp_cases(offer["sdp"]).items():
        result = worker.run(payload(control, worker.portrait, {"sdp": sdp, "type": "offer"}))
        code = result.get("error_code", "ok")
        report(f"sdp: {name}", code, code in clean)
    outcome = candidate_flood(worker, control, offer["sdp"])
    cap = 12  # REALTIME_MAX_REMOTE_CANDIDATES' default
    checked = int(outcome.split(", ")[1].split()[0]) if outcome.startswith("answered") else -1
    report(f"sdp: {CANDIDATE_FLOOD} candidates", outcome, 0 <= checked <= cap)


# ---- session floods ------------------------------------------------------------------------------


async def _flood_session(worker: Worker, control: Any, report: Callable[[str, str, bool], None]) -> None:
    mic = FastMic()
    peer, offer = await client_offer(channel=True, mic=mic)
    task = payload(control, worker.portrait, offer)
    session_id = task["session_id"]
    results: list[dict] = []
    runner = _background(lambda: results.append(worker.run(task, timeout_s=600)))
    answer = await asyncio.to_thread(control.answer, session_id, 60.0)
    await peer.accept(answer["answer"])
    await peer.wait_frames(10)

    async def still_speaks() -> bool:
        seq = control.command(session_id, "say", "Still here.")
        said = await asyncio.to_thread(control.said, session_id, seq, 30.0)
        return bool(said and said["kind"] == "said")

    async def flood(name: str, messages: list[str | bytes], clean: set[str]) -> None:
        started = time.monotonic()
        for message in messages:
            peer.channel.send(message)
        while peer.channel.bufferedAmount and time.monotonic() < started + 120:
            await asyncio.sleep(0.1)  # every message handed to the worker's side of the connection
        sent_s = time.monotonic() - started
        codes: dict[str, int] = {}
        while sum(codes.values()) < len(messages):
            try:
                reply = await asyncio.wait_for(peer.replies.get(), 3.0)
            except asyncio.TimeoutError:
                break  # replies are skipped while the peer does not read them (bounded buffer)
            code = reply.get("error_code", "said")
            codes[code] = codes.get(code, 0) + 1
        alive = await still_speaks()
        summary = ", ".join(f"{c} {n}" for c, n in sorted(codes.items())) or "no replies"
        summary = f"{summary} ({sent_s:.0f} s to send)"
        report(f"flood: {name}", f"{summary}; speaks after: {alive}", alive and set(codes) <= clean)

    await asyncio.sleep(1.0)
    await flood("3000 messages at once", ["Hi."] * 3000, {"said", "rate_limited", "interrupted"})
    await asyncio.sleep(3.0)
    await flood("100 x 60 KB messages", ["x" * 60_000] * 100, {"message_too_large", "rate_limited"})
    await asyncio.sleep(3.0)
    deep = '{"text": ' + "[" * 15_000 + "]" * 15_000 + "}"
    await flood("deeply nested JSON", [deep] * 4, {"invalid_input"})

    started = time.monotonic()
    seqs = [control.command(session_id, "say", LONG_TEXT) for _ in range(300)]
    last = await asyncio.to_thread(control.said, session_id, seqs[-1], 120.0)
    took = time.monotonic() - started
    ok = bool(last and last["kind"] == "said") and await still_speaks()
    report("flood: 300 says of 5,000 chars", f"last said after {took:.1f} s", ok)

    mic.fast = True
    await asyncio.sleep(5.0)
    mic.fast = False
    report("flood: microphone at 20x real time", f"{mic.sent_s:.0f} s of audio sent", await still_speaks())
    control.command(session_id, "stop")
    await asyncio.to_thread(runner.join, 60)
    await peer.close()


class FastMic(MediaStreamTrack):
    """A microphone (a 20 ms tone per frame) that, when ``fast``, sends audio 20x faster than real time."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.fast, self.sent_s, self._pts = False, 0.0, 0

    async def recv(self) -> av.AudioFrame:
        await asyncio.sleep(0.001 if self.fast else 0.02)
        tone = (np.sin(np.arange(960) * 0.06) * 12000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(tone[None, :], format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, self._pts, fractions.Fraction(1, 48000)
        self._pts += 960
        self.sent_s += 0.02
        return frame


def run_floods(worker: Worker, control: Any, report: Callable[[str, str, bool], None]) -> None:
    asyncio.run(_flood_session(worker, control, report))


def warm_up(worker: Worker, control: Any) -> None:
    async def session() -> None:
        peer, offer = await client_offer()
        task = payload(control, worker.portrait, offer)
        runner = _background(lambda: worker.run(task))
        answer = await asyncio.to_thread(control.answer, task["session_id"], 90.0)
        await peer.accept(answer["answer"])
        await peer.wait_frames(25)
        control.command(task["session_id"], "stop")
        await asyncio.to_thread(runner.join, 60)
        await peer.close()

    asyncio.run(session())


def _background(target: Callable[[], None]) -> Any:
    import threading

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


LIVE_CLASSES = {"sdps": run_sdps, "sessions": run_floods}


@dataclass
class LiveClassResult:
    rows: list[str] = field(default_factory=list)
    cases: int = 0
    clean: int = 0
    unexpected: list[str] = field(default_factory=list)
    crashed: bool = False
    held: int = 0
    peak_rss_mb: int = 0
    extra_threads: int = 0


def run_live_class(name: str, work: Path) -> LiveClassResult:
    """One live class against a fresh worker (its store and cache under ``work``)."""
    from tests.realtime.conftest import write_portrait

    (work / "store").mkdir(parents=True, exist_ok=True)
    os.environ.update(AVATAR_STORE_URI=(work / "store").as_uri(), AVATAR_LOCAL_PATH=str(work / "cache"))
    worker = Worker(work, write_portrait(work / "store"))
    result = LiveClassResult()

    def report(case: str, outcome: str, clean: bool) -> None:
        result.cases += 1
        result.clean += clean
        if not clean:
            result.unexpected.append(f"{case}: {outcome}")
        mark = "" if clean else "   <- not a clean refusal"
        attack, _, what = case.partition(": ")
        result.rows.append(f"{what[:44]:44} {attack:8} {outcome:24} {worker.status('VmRSS'):7}{mark}")

    try:
        worker.wait_ready()
        with ControlPeer() as control:
            warm_up(worker, control)  # imports, engines, the session loop and its thread pool
            threads = worker.status("Threads")
            LIVE_CLASSES[name](worker, control, report)
            time.sleep(2.0)
            result.crashed = worker.proc.poll() is not None
            if not result.crashed:
                result.held = worker.sessions()
                result.extra_threads = max(0, worker.status("Threads") - threads)
                result.peak_rss_mb = worker.status("VmHWM")
    finally:
        worker.stop()
    return result
