"""The run's inputs, made in its work folder before any section starts: the face recording (from the bundle,
or recorded now where dlib's model is installed), the portrait, the avatar (folder and TAR in a file://
store) and the text eSpeak speaks for about the profile's clip length."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2

from bench.gpu.faces import (
    FACES_FILE,
    avatar_key,
    portrait_bgr,
    read_recording,
    record,
    write_avatar,
    write_recording,
)
from bench.gpu.profiles import PROFILES, Profile
from bench.gpu.worker import Work

log = logging.getLogger(__name__)

SENTENCE = (
    "Welcome to this short demonstration of a talking head made on a graphics card. The mouth follows the "
    "sounds of the text, and every frame is encoded on the processor while the next ones are drawn."
)
WORDS = SENTENCE.split(" ")


def avatar_sizes() -> list[tuple[int, int]]:
    """Every profile's avatar, so one bundle serves both kinds of run."""
    return sorted({(p.avatar_side, p.avatar_frames) for p in PROFILES.values()})


def recording(bundle: Path | None, profile: Profile) -> tuple[dict[str, Any], str]:
    """The bundle's recording when it has this profile's avatar, else one made now with the real analyzer."""
    if bundle is not None and (bundle / FACES_FILE).is_file():
        recorded = read_recording(bundle)
        if avatar_key(profile.avatar_side, profile.avatar_frames) in recorded["avatars"]:
            return recorded, f"bundle ({bundle / FACES_FILE})"
    try:
        from engines.face import load_face_analyzer

        analyzer = load_face_analyzer()
    except Exception as exc:  # the GPU machine: no dlib model, the bundle's recording is the only source
        raise RuntimeError(
            f"no face recording for this run in {bundle or 'the bundle (not found)'}/{FACES_FILE} and no dlib model "
            f"here to make one ({exc}): "
            "run `make gpu-bundle` where the project is installed and copy var/gpu-bundle beside this checkout"
        ) from exc
    return record(analyzer, [(profile.avatar_side, profile.avatar_frames)]), "recorded now (dlib)"


def speech_text(seconds: float) -> tuple[str, float]:
    """The fewest words (cycling through WORDS) that eSpeak speaks in at least ``seconds``; and that length."""
    from engines.tts import VoiceParams, load_synthesizer

    synth = load_synthesizer("espeak")
    words: list[str] = []
    while True:
        words.append(WORDS[len(words) % len(WORDS)])
        spoken = synth.synthesize(" ".join(words), VoiceParams())
        if spoken.duration_s >= seconds:
            return " ".join(words), spoken.duration_s


def prepare(work: Work, profile: Profile, bundle: Path | None) -> dict[str, Any]:
    from storage.avatar.archive import pack_avatar

    recorded, source = recording(bundle, profile)
    work.inputs.mkdir(parents=True, exist_ok=True)
    write_recording(work.inputs, recorded)
    work.portrait.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(work.portrait), portrait_bgr())
    _, same_frames = write_avatar(work.avatar_dir, profile.avatar_side, profile.avatar_frames, recorded)
    work.avatar_tar.parent.mkdir(parents=True, exist_ok=True)
    pack_avatar(work.avatar_dir, work.avatar_tar)
    text, spoken_s = speech_text(profile.clip_seconds)
    work.text_file.write_text(text)
    if profile.e2e_audio_seconds is not None:
        from engines.codecs.audio import write_wav
        from tests.engines.wav2lip_fixtures import speech_like

        write_wav(work.audio, speech_like(profile.e2e_audio_seconds), 16000)
        spoken_s = profile.e2e_audio_seconds
    return {
        "faces": source,
        "avatar": f"{profile.avatar_side}x{profile.avatar_side}, {profile.avatar_frames} frames",
        "avatar_frames_match_recording": same_frames,
        "speech_s": round(spoken_s, 2),
    }
