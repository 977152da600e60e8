"""SadTalker in-process: layout, strict loading of the official files, the public API, precision.

Random weights in the official layout (``SadTalker_V0.0.2_{256,512}.safetensors`` + both mapping files) are
written once per session (conftest). Renders run at 128 px: the same modules and code paths as 256 at a
quarter of the cost. The numbers themselves were compared with upstream's own modules outside the test suite
(README, "SadTalker (in-process)").
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engines.errors import EngineError
from engines.sadtalker import SadTalker, load_sadtalker
from engines.sadtalker.audio import blink_ratios, mel_windows, smooth_poses
from engines.sadtalker.loader import (
    MAPPING_FILES,
    PARTS,
    check_part,
    expected_shapes,
    load_mapping,
    load_modules,
    split_flat_state,
)
from engines.sadtalker.model import coefficient_windows, driving_rows, pose_degrees, rotation
from engines.sadtalker.random_weights import random_flat_state, random_mapping_state
from tests.engines.conftest import SADTALKER_SEED

LAYOUT = json.loads((Path(__file__).parent / "sadtalker_state_dict_layout.json").read_text())


@pytest.fixture(scope="module")
def st(sadtalker_root: Path) -> SadTalker:
    return load_sadtalker(sadtalker_root, 256, precision="fp32", device="cpu")


@pytest.fixture(scope="module")
def flat() -> dict[str, torch.Tensor]:
    return random_flat_state(SADTALKER_SEED)


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def speech(seconds: float) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)


# ---- layout and loading --------------------------------------------------------------------------


@pytest.mark.parametrize("part", list(LAYOUT))
def test_modules_match_upstreams_layout_key_for_key(part: str) -> None:
    """The layout JSON was taken from upstream's own modules (facerender.yaml, auido2pose.yaml configs)."""
    reference = {k: tuple(v) for k, v in LAYOUT[part].items()}
    ours = dict(expected_shapes(part))
    if part == "audio2pose":  # the file's training-only entries are recognised, checked and dropped
        ours |= expected_shapes("training_only")
    assert ours == reference


def test_official_files_load_strictly_with_every_tensor(sadtalker_root: Path, flat: dict) -> None:
    modules = load_modules(sadtalker_root, 512)  # the 512 file: same layout, its own file
    assert set(modules) == {p.name for p in PARTS} | {"mapping70", "mapping73"}
    for part in PARTS:
        loaded = modules[part.name].state_dict()
        expected = {k.removeprefix(f"{part.name}."): v for k, v in flat.items() if k.startswith(f"{part.name}.")}
        assert set(loaded) < set(expected) or set(loaded) == set(expected)
        assert all(torch.equal(loaded[k], expected[k]) for k in loaded), part.name
    for coeff_nc in MAPPING_FILES:
        mapping = modules[f"mapping{coeff_nc}"].state_dict()
        assert all(torch.equal(v, random_mapping_state(coeff_nc, SADTALKER_SEED)[k]) for k, v in mapping.items())


def test_training_only_entries_are_recognised_checked_and_dropped(flat: dict) -> None:
    states = split_flat_state(flat, Path("x.safetensors"))
    kept = check_part("audio2pose", states["audio2pose"], Path("x"))
    assert not any(k.startswith(("netG.encoder.", "netD_motion.")) for k in kept)
    assert any(k.startswith("netD_motion.") for k in states["audio2pose"])
    without = {k: v for k, v in states["audio2pose"].items() if not k.startswith("netD_motion.")}
    assert check_part("audio2pose", without, Path("x")).keys() == kept.keys()  # optional, not required
    bad = dict(states["audio2pose"]) | {"netD_motion.seq.0.conv.weight": torch.zeros(3, 3)}
    with pytest.raises(EngineError, match="netD_motion.seq.0.conv.weight") as wrong:
        check_part("audio2pose", bad, Path("x"))
    assert wrong.value.code == "invalid_checkpoint"
    unknown = dict(states["audio2pose"]) | {"netD_motion.extra": torch.zeros(1)}
    with pytest.raises(EngineError, match="netD_motion.extra"):
        check_part("audio2pose", unknown, Path("x"))


def test_missing_extra_and_misshaped_keys_are_refused(flat: dict) -> None:
    states = split_flat_state(flat, Path("x.safetensors"))
    generator = states["generator"]
    missing = {k: v for k, v in generator.items() if k != "decoder.conv_img.weight"}
    extra = generator | {"decoder.conv_img.extra": torch.zeros(1)}
    misshaped = generator | {"decoder.conv_img.weight": torch.zeros(12, 64, 3, 3)}
    for state, key in ((missing, "missing"), (extra, "unexpected"), (misshaped, "wrong shapes")):
        with pytest.raises(EngineError, match=key) as refused:
            check_part("generator", state, Path("x"))
        assert refused.value.code == "invalid_checkpoint"
    with pytest.raises(EngineError, match="he_estimator.fc_yaw.weight") as stray:
        split_flat_state(flat | {"he_estimator.fc_yaw.weight": torch.zeros(1)}, Path("x"))
    assert stray.value.code == "invalid_checkpoint"


def test_a_flat_file_with_foreign_keys_is_refused_before_building(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    save_file({"model.layer.weight": torch.zeros(2)}, str(folder / "SadTalker_V0.0.2_256.safetensors"))
    with pytest.raises(EngineError, match="model.layer.weight") as refused:
        load_modules(tmp_path, 256)
    assert refused.value.code == "invalid_checkpoint"


def test_mapping_files_are_read_without_pickle_objects(sadtalker_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    name = MAPPING_FILES[70]
    state = random_mapping_state(70, SADTALKER_SEED)
    torch.save({"mapping": state | {"fc_t.bias": torch.zeros(4)}, "epoch": 1}, folder / name)
    with pytest.raises(EngineError, match=r"fc_t.bias \(4,\) != \(3,\)"):
        load_mapping(folder, 70)
    torch.save({"generator": state}, folder / name)
    with pytest.raises(EngineError, match="no 'mapping' state dict"):
        load_mapping(folder, 70)
    with open(folder / name, "wb") as f:  # a pickle that would run code: refused by weights_only
        pickle.dump({"mapping": state, "payload": Path("/etc")}, f)
    with pytest.raises(EngineError) as refused:
        load_mapping(folder, 70)
    assert refused.value.code == "invalid_checkpoint" and "readable checkpoint" in refused.value.message
    (folder / name).unlink()
    with pytest.raises(EngineError, match="fetch-weights sadtalker") as missing:
        load_mapping(folder, 70)
    assert missing.value.code == "weights_missing"
    shutil.copy(sadtalker_root / "checkpoints" / MAPPING_FILES[73], folder / name)  # the 73-column net
    with pytest.raises(EngineError, match="first.0.weight"):
        load_mapping(folder, 70)


def test_sizes_and_precisions_are_checked(sadtalker_root: Path) -> None:
    with pytest.raises(EngineError, match="256 or 512"):
        load_modules(sadtalker_root, 384)
    with pytest.raises(EngineError) as refused:
        load_sadtalker(sadtalker_root, precision="fp8")
    assert refused.value.code == "invalid_precision"


# ---- audio features ------------------------------------------------------------------------------


def test_audio_windows_follow_upstreams_frame_rule() -> None:
    wav = speech(1.0)
    windows = SadTalker.audio_windows(wav[: 640 * 7 + 639])
    assert windows.shape == (7, 80, 16) and windows.dtype == torch.float32  # T = int(len / 640)
    full = mel_windows(wav)
    assert full.shape == (25, 80, 16) and np.abs(full).max() <= 4.0
    # frame i's window starts at mel frame int(80 (i - 2) / 25): frames 0 and 1 start clamped at 0
    assert np.array_equal(full[0][:, :7], np.repeat(full[0][:, :1], 7, axis=1))  # indices -6..0 all clamp to 0
    assert np.array_equal(full[3][:, 3:], full[4][:, :-3])  # 80/25 = 3.2: consecutive windows shift 3 columns
    assert SadTalker.audio_windows(wav[:100]).shape == (0, 80, 16)


def test_blinks_are_upstreams_shape_and_seeded() -> None:
    ratio = blink_ratios(200, np.random.default_rng(0))
    assert np.array_equal(ratio, blink_ratios(200, np.random.default_rng(0)))
    starts = np.flatnonzero((ratio == 0.5) & (np.roll(ratio, -1) == 0.9))
    assert len(starts) >= 2 and all(np.allclose(ratio[s : s + 5], [0.5, 0.9, 1.0, 0.9, 0.5]) for s in starts)
    assert not blink_ratios(20, np.random.default_rng(0)).any()  # no blinks in clips of 20 frames or less


def test_pose_smoothing_keeps_lines_and_short_clips() -> None:
    line = np.linspace(0, 1, 30)[None, :, None].repeat(6, axis=2)
    assert np.allclose(smooth_poses(line), line, atol=1e-6)  # order 2 keeps polynomials
    assert np.array_equal(smooth_poses(line[:, :2]), line[:, :2].astype(np.float32))


# ---- the API ---------------------------------------------------------------------------------------


def test_coefficient_methods_shapes_and_determinism(st: SadTalker) -> None:
    coeffs = st.face_coeffs(rand(2, 3, 224, 224))
    assert coeffs.shape == (2, 257) and coeffs.dtype == torch.float32
    assert torch.equal(coeffs, st.face_coeffs(rand(2, 3, 224, 224)))
    assert torch.allclose(st.face_coeffs(rand(2, 3, 224, 224)[1:]), coeffs[1:], atol=1e-5)  # per sample

    windows = st.audio_windows(speech(1.5))[None]  # (1, 37, 80, 16)
    frames = windows.shape[1]
    ref = torch.randn(1, 70, generator=torch.Generator().manual_seed(2)) * 0.2
    ratio = torch.zeros(1, frames)
    exp = st.audio_to_exp(windows, ref, ratio)
    assert exp.shape == (1, frames, 64) and torch.equal(exp, st.audio_to_exp(windows, ref, ratio))
    per_frame = st.audio_to_exp(windows, ref[:, None].expand(1, frames, 70), ratio)
    assert torch.allclose(per_frame, exp, atol=1e-6)
    ratio[0, 5] = 1.0
    blinked = st.audio_to_exp(windows, ref, ratio)
    assert not torch.allclose(blinked[0, 5], exp[0, 5]) and torch.allclose(blinked[0, 6], exp[0, 6])

    assert st.pose_chunks(frames) == math.ceil((frames - 1) / 32) == 2
    noise = torch.randn(1, 2, 64, generator=torch.Generator().manual_seed(3))
    raw = st.audio_to_pose(windows, ref, 5, noise, smooth=False)
    assert raw.shape == (1, frames, 6) and torch.allclose(raw[0, 0], ref[0, 64:70])  # frame 0: the reference
    assert torch.equal(raw, st.audio_to_pose(windows, ref, 5, noise, smooth=False))
    assert not torch.allclose(raw, st.audio_to_pose(windows, ref, 5, noise * 2, smooth=False))
    assert not torch.allclose(raw, st.audio_to_pose(windows, ref, 6, noise, smooth=False))  # pose styles differ
    smoothed = st.audio_to_pose(windows, ref, 5, noise)
    assert np.allclose(smoothed.numpy(), smooth_poses(raw.numpy()), atol=1e-6)
    with pytest.raises(ValueError, match=r"noise must be \(1, 2, 64\)"):
        st.audio_to_pose(windows, ref, 5, noise[:, :1])
    with pytest.raises(ValueError, match="pose_style"):
        st.audio_to_pose(windows, ref, 46, noise)
    short = st.audio_to_pose(windows[:, :5], ref, 5, noise[:, :1], smooth=False)  # remainder chunk left-padded
    assert short.shape == (1, 5, 6)
    single = st.audio_to_pose(windows[:, :1], ref, 5, noise[:, :0])  # a one-frame utterance: the reference pose
    assert single.shape == (1, 1, 6) and torch.allclose(single[0, 0], ref[0, 64:70])


def test_face_render_methods(st: SadTalker) -> None:
    image = rand(1, 3, 128, 128, seed=4)
    kp = st.source_keypoints(image)
    assert kp.shape == (1, 15, 3) and kp.abs().max() <= 1.0
    for coeff_nc in (70, 73):
        he = st.mapping(torch.randn(2, coeff_nc, 27, generator=torch.Generator().manual_seed(coeff_nc)))
        assert {k: tuple(v.shape) for k, v in he.items()} == {
            "yaw": (2, 66), "pitch": (2, 66), "roll": (2, 66), "t": (2, 3), "exp": (2, 45)
        }  # fmt: skip
    with pytest.raises(ValueError, match="70 or 73"):
        st.mapping(torch.zeros(1, 64, 27))

    source = torch.randn(1, 70, generator=torch.Generator().manual_seed(5)) * 0.2
    rows = source.expand(3, -1) + 0.1 * torch.randn(3, 70, generator=torch.Generator().manual_seed(6))
    frames = st.render(image, source, rows)
    assert frames.shape == (3, 3, 128, 128) and frames.min() >= 0.0 and frames.max() <= 1.0
    assert torch.equal(frames, st.render(image, source, rows))  # deterministic (source state cached or not)
    st.batch_size = 1
    assert torch.allclose(st.render(image, source, rows), frames, atol=2e-4)  # batching changes nothing
    st.batch_size = 4
    still = st.render(image, source, rows, still=True)
    assert not torch.allclose(still, frames)
    full = st.render(image, torch.cat((source, torch.tensor([[100.0, 0.0, 0.0]])), 1), rows)  # mapping_00109
    assert full.shape == frames.shape and not torch.allclose(full, frames)


def test_render_inputs_follow_get_facerender_data() -> None:
    source = torch.arange(73.0)[None]
    rows = torch.ones(4, 70)
    driving = driving_rows(source, rows, still=False, expression_scale=2.0)
    assert driving.shape == (4, 73) and (driving[:, :64] == 2).all() and (driving[:, 64:70] == 1).all()
    assert torch.equal(driving[:, 70:], source[:, 70:].expand(4, -1))
    still = driving_rows(source[:, :70], rows, still=True, expression_scale=1.0)
    assert torch.equal(still[:, 64:], source[:, 64:70].expand(4, -1))
    windows = coefficient_windows(torch.arange(5.0)[:, None], range(5))
    assert windows.shape == (5, 1, 27)
    assert windows[0, 0, :14].eq(0).all() and windows[0, 0, 14:18].tolist() == [1, 2, 3, 4]
    assert windows[4, 0, 13:].eq(4).all()


def test_head_pose_is_the_bin_expectation_with_upstreams_constants() -> None:
    logits = torch.full((1, 66), -1e4)
    logits[0, 40] = 0.0
    assert pose_degrees(logits).item() == pytest.approx(40 * 3 - 99)
    yaw = torch.tensor([30.0])
    zero = torch.zeros(1)
    rot = rotation(yaw, zero, zero)[0]
    angle = 30 / 180 * 3.14  # upstream's 3.14
    assert torch.allclose(
        rot, torch.tensor([[math.cos(angle), 0, math.sin(angle)], [0, 1, 0], [-math.sin(angle), 0, math.cos(angle)]])
    )


def test_reduced_precision_and_folding_stay_close(sadtalker_root: Path, st: SadTalker) -> None:
    plain = load_sadtalker(sadtalker_root, 256, precision="fp32", device="cpu", optimize=False)
    bf16 = load_sadtalker(sadtalker_root, 256, precision="bf16", device="cpu")
    image = rand(1, 3, 128, 128, seed=7)
    source = torch.randn(1, 70, generator=torch.Generator().manual_seed(8)) * 0.2
    rows = source.expand(2, -1) + 0.05
    reference = plain.render(image, source, rows)
    assert (st.render(image, source, rows) - reference).abs().max() < 1e-3  # folded + frozen, fp32
    low = bf16.render(image, source, rows)
    assert bf16.info["precision"] == "bfloat16"
    diff = (low - reference).abs()
    assert diff.max() < 0.2 and diff.mean() < 0.02, (float(diff.max()), float(diff.mean()))
    assert torch.equal(bf16.source_keypoints(image), plain.source_keypoints(image))  # once per portrait: fp32


@pytest.mark.cuda
def test_cuda_is_the_default_device_with_an_fp16_generator_close_to_fp32(sadtalker_root: Path, st: SadTalker) -> None:
    gpu = load_sadtalker(sadtalker_root, 256)  # no device, auto precision
    assert gpu.info["device"] == "cuda" and gpu.info["precision"] == "float16"
    image = rand(1, 3, 128, 128, seed=7)
    source = torch.randn(1, 70, generator=torch.Generator().manual_seed(8)) * 0.2
    rows = source.expand(2, -1) + 0.05
    diff = (gpu.render(image, source, rows).float().cpu() - st.render(image, source, rows)).abs()
    assert diff.max() < 0.2 and diff.mean() < 0.02, (float(diff.max()), float(diff.mean()))  # bf16's bound on a CPU


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RUN_SLOW") != "1", reason="writes 850 MB of old-layout files: set RUN_SLOW=1")
def test_the_older_separate_files_load_to_the_same_modules(tmp_path: Path, flat: dict) -> None:
    parts = {
        p.name: {k.removeprefix(f"{p.name}."): v for k, v in flat.items() if k.startswith(f"{p.name}.")} for p in PARTS
    }
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.save(
        {"generator": parts["generator"], "kp_detector": parts["kp_extractor"], "epoch": 189},
        folder / "facevid2vid_00189-model.pth.tar",
    )
    torch.save({"net_recon": parts["face_3drecon"], "epoch": 20}, folder / "epoch_20.pth")
    torch.save({"model": parts["audio2exp"], "epoch": 300}, folder / "auido2exp_00300-model.pth")
    torch.save({"model": parts["audio2pose"], "epoch": 140}, folder / "auido2pose_00140-model.pth")
    for coeff_nc, name in MAPPING_FILES.items():
        torch.save({"mapping": random_mapping_state(coeff_nc, SADTALKER_SEED), "epoch": 1}, folder / name)
    modules = load_modules(tmp_path, 256)
    for part in PARTS:
        loaded = modules[part.name].state_dict()
        assert all(torch.equal(v, parts[part.name][k]) for k, v in loaded.items()), part.name
