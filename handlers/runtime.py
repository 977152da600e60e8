"""The worker runtime: one per process, built at the entry point and passed down to every task.

It holds the settings and everything a process loads once and shares between requests: the face
analyzer, the CPU engines built around it, speech synthesizers, the neural engines loaded from weights
files (and the files that failed to load), and the decoded-frame cache. Engines get their collaborators
(the face analyzer) in their constructor; nothing here reads the environment except ``from_env``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from handlers.settings import Settings

if TYPE_CHECKING:
    from engines.errors import EngineError
    from engines.expression import ExpressionEngine
    from engines.face import FaceAnalyzer
    from engines.lipsync.frame_cache import FrameCache
    from engines.tts import SpeechSynthesizer

log = logging.getLogger(__name__)

MIB = 1024 * 1024
T = TypeVar("T")


class Engines:
    """The engines and caches of one process, each loaded on first use (thread-safe)."""

    def __init__(self, frame_cache_bytes: int) -> None:
        self._lock = threading.RLock()
        self._loaded: dict[tuple[Any, ...], Any] = {}
        # Weights files that failed to load, keyed by file stat: a replaced file is tried again.
        self.failures: dict[tuple[Any, ...], EngineError] = {}
        self._frame_cache_bytes = frame_cache_bytes

    def once(self, key: tuple[Any, ...], build: Callable[[], T]) -> T:
        """The object stored under ``key``, built by ``build`` the first time it is asked for."""
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = build()
            return self._loaded[key]

    @property
    def frames(self) -> FrameCache:
        """Decoded avatar frames kept between requests (AVATAR_FRAME_CACHE_MB)."""
        from engines.lipsync.frame_cache import FrameCache

        return self.once(("frame_cache",), lambda: FrameCache(self._frame_cache_bytes))

    def face_analyzer(self, name: str = "dlib_hog") -> FaceAnalyzer:
        from engines.face import load_face_analyzer

        return self.once(("face", name), lambda: load_face_analyzer(name))

    def expression_engine(self, name: str) -> ExpressionEngine:
        from engines.expression import load_expression_engine

        return self.once(("expression", name), lambda: load_expression_engine(name, self.face_analyzer()))

    def synthesizer(self, provider: str, **config: Any) -> SpeechSynthesizer:
        from engines.tts import load_synthesizer

        key = ("tts", provider, *sorted(config.items()))
        return self.once(key, lambda: load_synthesizer(provider, **config))


@dataclass(frozen=True)
class WorkerRuntime:
    """Settings plus the process's loaded engines: what every task receives."""

    settings: Settings
    engines: Engines = field(repr=False)

    @classmethod
    def build(cls, settings: Settings) -> WorkerRuntime:
        return cls(settings, Engines(settings.avatar_frame_cache_mb * MIB))

    @classmethod
    def from_env(cls) -> WorkerRuntime:
        """The runtime of an entry point: settings read from the environment once, nothing loaded yet."""
        return cls.build(Settings())

    def with_settings(self, settings: Settings) -> WorkerRuntime:
        """The same loaded engines under other settings (tests, per-deployment overrides)."""
        return replace(self, settings=settings)
