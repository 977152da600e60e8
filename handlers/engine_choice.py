"""Which lip-sync engine serves a request, and why (``engine: auto`` and explicit names), and loading it.

The engines, their order for auto, their weights and settings are the rows of ``engines.table``. auto tries
the rows in their order: an engine whose weights are present (CUDA too for ``needs_cuda`` rows; portrait-only
rows for image-driven requests only) and that has not failed to load; the CPU engine ends the list. A neural
engine that fails to load falls back to the next one with a logged warning. An explicit neural engine without
its weights is an ``engine_unavailable`` error naming the files and the ``fetch-weights`` command. Weights come
from a row's user-checkpoint setting (users' own files, loaded as given) or from the weights directories
(manifest files, checksum-verified). Device, precision and options are decided here, once, from the settings
(``engine_context``); engines read no environment. Loaded engines are cached per process.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines import table, weights
from engines.context import EngineContext
from engines.errors import EngineError
from engines.lipsync import LIPSYNC_ENGINES, LipSyncEngine
from engines.table import CPU_ENGINE, EngineRow
from handlers.errors import TaskError
from handlers.runtime import WorkerRuntime
from handlers.settings import Settings

log = logging.getLogger(__name__)

AUTO = "auto"
USER_CHECKPOINT_LICENCE = "User-supplied checkpoint: the terms its owner grants."


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


def device() -> str:
    """Where this worker's neural engines run: the GPU when torch sees one."""
    return "cuda" if cuda_available() else "cpu"


def engine_context(row: EngineRow, settings: Settings, faces: Any = None) -> EngineContext:
    """What ``row``'s engine loads with: the device, its precision setting and its options from ``settings``."""
    precision = getattr(settings, row.precision_setting) if row.precision_setting else "auto"
    options = {name.removeprefix(f"{row.name}_"): getattr(settings, name) for name in row.options}
    return EngineContext(device() if row.kind == "neural" else "cpu", precision, options, faces)


def _neural_rows() -> list[EngineRow]:
    return [row for row in table.rows() if row.kind == "neural"]


def _setting_file(row: EngineRow) -> Path:
    """Inside a user's own folder of a set engine: the file that stands for the set (a file setting: itself)."""
    if not row.weights_set:
        return Path()
    return Path(weights.BY_NAME[row.weights[0]].filename).relative_to(row.weights_set)


def find_weights(engine: str, settings: Settings) -> WeightsFound | None:
    """The weights ``engine`` would load: the user's checkpoint setting first, else a manifest file."""
    row = table.row(engine)
    user_checkpoint = getattr(settings, row.checkpoint_setting) if row.checkpoint_setting else None
    if row.checkpoint_setting and user_checkpoint is not None:
        return WeightsFound(engine, Path(user_checkpoint) / _setting_file(row), row.checkpoint_setting.upper(), None)
    found = weights.find_for_engine(engine, settings.weights_dir)
    return WeightsFound(engine, found[1], found[0].name, found[0]) if found else None


def missing_message(engine: str, settings: Settings, found: WeightsFound | None) -> str:
    if found is not None:  # a user checkpoint setting that points nowhere
        return f"Engine `{engine}`: {found.origin} is set to `{found.path}`, which does not exist."
    names = weights.engine_weights(engine)
    whole_set = weights.set_folder(engine) is not None  # every file is needed, fetched as one group
    files = (" and " if whole_set else " or ").join(f"`{weights.BY_NAME[n].filename}`" for n in names)
    dirs = ", ".join(str(d) for d in weights.search_dirs(settings.weights_dir))
    setting = table.row(engine).checkpoint_setting
    own = f" or set {setting.upper()} to your own {'copy' if whole_set else 'checkpoint'}" if setting else ""
    fetch = weights.fetch_command([engine] if whole_set else names[:1], settings.weights_dir)
    return (
        f"Engine `{engine}` needs its weights: {files} not found in {dirs}. Fetch them with "
        f"`{fetch}`{own}; or use `auto` / `{CPU_ENGINE}`."
    )


def present_weights(engine: str, settings: Settings) -> WeightsFound | None:
    found = find_weights(engine, settings)
    return found if found is not None and found.path.is_file() else None


def _serves(row: EngineRow, portrait: bool) -> bool:
    """Whether ``row`` animates this request's input (one portrait image, or a stored avatar)."""
    return row.input == "both" or row.input == ("portrait" if portrait else "avatar")


def _auto_candidates(runtime: WorkerRuntime, portrait: bool = False) -> list[tuple[str, str]]:
    """(engine, reason) in the order auto tries them; the CPU engine always ends the list."""
    settings, failures = runtime.settings, runtime.engines.failures
    candidates, notes = [], []
    for row in table.auto_order():
        if row.kind != "neural" or not _serves(row, portrait):
            continue  # the CPU engine ends the list; a stored avatar is not a portrait engine's input
        found = present_weights(row.name, settings)
        configured = find_weights(row.name, settings) if found is None else None
        if configured is not None:
            notes.append(f"{configured.origin} `{configured.path}` does not exist")
        elif found is None:
            notes.append(f"no {row.name} weights")
        elif row.needs_cuda and not cuda_available():  # torch imported only when weights exist
            notes.append(f"{row.name} weights found but no CUDA device")
        elif found.key in failures:
            notes.append(f"{row.name} failed to load ({failures[found.key].code})")
        else:
            candidates.append((row.name, f"auto: {row.name} weights found ({found.path})"))
    candidates.append((CPU_ENGINE, "auto: " + "; ".join(notes)))
    return candidates


def choose(requested: str, runtime: WorkerRuntime, portrait: bool = False) -> tuple[str, str]:
    """(engine name, reason) for a requested engine name, without loading anything."""
    if requested == AUTO:
        return _auto_candidates(runtime, portrait)[0]
    if requested == CPU_ENGINE:
        return CPU_ENGINE, "requested"
    neural = {row.name: row for row in _neural_rows()}
    if requested not in neural:
        allowed = ", ".join((AUTO, *(row.name for row in table.rows() if row.kind != "hosted")))
        raise TaskError("engine_unavailable", f"Unknown engine `{requested}`: use one of {allowed}.")
    if not _serves(neural[requested], portrait):
        wanted = (
            "one portrait: give `image` instead of `avatar_id`" if not portrait else "stored avatars: give `avatar_id`"
        )
        raise TaskError("engine_unavailable", f"Engine `{requested}` animates {wanted}.")
    if present_weights(requested, runtime.settings) is None:
        missing = missing_message(requested, runtime.settings, find_weights(requested, runtime.settings))
        raise TaskError("engine_unavailable", missing)
    return requested, "requested"


def _load(row: EngineRow, weights_path: Path | None, context: EngineContext) -> LipSyncEngine:
    importlib.import_module(row.module)  # registers the engine class
    return LIPSYNC_ENGINES[row.name].load(weights_path, context)


def cpu_engine(runtime: WorkerRuntime) -> LipSyncEngine:
    """The CPU lip-sync engine (no weights), loaded once into the runtime."""
    engines, row = runtime.engines, table.row(CPU_ENGINE)

    def load() -> LipSyncEngine:
        return _load(row, None, engine_context(row, runtime.settings, engines.face_analyzer()))

    return engines.once(("lipsync", CPU_ENGINE), load)


def _load_file(found: WeightsFound, settings: Settings) -> LipSyncEngine:
    row = table.row(found.engine)
    if found.entry is not None:
        weights.verify_engine_files(found.entry, found.path)
    context = engine_context(row, settings)
    if row.needs_cuda and context.device == "cpu":
        log.warning("%s without CUDA: expect a few frames/s on CPU", row.name)
    return _load(row, found.path, context)


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


def _licence_notices(found_weights: list[dict[str, Any]]) -> str | None:
    """What a product must know about the manifest weights present whose licence forbids commercial use."""
    rows = {row.name: row for row in table.rows()}
    notices = [
        f"{w['engine']} weights present: {rows[w['engine']].licence}"
        for w in found_weights
        if w["commercial_use"] is False and rows[w["engine"]].commercial_use is False
    ]
    return " ".join(dict.fromkeys(notices)) or None


def engines_table() -> dict[str, dict[str, Any]]:
    """Every engine of the table as ``health`` reports it (what it animates, whether live sessions can use it)."""
    return {
        row.name: {
            "kind": row.kind,
            "input": row.input,
            "auto": row.auto is not None,
            "needs_cuda": row.needs_cuda,
            "live": row.live,
            "commercial_use": row.commercial_use,
        }
        for row in table.rows()
    }


def describe(runtime: WorkerRuntime) -> dict[str, Any]:
    """For ``health``: the engine auto would use and why, the weights found (cheap: no hashing) and the table."""
    name, reason = choose(AUTO, runtime)
    portrait_name, portrait_reason = choose(AUTO, runtime, portrait=True)
    present = (present_weights(row.name, runtime.settings) for row in _neural_rows())
    found_weights = [_weights_report(found, runtime) for found in present if found is not None]
    result: dict[str, Any] = {"engine": name, "reason": reason, "cuda": cuda_available(), "weights": found_weights}
    result["image_engine"] = {"engine": portrait_name, "reason": portrait_reason}  # image-driven requests
    # which engines' weights a product may use commercially (None: a user's own file, its owner's terms)
    result["commercial_use"] = {w["engine"]: w["commercial_use"] for w in found_weights}
    notice = _licence_notices(found_weights)
    if notice:
        result["licence_notice"] = notice
    result["engines"] = engines_table()
    return result
