"""Random LivePortrait weights written in the official file layout, for tests and benchmarks.

Non-trivial BatchNorm statistics and unit spectral-norm vectors, so every code path (folding, spectral
weights) is exercised; the sub-dicts of the retargeting file carry DDP ``module.`` prefixes as some
official copies do.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from engines.liveportrait.blocks import SpectralConv2d
from engines.liveportrait.loader import PARTS, RETARGETING_FILE, SAFETENSORS

PREFIXED_SUB_DICT = "retarget_shoulder"  # saved with `module.` prefixes, as a DDP-trained file would be
# Random SPADE blocks grow activations to a spread of ~100; G's output conv is scaled so its pre-sigmoid values
# spread about 1, as a trained decoder's do (unscaled, three quarters of the random image would be saturated).
OUTPUT_CONV = ("spade_generator", "conv_img.0.")
OUTPUT_CONV_SCALE = 0.015


@torch.no_grad()
def randomize(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Give BatchNorms random statistics and spectral convs random unit u, v (in place)."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm3d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.2)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) * 1.5 + 0.5)
            m.weight.copy_(torch.rand(m.weight.shape, generator=generator) * 0.8 + 0.6)
            m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)
        elif isinstance(m, SpectralConv2d):
            for vector in (m.weight_u, m.weight_v):
                vector.copy_(nn.functional.normalize(torch.randn(vector.shape, generator=generator), dim=0))
    return module


def random_states(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Each part's random state dict (``torch.manual_seed(seed)`` drives the default initialisation)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    states = {p.name: randomize(p.build(), generator).state_dict() for p in PARTS}
    part, prefix = OUTPUT_CONV
    for key, tensor in states[part].items():
        if key.startswith(prefix):
            tensor.mul_(OUTPUT_CONV_SCALE)
    return states


def write_random_weights(root: str | Path, seed: int = 0, safetensors: bool = False) -> Path:
    """Write random weights under ``root`` as ``.pth`` (or ``.safetensors``) files of the official layout."""
    root = Path(root)
    states = random_states(seed)
    files: dict[str, dict[str, object]] = {}
    for part in PARTS:
        state = states[part.name]
        if part.sub_dict is None:
            files[part.file] = state
            continue
        if part.sub_dict == PREFIXED_SUB_DICT:
            state = {f"module.{k}": v for k, v in state.items()}
        files.setdefault(part.file, {})[part.sub_dict] = state
    for stem, content in files.items():
        path = root / f"{stem}{SAFETENSORS if safetensors else '.pth'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if safetensors:
            from safetensors.torch import save_file

            flat = _flatten(content) if stem == RETARGETING_FILE else content
            save_file({k: v.contiguous() for k, v in flat.items()}, str(path))
        else:
            torch.save(content, path)
    return root


def _flatten(sub_dicts: dict[str, object]) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v for name, state in sub_dicts.items() for k, v in state.items()}  # type: ignore[union-attr]
