"""Which lip-sync engine serves a request, and why (``engine: auto`` and explicit names).

auto: ``musetalk`` (MuseTalk 1.5, MIT weights) then ``wav2lip256`` when their weights are present and CUDA
is available, else ``wav2lip96`` when its weights are present, else the CPU engine ``viseme_warp``; a
neural engine that fails to load falls back to the next one with a logged warning. An explicit neural
engine without its weights is an ``engine_unavailable`` error naming the files and the ``fetch-weights``
command. Weights come from ``WAV2LIP96_CHECKPOINT`` / ``WAV2LIP256_CHECKPOINT`` (users' own files,
loaded as given) or from the weights directories (manifest files, checksum-verified). Loaded engines are
cached per process.
``liveportrait`` animates one portrait: auto tries it first for image-driven requests (CUDA only), never
for stored avatars; its weights are a set (``LIVEPORTRAIT_DIR`` or ``WEIGHTS_DIR/liveportrait``).
``sadtalker`` (portrait only, CUDA for auto) comes next: seed 001's fallback when LivePortrait cannot load
(``SADTALKER_DIR`` or ``WEIGHTS_DIR/sadtalker``).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines import weights
from engines.errors import EngineError
from engines.lipsync import LipSyncEngine
from handlers.errors import TaskError
from handlers.runtime import WorkerRuntime
from handlers.settings import Settings

log = logging.getLogger(__name__)

CPU_ENGINE = "viseme_warp"
AUTO = "auto"
USER_CHECKPOINT_LICENCE = "User-supplied checkpoint: the terms its owner grants."


@dataclass(frozen=True)
class NeuralEngine:
    """A lip-sync engine that loads weights: where they come from and when auto may pick it."""

    name: str
    module: str  # imported on first load: registers the engine class (and imports torch)
    checkpoint_setting: str | None  # the Settings field naming a user's own checkpoint, if the engine takes one
    needs_cuda: bool = False  # auto passes it over without CUDA (a few frames/s on a CPU)
    setting_file: str = ""  # when the setting names a folder: the file inside it that stands for the set
    portrait_only: bool = False  # animates one portrait image: not for stored avatars
    precision_setting: str = "wav2lip_precision"
    options: tuple[str, ...] = ()  # further Settings fields passed to ``load``, named without the engine prefix


# auto's order of preference; the CPU engine comes after all of them. A new engine is one more row.
NEURAL_ENGINES = (
    NeuralEngine(
        "liveportrait",
        "engines.liveportrait.talking",
        "liveportrait_dir",
        needs_cuda=True,
        setting_file="base_models/warping_module.pth",
        portrait_only=True,
        precision_setting="liveportrait_precision",
        options=("liveportrait_input_size",),
    ),
    NeuralEngine(  # seed 001: LivePortrait on CUDA, SadTalker when it cannot load
        "sadtalker",
        "engines.sadtalker.engine",
        "sadtalker_dir",
        needs_cuda=True,
        setting_file="checkpoints/SadTalker_V0.0.2_256.safetensors",
        portrait_only=True,
        precision_setting="sadtalker_precision",
        options=(
            "sadtalker_size",
            "sadtalker_preprocess",
            "sadtalker_still",
            "sadtalker_pose_style",
            "sadtalker_expression_scale",
            "sadtalker_blink",
            "sadtalker_render_size",
        ),
    ),
    NeuralEngine("musetalk", "engines.lipsync.musetalk", None, needs_cuda=True, precision_setting="musetalk_precision"),
    NeuralEngine("wav2lip256", "engines.lipsync.wav2lip", "wav2lip256_checkpoint", needs_cuda=True),
    NeuralEngine("wav2lip96", "engines.lipsync.wav2lip", "wav2lip96_checkpoint"),
)
NEURAL_BY_NAME = {engine.name: engine for engine in NEURAL_ENGINES}


@dataclass(frozen=True)
class WeightsFound:
    engine: str
    path: Path
    origin: str  # the env var of a user checkpoint, or the manifest entry's name
    entry: weights.WeightsFile | None  # None for a user checkpoint (no manifest checksum)

    @property
    def key(self) -> tuple[Any, ...]:
        st = self.path.stat()
        return self.engine, str(self.path.resolve()), st.st_size, st.st_mtime_ns

    @property
    def licence(self) -> str:
        return self.entry.licence if self.entry else USER_CHECKPOINT_LICENCE


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def find_weights(engine: str, settings: Settings) -> WeightsFound | None:
    """The weights ``engine`` would load: the user's checkpoint setting first, else a manifest file."""
    setting = NEURAL_BY_NAME[engine].checkpoint_setting
    user_checkpoint = getattr(settings, setting) if setting else None
    if setting and user_checkpoint is not None:
        path = Path(user_checkpoint) / NEURAL_BY_NAME[engine].setting_file
        return WeightsFound(engine, path, setting.upper(), None)
    found = weights.find_for_engine(engine, settings.weights_dir)
    return WeightsFound(engine, found[1], found[0].name, found[0]) if found else None


def missing_message(engine: str, settings: Settings, found: WeightsFound | None) -> str:
    if found is not None:  # a user checkpoint setting that points nowhere
        return f"Engine `{engine}`: {found.origin} is set to `{found.path}`, which does not exist."
    names = weights.ENGINE_WEIGHTS[engine]
    whole_set = engine in weights.SET_ENGINES  # every file is needed, fetched as one group
    files = (" and " if whole_set else " or ").join(f"`{weights.BY_NAME[n].filename}`" for n in names)
    dirs = ", ".join(str(d) for d in weights.search_dirs(settings.weights_dir))
    setting = NEURAL_BY_NAME[engine].checkpoint_setting
    own = f" or set {setting.upper()} to your own {'copy' if whole_set else 'checkpoint'}" if setting else ""
    fetch = weights.fetch_command([engine] if whole_set else names[:1], settings.weights_dir)
    return (
        f"Engine `{engine}` needs its weights: {files} not found in {dirs}. Fetch them with "
        f"`{fetch}`{own}; or use `auto` / `{CPU_ENGINE}`."
    )


def present_weights(engine: str, settings: Settings) -> WeightsFound | None:
    found = find_weights(engine, settings)
    return found if found is not None and found.path.is_file() else None


def _auto_candidates(runtime: WorkerRuntime, portrait: bool = False) -> list[tuple[str, str]]:
    """(engine, reason) in the order auto tries them; the CPU engine always ends the list."""
    settings, failures = runtime.settings, runtime.engines.failures
    candidates, notes = [], []
    for spec in NEURAL_ENGINES:
        if spec.portrait_only and not portrait:
            continue  # a stored avatar: not this engine's input
        found = present_weights(spec.name, settings)
        configured = find_weights(spec.name, settings) if found is None else None
        if configured is not None:
            notes.append(f"{configured.origin} `{configured.path}` does not exist")
        elif found is None:
            notes.append(f"no {spec.name} weights")
        elif spec.needs_cuda and not cuda_available():  # torch imported only when weights exist
            notes.append(f"{spec.name} weights found but no CUDA device")
        elif found.key in failures:
            notes.append(f"{spec.name} failed to load ({failures[found.key].code})")
        else:
            candidates.append((spec.name, f"auto: {spec.name} weights found ({found.path})"))
    candidates.append((CPU_ENGINE, "auto: " + "; ".join(notes)))
    return candidates


def choose(requested: str, runtime: WorkerRuntime, portrait: bool = False) -> tuple[str, str]:
    """(engine name, reason) for a requested engine name, without loading anything."""
    if requested == AUTO:
        return _auto_candidates(runtime, portrait)[0]
    if requested == CPU_ENGINE:
        return CPU_ENGINE, "requested"
    if requested in NEURAL_BY_NAME:
        if NEURAL_BY_NAME[requested].portrait_only and not portrait:
            message = f"Engine `{requested}` animates one portrait: give `image` instead of `avatar_id`."
            raise TaskError("engine_unavailable", message)
        if present_weights(requested, runtime.settings) is None:
            missing = missing_message(requested, runtime.settings, find_weights(requested, runtime.settings))
            raise TaskError("engine_unavailable", missing)
        return requested, "requested"
    allowed = ", ".join((AUTO, *NEURAL_BY_NAME, CPU_ENGINE))
    raise TaskError("engine_unavailable", f"Unknown engine `{requested}`: use one of {allowed}.")


def cpu_engine(runtime: WorkerRuntime) -> LipSyncEngine:
    """The CPU lip-sync engine (no weights), loaded once into the runtime."""
    from engines.lipsync.viseme_warp import VisemeWarpEngine

    engines = runtime.engines
    return engines.once(("lipsync", CPU_ENGINE), lambda: VisemeWarpEngine.load(engines.face_analyzer()))


def _load_file(found: WeightsFound, settings: Settings) -> LipSyncEngine:
    from engines.lipsync import LIPSYNC_ENGINES

    spec = NEURAL_BY_NAME[found.engine]
    if found.entry is not None:
        weights.verify_engine_files(found.entry, found.path)
    importlib.import_module(spec.module)
    if spec.needs_cuda and not cuda_available():
        log.warning("%s without CUDA: expect a few frames/s on CPU", spec.name)
    options = {name.removeprefix(f"{spec.name}_"): getattr(settings, name) for name in spec.options}
    return LIPSYNC_ENGINES[spec.name].load(found.path, precision=getattr(settings, spec.precision_setting), **options)


def neural_engine(engine: str, runtime: WorkerRuntime) -> tuple[LipSyncEngine, WeightsFound]:
    """Load (once per process and file) the neural engine; EngineError on a bad file."""
    found = present_weights(engine, runtime.settings)
    if found is None:
        missing = missing_message(engine, runtime.settings, find_weights(engine, runtime.settings))
        raise TaskError("engine_unavailable", missing)
    key, failures = found.key, runtime.engines.failures
    if key in failures:
        raise failures[key]
    try:
        return runtime.engines.once(key, lambda: _load_file(found, runtime.settings)), found
    except EngineError as exc:
        failures[key] = exc
        raise


def _info(engine: LipSyncEngine, reason: str, found: WeightsFound | None) -> dict[str, Any]:
    info: dict[str, Any] = {"name": engine.name, "version": engine.version, "reason": reason}
    if found is not None:
        info |= {"weights": found.path.name, "licence": found.licence, **getattr(engine, "info", {})}
    return info


def lipsync_engine(
    requested: str, runtime: WorkerRuntime, portrait: bool = False
) -> tuple[LipSyncEngine, dict[str, Any]]:
    """The loaded engine (kept by the runtime) and the info the result reports; ``portrait``: one image is animated."""
    if requested != AUTO:
        name, reason = choose(requested, runtime, portrait)
        if name == CPU_ENGINE:
            return cpu_engine(runtime), _info(cpu_engine(runtime), reason, None)
        engine, found = neural_engine(name, runtime)
        return engine, _info(engine, reason, found)
    failed = []
    for name, reason in _auto_candidates(runtime, portrait):
        if name == CPU_ENGINE:
            return cpu_engine(runtime), _info(cpu_engine(runtime), "; ".join([reason, *failed]), None)
        try:
            engine, found = neural_engine(name, runtime)
        except Exception as exc:  # auto must still serve: any load failure (bad file, CUDA OOM) falls back
            code = getattr(exc, "code", type(exc).__name__)
            log.warning("auto engine: %s failed to load (%s: %s); falling back", name, code, exc)
            failed.append(f"{name} failed to load ({code})")
            continue
        return engine, _info(engine, reason, found)
    raise AssertionError("unreachable: the CPU engine ends the candidate list")


def _verified(found: WeightsFound, runtime: WorkerRuntime) -> bool | None:
    """Checksum state without hashing: True/False once checked in this process, None before."""
    if found.entry is None:
        return None
    failure = runtime.engines.failures.get(found.key)
    if failure is not None and failure.code == "checksum_mismatch":
        return False
    expected = weights.pinned_sha256(found.entry, found.path)
    if expected is None:
        return False
    digest = weights.cached_sha256(found.path)
    return None if digest is None else digest == expected


def _weights_report(found: WeightsFound, runtime: WorkerRuntime) -> dict[str, Any]:
    report: dict[str, Any] = {
        "engine": found.engine,
        "path": str(found.path),
        "origin": found.origin,
        "verified": _verified(found, runtime),
        "licence": found.licence,
        "commercial_use": found.entry.commercial_use if found.entry else None,
    }
    failure = runtime.engines.failures.get(found.key)
    if failure is not None:
        report["load_error"] = failure.code
    return report


def describe(runtime: WorkerRuntime) -> dict[str, Any]:
    """For ``health``: the engine auto would use and why, and the weights found (cheap: no hashing)."""
    name, reason = choose(AUTO, runtime)
    portrait_name, portrait_reason = choose(AUTO, runtime, portrait=True)
    present = (present_weights(spec.name, runtime.settings) for spec in NEURAL_ENGINES)
    found_weights = [_weights_report(found, runtime) for found in present if found is not None]
    result: dict[str, Any] = {"engine": name, "reason": reason, "cuda": cuda_available(), "weights": found_weights}
    result["image_engine"] = {"engine": portrait_name, "reason": portrait_reason}  # image-driven requests
    # which engines' weights a product may use commercially (None: a user's own file, its owner's terms)
    result["commercial_use"] = {w["engine"]: w["commercial_use"] for w in found_weights}
    if any(w["origin"] in ("wav2lip96", "wav2lip96_gan") for w in found_weights):
        result["licence_notice"] = "Wav2Lip 96-px weights present: " + weights.NON_COMMERCIAL
    return result
