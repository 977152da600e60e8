"""A live session as a worker runs it: the `live_session` task dials out to a control peer (answer, commands,
events, end) and serves an aiortc client over ICE. The main scenario runs the task in a plain process of its
own (``handlers.dispatch`` after ``realtime.serve_live_sessions()``, as a local worker process does); the
others run it on a thread of this process to look at what it leaves behind."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("aiortc", reason="live sessions need the `realtime` extra (aiortc)")

from engines.codecs.audio import encode_wav  # noqa: E402
from engines.face import load_face_analyzer  # noqa: E402
from handlers.settings import Settings  # noqa: E402
from realtime.client import LiveClient, steady_fps  # noqa: E402
from storage.local import path_from_file_uri  # noqa: E402
from tests.media import tone  # noqa: E402
from tests.realtime.conftest import (  # noqa: E402
    LiveWorker,
    TurnServer,
    client_offer,
    mouth_openings,
    write_portrait,
)
from tests.realtime.control_peer import ControlPeer  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
SPEECH = "Hello there. This avatar speaks from a worker that only dials out, and it keeps talking for a while."
PLAIN_WORKER = (
    "import json, sys, handlers, realtime; assert realtime.serve_live_sessions(); "
    "print(json.dumps(handlers.dispatch(json.loads(sys.stdin.read()))), flush=True)"
)


@pytest.fixture
def plain_worker(tmp_path: Path) -> Iterator[Callable[[dict], subprocess.Popen]]:
    """Starts `handlers.dispatch` of one live_session payload in a process of its own (stdin: the payload,
    stdout: the result); killed at the end of the test whatever happened."""
    env = {**os.environ, "WORKER_TASKS": "live_session", "REALTIME_ALLOW_PRIVATE_CANDIDATES": "1"}
    env |= {"REALTIME_HEARTBEAT_S": "1", "PYTHONPATH": str(REPO_ROOT)}
    started: list[subprocess.Popen] = []

    def start(payload: dict) -> subprocess.Popen:
        with (tmp_path / "worker.log").open("w") as err:
            worker = subprocess.Popen(
                [sys.executable, "-c", PLAIN_WORKER],
                cwd=REPO_ROOT,
                env=env,
                text=True,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        started.append(worker)
        assert worker.stdin is not None
        worker.stdin.write(json.dumps(payload))
        worker.stdin.close()
        return worker

    yield start
    for worker in started:
        worker.kill()
        worker.wait(timeout=10)


def test_a_worker_session_answers_speaks_is_interrupted_stays_still_in_silence_and_stops(
    local_settings: Settings, control: ControlPeer, plain_worker: Callable[[dict], subprocess.Popen], tmp_path: Path
) -> None:
    portrait = write_portrait(path_from_file_uri(local_settings.avatar_store_uri))
    marks: dict[str, float] = {}

    async def scenario() -> tuple[LiveClient, dict, subprocess.Popen]:
        peer = LiveClient(keep_frames=True)
        offer = await peer.offer()
        session_id = "a" * 32
        payload = {"task": "live_session", "session_id": session_id, "user_id": "live-user", "image": portrait}
        worker = plain_worker({**payload, "offer": offer, "control": control.open(session_id)})
        answer = await asyncio.to_thread(control.answer, session_id, 90.0)
        assert answer is not None, (tmp_path / "worker.log").read_text()[-3000:]
        await peer.accept(answer["answer"])
        assert await peer.wait_frames(25, 30.0)
        await asyncio.sleep(2.0)  # idle: the mouth at rest
        marks["say"] = time.time()
        seq = control.command(session_id, "say", SPEECH)
        said = await asyncio.to_thread(control.said, session_id, seq)
        marks["said"] = time.time()  # the speech is scheduled from here (a loaded machine may take a while)
        await asyncio.sleep(2.0)
        marks["interrupt"] = time.time()
        control.command(session_id, "interrupt")
        await asyncio.sleep(3.0)  # silence after the interruption
        marks["stop"] = time.time()
        control.command(session_id, "stop")
        end = await asyncio.to_thread(control.end, session_id)
        await peer.close()
        return peer, {"said": said, "end": end, "answer": answer}, worker

    peer, seen, worker = asyncio.run(scenario())
    assert worker.stdout is not None
    result = json.loads(worker.stdout.read().strip().splitlines()[-1])

    assert seen["answer"]["engine"]["name"] == "viseme_warp"
    assert seen["said"]["kind"] == "said" and seen["said"]["duration_s"] > 4.0  # the whole text, not its first piece
    assert seen["end"]["reason"] == "stopped" and seen["end"]["stats"]["utterances"] == 1
    assert result["reason"] == "stopped" and result["stats"]["frames_sent"] > 100
    quality = result["stats"]["quality"]  # measured on the frames shown, within 5% of the frame clock
    assert quality["frames"] >= 100 and 0 < quality["frames_measured"] <= quality["frames"]
    assert quality["lip_sync"] > 0.3 and quality["frames_face_lost"] == 0, quality
    assert quality["silent_held_still"] > 0.8 and quality["cost_share"] < 0.25, quality
    heartbeats = control.events("a" * 32, "heartbeat")
    assert len(heartbeats) >= 3 and heartbeats[-1]["stats"]["frames_sent"] > 0

    arrivals = [at for at, _, _ in peer.received.raw]
    assert 22.5 <= steady_fps(arrivals) <= 27.5, steady_fps(arrivals)
    frames = peer.received.frames
    times = np.array([at for at, _, _ in frames])
    rest = (times > marks["say"] - 1.5) & (times < marks["say"])
    speaking = (times > marks["said"] + 0.3) & (times < marks["interrupt"])
    silent = (times > marks["interrupt"] + 0.6) & (times < marks["stop"])
    sample = np.nonzero(rest | speaking | silent)[0][::2]
    openings = np.full(len(frames), np.nan)
    openings[sample] = mouth_openings([frames[i][2] for i in sample], load_face_analyzer())
    at_rest = np.nanmedian(openings[rest])
    assert np.nanmax(openings[speaking]) > at_rest + 0.04, (at_rest, openings[speaking])  # the mouth moves
    assert np.nanmax(np.abs(openings[silent] - at_rest)) < 0.02, (at_rest, openings[silent])  # and stays shut


def test_a_play_command_plays_a_speech_file_and_a_bad_one_is_refused_without_ending_the_session(
    live_worker: LiveWorker, tmp_path: Path
) -> None:
    store = path_from_file_uri(live_worker.runtime.settings.avatar_store_uri)
    (store / "uploads").mkdir(exist_ok=True)
    (store / "uploads" / "speech.wav").write_bytes(encode_wav(0.5 * tone(1.2), 16000))
    (store / "uploads" / "page.wav").write_text("<html>not audio</html>")

    heard: list[tuple[float, np.ndarray]] = []

    async def scenario() -> tuple[list[dict], dict | None]:
        peer, offer = await client_offer(on_audio=lambda at, samples: heard.append((at, samples)))
        task = live_worker.start(live_worker.payload(offer))
        session_id = task.session_id
        answer = await asyncio.to_thread(live_worker.control.answer, session_id)
        await peer.accept(answer["answer"])
        answers = []
        for name in ("page.wav", "missing.wav"):
            seq = live_worker.control.command(session_id, "play", audio=(store / "uploads" / name).as_uri())
            answers.append(await asyncio.to_thread(live_worker.control.said, session_id, seq))
        speech = (store / "uploads" / "speech.wav").as_uri()
        seqs = [live_worker.control.command(session_id, "play", audio=speech, queued=True) for _ in range(2)]
        answers += [await asyncio.to_thread(live_worker.control.said, session_id, seq) for seq in seqs]
        queued_at = time.time()
        await asyncio.sleep(3.0)
        loud = [at - queued_at for at, samples in heard if np.sqrt(np.mean(samples.astype(float) ** 2)) > 300]
        answers.append({"loud_s": max(loud, default=0.0)})
        live_worker.control.command(session_id, "stop")
        await asyncio.to_thread(task.result, 30.0)
        await peer.close()
        return answers, live_worker.control.end(session_id, 2.0)

    (not_audio, missing, *played, ahead), end = asyncio.run(scenario())
    assert (not_audio["kind"], not_audio["error_code"]) == ("error", "unsupported_audio"), not_audio
    assert missing["kind"] == "error" and missing["error_code"] == "not_found", missing
    for said in played:  # queued: both scheduled, the second after the first
        assert said["kind"] == "said" and said["duration_s"] == pytest.approx(1.2, abs=0.05), said
    assert 2.0 < ahead["loud_s"] < 2.9, ahead  # the peer hears 2.4 s of sound: the second after the first
    assert end is not None and end["reason"] == "stopped" and end["stats"]["utterances"] == 2


def test_idle_session_ends_itself_and_reports_it(live_worker: LiveWorker) -> None:
    async def scenario() -> tuple[dict, dict | None]:
        peer, offer = await client_offer()
        task = live_worker.start(live_worker.payload(offer, idle_timeout_s=2.0))
        answer = await asyncio.to_thread(live_worker.control.answer, task.session_id)
        await peer.accept(answer["answer"])
        result = await asyncio.to_thread(task.result, 30.0)
        await peer.close()
        return result, live_worker.control.end(task.session_id, 1.0)

    result, end = asyncio.run(scenario())
    assert result["reason"] == "idle" and end is not None and end["reason"] == "idle"


def test_orchestrator_gone_the_session_ends_itself(live_worker: LiveWorker) -> None:
    """The control URL stops answering (its server is gone): within control_lost_s the session ends, error
    `control_lost`, and leaves nothing running."""

    async def scenario() -> tuple[dict, float]:
        peer, offer = await client_offer()
        task = live_worker.start(live_worker.payload(offer))
        answer = await asyncio.to_thread(live_worker.control.answer, task.session_id)
        await peer.accept(answer["answer"])
        assert await peer.wait_frames(5)
        live_worker.control.__exit__(None, None, None)  # the orchestrator goes away
        gone = time.monotonic()
        result = await asyncio.to_thread(task.result, 30.0)
        await peer.close()
        return result, time.monotonic() - gone

    result, took = asyncio.run(scenario())
    assert result["reason"] == "error"
    assert took < live_worker.host.limits.control_lost_s + live_worker.host.limits.poll_wait_s + 3.0
    assert [t.name for t in threading.enumerate() if t.name.startswith("live-") and t.name != "live-sessions"] == []


def test_orchestrator_ends_the_session_with_410(live_worker: LiveWorker) -> None:
    async def scenario() -> dict:
        peer, offer = await client_offer()
        task = live_worker.start(live_worker.payload(offer))
        answer = await asyncio.to_thread(live_worker.control.answer, task.session_id)
        await peer.accept(answer["answer"])
        live_worker.control.end_session(task.session_id)
        result = await asyncio.to_thread(task.result, 30.0)
        await peer.close()
        return result

    assert asyncio.run(scenario())["reason"] == "stopped"


def test_peer_that_goes_away_ends_the_session_closed(live_worker: LiveWorker) -> None:
    async def scenario() -> tuple[dict, dict | None]:
        peer, offer = await client_offer()
        task = live_worker.start(live_worker.payload(offer))
        answer = await asyncio.to_thread(live_worker.control.answer, task.session_id)
        await peer.accept(answer["answer"])
        assert await peer.wait_frames(5)
        await peer.close()  # DTLS close: the worker's peer connection closes
        result = await asyncio.to_thread(task.result, 30.0)
        return result, live_worker.control.end(task.session_id, 2.0)

    result, end = asyncio.run(scenario())
    assert result["reason"] == "closed" and end is not None and end["reason"] == "closed"


def test_relay_only_session_through_coturn(live_worker: LiveWorker, turn_server: TurnServer) -> None:
    """Both sides may use TURN-relayed candidates only (a worker with no inbound port, a client behind a strict
    firewall): the session still streams, through coturn."""
    live_worker.host.limits.ice_transport_policy = "relay"

    async def scenario() -> tuple[LiveClient, bool, dict]:
        peer, offer = await client_offer(ice_servers=turn_server.ice_servers, relay_only=True, keep_frames=True)
        assert " typ relay" in offer["sdp"] and " typ host" not in offer["sdp"]
        task = live_worker.start(live_worker.payload(offer, ice_servers=turn_server.ice_servers))
        answer = await asyncio.to_thread(live_worker.control.answer, task.session_id)
        assert answer is not None and " typ host" not in answer["answer"]["sdp"]
        await peer.accept(answer["answer"])
        assert await peer.wait_frames(25, 30.0)
        await asyncio.sleep(2.0)
        relayed = peer.relayed()
        live_worker.control.command(task.session_id, "stop")
        result = await asyncio.to_thread(task.result)
        await peer.close()
        return peer, relayed, result

    peer, relayed, result = asyncio.run(scenario())
    assert relayed and result["reason"] == "stopped"
    assert steady_fps([at for at, _, _ in peer.received.raw]) >= 22.5
