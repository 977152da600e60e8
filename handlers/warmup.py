"""Start-up in two parts: what needs no GPU, then the neural engines.

``load_cpu_part``: the modules every served task imports (torch, diffusers, the engines whose weights are
present), the face analyzer, eSpeak and the CPU engines. ``handlers.load_engines`` afterwards loads the
neural engines (weights read from disk, moved to the device). A memory snapshot taken between the two
(Modal's CPU snapshot, ``@modal.enter(snap=True)``) restores the first part instead of running it; the
second runs in every restored container, once its GPU is attached.

Nothing here touches CUDA: no ``torch.cuda`` call, no engine choice (``auto`` asks whether CUDA is
there, and an engine loaded now would stay on the CPU after the restore).
"""

from __future__ import annotations

import importlib
import logging

from engines import table
from handlers import engine_choice
from handlers.runtime import WorkerRuntime
from handlers.schemas import TaskName

log = logging.getLogger(__name__)

LIVEPORTRAIT_TALKING = "engines.liveportrait.talking"
LIVEPORTRAIT_EXPRESSION = "engines.liveportrait.expression"


def _neural_modules(runtime: WorkerRuntime) -> list[str]:
    """The modules of the neural engines whose weights this worker has (imported, not loaded)."""
    settings = runtime.settings
    neural = [row for row in table.rows() if row.kind == "neural"]
    present = [row for row in neural if engine_choice.present_weights(row.name, settings)]
    modules = [row.module for row in present]
    if any(row.module == LIVEPORTRAIT_TALKING for row in present):  # render_emotion's engine shares its model
        modules.append(LIVEPORTRAIT_EXPRESSION)
    return list(dict.fromkeys(modules))


def _preprocess_avatar(runtime: WorkerRuntime) -> None:
    runtime.engines.face_analyzer()


def _generate_video(runtime: WorkerRuntime) -> None:
    runtime.engines.face_analyzer()
    runtime.engines.synthesizer("espeak")  # the default voice; the HTTP providers load nothing ahead
    engine_choice.cpu_engine(runtime)


def _render_emotion(runtime: WorkerRuntime) -> None:
    from engines.expression import DEFAULT_ENGINE

    runtime.engines.expression_engine(DEFAULT_ENGINE)


CPU_PARTS = {
    TaskName.preprocess_avatar.value: _preprocess_avatar,
    TaskName.generate_video.value: _generate_video,
    TaskName.render_emotion.value: _render_emotion,
}


def load_cpu_part(runtime: WorkerRuntime, tasks: list[str] | None = None) -> dict[str, str]:
    """The part of start-up a CPU memory snapshot can hold; returns task -> "ok" or the load error."""
    status = {}
    try:
        for module in _neural_modules(runtime):
            importlib.import_module(module)
    except Exception as exc:  # a broken optional engine must not stop the CPU engines from loading
        log.exception("importing the neural engines failed")
        status["imports"] = f"{type(exc).__name__}: {exc}"
    for task in tasks if tasks is not None else runtime.settings.served_tasks:
        part = CPU_PARTS.get(task)
        if part is None:  # a task added by another package (live_session): loaded whole by load_engines
            continue
        try:
            part(runtime)
            status[task] = "ok"
        except Exception as exc:
            log.exception("loading the CPU part of %s failed", task)
            status[task] = f"{type(exc).__name__}: {exc}"
    return status
