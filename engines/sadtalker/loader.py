"""Reading SadTalker's files strictly: exact keys and shapes, tensors only, clear ``invalid_checkpoint`` errors.

Layout of a weights root (the official download, release v0.0.2-rc)::

    checkpoints/SadTalker_V0.0.2_256.safetensors   one flat state dict: kp_extractor.* generator.*
    checkpoints/SadTalker_V0.0.2_512.safetensors   face_3drecon.* audio2exp.* audio2pose.*
    checkpoints/mapping_00229-model.pth.tar        {'mapping': MappingNet (70 coefficients), 'epoch'}
    checkpoints/mapping_00109-model.pth.tar        {'mapping': MappingNet (73 coefficients), 'epoch'}

The older separate files (``auido2exp_00300-model.pth``, ``auido2pose_00140-model.pth``, ``epoch_20.pth``,
``facevid2vid_00189-model.pth.tar``) load too when no safetensors file of the size is present.
Every entry of a file is accounted for: the inference modules' keys exactly, plus audio2pose's training-only
entries (``netG.encoder.*``, ``netD_motion.*``: optional, each checked against its layout, then dropped).
``.pth`` files are read with ``torch.load(weights_only=True)``: a pickle with objects is refused before anything runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import nn

from engines.checkpoints import check_state, module_shapes, read_tensors
from engines.errors import EngineError
from engines.sadtalker.audio_nets import Audio2Exp, Audio2Pose, TrainingOnlyParts
from engines.sadtalker.facerender import KPDetector, MappingNet, SadTalkerGenerator
from engines.sadtalker.recon import ReconNet

log = logging.getLogger(__name__)

SIZES = (256, 512)
CHECKPOINTS = "checkpoints"
MAPPING_FILES = {70: "mapping_00229-model.pth.tar", 73: "mapping_00109-model.pth.tar"}  # by coefficient count
TRAINING_ONLY = "audio2pose"  # the module whose file entries include TrainingOnlyParts
FETCH_HINT = "fetch them with `fetch-weights sadtalker` or point SADTALKER_DIR at a copy of the official layout"


@dataclass(frozen=True)
class Part:
    name: str  # the key prefix in the safetensors file
    build: Callable[[], nn.Module]
    old_file: str  # the older layout's file
    old_key: str | None  # the state dict's key inside it (None: the file's 'model')


PARTS = (
    Part("kp_extractor", KPDetector, "facevid2vid_00189-model.pth.tar", "kp_detector"),
    Part("generator", SadTalkerGenerator, "facevid2vid_00189-model.pth.tar", "generator"),
    Part("face_3drecon", ReconNet, "epoch_20.pth", "net_recon"),
    Part("audio2exp", Audio2Exp, "auido2exp_00300-model.pth", "model"),
    Part("audio2pose", Audio2Pose, "auido2pose_00140-model.pth", "model"),
)
BY_NAME = {p.name: p for p in PARTS}


def safetensors_name(size: int) -> str:
    return f"SadTalker_V0.0.2_{size}.safetensors"


def checkpoints_dir(root: str | Path) -> Path:
    """``root/checkpoints`` (the official layout), or ``root`` itself when it holds the files directly."""
    root = Path(root)
    if root.is_file():
        root = root.parent
    nested = root / CHECKPOINTS
    return nested if nested.is_dir() else root


@cache
def expected_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of part ``name`` (or ``mapping70`` / ``mapping73``, ``training_only``)."""
    with torch.device("meta"):
        if name.startswith("mapping"):
            return module_shapes(MappingNet(int(name.removeprefix("mapping"))))
        if name == "training_only":
            return module_shapes(TrainingOnlyParts())
        return module_shapes(BY_NAME[name].build())


def _build(build: Callable[[], nn.Module], state: dict[str, torch.Tensor]) -> nn.Module:
    with torch.device("meta"):
        module = build()
    module.load_state_dict(state, strict=True, assign=True)
    return module.float().eval().requires_grad_(False)


def split_flat_state(flat: dict[str, torch.Tensor], path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The flat file's entries per part (by prefix), checked: every key belongs to a part, nothing is missing."""
    states: dict[str, dict[str, torch.Tensor]] = {p.name: {} for p in PARTS}
    stray = []
    for key, tensor in flat.items():
        prefix, _, rest = key.partition(".")
        if prefix in states and rest:
            states[prefix][rest] = tensor
        else:
            stray.append(key)
    if stray:
        raise EngineError(
            "invalid_checkpoint",
            f"`{path}` is not a SadTalker checkpoint: {len(stray)} keys outside its modules ({', '.join(stray[:5])}).",
        )
    return states


def check_part(name: str, state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Strict check of one part's entries; for audio2pose the training-only ones are checked and dropped."""
    if name == TRAINING_ONLY:  # optional (a converted file may lack them), each present one checked
        training = expected_shapes("training_only")
        extra = {k: v for k, v in state.items() if k in training}
        check_state(extra, {k: training[k] for k in extra}, path, "SadTalker audio2pose (training-only entries)")
        state = {k: v for k, v in state.items() if k not in training}
    check_state(state, expected_shapes(name), path, f"SadTalker {name}")
    return state


def load_flat(path: Path) -> dict[str, nn.Module]:
    """The five modules of a ``SadTalker_V0.0.2_{size}.safetensors`` file."""
    states = split_flat_state(read_tensors(path, "SadTalker weights file"), path)
    return {p.name: _build(p.build, check_part(p.name, states[p.name], path)) for p in PARTS}


def load_old_layout(folder: Path) -> dict[str, nn.Module]:
    """The five modules from the older separate ``.pth`` files."""
    modules = {}
    for part in PARTS:
        path = folder / part.old_file
        if not path.is_file():
            raise EngineError("weights_missing", f"SadTalker file `{path}` does not exist; {FETCH_HINT}.")
        state = read_tensors(path, "SadTalker weights file", nested_key=part.old_key)
        modules[part.name] = _build(part.build, check_part(part.name, dict(state), path))
    return modules


def load_mapping(folder: Path, coeff_nc: int) -> nn.Module:
    """``mapping_00229`` (70 coefficients: crop modes) or ``mapping_00109`` (73: full modes), strictly."""
    path = folder / MAPPING_FILES[coeff_nc]
    if not path.is_file():
        raise EngineError("weights_missing", f"SadTalker file `{path}` does not exist; {FETCH_HINT}.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle with code, a bad zip, a truncated file
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise EngineError(
            "invalid_checkpoint", f"`{path}` is not a readable checkpoint of tensors ({reason})."
        ) from None
    state = obj.get("mapping") if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EngineError("invalid_checkpoint", f"`{path}` has no 'mapping' state dict of tensors.")
    check_state(state, expected_shapes(f"mapping{coeff_nc}"), path, f"SadTalker mapping ({coeff_nc} coefficients)")
    return _build(lambda: MappingNet(coeff_nc), state)


def load_modules(root: str | Path, size: int = 256) -> dict[str, nn.Module]:
    """Every SadTalker module for renders of ``size`` px, strictly loaded, float32, eval, on the CPU:
    kp_extractor, generator, face_3drecon, audio2exp, audio2pose, mapping70, mapping73."""
    if size not in SIZES:
        raise EngineError("invalid_input", f"SadTalker renders 256 or 512 px, not {size}.")
    folder = checkpoints_dir(root)
    flat = folder / safetensors_name(size)
    if flat.is_file():
        modules = load_flat(flat)
    elif (folder / PARTS[0].old_file).is_file():
        log.info("no %s: loading SadTalker's older separate files from %s", flat.name, folder)
        modules = load_old_layout(folder)
    else:
        raise EngineError("weights_missing", f"SadTalker file `{flat}` does not exist; {FETCH_HINT}.")
    for coeff_nc in MAPPING_FILES:
        modules[f"mapping{coeff_nc}"] = load_mapping(folder, coeff_nc)
    log.info("loaded SadTalker %d-px weights from %s", size, folder)
    return modules
