"""The contract's boundary: bad input returns an error dict naming the problem and writes nothing."""

import handlers
from handlers.runtime import WorkerRuntime


def test_health_reports_device_and_tasks(local_settings, runtime: WorkerRuntime):
    result = handlers.dispatch({"task": "health"}, runtime)
    assert result["status"] == "ok"
    assert result["device"]["type"] in ("cpu", "cuda")
    assert set(result["tasks"]) == {"preprocess_avatar", "generate_video", "render_emotion", "live_session"}


def test_unknown_task_is_named():
    result = handlers.dispatch({"task": "nope"})
    assert result["error_code"] == "unknown_task"
    assert "'nope'" in result["error"]


def test_missing_task_and_non_object():
    assert handlers.dispatch({})["error_code"] == "missing_task"
    assert handlers.dispatch([1, 2])["error_code"] == "invalid_input"


def test_unknown_field_is_named():
    result = handlers.dispatch({"task": "health", "colour": "blue"})
    assert result["error_code"] == "invalid_input"
    assert "`colour`" in result["error"]


def test_bad_ids_are_refused(local_settings, runtime: WorkerRuntime):
    payload = {"task": "preprocess_avatar", "avatar_id": "../etc", "user_id": "u1", "video": "file:///x.mp4"}
    result = handlers.dispatch(payload, runtime)
    assert result["error_code"] == "invalid_input"
    assert "`avatar_id`" in result["error"]


def test_exactly_one_source_for_generate(local_settings, runtime: WorkerRuntime):
    result = handlers.dispatch({"task": "generate_video", "user_id": "u", "avatar_id": "a"}, runtime)
    assert result["error_code"] == "invalid_input"
    assert "`text` or `audio`" in result["error"]
    both = {"task": "generate_video", "user_id": "u", "avatar_id": "a", "image": "file:///p.png", "text": "hi"}
    assert "`avatar_id` or `image`" in handlers.dispatch(both, runtime)["error"]


def test_min_lip_sync_is_a_score_for_lip_sync_renders(local_settings, runtime: WorkerRuntime):
    base = {"task": "generate_video", "user_id": "u", "image": "file:///p.png"}
    out_of_range = handlers.dispatch({**base, "text": "hi", "min_lip_sync": 1.5}, runtime)
    assert out_of_range["error_code"] == "invalid_input" and "min_lip_sync" in out_of_range["error"]
    driven = handlers.dispatch({**base, "driving_video": "file:///d.mp4", "min_lip_sync": 0.5}, runtime)
    assert driven["error_code"] == "invalid_input" and "`min_lip_sync` applies to lip-sync renders" in driven["error"]
    hosted = handlers.dispatch({**base, "text": "hi", "engine": "d-id", "min_lip_sync": 0.5}, runtime)
    assert "`min_lip_sync` applies to lip-sync renders" in hosted["error"]


def test_empty_text_and_text_cap(local_settings, runtime: WorkerRuntime):
    base = {"task": "generate_video", "user_id": "u", "avatar_id": "a"}
    assert handlers.dispatch({**base, "text": "   "}, runtime)["error_code"] == "invalid_input"
    long = handlers.dispatch({**base, "text": "a" * 6000}, runtime)
    assert long["error_code"] == "invalid_input" and "`text`" in long["error"]


def test_unsupported_uri_scheme(local_settings, runtime: WorkerRuntime):
    payload = {"task": "render_emotion", "user_id": "u", "image": "ftp://x/y.png", "emotion": "happy"}
    result = handlers.dispatch(payload, runtime)
    assert result["error_code"] == "invalid_input" and "unsupported URI" in result["error"]


def test_task_not_served(local_settings, monkeypatch, runtime: WorkerRuntime):
    monkeypatch.setenv("WORKER_TASKS", "render_emotion")
    payload = {"task": "generate_video", "user_id": "u", "avatar_id": "a", "text": "hi"}
    result = handlers.dispatch(payload, runtime.with_settings(handlers.Settings()))
    assert result["error_code"] == "task_not_served"


def test_health_survives_a_task_that_cannot_describe_itself(local_settings, monkeypatch, runtime: WorkerRuntime):
    from handlers import render_emotion

    def broken(settings):
        raise RuntimeError("weights directory unreadable")

    monkeypatch.setattr(render_emotion, "describe", broken)
    result = handlers.dispatch({"task": "health"}, runtime)
    assert result["status"] == "ok", result
    assert result["tasks"]["render_emotion"] == {
        "status": "error",
        "error": "RuntimeError: weights directory unreadable",
    }
    assert result["tasks"]["generate_video"]["status"] == "ok"


def test_a_progress_callback_can_stop_a_task_cleanly(local_settings, caplog, runtime: WorkerRuntime):
    from handlers.errors import TaskCancelled

    def stop(stage: str, fraction: float) -> None:
        raise TaskCancelled("job j1 was cancelled")

    payload = {"task": "render_emotion", "user_id": "u", "image": "data:image/png;base64,AAAA", "emotion": "happy"}
    result = handlers.dispatch(payload, runtime, stop)
    assert result == {
        "error_code": "cancelled",
        "error": "The task was stopped before it finished (job j1 was cancelled).",
    }
    assert "Traceback" not in caplog.text
