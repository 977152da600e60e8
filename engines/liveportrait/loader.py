"""Reading the official LivePortrait files strictly: tensors only, exact keys and shapes, clear errors.

Layout of a weights root (the official download, ``KwaiVGI/LivePortrait`` on Hugging Face)::

    base_models/appearance_feature_extractor.pth   F
    base_models/motion_extractor.pth               M
    base_models/warping_module.pth                 W
    base_models/spade_generator.pth                G
    retargeting_models/stitching_retargeting_module.pth   {'retarget_shoulder', 'retarget_mouth', 'retarget_eye'}

Each file may also be a ``.safetensors`` copy of the same tensors (the retargeting one with its keys
prefixed by the sub-dict name). DDP ``module.`` prefixes are stripped.
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
from engines.liveportrait.model import (
    EYE_SIZES,
    LIP_SIZES,
    STITCHING_SIZES,
    AppearanceFeatureExtractor,
    RetargetingMLP,
    SPADEDecoder,
)
from engines.liveportrait.motion import MotionExtractor
from engines.liveportrait.warping import WarpingNetwork

log = logging.getLogger(__name__)

DATA_PARALLEL_PREFIX = "module."
SAFETENSORS = ".safetensors"


@dataclass(frozen=True)
class Part:
    """One network of the model: where its tensors live and how to build it."""

    name: str  # the layout reference's name
    file: str  # relative to the weights root, without suffix
    build: Callable[[], nn.Module]
    sub_dict: str | None = None  # key inside the retargeting file


RETARGETING_FILE = "retargeting_models/stitching_retargeting_module"
PARTS = (
    Part("appearance_feature_extractor", "base_models/appearance_feature_extractor", AppearanceFeatureExtractor),
    Part("motion_extractor", "base_models/motion_extractor", MotionExtractor),
    Part("warping_module", "base_models/warping_module", WarpingNetwork),
    Part("spade_generator", "base_models/spade_generator", SPADEDecoder),
    Part(
        "stitching_retargeting_module.stitching",
        RETARGETING_FILE,
        lambda: RetargetingMLP(*STITCHING_SIZES),
        "retarget_shoulder",
    ),
    Part("stitching_retargeting_module.lip", RETARGETING_FILE, lambda: RetargetingMLP(*LIP_SIZES), "retarget_mouth"),
    Part("stitching_retargeting_module.eye", RETARGETING_FILE, lambda: RetargetingMLP(*EYE_SIZES), "retarget_eye"),
)
FILES = tuple(dict.fromkeys(f"{p.file}.pth" for p in PARTS))  # the official file names, relative to the root


def weights_root(path: str | Path) -> Path:
    """The root of the layout from the root itself or from one of its files (``base_models/x.pth``)."""
    path = Path(path)
    return path.parents[1] if path.is_file() else path


def weights_file(root: Path, stem: str) -> Path:
    """The ``.pth`` file, else its ``.safetensors`` copy; ``weights_missing`` naming both when neither exists."""
    for suffix in (".pth", SAFETENSORS):
        path = root / f"{stem}{suffix}"
        if path.is_file():
            return path
    raise EngineError(
        "weights_missing",
        f"LivePortrait file `{root / stem}.pth` (or `{SAFETENSORS}`) does not exist; fetch the weights with "
        "`fetch-weights liveportrait` or point LIVEPORTRAIT_DIR at a copy of the official layout.",
    )


def _read_sub_dicts(path: Path) -> dict:
    """The retargeting file's top-level dict (of state dicts, or of flat prefixed tensors in safetensors)."""
    if path.suffix == SAFETENSORS:
        return read_tensors(path, "LivePortrait retargeting file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # bad zip, pickle with code, truncated file...
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise EngineError(
            "invalid_checkpoint", f"`{path}` is not a readable checkpoint of tensors ({reason})."
        ) from None
    if not isinstance(obj, dict):
        raise EngineError("invalid_checkpoint", f"`{path}` is not a dict of the three retargeting state dicts.")
    return obj


def _strip(state: dict, path: Path, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not state:
        raise EngineError("invalid_checkpoint", f"`{path}`: {what} is not a non-empty dict of tensors.")
    non_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise EngineError(
            "invalid_checkpoint", f"`{path}`: {what} has entries that are not tensors: {non_tensors[:5]}."
        )
    return {str(k).removeprefix(DATA_PARALLEL_PREFIX): v for k, v in state.items()}


def read_part_states(path: Path, parts: tuple[Part, ...]) -> dict[str, dict[str, torch.Tensor]]:
    """The state dict of each part stored in ``path`` (one plain dict, or the retargeting file's sub-dicts)."""
    if parts[0].sub_dict is None:
        return {parts[0].name: _strip(read_tensors(path, "LivePortrait weights file"), path, "the file")}
    obj = _read_sub_dicts(path)
    states = {}
    for part in parts:
        sub = obj.get(part.sub_dict)
        if sub is None and path.suffix == SAFETENSORS:  # flat: 'retarget_eye.mlp.0.weight'
            prefix = f"{part.sub_dict}."
            sub = {k.removeprefix(prefix): v for k, v in obj.items() if k.startswith(prefix)}
        if not sub:
            raise EngineError("invalid_checkpoint", f"`{path}` has no `{part.sub_dict}` state dict ({part.name}).")
        states[part.name] = _strip(sub, path, f"`{part.sub_dict}`")
    return states


@cache
def expected_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of part ``name`` and its shape (built on the meta device: no memory)."""
    part = next(p for p in PARTS if p.name == name)
    with torch.device("meta"):
        return module_shapes(part.build())


def check_part_state(state: dict[str, torch.Tensor], name: str, path: Path) -> None:
    """Exactly the keys and shapes of part ``name``, finite values; else ``invalid_checkpoint``."""
    check_state(state, expected_shapes(name), path, f"LivePortrait {name}")


def load_parts(root: str | Path) -> dict[str, nn.Module]:
    """Every part of the model from ``root``, strictly loaded, float32, eval mode, on the CPU."""
    root = Path(root)
    modules: dict[str, nn.Module] = {}
    for stem in dict.fromkeys(p.file for p in PARTS):
        parts = tuple(p for p in PARTS if p.file == stem)
        path = weights_file(root, stem)
        states = read_part_states(path, parts)
        for part in parts:
            modules[part.name] = _build_loaded(part, states[part.name], path)
    log.info("loaded LivePortrait weights from %s", root)
    return modules


def _build_loaded(part: Part, state: dict[str, torch.Tensor], path: Path) -> nn.Module:
    check_part_state(state, part.name, path)
    with torch.device("meta"):
        module = part.build()
    module.load_state_dict(state, strict=True, assign=True)
    return module.float().eval().requires_grad_(False)
