"""eSpeak NG through ctypes: offline speech at 22050 Hz with a phoneme timeline.

The library (from ``espeakng_loader``) keeps global state: one voice, one rate, one callback per
process. Every call goes through one process-wide lock, the library is initialised once, and each
synthesis sets voice, rate and pitch again so one request never inherits another's settings.

Phoneme symbols are eSpeak's ASCII mnemonics as reported (e.g. ``h @ l 'oU w '3: l d``): a leading
``'`` or ``,`` marks primary or secondary stress. Pauses are reported as ``_`` entries.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engines.errors import EngineError
from engines.tts import Phoneme, Speech, VoiceParams, register

logger = logging.getLogger(__name__)

DEFAULT_VOICE = "en-us"
SAMPLE_RATE = 22050  # what espeak_Initialize reports; checked at start-up

# espeak-ng/speak_lib.h constants.
AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS = 0x0001
INITIALIZE_DONT_EXIT = 0x8000  # report a missing data folder instead of calling exit()
EVENT_LIST_TERMINATED = 0
EVENT_PHONEME = 7
PARAM_RATE = 1
PARAM_PITCH = 3
CHARS_UTF8 = 1
POS_CHARACTER = 1
EE_OK = 0
PAUSE_SYMBOL = "_"
VOICE_EXAMPLES = 12  # how many valid voice names an unknown_voice error lists


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),  # packed list, see _languages
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass
class _Capture:
    """What the callback collects during one espeak_Synth call."""

    chunks: list[np.ndarray] = field(default_factory=list)
    marks: list[tuple[int, str]] = field(default_factory=list)  # (audio position ms, mnemonic)
    error: BaseException | None = None


_C_SIGNATURES = {  # function: (argtypes, restype)
    "espeak_Initialize": ([ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int], ctypes.c_int),
    "espeak_SetSynthCallback": ([_SYNTH_CALLBACK], None),
    "espeak_SetVoiceByName": ([ctypes.c_char_p], ctypes.c_int),
    "espeak_SetParameter": ([ctypes.c_int, ctypes.c_int, ctypes.c_int], ctypes.c_int),
    "espeak_GetParameter": ([ctypes.c_int, ctypes.c_int], ctypes.c_int),
    "espeak_Synth": (
        [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ],
        ctypes.c_int,
    ),
    "espeak_Synchronize": ([], ctypes.c_int),
    "espeak_ListVoices": ([ctypes.c_void_p], ctypes.POINTER(ctypes.POINTER(_Voice))),
}


def _bind(lib: ctypes.CDLL) -> None:
    for name, (argtypes, restype) in _C_SIGNATURES.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, restype


class _EspeakLibrary:
    """The loaded, initialised library and the one callback it calls; use only under ``_LOCK``."""

    def __init__(self) -> None:
        import espeakng_loader

        self._lib = ctypes.CDLL(str(espeakng_loader.get_library_path()))
        _bind(self._lib)
        data_path = str(espeakng_loader.get_data_path()).encode()
        rate = self._lib.espeak_Initialize(
            AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, INITIALIZE_PHONEME_EVENTS | INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            raise EngineError("tts_unavailable", f"eSpeak NG failed to initialise (data folder {data_path!r})")
        if rate != SAMPLE_RATE:
            raise EngineError("tts_unavailable", f"eSpeak NG reports {rate} Hz, expected {SAMPLE_RATE} Hz")
        self._capture: _Capture | None = None
        self._callback = _SYNTH_CALLBACK(self._on_synth)  # kept referenced: the C side holds the pointer
        self._lib.espeak_SetSynthCallback(self._callback)
        self._voice_names: list[str] | None = None

    def _on_synth(self, wav: Any, num_samples: int, events: Any) -> int:
        capture = self._capture
        if capture is None:
            return 1
        try:
            if num_samples > 0 and wav:
                capture.chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
            i = 0
            while events[i].type != EVENT_LIST_TERMINATED:
                event = events[i]
                if event.type == EVENT_PHONEME:
                    symbol = event.id.string.decode("ascii", errors="replace")
                    capture.marks.append((event.audio_position, symbol))
                i += 1
        except Exception as exc:  # an exception must not cross into C: record it and abort the synthesis
            capture.error = exc
            return 1
        return 0

    def voice_names(self) -> list[str]:
        """Language codes eSpeak accepts as voice names (``en-us``, ``fr-fr``, ...), sorted."""
        if self._voice_names is None:
            voices = self._lib.espeak_ListVoices(None)
            names: set[str] = set()
            i = 0
            while voices[i]:
                names.update(_languages(voices[i].contents.languages))
                i += 1
            self._voice_names = sorted(names)
        return self._voice_names

    def _unknown_voice_message(self, name: str) -> str:
        names = self.voice_names()
        english = [n for n in names if n == "en" or n.startswith("en-")]
        examples = ", ".join((english + [n for n in names if n not in english])[:VOICE_EXAMPLES])
        return f"`voice.name` {name!r} is not an eSpeak NG voice; {len(names)} are installed, e.g. {examples}"

    def set_voice(self, name: str, rate: int | None, pitch: int | None) -> None:
        if "\0" in name or self._lib.espeak_SetVoiceByName(name.encode("utf-8")) != EE_OK:
            raise EngineError("unknown_voice", self._unknown_voice_message(name))
        for param, value in ((PARAM_RATE, rate), (PARAM_PITCH, pitch)):
            wanted = self._lib.espeak_GetParameter(param, 0) if value is None else value  # 0: the default
            self._lib.espeak_SetParameter(param, int(wanted), 0)

    def synthesize(self, text: str) -> _Capture:
        data = text.encode("utf-8") + b"\0"
        buffer = ctypes.create_string_buffer(data, len(data))
        self._capture = capture = _Capture()
        try:
            status = self._lib.espeak_Synth(buffer, len(data), 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
            self._lib.espeak_Synchronize()
        finally:
            self._capture = None
        if capture.error is not None:
            raise EngineError("tts_failed", f"eSpeak NG callback failed: {capture.error}") from capture.error
        if status != EE_OK:
            raise EngineError("tts_failed", f"espeak_Synth returned status {status}")
        return capture


def _languages(address: int | None) -> list[str]:
    """Decode espeak_VOICE.languages: repeated (priority byte, NUL-terminated name), ended by priority 0."""
    names: list[str] = []
    while address and ctypes.string_at(address, 1) != b"\0":
        name = ctypes.string_at(address + 1)
        names.append(name.decode("ascii", errors="replace"))
        address += len(name) + 2
    return names


_LOCK = threading.Lock()
_LIBRARY: _EspeakLibrary | None = None


def _library() -> _EspeakLibrary:
    """The process-wide library, initialised on first use; call only while holding ``_LOCK``."""
    global _LIBRARY
    if _LIBRARY is None:
        _LIBRARY = _EspeakLibrary()
    return _LIBRARY


def phoneme_timeline(marks: list[tuple[int, str]], duration_s: float) -> list[Phoneme]:
    """Phonemes from eSpeak's (ms, mnemonic) events: each ends where the next starts, the last at audio end.

    Empty mnemonics (eSpeak's end-of-clause markers) only close the phoneme before them; pause
    mnemonics (``_``, ``_:``, ``_!`` ...) become ``_`` silence entries. Times are clamped to the audio.
    """
    ordered = sorted(((max(0.0, ms / 1000.0), sym.strip()) for ms, sym in marks), key=lambda m: m[0])
    phonemes: list[Phoneme] = []
    for i, (start, symbol) in enumerate(ordered):
        end = ordered[i + 1][0] if i + 1 < len(ordered) else duration_s
        start, end = min(start, duration_s), min(end, duration_s)
        if not symbol or end <= start:
            continue
        if symbol.startswith(PAUSE_SYMBOL):
            symbol = PAUSE_SYMBOL
            if phonemes and phonemes[-1].symbol == PAUSE_SYMBOL and phonemes[-1].end >= start:
                phonemes[-1] = Phoneme(PAUSE_SYMBOL, phonemes[-1].start, end)  # merge adjacent pauses
                continue
        phonemes.append(Phoneme(symbol, start, end))
    return phonemes


@register("espeak")
class EspeakSynthesizer:
    """Offline speech; ``VoiceParams.name`` is an eSpeak voice (default ``en-us``), rate in words per minute."""

    name = "espeak"
    sample_rate = SAMPLE_RATE

    def synthesize(self, text: str, voice: VoiceParams) -> Speech:
        if not text or not text.strip():
            raise EngineError("empty_text", "`text` is empty: give the sentence to speak")
        if voice.ref_id is not None:
            raise EngineError("unsupported_voice_option", "`voice.ref_id` is a Fish Audio option; eSpeak NG has none")
        with _LOCK:
            library = _library()
            library.set_voice(voice.name or DEFAULT_VOICE, voice.rate, voice.pitch)
            capture = library.synthesize(text)
        samples = np.concatenate(capture.chunks) if capture.chunks else np.zeros(0, np.int16)
        audio = samples.astype(np.float32) / 32768.0
        duration_s = len(audio) / SAMPLE_RATE
        phonemes = phoneme_timeline(capture.marks, duration_s)
        if all(p.symbol == PAUSE_SYMBOL for p in phonemes):
            raise EngineError("empty_text", f"`text` {text[:40]!r} has nothing eSpeak NG can pronounce")
        logger.debug("espeak: %d chars -> %.2f s, %d phonemes", len(text), duration_s, len(phonemes))
        return Speech(samples=audio, sample_rate=SAMPLE_RATE, phonemes=phonemes)

    def voice_names(self) -> list[str]:
        """Installed voice names (language codes), for listings and validation."""
        with _LOCK:
            return list(_library().voice_names())
