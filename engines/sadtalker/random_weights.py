"""Random SadTalker weights written in the official layout, for tests and benchmarks.

``SadTalker_V0.0.2_{size}.safetensors`` (one flat dict with every module prefix, the training-only audio2pose
entries included) and the two ``mapping_*-model.pth.tar`` pickles ({'mapping': state dict, 'epoch'}).
BatchNorms get random statistics and spectral convs random unit vectors, so folding and spectral weights are
exercised.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from engines.liveportrait.random_weights import randomize
from engines.sadtalker.audio_nets import TrainingOnlyParts
from engines.sadtalker.facerender import MappingNet
from engines.sadtalker.loader import CHECKPOINTS, MAPPING_FILES, PARTS, TRAINING_ONLY, safetensors_name

# Random SPADE blocks spread activations to ~100: the output conv is scaled so pre-sigmoid values spread about
# 1, as a trained decoder's do (unscaled, most of the random image saturates to 0 or 1).
OUTPUT_CONV = "generator.decoder.conv_img."
OUTPUT_CONV_SCALE = 0.015


def _state(module: nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in randomize(module, generator).state_dict().items()}


def random_flat_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """The flat safetensors dict: ``{module}.{key}`` for the five modules, training-only entries included."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    flat: dict[str, torch.Tensor] = {}
    for part in PARTS:
        flat.update({f"{part.name}.{k}": v for k, v in _state(part.build(), generator).items()})
        if part.name == TRAINING_ONLY:
            flat.update({f"{part.name}.{k}": v for k, v in _state(TrainingOnlyParts(), generator).items()})
    for key, tensor in flat.items():
        if key.startswith(OUTPUT_CONV):
            tensor.mul_(OUTPUT_CONV_SCALE)
    return flat


def random_mapping_state(coeff_nc: int, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed + coeff_nc)
    return MappingNet(coeff_nc).state_dict()


def write_random_weights(root: str | Path, seed: int = 0, sizes: tuple[int, ...] = (256,)) -> Path:
    """Write ``root/checkpoints/`` with random weights; the 512 file (same layout) is a link to the 256 one."""
    from safetensors.torch import save_file

    folder = Path(root) / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    first = folder / safetensors_name(sizes[0])
    save_file(random_flat_state(seed), str(first))
    for size in sizes[1:]:
        (folder / safetensors_name(size)).hardlink_to(first)
    for coeff_nc, name in MAPPING_FILES.items():
        torch.save({"mapping": random_mapping_state(coeff_nc, seed), "epoch": 229}, folder / name)
    return Path(root)
