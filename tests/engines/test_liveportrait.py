"""LivePortrait in-process: layout, strict loading of the official files, the public API, precision.

Random weights are written in the official layout once per module (about 500 MB in a temp dir). The
256-px API runs once (batch 1); determinism and precision checks run at 128 px, where the same modules
and code paths cost a quarter.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engines import weights
from engines.errors import EngineError
from engines.liveportrait import FILES, PARTS, LivePortrait, load_liveportrait, pose_degrees
from engines.liveportrait.loader import (
    RETARGETING_FILE,
    check_part_state,
    expected_shapes,
    load_parts,
    read_part_states,
    weights_file,
)
from engines.liveportrait.random_weights import random_states, write_random_weights

LAYOUT = json.loads((Path(__file__).parent / "liveportrait_state_dict_layout.json").read_text())
SEED = 5


@pytest.fixture(scope="module")
def weights_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_weights(tmp_path_factory.mktemp("liveportrait"), seed=SEED)


@pytest.fixture(scope="module")
def lp(weights_root: Path) -> LivePortrait:
    return load_liveportrait(weights_root, precision="auto", device="cpu")


@pytest.fixture(scope="module")
def lp_fp32(weights_root: Path) -> LivePortrait:
    return load_liveportrait(weights_root, precision="fp32", device="cpu")


def image(size: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---- layout and loading --------------------------------------------------------------------------


@pytest.mark.parametrize("part", [p.name for p in PARTS])
def test_state_dicts_match_the_official_layout_key_for_key(part: str) -> None:
    reference = {k: tuple(v) for k, v in LAYOUT[part].items()}
    shapes = expected_shapes(part)
    assert list(shapes) == list(reference)
    assert shapes == reference


def test_official_files_load_strictly_with_every_tensor(weights_root: Path) -> None:
    modules = load_parts(weights_root)
    states = random_states(SEED)
    assert set(modules) == {p.name for p in PARTS}
    for name, module in modules.items():
        loaded = module.state_dict()
        assert loaded.keys() == states[name].keys()
        assert all(torch.equal(loaded[k], states[name][k]) for k in loaded), name


def test_safetensors_copies_load_to_the_same_tensors(weights_root: Path, tmp_path: Path) -> None:
    states = random_states(SEED)
    for stem in ("base_models/appearance_feature_extractor", RETARGETING_FILE):
        parts = tuple(p for p in PARTS if p.file == stem)
        content = {p.sub_dict: states[p.name] for p in parts} if parts[0].sub_dict else states[parts[0].name]
        flat = {f"{k}.{n}": v for k, sd in content.items() for n, v in sd.items()} if parts[0].sub_dict else content
        path = tmp_path / f"{Path(stem).name}.safetensors"
        save_file(flat, str(path))
        loaded = read_part_states(path, parts)
        for part in parts:
            check_part_state(loaded[part.name], part.name, path)
            assert all(torch.equal(loaded[part.name][k], v) for k, v in states[part.name].items())


def test_a_safetensors_file_stands_in_for_the_pth(weights_root: Path, tmp_path: Path) -> None:
    root = _root_with(weights_root, tmp_path, RETARGETING_FILE, None)
    assert weights_file(root, RETARGETING_FILE).suffix == ".pth"
    (root / f"{RETARGETING_FILE}.pth").unlink()
    (root / f"{RETARGETING_FILE}.safetensors").write_bytes(b"")
    assert weights_file(root, RETARGETING_FILE).suffix == ".safetensors"


def _root_with(weights_root: Path, tmp_path: Path, stem: str, content: object) -> Path:
    """A copy of the layout (links) in which the file ``stem`` holds ``content`` (None: unchanged)."""
    root = tmp_path / "root"
    for path in weights_root.rglob("*.pth"):
        target = root / path.relative_to(weights_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(path, target)
    if content is None:
        return root
    target = root / f"{stem}.pth"
    target.unlink()
    if isinstance(content, bytes):
        target.write_bytes(content)
    else:
        torch.save(content, target)
    return root


def test_missing_file_names_it_and_the_fetch_command(weights_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "partial"
    shutil.copytree(weights_root / "retargeting_models", root / "retargeting_models")
    with pytest.raises(EngineError) as err:
        load_parts(root)
    assert err.value.code == "weights_missing"
    assert "appearance_feature_extractor.pth" in err.value.message
    assert "fetch-weights liveportrait" in err.value.message


def _load_file(path: Path) -> None:
    parts = tuple(p for p in PARTS if path.name.startswith(Path(p.file).name))
    for name, state in read_part_states(path, parts).items():
        check_part_state(state, name, path)


def test_wrong_keys_and_shapes_are_invalid_checkpoints(tmp_path: Path) -> None:
    state = dict(random_states(SEED)["warping_module"])
    state.pop("fourth.bias")
    state["extra.weight"] = torch.zeros(1)
    state["third.conv.bias"] = torch.zeros(7)
    torch.save(state, path := tmp_path / "warping_module.pth")
    with pytest.raises(EngineError) as err:
        _load_file(path)
    assert err.value.code == "invalid_checkpoint"
    for fragment in ("1 missing keys (fourth.bias)", "1 unexpected keys (extra.weight)", "(7,) != (256,)"):
        assert fragment in err.value.message


def test_retargeting_file_needs_its_three_sub_dicts(weights_root: Path, tmp_path: Path) -> None:
    full = torch.load(weights_root / f"{RETARGETING_FILE}.pth", weights_only=True)
    assert all(k.startswith("module.") for k in full["retarget_shoulder"])  # DDP prefixes, stripped on load
    _load_file(weights_root / f"{RETARGETING_FILE}.pth")
    torch.save({"retarget_shoulder": full["retarget_shoulder"]}, path := tmp_path / "stitching_retargeting_module.pth")
    with pytest.raises(EngineError) as err:
        _load_file(path)
    assert err.value.code == "invalid_checkpoint"
    assert "retarget_mouth" in err.value.message


class _RunsCode:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch /tmp/liveportrait-pwned",))


def test_corrupt_and_code_running_files_are_refused_unrun(tmp_path: Path) -> None:
    for i, content in enumerate((b"not a checkpoint", pickle.dumps({"x": _RunsCode()}))):
        (path := tmp_path / f"spade_generator{i}.pth").write_bytes(content)
        with pytest.raises(EngineError) as err:
            _load_file(path)
        assert err.value.code == "invalid_checkpoint"
    assert not Path("/tmp/liveportrait-pwned").exists()


def test_unknown_precision_is_refused(weights_root: Path) -> None:
    with pytest.raises(EngineError) as err:
        load_liveportrait(weights_root, precision="int4")
    assert err.value.code == "invalid_precision"


# ---- the public API ------------------------------------------------------------------------------


def test_api_shapes_at_full_size(lp: LivePortrait) -> None:
    x = image()
    feature = lp.appearance(x)
    assert feature.shape == (1, 32, 16, 64, 64)
    info = lp.motion(x)
    shapes = {k: tuple(v.shape) for k, v in info.items()}
    assert shapes == {
        "pitch": (1, 1),
        "yaw": (1, 1),
        "roll": (1, 1),
        "t": (1, 3),
        "exp": (1, 21, 3),
        "scale": (1, 1),
        "kp": (1, 21, 3),
    }
    assert all(-97.5 <= float(info[a]) <= 100.5 for a in ("pitch", "yaw", "roll"))
    kp_source = lp.keypoints(info)
    kp_driving = lp.stitch(kp_source, kp_source)
    assert kp_source.shape == kp_driving.shape == (1, 21, 3)
    assert lp.retarget_lip(kp_source, torch.tensor([[0.0, 0.5]])).shape == (1, 21, 3)
    assert lp.retarget_eye(kp_source, torch.tensor([[0.3, 0.3, 0.0]])).shape == (1, 21, 3)
    out = lp.warp_decode(feature, kp_source, kp_driving)
    assert out.shape == (1, 3, 512, 512)
    assert out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_keypoints_follow_the_pose_formula(lp: LivePortrait) -> None:
    kp = torch.randn(1, 21, 3, generator=torch.Generator().manual_seed(1))
    exp = torch.randn(1, 21, 3, generator=torch.Generator().manual_seed(2)) * 0.1
    info = {"kp": kp, "exp": exp, "scale": torch.tensor([[1.5]]), "t": torch.tensor([[0.1, -0.2, 9.0]])}
    info |= {"pitch": torch.zeros(1, 1), "yaw": torch.full((1, 1), 90.0), "roll": torch.zeros(1, 1)}
    posed = lp.keypoints(info)
    # R = (Rz Ry Rx)^T; at yaw 90 degrees the row vector (x, y, z) @ R is (z, y, -x); t shifts x and y only
    rotated = torch.stack((kp[..., 2], kp[..., 1], -kp[..., 0]), dim=-1)
    expected = 1.5 * (rotated + exp) + torch.tensor([0.1, -0.2, 0.0])
    assert torch.allclose(posed, expected, atol=1e-5)


def test_pose_logits_become_degrees_by_the_bin_expectation() -> None:
    uniform = torch.zeros(1, 66)
    assert float(pose_degrees(uniform)) == pytest.approx(32.5 * 3 - 97.5)
    peaked = torch.full((1, 66), -1e4)
    peaked[0, 40] = 0.0
    assert float(pose_degrees(peaked)) == pytest.approx(40 * 3 - 97.5)
    degrees = torch.tensor([[12.0]])
    assert pose_degrees(degrees) is degrees  # already degrees: unchanged


def test_retargeting_inputs_are_source_keypoints_then_ratios(lp: LivePortrait) -> None:
    kp = torch.randn(2, 21, 3, generator=torch.Generator().manual_seed(6))
    lip, eye = torch.tensor([[0.1, 0.4], [0.2, 0.0]]), torch.tensor([[0.3, 0.3, 0.0], [0.3, 0.3, 0.4]])
    expected_lip = lp.S_lip(torch.cat((kp.reshape(2, -1), lip), 1)).reshape(2, 21, 3)
    expected_eye = lp.S_eye(torch.cat((kp.reshape(2, -1), eye), 1)).reshape(2, 21, 3)
    assert torch.allclose(lp.retarget_lip(kp, lip), expected_lip)
    assert torch.allclose(lp.retarget_eye(kp, eye), expected_eye)


def test_stitch_adds_the_network_delta_and_shift(lp: LivePortrait) -> None:
    kp_s = torch.randn(2, 21, 3, generator=torch.Generator().manual_seed(3))
    kp_d = kp_s + 0.05
    delta = lp.S_stitch(torch.cat((kp_s.reshape(2, -1), kp_d.reshape(2, -1)), 1))
    out = lp.stitch(kp_s, kp_d)
    assert torch.allclose(out[..., 2], kp_d[..., 2] + delta[:, :63].reshape(2, 21, 3)[..., 2])
    assert torch.allclose(
        out[..., :2], kp_d[..., :2] + delta[:, :63].reshape(2, 21, 3)[..., :2] + delta[:, None, 63:65]
    )


@cache
def _reference_frame(model: LivePortrait) -> torch.Tensor:
    return _small_frames(model, frames=1)


def _small_frames(model: LivePortrait, frames: int = 2) -> torch.Tensor:
    x = image(128, seed=4)
    feature, info = model.appearance(x), model.motion(x)
    kp_s = model.keypoints(info)
    exp = info["exp"].expand(frames, -1, -1).clone()
    exp[:, 19, 1] += torch.linspace(0.0, 0.05, frames)
    kp_d = model.stitch(kp_s.expand(frames, -1, -1), model.keypoints(info | {"exp": exp} | _expand(info, frames)))
    return model.warp_decode(feature, kp_s, kp_d)


def _expand(info: dict[str, torch.Tensor], frames: int) -> dict[str, torch.Tensor]:
    return {k: v.expand(frames, *v.shape[1:]) for k, v in info.items() if k != "exp"}


def test_warp_decode_is_deterministic_and_batch_independent(lp: LivePortrait) -> None:
    batched = _small_frames(lp, frames=2)
    assert batched.shape == (2, 3, 256, 256)
    assert torch.equal(_small_frames(lp, frames=1)[0], _reference_frame(lp)[0])  # same call, same numbers
    batch_noise = (batched[0] - _reference_frame(lp)[0]).abs()  # batched: other kernels, same frame
    assert float(batch_noise.mean()) < 5e-3
    assert float(batch_noise.max()) < 0.1
    assert float((batched[1] - batched[0]).abs().max()) > 0  # the edit reached the second frame


def test_optimized_fp32_matches_the_plain_modules(weights_root: Path, lp_fp32: LivePortrait) -> None:
    plain = load_liveportrait(weights_root, precision="fp32", device="cpu", optimize=False)
    a, b = _small_frames(plain, frames=1), _reference_frame(lp_fp32)
    assert float((a - b).abs().max()) < 1e-3


def test_reduced_precision_stays_close_to_fp32(lp: LivePortrait, lp_fp32: LivePortrait) -> None:
    if lp.dtype == torch.float32:
        pytest.skip("this CPU has no native bf16: auto precision is fp32")
    a, b = _reference_frame(lp), _reference_frame(lp_fp32)
    diff = (a - b).abs()
    assert float(diff.mean()) < 0.015  # measured 0.009: about two 8-bit levels on average
    assert float(diff.max()) < 0.2


# ---- CUDA (pytest -m cuda on a GPU; skipped elsewhere) -------------------------------------------


def _frames_on(model: LivePortrait) -> torch.Tensor:
    """``_reference_frame``'s inputs and steps on the model's device, back on the CPU in float32."""
    x = image(128, seed=4).to(model.device)
    with torch.inference_mode():
        feature, info = model.appearance(x), model.motion(x)
        kp_s = model.keypoints(info)
        kp_d = model.stitch(kp_s, model.keypoints(info))  # frame 0 of _small_frames: the edit starts at 0
        return model.warp_decode(feature, kp_s, kp_d).float().cpu()


@pytest.mark.cuda
def test_cuda_is_the_default_device_with_fp16_warp_and_decoder(weights_root: Path, lp_fp32: LivePortrait) -> None:
    gpu = load_liveportrait(weights_root)  # no device, auto precision
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float16 and gpu.batch_size == 16
    diff = (_frames_on(gpu) - _reference_frame(lp_fp32)).abs()
    assert float(diff.mean()) < 0.015 and float(diff.max()) < 0.2  # the bound bf16 meets on a CPU


@pytest.mark.cuda
@pytest.mark.slow
def test_cuda_compiled_warp_and_decoder_give_the_same_frames(weights_root: Path) -> None:
    plain = load_liveportrait(weights_root, device="cuda")
    compiled = load_liveportrait(weights_root, device="cuda", compile_modules=True)
    assert hasattr(compiled._decode, "_orig_mod") and not hasattr(plain._decode, "_orig_mod")
    diff = (_frames_on(compiled) - _frames_on(plain)).abs()
    assert float(diff.mean()) < 2e-3 and float(diff.max()) < 0.05


# ---- weights manifest ----------------------------------------------------------------------------


def test_manifest_lists_the_official_files_under_mit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entries = [weights.BY_NAME[n] for n in weights.fetch_groups()["liveportrait"]]
    assert sorted(e.filename for e in entries) == sorted(f"liveportrait/{f}" for f in FILES)
    assert all(e.commercial_use and e.licence.startswith("MIT") for e in entries)
    official = "https://huggingface.co/KwaiVGI/LivePortrait/resolve/main/liveportrait/"
    assert all(e.url == official + e.filename.removeprefix("liveportrait/") for e in entries)
    monkeypatch.setattr(weights, "MOUNT_DIRS", ())
    for entry in entries[:-1]:
        (tmp_path / entry.filename).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / entry.filename).write_bytes(b"x")
    assert weights.find_engine_root("liveportrait", tmp_path) is None  # one file short
    (tmp_path / entries[-1].filename).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / entries[-1].filename).write_bytes(b"x")
    assert weights.find_engine_root("liveportrait", tmp_path) == tmp_path / "liveportrait"
    entry, path = weights.find_for_engine("liveportrait", tmp_path)
    assert entry.name == "liveportrait_warping" and path == tmp_path / "liveportrait/base_models/warping_module.pth"
