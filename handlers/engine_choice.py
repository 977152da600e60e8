"""Which lip-sync engine serves a request, and why (``engine: auto`` and explicit names).

auto: ``wav2lip256`` when its weights are present and CUDA is available, else ``wav2lip96`` when its
weights are present, else the CPU engine ``viseme_warp``; a neural engine that fails to load falls back
to the next one with a logged warning. An explicit neural engine without its weights is an
``engine_unavailable`` error naming the file and the ``fetch-weights`` command. Weights come from
``WAV2LIP96_CHECKPOINT`` / ``WAV2LIP256_CHECKPOINT`` (users' own files, loaded as given) or from the
weights directories (manifest files, checksum-verified). Loaded engines are cached per process.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from engines import weights
from engines.errors import EngineError
from engines.lipsync import LipSyncEngine
from handlers.errors import TaskError
from handlers.settings import Settings

log = logging.getLogger(__name__)

CPU_ENGINE = "viseme_warp"
AUTO = "auto"
NEURAL_ENGINES = ("wav2lip256", "wav2lip96")  # auto's order of preference
CHECKPOINT_SETTINGS = {"wav2lip96": "wav2lip96_checkpoint", "wav2lip256": "wav2lip256_checkpoint"}
USER_CHECKPOINT_LICENCE = "User-supplied checkpoint: the terms its owner grants."

_lock = threading.Lock()
_engines: dict[tuple[Any, ...], LipSyncEngine] = {}
_failures: dict[tuple[Any, ...], EngineError] = {}  # keyed by file stat: a replaced file is tried again


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
    user_checkpoint = getattr(settings, CHECKPOINT_SETTINGS[engine])
    if user_checkpoint is not None:
        return WeightsFound(engine, Path(user_checkpoint), CHECKPOINT_SETTINGS[engine].upper(), None)
    found = weights.find_for_engine(engine, settings.weights_dir)
    return WeightsFound(engine, found[1], found[0].name, found[0]) if found else None


def _missing_message(engine: str, settings: Settings, found: WeightsFound | None) -> str:
    if found is not None:  # a user checkpoint setting that points nowhere
        return f"Engine `{engine}`: {found.origin} is set to `{found.path}`, which does not exist."
    names = weights.ENGINE_WEIGHTS[engine]
    files = " or ".join(f"`{weights.BY_NAME[n].filename}`" for n in names)
    dirs = ", ".join(str(d) for d in weights.search_dirs(settings.weights_dir))
    return (
        f"Engine `{engine}` needs its weights: {files} not found in {dirs}. Fetch them with "
        f"`{weights.fetch_command(names[:1], settings.weights_dir)}` or set "
        f"{CHECKPOINT_SETTINGS[engine].upper()} to your own checkpoint; or use `auto` / `{CPU_ENGINE}`."
    )


def _present(engine: str, settings: Settings) -> WeightsFound | None:
    found = find_weights(engine, settings)
    return found if found is not None and found.path.is_file() else None


def _auto_candidates(settings: Settings) -> list[tuple[str, str]]:
    """(engine, reason) in the order auto tries them; the CPU engine always ends the list."""
    candidates, notes = [], []
    for engine in NEURAL_ENGINES:
        found = _present(engine, settings)
        configured = find_weights(engine, settings) if found is None else None
        if configured is not None:
            notes.append(f"{configured.origin} `{configured.path}` does not exist")
        elif found is None:
            notes.append(f"no {engine} weights")
        elif engine == "wav2lip256" and not cuda_available():  # torch imported only when weights exist
            notes.append("wav2lip256 weights found but no CUDA device")
        elif found.key in _failures:
            notes.append(f"{engine} failed to load ({_failures[found.key].code})")
        else:
            candidates.append((engine, f"auto: {engine} weights found ({found.path})"))
    candidates.append((CPU_ENGINE, "auto: " + "; ".join(notes)))
    return candidates


def choose(requested: str, settings: Settings) -> tuple[str, str]:
    """(engine name, reason) for a requested engine name, without loading anything."""
    if requested == AUTO:
        return _auto_candidates(settings)[0]
    if requested == CPU_ENGINE:
        return CPU_ENGINE, "requested"
    if requested in NEURAL_ENGINES:
        if _present(requested, settings) is None:
            missing = _missing_message(requested, settings, find_weights(requested, settings))
            raise TaskError("engine_unavailable", missing)
        return requested, "requested"
    allowed = ", ".join((AUTO, *NEURAL_ENGINES, CPU_ENGINE))
    raise TaskError("engine_unavailable", f"Unknown engine `{requested}`: use one of {allowed}.")


@cache
def _cpu_engine() -> LipSyncEngine:
    from engines.lipsync import viseme_warp

    return viseme_warp.VisemeWarpEngine.load()


def _load_file(engine: str, path: Path, precision: str) -> LipSyncEngine:
    import engines.lipsync.wav2lip  # noqa: F401  (imports torch; registers the neural engines)
    from engines.lipsync import LIPSYNC_ENGINES

    if engine == "wav2lip256" and not cuda_available():
        log.warning("wav2lip256 without CUDA: expect a few frames/s on CPU")
    return LIPSYNC_ENGINES[engine].load(path, precision=precision)


def _neural_engine(engine: str, settings: Settings) -> tuple[LipSyncEngine, WeightsFound]:
    """Load (once per process and file) the neural engine; EngineError on a bad file."""
    found = _present(engine, settings)
    if found is None:
        raise TaskError("engine_unavailable", _missing_message(engine, settings, find_weights(engine, settings)))
    key = found.key
    with _lock:
        if key in _failures:
            raise _failures[key]
        if key not in _engines:
            try:
                if found.entry is not None:
                    weights.verify_file(found.entry, found.path)
                _engines[key] = _load_file(engine, found.path, settings.wav2lip_precision)
            except EngineError as exc:
                _failures[key] = exc
                raise
        return _engines[key], found


def _info(engine: LipSyncEngine, reason: str, found: WeightsFound | None) -> dict[str, Any]:
    info: dict[str, Any] = {"name": engine.name, "version": engine.version, "reason": reason}
    if found is not None:
        info |= {"weights": found.path.name, "licence": found.licence, **getattr(engine, "info", {})}
    return info


def lipsync_engine(requested: str, settings: Settings) -> tuple[LipSyncEngine, dict[str, Any]]:
    """The loaded engine (cached per process) and the info the result reports."""
    if requested != AUTO:
        name, reason = choose(requested, settings)
        if name == CPU_ENGINE:
            return _cpu_engine(), _info(_cpu_engine(), reason, None)
        engine, found = _neural_engine(name, settings)
        return engine, _info(engine, reason, found)
    failed = []
    for name, reason in _auto_candidates(settings):
        if name == CPU_ENGINE:
            return _cpu_engine(), _info(_cpu_engine(), "; ".join([reason, *failed]), None)
        try:
            engine, found = _neural_engine(name, settings)
        except Exception as exc:  # auto must still serve: any load failure (bad file, CUDA OOM) falls back
            code = getattr(exc, "code", type(exc).__name__)
            log.warning("auto engine: %s failed to load (%s: %s); falling back", name, code, exc)
            failed.append(f"{name} failed to load ({code})")
            continue
        return engine, _info(engine, reason, found)
    raise AssertionError("unreachable: the CPU engine ends the candidate list")


def _verified(found: WeightsFound) -> bool | None:
    """Checksum state without hashing: True/False once checked in this process, None before."""
    if found.entry is None:
        return None
    failure = _failures.get(found.key)
    if failure is not None and failure.code == "checksum_mismatch":
        return False
    expected = weights.pinned_sha256(found.entry, found.path)
    if expected is None:
        return False
    digest = weights.cached_sha256(found.path)
    return None if digest is None else digest == expected


def describe(settings: Settings) -> dict[str, Any]:
    """For ``health``: the engine auto would use and why, and the weights found (cheap: no hashing)."""
    name, reason = choose(AUTO, settings)
    found_weights = []
    for engine in NEURAL_ENGINES:
        found = _present(engine, settings)
        if found is not None:
            found_weights.append(
                {
                    "engine": engine,
                    "path": str(found.path),
                    "origin": found.origin,
                    "verified": _verified(found),
                    "licence": found.licence,
                    "commercial_use": found.entry.commercial_use if found.entry else None,
                }
            )
            if found.key in _failures:
                found_weights[-1]["load_error"] = _failures[found.key].code
    result: dict[str, Any] = {"engine": name, "reason": reason, "cuda": cuda_available(), "weights": found_weights}
    if any(w["origin"] in ("wav2lip96", "wav2lip96_gan") for w in found_weights):
        result["licence_notice"] = "Wav2Lip 96-px weights present: " + weights.NON_COMMERCIAL
    return result
