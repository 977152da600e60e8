"""Wav2Lip in-process: checkpoint layout and strict loading, BatchNorm folding, mel features, rendering."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.context import EngineContext
from engines.errors import EngineError
from engines.lipsync import LIPSYNC_ENGINES, DrivingAudio, pingpong_index
from engines.lipsync.wav2lip import build_model, fold_batchnorm, load_wav2lip, mel_window_starts, melspectrogram
from engines.lipsync.wav2lip.audio import mel_filterbank, mel_windows, window_rms
from engines.lipsync.wav2lip.engine import BLEND_TOP, blend_mask
from tests.engines.wav2lip_fixtures import FACE_BOX_256, random_model, small_avatar, speech_like, write_checkpoint

LAYOUT = json.loads((Path(__file__).parent / "wav2lip_state_dict_layout.json").read_text())
LAYOUT_NAMES = {"wav2lip96": "wav2lip_96", "wav2lip256": "wav2lip_256_livetalking"}


@pytest.fixture(scope="module")
def checkpoint96(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("w96") / "wav2lip_gan.pth"
    return write_checkpoint(path, "wav2lip96", prefix="module.", legacy=True)  # like the 2020 files


# ---- model layout and loading -------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["wav2lip96", "wav2lip256"])
def test_state_dict_matches_the_published_layout(variant: str) -> None:
    with torch.device("meta"):
        model = build_model(variant)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    reference = LAYOUT[LAYOUT_NAMES[variant]]
    assert set(shapes) == set(reference)
    assert shapes == reference


@pytest.mark.parametrize(("variant", "prefix", "official"), [("wav2lip96", "", True), ("wav2lip256", "module.", True)])
def test_official_checkpoint_loads_strictly_and_infers_variant(
    tmp_path: Path, variant: str, prefix: str, official: bool
) -> None:
    path = write_checkpoint(tmp_path / "ckpt.pth", variant, prefix=prefix, official=official, seed=3)
    model = load_wav2lip(path)  # variant inferred from the keys
    assert model.variant == variant
    expected = random_model(variant, seed=3).state_dict()
    loaded = model.state_dict()
    assert set(loaded) == set(expected)
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_module_prefix_and_bare_state_dict(checkpoint96: Path, tmp_path: Path) -> None:
    bare = write_checkpoint(tmp_path / "bare.pth", "wav2lip96", prefix="", official=False)
    a, b = load_wav2lip(checkpoint96, "wav2lip96"), load_wav2lip(bare, "wav2lip96")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_wrong_variant_names_missing_and_unexpected_keys(checkpoint96: Path) -> None:
    with pytest.raises(EngineError) as err:
        load_wav2lip(checkpoint96, "wav2lip256")
    assert err.value.code == "invalid_checkpoint"
    assert "missing keys" in err.value.message and "face_encoder_blocks.7.0" in err.value.message
    assert "wrong shapes" in err.value.message and "more" in err.value.message


def test_missing_and_extra_keys_are_counted(tmp_path: Path) -> None:
    state = random_model("wav2lip96").state_dict()
    del state["output_block.1.bias"]
    state["discriminator.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "odd.pth")
    with pytest.raises(EngineError) as err:
        load_wav2lip(tmp_path / "odd.pth", "wav2lip96")
    assert err.value.code == "invalid_checkpoint"
    assert "1 missing keys (output_block.1.bias)" in err.value.message
    assert "1 unexpected keys (discriminator.weight)" in err.value.message


def test_corrupt_and_unsafe_files_are_invalid_checkpoints(tmp_path: Path) -> None:
    (tmp_path / "noise.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "code.pth").write_bytes(pickle.dumps({"state_dict": {"x": Path("/etc")}}, protocol=2))
    for name in ("noise.pth", "code.pth"):
        with pytest.raises(EngineError) as err:
            load_wav2lip(tmp_path / name)
        assert err.value.code == "invalid_checkpoint", name
    with pytest.raises(EngineError) as err:
        load_wav2lip(tmp_path / "absent.pth")
    assert err.value.code == "weights_missing"


@pytest.mark.parametrize(("variant", "batch"), [("wav2lip96", 2), ("wav2lip256", 1)])
def test_batchnorm_folding_keeps_outputs(variant: str, batch: int) -> None:
    model = random_model(variant, seed=1)
    size = model.img_size
    gen = torch.Generator().manual_seed(0)
    mel = torch.rand(batch, 1, 80, 16, generator=gen) * 8 - 4
    face = torch.rand(batch, 6, size, size, generator=gen)
    with torch.inference_mode():
        reference = model(mel, face)
        folded = fold_batchnorm(copy.deepcopy(model))
        output = folded(mel, face)
    assert reference.shape == (batch, 3, size, size)
    assert float(reference.min()) >= 0.0 and float(reference.max()) <= 1.0
    assert float(reference.std()) > 1e-3  # not saturated: the comparison means something
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert float((output - reference).abs().max()) <= 1e-4


class _OpensAFile:
    """Unpickling this calls ``open(path, "w")``: what a hostile checkpoint does with arbitrary code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.path), "w")


def test_a_checkpoint_that_runs_code_is_refused_unrun(tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    state = random_model("wav2lip96").state_dict()
    torch.save({"state_dict": state, "optimizer": _OpensAFile(marker)}, tmp_path / "hostile.pth")
    with pytest.raises(EngineError) as err:
        load_wav2lip(tmp_path / "hostile.pth", "wav2lip96")
    assert err.value.code == "invalid_checkpoint"
    assert not marker.exists()  # weights_only: the pickled call was never made


# ---- audio features -----------------------------------------------------------------------------


def test_mel_filterbank_matches_librosa_slaney() -> None:
    # Reference values from librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600).
    bank = mel_filterbank()
    assert bank.shape == (80, 401)
    peaks = {0: (5, 0.020812449976801872), 10: (23, 0.020395714789628983), 79: (366, 0.00363533990457654)}
    for band, (column, value) in peaks.items():
        assert int(np.argmax(bank[band])) == column
        assert bank[band, column] == pytest.approx(value, rel=1e-5)
    assert bank[0, 3] == pytest.approx(0.0038695919793099165, rel=1e-5)
    assert bank[0, 2] == 0.0


def test_melspectrogram_values_shape_and_range() -> None:
    t = np.arange(16000) / 16000
    sine = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    mel = melspectrogram(sine)
    assert mel.shape == (80, 81) and mel.dtype == np.float32
    assert mel.min() >= -4.0 and mel.max() <= 4.0
    # librosa-based reference (pre-emphasis, reflect-padded STFT, slaney mel, dB, [-4, 4]) at column 40.
    for band, value in {24: 1.04944962146602, 25: 2.5503499522717776, 26: 2.1533696067238655, 27: -4.0}.items():
        assert mel[band, 40] == pytest.approx(value, abs=1e-3)
    assert np.all(melspectrogram(np.zeros(3200, np.float32)) == -4.0)


def test_frame_to_mel_window_mapping() -> None:
    # 1 s at 16 kHz: 81 columns; frame i starts at int(i * 3.2); the last window ends at the last column.
    starts = mel_window_starts(81, 25.0)
    assert starts == [int(i * 80 / 25) for i in range(21)] + [65]
    assert len(starts) == 22
    assert mel_window_starts(81, 25.0, num_frames=25)[-5:] == [64, 65, 65, 65, 65]
    mel = np.arange(80 * 81, dtype=np.float32).reshape(80, 81)
    windows = mel_windows(mel, [0, 3, 65])
    assert windows.shape == (3, 1, 80, 16)
    assert np.array_equal(windows[1, 0], mel[:, 3:19]) and np.array_equal(windows[2, 0], mel[:, 65:81])
    short = mel_windows(mel[:, :5], [0])  # under 16 columns: padded with silence
    assert short.shape == (1, 1, 80, 16) and np.all(short[0, 0, :, 5:] == -4.0)


def test_window_rms_marks_silence() -> None:
    audio = speech_like(0.6, silence_s=0.6)
    starts = mel_window_starts(melspectrogram(audio).shape[1], 25.0, DrivingAudio(audio).num_frames)
    rms = window_rms(audio, starts)
    assert np.all(rms[:10] == 0.0) and np.all(rms[16:] > 0.01)


# ---- rendering ----------------------------------------------------------------------------------


def test_blend_mask_is_feathered() -> None:
    mask = blend_mask(64, 62)
    assert mask.min() == 0.0 and mask.max() == 1.0
    assert np.all(mask[: int(64 * BLEND_TOP)] == 0.0)  # eyes and above stay original
    assert np.all(mask[-1] == 0.0) and np.all(mask[:, 0] == 0.0) and np.all(mask[:, -1] == 0.0)
    assert np.all(np.abs(np.diff(mask, axis=0)) <= 0.5) and np.all(np.abs(np.diff(mask, axis=1)) <= 0.5)


@pytest.mark.parametrize("with_crops", [True, False])
def test_wav2lip96_renders_speech_and_skips_silence(checkpoint96: Path, with_crops: bool) -> None:
    engine = LIPSYNC_ENGINES["wav2lip96"].load(checkpoint96, EngineContext("cpu", options={"batch_size": 8}))
    avatar = small_avatar(frames=6, with_crops=with_crops, crop_size=256)  # 256-px crops for the 96 model
    audio = DrivingAudio(speech_like(0.6, silence_s=0.6))
    frames = list(engine.render(avatar, audio))
    assert len(frames) == audio.num_frames == 30
    y1, y2, x1, x2 = FACE_BOX_256
    for i, frame in enumerate(frames):
        source = avatar.frames[pingpong_index(i, len(avatar))]
        assert frame.shape == source.shape and frame.dtype == np.uint8
        diff = np.abs(frame.astype(int) - source.astype(int))
        if i <= 10:  # windows [3.2 i, 3.2 i + 16) mel columns lie within the 0.6 s silence: original frame
            assert np.array_equal(frame, source), i
            continue
        outside = diff.copy()
        outside[y1:y2, x1:x2] = 0
        assert outside.max() == 0  # nothing changes outside the face box
        assert diff[y1 : y1 + int((y2 - y1) * BLEND_TOP)].max() == 0  # upper face untouched
        assert diff[y1:y2, x1:x2].mean() > 1.0  # the mouth region was generated
        edge = np.concatenate([diff[y1:y2, x1], diff[y1:y2, x2 - 1], diff[y2 - 1, x1:x2]])
        assert edge.max() <= 1  # feathered: no seam at the box edge


def test_wav2lip256_one_small_batch(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "wav2lip256.pth", "wav2lip256")
    engine = LIPSYNC_ENGINES["wav2lip256"].load(path, EngineContext("cpu", options={"batch_size": 2}))
    avatar = small_avatar(frames=2, crop_size=96)  # a 96-px avatar is resized up for the 256 model
    frames = list(engine.render(avatar, DrivingAudio(speech_like(0.08))))
    assert len(frames) == 2
    assert not np.array_equal(frames[0], avatar.frames[0])


def test_engine_refuses_the_other_variant(checkpoint96: Path) -> None:
    with pytest.raises(EngineError) as err:
        LIPSYNC_ENGINES["wav2lip256"].load(checkpoint96, EngineContext("cpu"))
    assert err.value.code == "invalid_checkpoint"


@pytest.mark.cuda
@pytest.mark.parametrize("variant", ["wav2lip96", "wav2lip256"])
def test_cuda_fp16_matches_cpu_fp32(variant: str, tmp_path: Path) -> None:
    """auto on CUDA is fp16 (on a CPU, fp16 stays within 1 level of fp32 on these weights)."""
    path = write_checkpoint(tmp_path / f"{variant}.pth", variant)
    fp16 = LIPSYNC_ENGINES[variant].load(path, EngineContext("cuda", "auto"))
    fp32 = LIPSYNC_ENGINES[variant].load(path, EngineContext("cpu", "fp32"))
    assert fp16.dtype == torch.float16 and fp16.device.type == "cuda" and fp16.batch_size == 64
    size = fp16.model.img_size
    rng = np.random.default_rng(0)
    windows = rng.uniform(-4, 4, (4, 1, 80, 16)).astype(np.float32)
    faces = rng.integers(0, 256, (4, size, size, 6), dtype=np.uint8)
    diff = np.abs(fp16.generate(windows, faces).astype(int) - fp32.generate(windows, faces).astype(int))
    assert diff.max() <= 4 and diff.mean() < 0.5


@pytest.mark.cuda
def test_cuda_auto_precision_is_fp16_and_renders(checkpoint96: Path) -> None:
    engine = LIPSYNC_ENGINES["wav2lip96"].load(checkpoint96, EngineContext("cuda"))
    assert engine.device.type == "cuda" and engine.dtype == torch.float16
    avatar = small_avatar(frames=4, crop_size=256)
    frames = list(engine.render(avatar, DrivingAudio(speech_like(0.4))))
    assert len(frames) == 10 and not np.array_equal(frames[-1], avatar.frames[pingpong_index(9, 4)])


def test_cpu_auto_precision_stays_within_tolerance(checkpoint96: Path) -> None:
    auto = LIPSYNC_ENGINES["wav2lip96"].load(checkpoint96, EngineContext("cpu", "auto"))
    if auto.dtype == torch.float32:
        pytest.skip("this CPU has no native bf16: auto precision is fp32")
    fp32 = LIPSYNC_ENGINES["wav2lip96"].load(checkpoint96, EngineContext("cpu", "fp32"))
    rng = np.random.default_rng(1)
    windows = rng.uniform(-4, 4, (8, 1, 80, 16)).astype(np.float32)
    faces = rng.integers(0, 256, (8, 96, 96, 6), dtype=np.uint8)
    diff = np.abs(auto.generate(windows, faces).astype(int) - fp32.generate(windows, faces).astype(int))
    assert diff.max() <= 3 and diff.mean() <= 0.6  # 8-bit levels
