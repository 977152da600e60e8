"""The speech a video says: a fetched audio file decoded, or text spoken by a synthesizer, at 16 kHz."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import storage
from engines.errors import EngineError
from engines.lipsync import SAMPLE_RATE, DrivingAudio
from engines.tts import SpeechSynthesizer, VoiceParams, resample
from handlers.errors import TaskError
from handlers.runtime import WorkerRuntime
from handlers.schemas import Voice
from handlers.settings import Settings

AUDIO_BYTES_PER_SECOND = 384_000  # fetch cap for audio files: 48 kHz stereo 32-bit PCM, the largest usual wav


def fetch_audio(uri: str, settings: Settings, work: Path) -> Path:
    max_bytes = int(settings.max_audio_seconds * AUDIO_BYTES_PER_SECOND)
    return storage.fetch(uri, work / "speech-audio", settings.input_storage, max_bytes=max_bytes)


def decode_speech(path: Path, settings: Settings, what: str = "`audio`") -> np.ndarray:
    """16 kHz mono samples of an audio (or video) file; TaskError when it holds none."""
    from engines.codecs.audio import decode_audio

    samples = decode_audio(path, sample_rate=SAMPLE_RATE, max_seconds=settings.max_audio_seconds)
    if len(samples) == 0:
        raise TaskError("empty_audio", f"{what} decodes to no samples: give a file with speech in it")
    return samples


def check_speech_file(path: Path, settings: Settings, what: str) -> float:
    """Seconds of sound in an audio (or video) file; TaskError (``unsupported_audio``, ``audio_too_long``,
    ``empty_audio``) when it is not one our codecs decode, or too long."""
    try:
        samples = decode_speech(path, settings, what)
    except EngineError as exc:
        raise TaskError(exc.code, f"{what}: {exc.message}") from None
    return len(samples) / SAMPLE_RATE


def speak(text: str, voice: Voice, runtime: WorkerRuntime) -> DrivingAudio:
    """``text`` spoken at 16 kHz with its phoneme timeline (when the synthesizer gives one); TaskError when
    it makes no audio or more than MAX_AUDIO_SECONDS."""
    settings = runtime.settings
    speech = synthesizer(voice.provider, runtime).synthesize(text, _voice_params(voice))
    samples = resample(speech.samples, speech.sample_rate, SAMPLE_RATE)
    if len(samples) == 0:
        raise TaskError("empty_speech", "the speech synthesizer returned no audio for `text`")
    seconds = len(samples) / SAMPLE_RATE
    if seconds > settings.max_audio_seconds:
        raise TaskError(
            "audio_too_long",
            f"`text` makes {seconds:.1f} s of speech; the limit is {settings.max_audio_seconds:g} s",
        )
    return DrivingAudio(samples=samples, phonemes=speech.phonemes or None)


def _voice_params(voice: Voice) -> VoiceParams:
    return VoiceParams(name=voice.name, rate=voice.rate, pitch=voice.pitch, ref_id=voice.ref_id)


def _provider_config(settings: Settings) -> dict[str, dict[str, Any]]:
    """Each HTTP speech provider's configuration from the settings (eSpeak takes none)."""
    return {
        "fish": {"api_key": settings.fish_api_key, "base_url": settings.fish_base_url},
        "openai": {
            "api_key": settings.openai_api_key,
            "base_url": settings.openai_base_url,
            "model": settings.openai_tts_model,
        },
    }


def synthesizer(provider: str, runtime: WorkerRuntime) -> SpeechSynthesizer:
    return runtime.engines.synthesizer(provider, **_provider_config(runtime.settings).get(provider, {}))
