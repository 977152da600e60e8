"""Random MuseTalk weights written in upstream's download layout, full size or tiny (same code path)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

TINY_UNET = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [32, 64],
    "cross_attention_dim": 384,  # whisper-tiny's width: upstream's positional encoding is fixed at 384
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 8,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "out_channels": 4,
    "sample_size": 32,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
}
TINY_VAE = {
    "act_fn": "silu",
    "block_out_channels": [8, 16, 16, 16],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 256,
}
TINY_WHISPER = {
    "d_model": 384,
    "encoder_layers": 4,  # whisper-tiny's depth: 5 hidden states, 50 tokens per frame
    "encoder_attention_heads": 6,
    "encoder_ffn_dim": 384,
    "decoder_layers": 1,
    "decoder_attention_heads": 2,
    "decoder_ffn_dim": 64,
    "vocab_size": 64,
    "max_target_positions": 16,
    "max_source_positions": 1500,
    "num_mel_bins": 80,
    "pad_token_id": 1,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "decoder_start_token_id": 3,
}
LEGACY_ATTENTION = {"to_q.": "query.", "to_k.": "key.", "to_v.": "value.", "to_out.0.": "proj_attn."}


def _jitter(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights everywhere, norms included, so no layer is an identity by construction."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("weight") and param.dim() == 1:  # norms: around 1
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=gen))
            elif name.endswith("bias"):
                param.copy_(0.05 * torch.randn(param.shape, generator=gen))
            else:
                fan_in = max(1, param[0].numel()) if param.dim() > 1 else 1
                param.copy_(torch.randn(param.shape, generator=gen) / fan_in**0.5)
    return module.eval()


def random_modules(tiny: bool = True, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """(UNet2DConditionModel, AutoencoderKL, WhisperForConditionalGeneration) with random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from engines.lipsync.musetalk.loader import CONFIGS

    configs = (
        [TINY_UNET, TINY_VAE, TINY_WHISPER]
        if tiny
        else [
            json.loads((CONFIGS / name).read_text()) for name in ("musetalk.json", "sd_vae.json", "whisper_tiny.json")
        ]
    )
    unet = _jitter(UNet2DConditionModel.from_config(configs[0]), seed)
    vae = _jitter(AutoencoderKL.from_config(configs[1]), seed + 1)
    whisper = _jitter(WhisperForConditionalGeneration(WhisperConfig(**configs[2])), seed + 2)
    return unet, vae, whisper


def _legacy_vae_state(vae: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = {}
    for key, tensor in vae.state_dict().items():
        head, sep, tail = key.rpartition(".attentions.0.")
        for new, old in LEGACY_ATTENTION.items():
            if sep and tail.startswith(new):
                key = f"{head}.attentions.0.{old}{tail.removeprefix(new)}"
        state[key] = tensor
    return state


def write_models(
    root: Path, tiny: bool = True, seed: int = 0, safetensors: bool = False, legacy_vae: bool = True
) -> Path:
    """Upstream's ``models/`` layout under ``root`` with random weights; configs written when ``tiny``."""
    from safetensors.torch import save_file

    from engines.lipsync.musetalk.loader import CONFIGS

    unet, vae, whisper = random_modules(tiny, seed)
    for folder in ("musetalkV15", "sd-vae", "whisper"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    torch.save(unet.state_dict(), root / "musetalkV15" / "unet.pth")
    (root / "musetalkV15" / "musetalk.json").write_text(json.dumps(dict(unet.config)))
    vae_state = _legacy_vae_state(vae) if legacy_vae else vae.state_dict()
    whisper_state = {k: v for k, v in whisper.state_dict().items() if k != "proj_out.weight"}
    if safetensors:
        save_file(
            {k: v.contiguous() for k, v in vae_state.items()}, root / "sd-vae" / "diffusion_pytorch_model.safetensors"
        )
        save_file({k: v.contiguous().clone() for k, v in whisper_state.items()}, root / "whisper" / "model.safetensors")
    else:
        torch.save(vae_state, root / "sd-vae" / "diffusion_pytorch_model.bin")
        torch.save(whisper_state, root / "whisper" / "pytorch_model.bin")
    (root / "sd-vae" / "config.json").write_text(json.dumps(dict(vae.config)))
    (root / "whisper" / "config.json").write_text(whisper.config.to_json_string())
    shutil.copy(CONFIGS / "whisper_preprocessor.json", root / "whisper" / "preprocessor_config.json")
    return root
