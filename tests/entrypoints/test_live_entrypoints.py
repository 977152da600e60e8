"""Live sessions through the entry points: the RunPod worker under the SDK's own `--rp_serve_api` server (two
sessions at once on one worker: the async handler and its concurrency), and Modal's `LiveWorker` in-process."""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path

import httpx
import pytest

pytest.importorskip("aiortc", reason="live sessions need the `realtime` extra (aiortc)")

import handlers  # noqa: E402
import modal_app  # noqa: E402
from handlers.settings import Settings  # noqa: E402
from realtime import manager  # noqa: E402
from realtime.client import LiveClient  # noqa: E402
from storage.local import path_from_file_uri  # noqa: E402
from tests.entrypoints.conftest import child_env  # noqa: E402
from tests.entrypoints.test_runpod_handler import serving_worker  # noqa: E402
from tests.realtime.conftest import write_portrait  # noqa: E402
from tests.realtime.control_peer import ControlPeer  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:The LiveWorker.*executing locally:UserWarning")

SESSIONS = 2


def session_payload(control: ControlPeer, portrait: str, offer: dict) -> dict:
    session_id = uuid.uuid4().hex
    fields = {"session_id": session_id, "user_id": "rp-user", "image": portrait, "offer": offer}
    return {"task": "live_session", **fields, "control": control.open(session_id)}


def test_runpod_worker_holds_several_sessions_at_once(local_settings: Settings, tmp_path: Path) -> None:
    portrait = write_portrait(path_from_file_uri(local_settings.avatar_store_uri))
    env = child_env(WORKER_TASKS="live_session", REALTIME_ALLOW_PRIVATE_CANDIDATES="1", REALTIME_MAX_SESSIONS="2")
    with ControlPeer() as control, serving_worker(env, tmp_path) as base:

        async def scenario() -> tuple[list[dict], list[int], dict]:
            peers = [LiveClient(keep_frames=False) for _ in range(SESSIONS)]
            payloads = [session_payload(control, portrait, await peer.offer()) for peer in peers]
            answers: list[dict] = []
            threads = []
            for payload in payloads:
                run = threading.Thread(
                    target=lambda p=payload: answers.append(
                        httpx.post(f"{base}/runsync", json={"input": p}, timeout=120).json()
                    )
                )
                run.start()
                threads.append(run)
            for peer, payload in zip(peers, payloads, strict=True):
                answer = await asyncio.to_thread(control.answer, payload["session_id"], 90.0)
                assert answer is not None, (tmp_path / "server.log").read_text()[-3000:]
                await peer.accept(answer["answer"])
            frames = [int(await peer.wait_frames(25)) and peer.received.video_frames for peer in peers]
            third = httpx.post(
                f"{base}/runsync", json={"input": session_payload(control, portrait, payloads[0]["offer"])}, timeout=60
            ).json()
            for payload in payloads:
                control.command(payload["session_id"], "stop")
            for run in threads:
                await asyncio.to_thread(run.join, 60)
            for peer in peers:
                await peer.close()
            return answers, frames, third

        answers, frames, third = asyncio.run(scenario())
    assert all(count >= 25 for count in frames)  # both sessions streaming at the same time
    assert [a["status"] for a in answers] == ["COMPLETED"] * SESSIONS, answers
    assert {a["output"]["reason"] for a in answers} == {"stopped"}
    assert third["status"] == "FAILED" and "too_many_sessions" in third["error"]


def test_modal_live_worker_serves_a_session(local_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REALTIME_ALLOW_PRIVATE_CANDIDATES", "1")
    monkeypatch.setattr(handlers, "TASKS", dict(handlers.TASKS))  # what the container's `load` registers: undone after
    monkeypatch.setattr(manager, "_host", [])
    portrait = write_portrait(path_from_file_uri(local_settings.avatar_store_uri))
    worker = modal_app.LiveWorker()
    with ControlPeer() as control:

        async def scenario() -> dict:
            peer = LiveClient(keep_frames=False)
            payload = session_payload(control, portrait, await peer.offer())
            fields = {k: v for k, v in payload.items() if k != "task"}
            results: list[dict] = []
            run = threading.Thread(target=lambda: results.append(worker.live_session.local(**fields)))
            run.start()
            answer = await asyncio.to_thread(control.answer, payload["session_id"], 90.0)
            await peer.accept(answer["answer"])
            assert await peer.wait_frames(10)
            control.command(payload["session_id"], "stop")
            await asyncio.to_thread(run.join, 60)
            await peer.close()
            return results[0]

        result = asyncio.run(scenario())
    manager.process_host().close()  # the session loop the container's `load` started
    assert result["reason"] == "stopped" and result["stats"]["frames_sent"] >= 10


@pytest.mark.parametrize(("tasks", "expected"), [("live_session", 3), ("render_emotion", 1)])
def test_runpod_concurrency_follows_the_live_session_limit(
    tasks: str, expected: int, local_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the SDK (and the RunPod emulator) read: REALTIME_MAX_SESSIONS jobs at once on a live worker."""
    import runpod_handler

    monkeypatch.setenv("WORKER_TASKS", tasks)
    monkeypatch.setenv("REALTIME_MAX_SESSIONS", "3")
    monkeypatch.setattr(runpod_handler, "_state", None)
    monkeypatch.setattr(handlers, "TASKS", dict(handlers.TASKS))
    monkeypatch.setattr(manager, "_host", [])
    assert runpod_handler.concurrency_modifier(1) == expected
    config = runpod_handler.sdk_config(runpod_handler.init_worker().runtime.settings.served_tasks)
    assert (config["handler"] is runpod_handler.concurrent_handler) is (tasks == "live_session")
