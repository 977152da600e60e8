"""The wakeups of live-session waits: a change notified on one replica wakes the waiters of that session there and,
through PostgreSQL's NOTIFY and the replica's listener, on another replica; waiters of other sessions sleep on."""

from __future__ import annotations

import asyncio
import threading

import pytest

from orchestrator.core.config import OrchestratorSettings
from orchestrator.core.db import JobStore
from orchestrator.core.live.signals import SESSIONS_CHANNEL, SessionSignals
from orchestrator.core.replica import Replica

A, B = "a" * 32, "b" * 32


def test_a_notification_wakes_the_sessions_waiters_only(tmp_path) -> None:
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    signals = SessionSignals(store.engine)

    async def scenario() -> tuple[bool, bool]:
        with signals.subscribe(A) as waiter_a, signals.subscribe(B) as waiter_b:
            threading.Thread(target=signals.notify, args=(A,)).start()  # from another thread, as routes do
            return await waiter_a.wait(30.0), await waiter_b.wait(0.2)

    assert asyncio.run(scenario()) == (True, False)
    assert signals._waiters == {}  # unsubscribed
    store.close()


def test_a_notification_on_one_replica_wakes_a_waiter_on_another(db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("NOTIFY between replicas is PostgreSQL's")
    here, there = JobStore(db_url), JobStore(db_url)
    listening = SessionSignals(there.engine)
    replica = Replica(there, OrchestratorSettings(database_url=db_url), lambda: None, list)
    replica.listeners[SESSIONS_CHANNEL] = listening.wake
    replica.start()
    try:

        async def scenario() -> bool:
            with listening.subscribe(A) as waiter:
                await asyncio.sleep(1.0)  # the listener has connected and LISTENs
                await asyncio.to_thread(SessionSignals(here.engine).notify, A)
                return await waiter.wait(30.0)

        assert asyncio.run(scenario())
    finally:
        replica.stop()
        here.close()
        there.close()
