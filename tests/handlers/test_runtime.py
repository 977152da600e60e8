"""The worker runtime: engines load once per runtime, are shared by every request and by other settings."""

from __future__ import annotations

import threading

import handlers
from handlers.runtime import WorkerRuntime
from handlers.settings import Settings


def test_engines_load_once_and_are_shared_across_requests_and_settings(runtime: WorkerRuntime) -> None:
    assert handlers.load_engines(runtime) == {task: "ok" for task in handlers.WORK_TASKS}
    analyzer = runtime.engines.face_analyzer()
    expression = runtime.engines.expression_engine("landmark_warp")
    handlers.load_engines(runtime)
    other = runtime.with_settings(runtime.settings.model_copy(update={"video_crf": 30}))
    assert other.engines.face_analyzer() is analyzer
    assert other.engines.expression_engine("landmark_warp") is expression


def test_a_new_runtime_loads_its_own_engines(runtime: WorkerRuntime, local_settings: Settings) -> None:
    fresh = handlers.worker_runtime(local_settings)
    assert fresh.settings is local_settings
    assert fresh.engines.face_analyzer() is not runtime.engines.face_analyzer()


def test_concurrent_first_use_builds_one_engine(local_settings: Settings) -> None:
    engines = handlers.worker_runtime(local_settings).engines
    built: list[object] = []
    start = threading.Barrier(4)

    def first_use() -> None:
        start.wait()
        built.append(engines.synthesizer("espeak"))

    threads = [threading.Thread(target=first_use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(built) == 4 and all(synth is built[0] for synth in built)


def test_dispatch_without_a_runtime_uses_one_default_per_process(local_settings: Settings) -> None:
    assert handlers.default_runtime() is handlers.default_runtime()
    assert handlers.dispatch({"task": "health"})["status"] == "ok"


def test_unknown_worker_task_is_a_load_error_not_a_silent_skip(local_settings: Settings) -> None:
    status = handlers.load_engines(handlers.worker_runtime(local_settings), ["render_emotion", "dance"])
    assert status["render_emotion"] == "ok" and "Unknown task `dance`" in status["dance"]
