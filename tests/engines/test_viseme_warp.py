"""The CPU lip-sync engine: viseme tracks, the landmark warp, rendering rules, portrait avatars, frame cache."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.errors import EngineError
from engines.face import FaceAnalyzer, load_face_analyzer
from engines.lipsync import AvatarFrames, DrivingAudio, pingpong_index
from engines.lipsync.frame_cache import FrameCache, LazyFrames
from engines.lipsync.piecewise_affine import border_anchors, displacement_fields
from engines.lipsync.portrait_avatar import BLINK_CLOSURE, blink_schedule, build_portrait_avatar
from engines.lipsync.viseme_warp import VisemeWarpEngine, WarpCache, mouth_track
from engines.lipsync.visemes import (
    OPEN,
    ROUND,
    SPREAD,
    mouth_track_from_audio,
    mouth_track_from_phonemes,
    viseme_of,
)
from engines.lipsync.warp import prepare_mouth_warp, render_mouth
from engines.tts import Phoneme
from tests.media import astronaut_bgr, head_motion, tone

SR = 16000
CROP = (slice(70, 326), slice(208, 464))  # 256 x 256 around the face of the 768-px astronaut


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return load_face_analyzer()


@pytest.fixture(scope="module")
def avatar(analyzer: FaceAnalyzer) -> AvatarFrames:
    moving, _ = head_motion(6, 25.0, 768)
    frames = [np.ascontiguousarray(f[CROP]) for f in moving]
    boxes = [analyzer.detect(f)[0] for f in frames]
    landmarks = np.array([analyzer.landmarks(f, b) for f, b in zip(frames, boxes, strict=True)], dtype=np.float32)
    coords = [(b.y1, b.y2, b.x1, b.x2) for b in boxes]
    return AvatarFrames(frames=frames, coords=coords, landmarks=landmarks)


def inner_lip_gap(landmarks: np.ndarray) -> float:
    return float(np.linalg.norm(landmarks[66] - landmarks[62]) / np.linalg.norm(landmarks[16] - landmarks[0]))


def bursts(seconds: float, loud: list[tuple[float, float]], freq: float = 220.0) -> np.ndarray:
    """Silence with tone bursts over the (start, end) intervals."""
    audio = np.zeros(int(seconds * SR), dtype=np.float32)
    signal = tone(seconds, SR, freq)
    for start, end in loud:
        audio[int(start * SR) : int(end * SR)] = signal[int(start * SR) : int(end * SR)]
    return audio


# ---- visemes -----------------------------------------------------------------------------------


MNEMONICS = {
    "p": "closed",
    "m": "closed",
    "f": "labiodental",
    "'oU": "rounded",
    ",aU": "open",
    "tS": "postalveolar",
    "'i:": "spread",
    "u:": "close_rounded",
    "_": "rest",
    "_:": "rest",
    "@2": "mid",
    "r-": "approximant_r",
    "Q?": "mid",  # unknown: a neutral half-open mouth
}


@pytest.mark.parametrize(("symbol", "viseme"), MNEMONICS.items())
def test_espeak_mnemonics_map_to_visemes(symbol: str, viseme: str) -> None:
    assert viseme_of(symbol) == viseme


def test_silence_is_a_closed_mouth() -> None:
    silent = np.zeros(SR, dtype=np.float32)
    assert not mouth_track_from_audio(silent, 25).any()
    phonemes = [Phoneme("'a", 0.0, 0.5), Phoneme("u:", 0.5, 1.0)]
    assert not mouth_track_from_phonemes(phonemes, silent, 25).any()
    faint = (np.random.default_rng(0).standard_normal(SR) * 1e-4).astype(np.float32)  # -80 dBFS hiss
    assert not mouth_track_from_audio(faint, 25).any()


def test_phonemes_shape_the_mouth() -> None:
    audio = tone(1.6, SR)
    phonemes = [Phoneme("m", 0.0, 0.4), Phoneme("'a", 0.4, 0.8), Phoneme("u:", 0.8, 1.2), Phoneme("'i:", 1.2, 1.6)]
    track = mouth_track_from_phonemes(phonemes, audio, 40)
    assert track[:7, OPEN].max() < 0.15  # m: lips closed although the sound is loud
    assert track[13:19, OPEN].min() > 0.6  # a: open
    assert track[24:29, ROUND].mean() > 0.6 > track[24:29, SPREAD].mean()  # u: rounded
    assert track[34:40, SPREAD].mean() > 0.6 > track[34:40, ROUND].mean()  # i: spread
    assert np.all(np.abs(np.diff(track[:, OPEN])) < 0.6)  # coarticulation: no jumps


def test_audio_alone_opens_with_loudness_and_reads_spectral_shape() -> None:
    audio = bursts(1.2, [(0.0, 0.4), (0.8, 1.2)])
    track = mouth_track_from_audio(audio, 30)
    assert track[2:8, OPEN].min() > 0.5 and track[14:16, OPEN].max() == 0.0 and track[22:28, OPEN].min() > 0.5
    low = mouth_track_from_audio(tone(0.8, SR, 200.0), 20)
    hiss = np.random.default_rng(1).standard_normal(int(0.8 * SR))
    high = cv2.filter2D(hiss.astype(np.float32)[:, None], -1, np.array([[1.0], [-1.0]])).ravel() * 0.2  # brighter
    bright = mouth_track_from_audio(high, 20)
    assert low[5:15, ROUND].mean() > 0.3 and low[5:15, SPREAD].mean() < 0.05
    assert bright[5:15, SPREAD].mean() > 0.3 and bright[5:15, ROUND].mean() < 0.05


# ---- warp ------------------------------------------------------------------------------------------


def test_displacement_fields_are_the_piecewise_linear_interpolation() -> None:
    from scipy.spatial import Delaunay

    rng = np.random.default_rng(0)
    points = np.concatenate([rng.random((40, 2)) * [100, 80], border_anchors(100, 80, 10.0)])
    moves = rng.normal(size=(3, len(points), 2)).astype(np.float32)
    fields = displacement_fields(points, moves, (100, 80), (50, 40))
    tri = Delaunay(points)
    gx, gy = (np.arange(50) + 0.5) * 2 - 0.5, (np.arange(40) + 0.5) * 2 - 0.5
    samples = np.stack(np.meshgrid(gx, gy), axis=-1).reshape(-1, 2)
    simplex = tri.find_simplex(samples)
    transform = tri.transform[simplex]
    partial = np.einsum("nij,nj->ni", transform[:, :2], samples - transform[:, 2])
    bary = np.concatenate([partial, 1 - partial.sum(axis=1, keepdims=True)], axis=1)
    expected = np.einsum("nj,knjc->knc", bary, moves[:, tri.simplices[simplex]]).reshape(3, 40, 50, 2)
    np.testing.assert_allclose(fields, expected, atol=1e-4)


def test_opening_the_mouth_is_seen_by_the_face_analyzer(avatar: AvatarFrames, analyzer: FaceAnalyzer) -> None:
    frame, landmarks = avatar.frames[0], avatar.landmarks[0]
    warp = prepare_mouth_warp(frame, landmarks)
    gaps, chins = [], []
    for amount in (0.0, 0.25, 0.5, 1.0):
        out = render_mouth(frame, warp, np.array([amount, 0.0, 0.0], dtype=np.float32))
        seen = analyzer.landmarks(out, analyzer.detect(out)[0])
        gaps.append(inner_lip_gap(seen))
        chins.append(float(np.linalg.norm(seen[8] - seen[27])))
    # The lip gap as the analyzer sees it (its model saturates on very wide mouths), and the jaw drop.
    assert gaps[0] + 0.03 < gaps[1] and gaps[1] + 0.03 < gaps[2]
    assert chins[0] < chins[1] < chins[2] < chins[3]


def test_render_changes_only_the_lower_face(avatar: AvatarFrames, analyzer: FaceAnalyzer) -> None:
    audio = bursts(1.0, [(0.2, 0.7)])
    frames = list(VisemeWarpEngine(analyzer).render(avatar, DrivingAudio(audio)))
    track = mouth_track(DrivingAudio(audio))
    assert len(frames) == 25
    for i, frame in enumerate(frames):
        k = pingpong_index(i, len(avatar))
        source, landmarks = avatar.frames[k], avatar.landmarks[k]
        nose = int(landmarks[30, 1])
        assert np.array_equal(frame[:nose], source[:nose])  # above the nose tip: the source pixels exactly
        if not track[i].any():
            assert np.array_equal(frame, source)  # silence: the avatar's own frame
    mouth = (slice(int(avatar.landmarks[3][51, 1]) - 5, int(avatar.landmarks[3][57, 1]) + 15), CROP[1])
    loud = frames[10]
    assert np.abs(loud[mouth[0]].astype(int) - avatar.frames[pingpong_index(10, 6)][mouth[0]]).mean() > 3.0
    seam = cv2.Laplacian(cv2.cvtColor(loud, cv2.COLOR_BGR2GRAY), cv2.CV_32F)
    reference = cv2.Laplacian(cv2.cvtColor(avatar.frames[pingpong_index(10, 6)], cv2.COLOR_BGR2GRAY), cv2.CV_32F)
    assert np.abs(seam).max() <= np.abs(reference).max() * 1.5  # no hard edges pasted in


def test_landmarks_are_computed_when_the_avatar_has_none(avatar: AvatarFrames, analyzer: FaceAnalyzer) -> None:
    bare = AvatarFrames(frames=avatar.frames, coords=avatar.coords, landmarks=None)
    audio = DrivingAudio(bursts(0.4, [(0.0, 0.4)]))
    frames = list(VisemeWarpEngine(analyzer).render(bare, audio))
    assert len(frames) == 10
    k = pingpong_index(5, len(avatar))
    nose = int(avatar.landmarks[k][30, 1])
    assert np.array_equal(frames[5][:nose], avatar.frames[k][:nose])
    assert np.abs(frames[5].astype(int) - avatar.frames[k]).mean() > 0.2


def test_warp_cache_is_bounded_by_bytes(avatar: AvatarFrames) -> None:
    warps = [prepare_mouth_warp(f, lm) for f, lm in zip(avatar.frames, avatar.landmarks, strict=True)]
    cache = WarpCache(max_bytes=int(2.5 * warps[0].nbytes))
    calls = []
    for i, warp in enumerate(warps):
        cache.get(("a", i), lambda w=warp: calls.append(1) or w)
    assert len(cache) == 2 and len(calls) == len(warps)
    cache.get(("a", 5), lambda: calls.append(1) or warps[5])  # still cached: not rebuilt
    assert len(calls) == len(warps)


# ---- portrait avatars -----------------------------------------------------------------------------


def test_blinks_are_scheduled_every_few_seconds() -> None:
    closure = blink_schedule(250)
    starts = [i for i in range(1, 250) if closure[i] > 0 and closure[i - 1] == 0]
    assert starts == [25, 110, 195]
    assert list(closure[25 : 25 + len(BLINK_CLOSURE)]) == pytest.approx(BLINK_CLOSURE)


def test_portrait_avatar_sways_and_blinks(analyzer: FaceAnalyzer) -> None:
    image = np.ascontiguousarray(astronaut_bgr(768)[40:360, 176:496])
    portrait = build_portrait_avatar(image, analyzer, seconds=1.4)
    assert len(portrait) == 35 and portrait.landmarks.shape == (35, 68, 2)
    open_eyes, shut_eyes = portrait.frames[10], portrait.frames[28]  # frame 28: the middle of the first blink
    assert not np.array_equal(portrait.frames[0], portrait.frames[20])  # idle motion

    def eyes(frame: np.ndarray) -> float:
        lm = analyzer.landmarks(frame, analyzer.detect(frame)[0])
        return float(np.linalg.norm(lm[37] - lm[41]) + np.linalg.norm(lm[44] - lm[46]))

    assert eyes(shut_eyes) < 0.7 * eyes(open_eyes)
    stored = portrait.landmarks[28]
    assert np.linalg.norm(stored[37] - stored[41]) < 0.5  # the stored landmarks follow the closed lids


def test_portrait_without_a_face_is_refused(analyzer: FaceAnalyzer) -> None:
    with pytest.raises(EngineError) as err:
        build_portrait_avatar(np.full((200, 200, 3), 128, np.uint8), analyzer)
    assert err.value.code == "no_face"


# ---- frame cache -------------------------------------------------------------------------------------


def test_frame_cache_decodes_once_evicts_by_bytes_and_sees_changes(tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i:08d}.png")
        cv2.imwrite(str(paths[-1]), np.full((20, 30, 3), 40 * i, np.uint8))
    cache = FrameCache(max_bytes=2 * 20 * 30 * 3)
    frames = LazyFrames(paths, cache)
    first = frames[1]
    assert first[0, 0, 0] == 40 and not first.flags.writeable
    assert frames[1] is first and (cache.hits, cache.misses) == (1, 1)
    frames[0], frames[2]
    assert len(cache) == 2 and cache.nbytes == 2 * 1800  # frame 1 was evicted
    cv2.imwrite(str(paths[2]), np.full((20, 30, 3), 7, np.uint8))
    os.utime(paths[2], ns=(0, 10**9))  # a new modification time: a replaced avatar
    assert frames[2][0, 0, 0] == 7
    paths[0].unlink()
    with pytest.raises(EngineError) as err:
        frames[0]
    assert err.value.code == "invalid_avatar"
