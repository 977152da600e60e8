"""MuseTalk 1.5 weights: the download layout, configs, strict loading of each official file.

The layout is upstream's ``models/`` folder (``download_weights.sh``)::

    musetalkV15/unet.pth, musetalkV15/musetalk.json      UNet2DConditionModel state dict + config
    sd-vae/config.json, sd-vae/diffusion_pytorch_model.{safetensors,bin}   AutoencoderKL (sd-vae-ft-mse)
    whisper/config.json, whisper/{model.safetensors,pytorch_model.bin}, whisper/preprocessor_config.json
    face-parse-bisent/79999_iter.pth                     optional: the face-parsing blend mask

A config missing from the folder falls back to the copy shipped in ``configs/`` (the published one), so
a folder holding only the weights files works offline. Modules are built on the meta device and the
file's tensors assigned after a strict key/shape check: no random initialisation, no second copy.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from engines.checkpoints import check_state, module_shapes, read_tensors
from engines.errors import EngineError

log = logging.getLogger(__name__)

CONFIGS = Path(__file__).parent / "configs"
UNET_WEIGHTS = ("musetalkV15/unet.pth",)
UNET_CONFIG = ("musetalkV15/musetalk.json", "musetalk.json")
VAE_WEIGHTS = ("sd-vae/diffusion_pytorch_model.safetensors", "sd-vae/diffusion_pytorch_model.bin")
VAE_CONFIG = ("sd-vae/config.json", "sd_vae.json")
WHISPER_WEIGHTS = ("whisper/model.safetensors", "whisper/pytorch_model.bin")
WHISPER_CONFIG = ("whisper/config.json", "whisper_tiny.json")
WHISPER_PREPROCESSOR = ("whisper/preprocessor_config.json", "whisper_preprocessor.json")
FACE_PARSING_WEIGHTS = "face-parse-bisent/79999_iter.pth"
DATA_PARALLEL_PREFIX = "module."
MAX_CONFIG_BYTES = 64 * 1024

# sd-vae-ft-mse was saved by diffusers 0.4, whose VAE attention used these names (diffusers maps them too).
LEGACY_VAE_ATTENTION = {"query.": "to_q.", "key.": "to_k.", "value.": "to_v.", "proj_attn.": "to_out.0."}
WHISPER_HEAD = "proj_out.weight"  # WhisperForConditionalGeneration's output head (tied, unused here)


def weights_file(root: Path, candidates: tuple[str, ...], what: str) -> Path:
    """The first of ``candidates`` present under ``root``; ``weights_missing`` naming them otherwise."""
    for name in candidates:
        if (root / name).is_file():
            return root / name
    raise EngineError(
        "weights_missing",
        f"MuseTalk {what} not found: expected {' or '.join(str(root / n) for n in candidates)} "
        "(MuseTalk's download_weights.sh layout; `fetch-weights musetalk` fills it).",
    )


def read_config(root: Path, names: tuple[str, str]) -> dict:
    """The JSON config ``names[0]`` under ``root``, else the shipped copy ``configs/names[1]``."""
    path = root / names[0]
    if not path.is_file():
        path = CONFIGS / names[1]
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise EngineError("invalid_checkpoint", f"`{path}` is not a model config (over {MAX_CONFIG_BYTES} bytes).")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngineError("invalid_checkpoint", f"`{path}` is not valid JSON ({exc}).") from None
    if not isinstance(config, dict):
        raise EngineError("invalid_checkpoint", f"`{path}` is not a JSON object.")
    return config


def _assign(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> torch.nn.Module:
    check_state(state, module_shapes(module), path, what)
    module.load_state_dict(state, strict=True, assign=True)
    return module.float().eval().requires_grad_(False)


def _config_error(path: Path, exc: Exception) -> EngineError:
    return EngineError("invalid_checkpoint", f"the config for `{path}` does not build the model ({exc}).")


def _build_diffusers(cls: type, config: dict, path: Path) -> torch.nn.Module:
    try:
        with torch.device("meta"):
            return cls.from_config(config)
    except (TypeError, ValueError) as exc:
        raise _config_error(path, exc) from None


def load_unet(root: Path) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    path = weights_file(root, UNET_WEIGHTS, "UNet weights")
    unet = _build_diffusers(UNet2DConditionModel, read_config(root, UNET_CONFIG), path)
    state = {k.removeprefix(DATA_PARALLEL_PREFIX): v for k, v in read_tensors(path, "MuseTalk UNet").items()}
    return _assign(unet, state, path, "MuseTalk UNet")


def _modern_vae_key(key: str) -> str:
    if ".mid_block.attentions." not in key:
        return key
    head, _, tail = key.rpartition(".attentions.0.")
    for old, new in LEGACY_VAE_ATTENTION.items():
        if tail.startswith(old):
            return f"{head}.attentions.0.{new}{tail.removeprefix(old)}"
    return key


def load_vae(root: Path) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    path = weights_file(root, VAE_WEIGHTS, "VAE weights")
    vae = _build_diffusers(AutoencoderKL, read_config(root, VAE_CONFIG), path)
    state = {}
    for key, tensor in read_tensors(path, "VAE checkpoint").items():
        modern = _modern_vae_key(key)
        # 0.4-era attention projections may be 1x1 convs: the same weights as a linear layer
        state[modern] = tensor.flatten(1) if modern != key and tensor.dim() == 4 else tensor
    return _assign(vae, state, path, "sd-vae AutoencoderKL")


def load_whisper_encoder(root: Path) -> torch.nn.Module:
    """The whisper-tiny encoder, after checking the file holds the whole WhisperModel strictly."""
    from transformers import WhisperConfig, WhisperModel

    path = weights_file(root, WHISPER_WEIGHTS, "whisper weights")
    try:
        config = WhisperConfig(**read_config(root, WHISPER_CONFIG))
        with torch.device("meta"):
            expected = module_shapes(WhisperModel(config))
    except (TypeError, ValueError) as exc:
        raise _config_error(path, exc) from None
    # openai/whisper-tiny is saved as WhisperForConditionalGeneration: "model." prefix, maybe the tied head
    state = {k.removeprefix("model."): v for k, v in read_tensors(path, "whisper checkpoint").items()}
    state.pop(WHISPER_HEAD, None)
    check_state(state, expected, path, "whisper (WhisperModel)")
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    with torch.device("meta"):
        encoder = WhisperEncoder(config)
    encoder_state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    encoder.load_state_dict(encoder_state, strict=True, assign=True)
    return encoder.float().eval().requires_grad_(False)


def load_feature_extractor(root: Path):  # -> transformers.WhisperFeatureExtractor
    from transformers import WhisperFeatureExtractor

    config = read_config(root, WHISPER_PREPROCESSOR)
    config.pop("feature_extractor_type", None)
    config.pop("processor_class", None)
    try:
        return WhisperFeatureExtractor(**config)
    except (TypeError, ValueError) as exc:
        raise EngineError("invalid_checkpoint", f"the whisper preprocessor config is unusable ({exc}).") from None
