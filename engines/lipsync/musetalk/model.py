"""MuseTalk 1.5 in-process: whisper features, VAE face latents, one UNet step, VAE decode.

The numbers are upstream's (TMElyralab/MuseTalk ``scripts/realtime_inference.py``) on the same weights,
with one deliberate difference: face latents are the VAE posterior's mean, where upstream draws a
sample, so the same avatar always gives the same latents (a service must be deterministic).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engines.errors import EngineError
from engines.lipsync.musetalk import audio as audio_windows
from engines.lipsync.musetalk.loader import (
    load_feature_extractor,
    load_unet,
    load_vae,
    load_whisper_encoder,
)
from engines.precision import inference_dtype

log = logging.getLogger(__name__)

FACE_SIZE = 256
LATENT_CHANNELS = 4


@dataclass
class MuseTalk:
    """The loaded modules on one device in one dtype; see ``load_musetalk``."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    whisper: torch.nn.Module  # the whisper encoder
    feature_extractor: object  # transformers.WhisperFeatureExtractor
    device: torch.device
    dtype: torch.dtype
    root: Path | None = None
    _positions: torch.Tensor = field(init=False, repr=False)
    _timestep: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.scaling = float(self.vae.config.scaling_factor)
        width = int(self.unet.config.cross_attention_dim)
        tokens = audio_windows.WINDOW * (int(self.whisper.config.encoder_layers) + 1)
        self._positions = audio_windows.sinusoidal_encoding(tokens, width).to(self.device, self.dtype)
        self._timestep = torch.tensor([0], device=self.device)

    @property
    def precision(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @torch.inference_mode()
    def audio_features(self, wav_16k: np.ndarray) -> torch.Tensor:
        """(L, layers + 1, D) whisper encoder states of the speech, 50 steps per second, trimmed."""
        samples = np.ascontiguousarray(wav_16k, dtype=np.float32)
        if samples.ndim != 1 or samples.size == 0:
            raise EngineError("invalid_audio", "Driving audio must be non-empty mono 16 kHz samples.")
        states = []
        for segment in audio_windows.segments(samples):
            mel = self.feature_extractor(segment, sampling_rate=audio_windows.SAMPLE_RATE, return_tensors="pt")
            features = mel.input_features.to(self.device, self.dtype)
            hidden = self.whisper(features, output_hidden_states=True).hidden_states
            states.append(torch.stack(hidden, dim=2)[0])
        return torch.cat(states)[: audio_windows.frame_count(samples.size, audio_windows.FEATURE_RATE)]

    @torch.inference_mode()
    def audio_chunks(self, wav_16k: np.ndarray, fps: int = 25, num_frames: int | None = None) -> torch.Tensor:
        """(T, 50, 384) per-frame whisper windows (before the positional encoding), T = floor(seconds * fps).

        ``num_frames`` asks for another count (a renderer wanting ceil): frames past the audio see zeros.
        """
        features = self.audio_features(wav_16k)
        return audio_windows.frame_windows(features, len(wav_16k), int(fps), num_frames)

    @torch.inference_mode()
    def face_latents(self, faces_bgr: np.ndarray) -> torch.Tensor:
        """uint8 (B, 256, 256, 3) BGR crops -> (B, 8, 32, 32) scaled latents: masked lower half, then reference."""
        faces = np.asarray(faces_bgr)
        if faces.dtype != np.uint8 or faces.ndim != 4 or faces.shape[1:] != (FACE_SIZE, FACE_SIZE, 3):
            raise ValueError(
                f"faces must be uint8 (B, {FACE_SIZE}, {FACE_SIZE}, 3) BGR, got {faces.dtype} {faces.shape}"
            )
        rgb = torch.from_numpy(np.ascontiguousarray(faces[..., ::-1])).to(self.device)
        pixels = rgb.permute(0, 3, 1, 2).float().div_(255.0).sub_(0.5).div_(0.5)
        masked = pixels.clone()
        masked[:, :, FACE_SIZE // 2 :] = -1.0  # the lower half zeroed before normalisation, as upstream
        both = torch.cat([masked, pixels]).to(self.dtype)
        posterior = self.vae.encode(both).latent_dist
        latents = posterior.mean * self.scaling
        count = faces.shape[0]
        return torch.cat([latents[:count], latents[count:]], dim=1)

    @torch.inference_mode()
    def unet_step(self, latents: torch.Tensor, chunks: torch.Tensor) -> torch.Tensor:
        """(B, 8, 32, 32) input latents + (B, 50, 384) windows -> (B, 4, 32, 32) predicted face latents."""
        audio = chunks.to(self.device, self.dtype) + self._positions
        sample = latents.to(self.device, self.dtype)
        return self.unet(sample, self._timestep, encoder_hidden_states=audio).sample

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """(B, 4, 32, 32) scaled latents -> uint8 (B, 256, 256, 3) BGR faces."""
        image = self.vae.decode(latents.to(self.dtype) / self.scaling).sample
        image = image.float().div_(2.0).add_(0.5).clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
        return image.permute(0, 2, 3, 1).flip(-1).cpu().numpy()

    def generate(self, latents: torch.Tensor, chunks: torch.Tensor) -> np.ndarray:
        """(B, 8, 32, 32) latents from ``face_latents`` + (B, 50, 384) from ``audio_chunks`` -> uint8 BGR faces."""
        if latents.shape[0] != chunks.shape[0]:
            raise ValueError(f"{latents.shape[0]} latents but {chunks.shape[0]} audio chunks")
        return self.decode(self.unet_step(latents, chunks))


def _compile(model: MuseTalk) -> None:
    model.unet = torch.compile(model.unet, mode="max-autotune-no-cudagraphs", dynamic=False)
    model.vae.decoder = torch.compile(model.vae.decoder, dynamic=False)
    log.info("MuseTalk UNet and VAE decoder compiled with torch.compile")


def load_musetalk(
    root: str | Path, precision: str = "auto", device: str | torch.device | None = None, compile: bool = False
) -> MuseTalk:
    """Load MuseTalk 1.5 from ``root`` (upstream's ``models/`` layout) strictly, ready for inference.

    ``precision``: ``auto`` (fp16 on CUDA, bf16 on CPUs with native bf16, else fp32), ``fp32``, ``bf16``
    or ``fp16``. ``compile`` applies ``torch.compile`` on CUDA. ``device`` None: CUDA when there is one.
    """
    root = Path(root)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = inference_dtype(target, precision)
    modules = [load_unet(root), load_vae(root), load_whisper_encoder(root)]
    # torch.nn.Module.to: diffusers' own .to() warns about fp32-pinned modules MuseTalk does not have
    unet, vae, whisper = (torch.nn.Module.to(m, device=target, dtype=dtype) for m in modules)
    model = MuseTalk(unet, vae, whisper, load_feature_extractor(root), target, dtype, root)
    if target.type == "cuda" and compile:
        _compile(model)
    log.info("MuseTalk 1.5 loaded from %s on %s (%s)", root, target.type, model.precision)
    return model
