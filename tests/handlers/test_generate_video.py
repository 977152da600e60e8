"""generate_video through handlers.dispatch: real avatar TARs in a file:// store, eSpeak speech, PyAV decoding.

Lip motion is checked the way a viewer would see it: the face analyzer measures the inner-lip
opening on the decoded output frames, and it must follow the speech's loudness.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from engines.codecs.audio import write_wav
from engines.codecs.video_out import Mp4Writer
from engines.face import FaceAnalyzer, load_face_analyzer
from engines.lipsync import pingpong_index
from engines.lipsync.visemes import frame_rms
from engines.tts import VoiceParams, load_synthesizer, resample
from handlers import dispatch
from handlers.runtime import WorkerRuntime
from handlers.settings import Settings
from storage.avatar.archive import pack_avatar
from storage.avatar.layout import AvatarWriter
from tests.media import astronaut_bgr, head_motion

USER, AVATAR = "user-1", "avatar-1"
AVATAR_FRAMES = 40
SOURCE_SIZE = 768  # the astronaut at 768 px, cropped to 256 x 256 around the face (a ~125 px face)
CROP = (slice(70, 326), slice(208, 464))
PSNR_CRF = 10  # near-lossless video, so the comparison above the nose measures the render, not the codec
SENTENCE = "Peter Piper picked a peck of pickled peppers. Good morning, my friend!"


@dataclass
class BuiltAvatar:
    tar: Path
    frames: list[np.ndarray]
    landmarks: np.ndarray


def inner_lip_opening(landmarks: np.ndarray) -> float:
    """Inner-lip gap (points 61-67, 62-66, 63-65) divided by the face width (0-16)."""
    gap = sum(np.linalg.norm(landmarks[a] - landmarks[b]) for a, b in ((61, 67), (62, 66), (63, 65))) / 3.0
    return float(gap / np.linalg.norm(landmarks[16] - landmarks[0]))


def eye_opening(landmarks: np.ndarray) -> float:
    pairs = ((37, 41), (38, 40), (43, 47), (44, 46))
    gap = sum(np.linalg.norm(landmarks[a] - landmarks[b]) for a, b in pairs) / 4.0
    return float(gap / np.linalg.norm(landmarks[16] - landmarks[0]))


def measure(frames: list[np.ndarray], analyzer: FaceAnalyzer) -> list[np.ndarray | None]:
    out = []
    for frame in frames:
        boxes = analyzer.detect(frame)
        out.append(analyzer.landmarks(frame, boxes[0]) if boxes else None)
    return out


def decode_video(path: Path) -> tuple[list[np.ndarray], dict]:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        info = {"codecs": sorted(s.codec_context.name for s in container.streams)}
        info["video_s"] = float(video.duration * video.time_base)
        for audio in container.streams.audio:
            info["audio_s"] = float(audio.duration * audio.time_base)
            info["audio_channels"] = audio.codec_context.channels
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    return frames, info


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def speech_wav(path: Path, text: str) -> np.ndarray:
    speech = load_synthesizer("espeak").synthesize(text, VoiceParams())
    samples = resample(speech.samples, speech.sample_rate, 16000)
    write_wav(path, samples, 16000)
    return samples


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return load_face_analyzer()


@pytest.fixture(scope="module")
def test_avatar(tmp_path_factory: pytest.TempPathFactory, analyzer: FaceAnalyzer) -> BuiltAvatar:
    """A 40-frame 256x256 avatar of the moving astronaut, made like preprocess_avatar makes them, as a TAR."""
    moving, _ = head_motion(AVATAR_FRAMES, 25.0, SOURCE_SIZE)
    frames = [np.ascontiguousarray(f[CROP]) for f in moving]
    avatar = AvatarWriter(tmp_path_factory.mktemp("avatar") / AVATAR)
    coords, landmarks = [], []
    for i, frame in enumerate(frames):
        box = analyzer.detect(frame)[0]
        landmarks.append(analyzer.landmarks(frame, box))
        y1, y2, x1, x2 = box.y1, min(frame.shape[0], box.y2 + 10), box.x1, box.x2  # LiveTalking's pads
        coords.append((y1, y2, x1, x2))
        avatar.write_frame(i, frame, cv2.resize(frame[y1:y2, x1:x2], (256, 256)))
    avatar.write_tables(coords, np.array(landmarks))
    tar = avatar.path.parent / f"{AVATAR}.tar"
    pack_avatar(avatar.path, tar)
    return BuiltAvatar(tar, frames, np.array(landmarks, dtype=np.float32))


@pytest.fixture
def store_root(local_settings: Settings, test_avatar: BuiltAvatar) -> Path:
    root = Path(local_settings.avatar_store_uri.removeprefix("file://"))
    (root / "avatars" / USER).mkdir(parents=True)
    shutil.copy(test_avatar.tar, root / "avatars" / USER / f"{AVATAR}.tar")
    return root


def output_path(store_root: Path, result: dict) -> Path:
    assert "error" not in result, result
    return store_root / "generated-videos" / USER / f"{result['video_id']}.mp4"


def test_text_to_mp4_moves_the_lips_with_the_speech(
    local_settings: Settings,
    store_root: Path,
    test_avatar: BuiltAvatar,
    analyzer: FaceAnalyzer,
    task_tmp: Path,
    runtime: WorkerRuntime,
) -> None:
    settings = local_settings.model_copy(update={"video_crf": PSNR_CRF})
    payload = {
        "task": "generate_video",
        "user_id": USER,
        "avatar_id": AVATAR,
        "text": SENTENCE,
        "video_id": "v1",
        "min_lip_sync": 0.5,
    }
    stages: list[tuple[str, float]] = []
    result = dispatch(
        payload, runtime.with_settings(settings), progress=lambda stage, done: stages.append((stage, done))
    )
    path = output_path(store_root, result)
    assert result["video"]["uri"].endswith(f"generated-videos/{USER}/v1.mp4") and path.is_file()
    assert result["engine"]["name"] == "viseme_warp"
    assert set(result["timings_ms"]) >= {"fetch", "tts", "features", "render", "encode", "upload"}
    assert list(task_tmp.iterdir()) == []
    assert [s for s, _ in stages][:2] == ["fetch", "tts"] and stages[-1] == ("done", 1.0)
    assert [d for _, d in stages] == sorted(d for _, d in stages) and "render" in dict(stages)

    frames, info = decode_video(path)
    assert info["codecs"] == ["aac", "h264"] and info["audio_channels"] == 1
    assert abs(info["video_s"] - info["audio_s"]) <= 1 / 25
    assert frames[0].shape == (256, 256, 3) and (result["width"], result["height"]) == (256, 256)
    assert len(frames) == result["num_frames"]
    quality = result["quality"]  # measured on the frames as they were made, before the encoder
    assert quality["lip_sync"] >= 0.6 and abs(quality["lag_frames"]) <= 2 and result["low_quality"] is False
    assert quality["frames"] == len(frames) and quality["frames_measured"] >= 24 and quality["frames_face_lost"] == 0
    assert quality["av_offset_ms"] == 0.0 and quality["cost_share"] is not None

    samples = resample(load_synthesizer("espeak").synthesize(SENTENCE, VoiceParams()).samples, 22050, 16000)
    rms = frame_rms(samples, len(frames))
    measured = measure(frames, analyzer)
    assert sum(m is None for m in measured) <= 2
    index = [pingpong_index(i, AVATAR_FRAMES) for i in range(len(frames))]
    opening = np.array([np.nan if m is None else inner_lip_opening(m) for m in measured])
    opening -= np.array([inner_lip_opening(test_avatar.landmarks[k]) for k in index])  # remove head-motion effects
    valid = ~np.isnan(opening)
    best = max(
        np.corrcoef(np.roll(opening, -lag)[valid], rms[valid])[0, 1] for lag in range(-2, 3)
    )  # the analyzer's landmarks may lag the picture slightly
    assert best >= 0.5, best
    assert np.nanmax(opening) > 0.05  # the mouth really opens (5 % of the face width beyond the avatar's)

    # Above the nose nothing changes: compared with the avatar frames through the same encoder (CRF 18
    # yuv420p alone costs ~37 dB on this detailed photo), and, more loosely, with the raw frames.
    reference_path = task_tmp.parent / "reference.mp4"
    with Mp4Writer(reference_path, 256, 256, crf=PSNR_CRF) as ref:
        for k in index:
            ref.write(test_avatar.frames[k])
    reference, _ = decode_video(reference_path)
    for i, k in enumerate(index):
        top = int(test_avatar.landmarks[k][27:31, 1].min())  # the nose bridge
        assert psnr(frames[i][:top], reference[i][:top]) >= 40.0
        assert psnr(frames[i][:top], test_avatar.frames[k][:top]) >= 35.0


def test_silent_audio_keeps_the_mouth_closed(
    local_settings: Settings,
    store_root: Path,
    test_avatar: BuiltAvatar,
    analyzer: FaceAnalyzer,
    tmp_path: Path,
    runtime: WorkerRuntime,
) -> None:
    silence = write_wav(tmp_path / "silence.wav", np.zeros(32000, dtype=np.float32), 16000)
    payload = {"task": "generate_video", "user_id": USER, "avatar_id": AVATAR, "audio": silence.as_uri()}
    payload |= {"min_lip_sync": 0.5, "video_id": "hush"}
    failed = dispatch(payload, runtime)
    # a mouth that does not follow speech scores under min_lip_sync: the job fails, the render is kept and marked
    assert failed["error_code"] == "low_quality" and "0.00" in failed["error"] and "hush.mp4" in failed["error"]
    result = failed["result"]
    assert result["low_quality"] is True and result["quality"]["lip_sync"] == 0.0
    assert result["quality"]["silent_frames"] == 50 and result["quality"]["silent_held_still"] == 1.0
    frames, info = decode_video(output_path(store_root, result))
    assert len(frames) == 50 and abs(info["audio_s"] - 2.0) < 0.01
    for i, landmarks in enumerate(measure(frames[::5], analyzer)):
        k = pingpong_index(i * 5, AVATAR_FRAMES)
        assert landmarks is not None
        assert abs(inner_lip_opening(landmarks) - inner_lip_opening(test_avatar.landmarks[k])) < 0.02


def test_portrait_and_audio_blink_and_talk(
    local_settings: Settings, store_root: Path, analyzer: FaceAnalyzer, tmp_path: Path, runtime: WorkerRuntime
) -> None:
    portrait = tmp_path / "portrait.png"
    cv2.imwrite(str(portrait), astronaut_bgr(SOURCE_SIZE)[40:360, 176:496])
    samples = speech_wav(tmp_path / "speech.wav", "Good morning! This is a short test of the portrait path.")
    payload = {
        "task": "generate_video",
        "user_id": USER,
        "image": portrait.as_uri(),
        "audio": (tmp_path / "speech.wav").as_uri(),
    }
    result = dispatch(payload, runtime)
    frames, _ = decode_video(output_path(store_root, result))
    assert frames[0].shape == (320, 320, 3) and len(frames) >= 60
    measured = measure(frames, analyzer)
    assert all(m is not None for m in measured)
    eyes = np.array([eye_opening(m) for m in measured])
    closed = eyes < 0.7 * np.median(eyes)
    runs = np.convolve(closed.astype(int), np.ones(3, dtype=int), mode="valid")
    assert runs.max() == 3  # at least three consecutive frames with the eyes closed: a blink
    mouth = np.array([inner_lip_opening(m) for m in measured])
    rms = frame_rms(samples, len(frames))
    assert np.corrcoef(mouth, rms)[0, 1] >= 0.5
    assert mouth.max() - mouth.min() > 0.05


def test_unknown_avatar_is_not_found_and_nothing_is_uploaded(
    local_settings: Settings, store_root: Path, task_tmp: Path, runtime: WorkerRuntime
) -> None:
    payload = {"task": "generate_video", "user_id": USER, "avatar_id": "nobody", "text": "Hello"}
    result = dispatch(payload, runtime)
    assert result["error_code"] == "avatar_not_found"
    assert str(local_settings.avatar_local_path / "nobody") in result["error"]
    assert f"avatars/{USER}/nobody.tar" in result["error"]
    assert not (store_root / "generated-videos").exists()
    assert list(task_tmp.iterdir()) == []


@pytest.mark.parametrize(
    ("audio_bytes", "code"),
    [(None, "audio_too_long"), (b"this is not audio at all", "unsupported_audio")],
)
def test_bad_audio_is_refused_and_nothing_is_uploaded(
    local_settings: Settings,
    store_root: Path,
    task_tmp: Path,
    tmp_path: Path,
    audio_bytes: bytes | None,
    code: str,
    runtime: WorkerRuntime,
) -> None:
    audio = tmp_path / "speech.wav"
    if audio_bytes is None:
        write_wav(audio, np.zeros(16000 * 3, dtype=np.float32), 16000)
    else:
        audio.write_bytes(audio_bytes)
    settings = local_settings.model_copy(update={"max_audio_seconds": 2.0})
    payload = {"task": "generate_video", "user_id": USER, "avatar_id": AVATAR, "audio": audio.as_uri()}
    result = dispatch(payload, runtime.with_settings(settings))
    assert result["error_code"] == code, result
    assert not (store_root / "generated-videos").exists()
    assert list(task_tmp.iterdir()) == []


@pytest.mark.parametrize(
    ("source", "limits", "code"),
    [
        ({"image": "wall.png", "text": "Hello there."}, {}, "no_face"),
        ({"image": "wall.png", "text": "Hello there."}, {"max_image_pixels": 10_000}, "image_too_large"),
        ({"image": "notes.png", "text": "Hello there."}, {}, "invalid_image"),
        ({"avatar_id": AVATAR, "text": "..."}, {}, "empty_text"),
    ],
)
def test_bad_sources_are_refused(
    local_settings: Settings,
    store_root: Path,
    tmp_path: Path,
    source: dict,
    limits: dict,
    code: str,
    runtime: WorkerRuntime,
) -> None:
    cv2.imwrite(str(tmp_path / "wall.png"), np.full((120, 160, 3), 90, dtype=np.uint8))
    (tmp_path / "notes.png").write_text("not an image")
    if "image" in source:
        source = {**source, "image": (tmp_path / source["image"]).as_uri()}
    result = dispatch(
        {"task": "generate_video", "user_id": USER, **source},
        runtime.with_settings(local_settings.model_copy(update=limits)),
    )
    assert result["error_code"] == code, result
    assert not (store_root / "generated-videos").exists()
