"""generate_video with `driving_video` through handlers.dispatch: LivePortrait reenactment, random weights.

Random weights in the official layout (LIVEPORTRAIT_DIR) at LIVEPORTRAIT_INPUT_SIZE=128: the pixels mean
nothing, so these tests check the plumbing a caller sees: one frame per driving frame at 25 fps, the driving
video's sound kept (or `audio` instead, cut to the video), a motion template driving a silent video, a stored
avatar as the source video, the 512-px crop without paste-back, and every refusal.
"""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from engines.codecs.audio import write_wav
from engines.codecs.video_out import Mp4Writer
from engines.face import load_face_analyzer
from engines.liveportrait.motion_file import save_motion
from handlers import dispatch
from handlers.runtime import WorkerRuntime
from storage.avatar.archive import pack_avatar
from storage.avatar.layout import AvatarWriter
from tests.engines.test_liveportrait_driving import motion
from tests.media import astronaut_bgr, head_motion, tone

USER = "u1"
DRIVING_FRAMES = 3
SIDE = 384


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A portrait, a non-square driving video with a 440 Hz sound track, and a 0.5 s 220 Hz speech file."""
    root = tmp_path_factory.mktemp("media")
    cv2.imwrite(str(root / "portrait.png"), astronaut_bgr(SIDE))
    moving, _ = head_motion(DRIVING_FRAMES, 25.0, SIDE)
    frames = [cv2.copyMakeBorder(f, 0, 0, 32, 32, cv2.BORDER_REFLECT) for f in moving]
    sound = tone(DRIVING_FRAMES / 25.0, freq=440.0)
    with Mp4Writer(root / "driving.mp4", frames[0].shape[1], frames[0].shape[0], audio=sound) as writer:
        for frame in frames:
            writer.write(frame)
    writer.close()
    write_wav(root / "speech.wav", tone(0.5, freq=220.0), 16000)
    return {"portrait": root / "portrait.png", "driving": root / "driving.mp4", "speech": root / "speech.wav"}


def decoded(uri: str) -> tuple[list[np.ndarray], np.ndarray | None, int]:
    """Video frames, the audio track (mono, or None) and its sample rate."""
    with av.open(uri.removeprefix("file://")) as container:
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    with av.open(uri.removeprefix("file://")) as container:
        if not container.streams.audio:
            return frames, None, 0
        rate = container.streams.audio[0].rate
        audio = np.concatenate([f.to_ndarray().mean(axis=0) for f in container.decode(audio=0)])
    return frames, audio, rate


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


def request(media: dict[str, Path], **fields: object) -> dict[str, object]:
    base = {"task": "generate_video", "user_id": USER, "image": media["portrait"].as_uri()}
    return {**base, "driving_video": media["driving"].as_uri(), **fields}


def test_a_portrait_driven_by_a_video_keeps_the_videos_sound(lp_runtime: WorkerRuntime, media: dict[str, Path]) -> None:
    result = dispatch(request(media), lp_runtime)
    assert "error" not in result, result
    assert result["engine"]["name"] == "liveportrait" and result["engine"]["mode"] == "driving_video"
    assert result["engine"]["driving"] == "video" and result["engine"]["source"] == "image"
    assert result["num_frames"] == DRIVING_FRAMES and (result["width"], result["height"]) == (SIDE, SIDE)
    assert result["faces_found"] == 1 and result["face_index"] == 0
    frames, audio, rate = decoded(result["video"]["uri"])
    assert len(frames) == DRIVING_FRAMES
    portrait = cv2.imread(str(media["portrait"]))
    change = np.abs(frames[0].astype(int) - portrait.astype(int))
    box = load_face_analyzer().detect(portrait)[0]
    face = change[box.y1 : box.y2, box.x1 : box.x2].mean()
    assert change[:16, :16].mean() < 10 and face > 2 * change[:16, :16].mean()  # the face re-rendered, pasted back
    assert audio is not None and abs(dominant_hz(audio, rate) - 440) < 40


def test_a_motion_template_drives_with_audio_and_no_paste_back(
    lp_runtime: WorkerRuntime, media: dict[str, Path], tmp_path: Path
) -> None:
    save_motion(tmp_path / "motion.npz", motion(2, seed=3))  # what tools.convert_motion_template writes
    options = {"paste_back": False, "relative_motion": False, "animation_region": "exp"}
    payload = request(media, audio=media["speech"].as_uri(), driving_options=options)
    result = dispatch({**payload, "driving_video": (tmp_path / "motion.npz").as_uri()}, lp_runtime)
    assert "error" not in result, result
    assert result["engine"]["driving"] == "motion_template"
    assert result["num_frames"] == 2 and (result["width"], result["height"]) == (256, 256)  # the 2x input crop
    frames, audio, rate = decoded(result["video"]["uri"])
    assert len(frames) == 2 and audio is not None
    assert abs(dominant_hz(audio, rate) - 220) < 60
    assert len(audio) < 0.25 * rate  # 0.5 s of speech cut to the 0.08 s video (AAC adds a little padding)


def test_a_stored_avatar_is_a_source_video(lp_runtime: WorkerRuntime, media: dict[str, Path], tmp_path: Path) -> None:
    analyzer = load_face_analyzer()
    frames, _ = head_motion(2, 25.0, SIDE)
    writer = AvatarWriter(tmp_path / "a1")
    boxes, landmarks = [], []
    for i, frame in enumerate(frames):
        box = analyzer.detect(frame)[0]
        landmarks.append(analyzer.landmarks(frame, box))
        boxes.append((box.y1, box.y2, box.x1, box.x2))
        writer.write_frame(i, frame, cv2.resize(frame[box.y1 : box.y2, box.x1 : box.x2], (96, 96)))
    writer.write_tables(boxes, np.array(landmarks))
    store = Path(lp_runtime.settings.avatar_store_uri.removeprefix("file://"))
    (store / "avatars" / USER).mkdir(parents=True)
    pack_avatar(writer.path, store / "avatars" / USER / "a1.tar")
    payload = request(media, audio=media["speech"].as_uri())
    del payload["image"]
    result = dispatch({**payload, "avatar_id": "a1"}, lp_runtime)
    assert "error" not in result, result
    assert result["engine"]["source"] == "avatar"
    assert result["num_frames"] == 2  # the shorter of the avatar (2) and the driving video (3), as upstream's v2v


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"text": "Hello."}, "give `audio` to replace its sound, not `text`"),
        ({"engine": "wav2lip96"}, "rendered by LivePortrait"),
        ({"engine": "d-id"}, "rendered by LivePortrait"),
        ({"stream": True}, "not offered with `driving_video`"),
        ({"driving_options": {"animation_region": "nose"}}, "animation_region"),
        ({"driving_options": {"flag_stitching": True}}, "unknown field"),
    ],
)
def test_combinations_that_make_no_sense_are_refused(
    runtime: WorkerRuntime, media: dict[str, Path], fields: dict[str, object], message: str
) -> None:
    result = dispatch(request(media, **fields), runtime)
    assert result["error_code"] == "invalid_input" and message in result["error"], result


def test_driving_options_need_a_driving_video(runtime: WorkerRuntime, media: dict[str, Path]) -> None:
    payload = request(media, text="Hi.", driving_options={})
    del payload["driving_video"]
    result = dispatch(payload, runtime)
    assert result["error_code"] == "invalid_input" and "need a `driving_video`" in result["error"]


def test_missing_weights_and_video_limits_are_refused(
    runtime: WorkerRuntime, lp_runtime: WorkerRuntime, media: dict[str, Path]
) -> None:
    result = dispatch(request(media), runtime)
    assert result["error_code"] == "engine_unavailable" and "fetch-weights liveportrait" in result["error"]
    short = lp_runtime.with_settings(lp_runtime.settings.model_copy(update={"max_video_seconds": 0.05}))
    result = dispatch(request(media), short)
    assert result["error_code"] == "video_too_long" and "`driving_video`" in result["error"], result
    assert "MAX_VIDEO_SECONDS" in result["error"]
    small = lp_runtime.with_settings(lp_runtime.settings.model_copy(update={"max_video_bytes": 1000}))
    result = dispatch(request(media), small)
    assert result["error_code"] == "video_too_large" and "`driving_video`" in result["error"], result
