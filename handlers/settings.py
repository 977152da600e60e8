"""One settings object for the handlers, built from the environment at start-up and passed in.

State (the file:// store, the avatar cache, weights; the orchestrator adds its job database and secrets) lives
under one folder that does not depend on the current directory: ``AVATARCTL_HOME``, by default
``$XDG_DATA_HOME/avatarctl`` (``~/.local/share/avatarctl``). Each path's own variable still wins.
"""

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from storage.access import InputPolicy
from storage.config import StorageSettings

LIVEPORTRAIT_INPUT_SIZES = (128, 256, 384, 512)
SADTALKER_SIZES = (256, 512)  # the two released weights files
HOME_ENV = "AVATARCTL_HOME"


def default_home() -> Path:
    """``$XDG_DATA_HOME/avatarctl``, else ``~/.local/share/avatarctl`` (AVATARCTL_HOME overrides it)."""
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "avatarctl"


def store_root_uri(root_uri: str) -> str:
    """A store's root as its objects' URIs start (file:// roots made absolute, as LocalStore names objects)."""
    if root_uri.lower().startswith("file:"):
        from storage.local import path_from_file_uri

        return path_from_file_uri(root_uri).absolute().as_uri()
    return root_uri.rstrip("/")


class Settings(BaseSettings):
    """Where things live and the limits every task enforces."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    # Who may use avatars placed by hand in AVATAR_LOCAL_PATH/{avatar_id} (LiveTalking's layout): `all` (one
    # tenant; a `.{avatar_id}.users` file beside a folder still limits it to the users it lists), `owned` (only
    # folders with such a file, for those users), `none` (avatars come from the store only).
    hand_placed_avatars: Literal["all", "owned", "none"] = Field(
        "all", validation_alias=AliasChoices("HAND_PLACED_AVATARS")
    )
    # Where state lives unless a path's own variable says otherwise (see the module docstring).
    avatarctl_home: Path = Field(default_factory=default_home, validation_alias=AliasChoices(HOME_ENV))
    # "" = under AVATARCTL_HOME: file://{home}/store, {home}/avatars, {home}/weights.
    avatar_store_uri: str = Field("", validation_alias=AliasChoices("AVATAR_STORE_URI"))
    avatar_local_path: Path = Field(Path(""), validation_alias=AliasChoices("AVATAR_LOCAL_PATH"))
    # Seconds between checks that a cached avatar's TAR is unchanged in the store (0: every request).
    avatar_revalidate_s: float = Field(30.0, ge=0, validation_alias=AliasChoices("AVATAR_REVALIDATE_S"))
    weights_dir: Path = Field(Path(""), validation_alias=AliasChoices("WEIGHTS_DIR"))
    wav2lip96_checkpoint: Path | None = Field(None, validation_alias=AliasChoices("WAV2LIP96_CHECKPOINT"))
    wav2lip256_checkpoint: Path | None = Field(None, validation_alias=AliasChoices("WAV2LIP256_CHECKPOINT"))
    # auto: fp16 on CUDA, bf16 on CPUs with native bf16 (2.6-2.9x faster, <= ~1 grey level off fp32), else fp32.
    wav2lip_precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", validation_alias=AliasChoices("WAV2LIP_PRECISION")
    )
    # LivePortrait: your own copy of the official layout (base_models/, retargeting_models/); else the one
    # fetched into WEIGHTS_DIR/liveportrait. Input size: the crop fed to the networks (256 upstream; 128 is
    # about 4x cheaper, with less detail).
    liveportrait_dir: Path | None = Field(None, validation_alias=AliasChoices("LIVEPORTRAIT_DIR"))
    liveportrait_precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", validation_alias=AliasChoices("LIVEPORTRAIT_PRECISION")
    )
    # an int checked against the sizes (a Literal of ints would refuse "256" as the environment spells it)
    liveportrait_input_size: int = Field(256, validation_alias=AliasChoices("LIVEPORTRAIT_INPUT_SIZE"))
    # torch.compile of the heaviest modules on CUDA (LivePortrait's W and G; MuseTalk's UNet and VAE decoder)
    liveportrait_compile: bool = Field(False, validation_alias=AliasChoices("LIVEPORTRAIT_COMPILE"))
    musetalk_precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", validation_alias=AliasChoices("MUSETALK_PRECISION")
    )
    musetalk_compile: bool = Field(False, validation_alias=AliasChoices("MUSETALK_COMPILE"))
    # SadTalker: your own copy of the official layout (checkpoints/SadTalker_V0.0.2_256.safetensors and the two
    # mapping files); else WEIGHTS_DIR/sadtalker. Size 512 needs SadTalker_V0.0.2_512.safetensors too.
    sadtalker_dir: Path | None = Field(None, validation_alias=AliasChoices("SADTALKER_DIR"))
    sadtalker_precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", validation_alias=AliasChoices("SADTALKER_PRECISION")
    )
    sadtalker_size: int = Field(256, validation_alias=AliasChoices("SADTALKER_SIZE"))  # checked below
    sadtalker_preprocess: Literal["crop", "extcrop", "full", "extfull"] = Field(
        "crop", validation_alias=AliasChoices("SADTALKER_PREPROCESS")
    )
    sadtalker_still: bool = Field(False, validation_alias=AliasChoices("SADTALKER_STILL"))
    sadtalker_pose_style: int = Field(0, ge=0, lt=46, validation_alias=AliasChoices("SADTALKER_POSE_STYLE"))
    sadtalker_expression_scale: float = Field(
        1.0, ge=0.0, le=3.0, validation_alias=AliasChoices("SADTALKER_EXPRESSION_SCALE")
    )
    sadtalker_blink: bool = Field(True, validation_alias=AliasChoices("SADTALKER_BLINK"))
    # Render at another size than the weights' (128: about 4x cheaper on a CPU, less detail); unset: the weights'.
    sadtalker_render_size: int | None = Field(None, validation_alias=AliasChoices("SADTALKER_RENDER_SIZE"))

    # Training-video limits (preprocess_avatar).
    max_video_bytes: int = Field(1024 * 1024 * 1024, validation_alias=AliasChoices("MAX_VIDEO_BYTES"))
    max_video_seconds: float = Field(300.0, validation_alias=AliasChoices("MAX_VIDEO_SECONDS"))
    max_video_side: int = Field(2160, validation_alias=AliasChoices("MAX_VIDEO_SIDE"))
    max_face_gap_frames: int = Field(12, validation_alias=AliasChoices("MAX_FACE_GAP_FRAMES"))

    # Generation limits and quality.
    max_audio_seconds: float = Field(600.0, validation_alias=AliasChoices("MAX_AUDIO_SECONDS"))
    video_crf: int = Field(18, validation_alias=AliasChoices("VIDEO_CRF"))
    video_preset: str = Field("veryfast", validation_alias=AliasChoices("VIDEO_PRESET"))
    # Decoded avatar frames kept in memory between requests (per process), in MiB.
    avatar_frame_cache_mb: int = Field(512, ge=0, validation_alias=AliasChoices("AVATAR_FRAME_CACHE_MB"))

    # Emotion stills.
    max_image_bytes: int = Field(20 * 1024 * 1024, validation_alias=AliasChoices("MAX_IMAGE_BYTES"))
    max_image_pixels: int = Field(40_000_000, validation_alias=AliasChoices("MAX_IMAGE_PIXELS"))
    emotion_max_side: int = Field(2048, validation_alias=AliasChoices("EMOTION_MAX_SIDE"))

    # Speech providers over HTTP.
    fish_api_key: str | None = Field(None, validation_alias=AliasChoices("FISH_API_KEY", "FISH_AUDIO_API_KEY"))
    fish_base_url: str = Field("https://api.fish.audio", validation_alias=AliasChoices("FISH_BASE_URL"))
    openai_api_key: str | None = Field(None, validation_alias=AliasChoices("OPENAI_API_KEY"))
    openai_base_url: str = Field("https://api.openai.com", validation_alias=AliasChoices("OPENAI_BASE_URL"))
    openai_tts_model: str = Field("gpt-4o-mini-tts", validation_alias=AliasChoices("OPENAI_TTS_MODEL"))

    # D-ID (`engine: d-id`): the key exactly as D-ID issues it; a talk is followed for at most DID_TIMEOUT_S.
    did_api_key: SecretStr | None = Field(None, validation_alias=AliasChoices("DID_API_KEY"))
    did_base_url: str = Field("https://api.d-id.com", validation_alias=AliasChoices("DID_BASE_URL"))
    did_timeout_s: float = Field(600.0, gt=0, validation_alias=AliasChoices("DID_TIMEOUT_S"))
    did_request_timeout_s: float = Field(30.0, gt=0, validation_alias=AliasChoices("DID_REQUEST_TIMEOUT_S"))
    did_poll_interval_s: float = Field(2.0, gt=0, validation_alias=AliasChoices("DID_POLL_INTERVAL_S"))
    did_poll_max_interval_s: float = Field(15.0, gt=0, validation_alias=AliasChoices("DID_POLL_MAX_INTERVAL_S"))
    # The orchestrator's public URL and webhook secret (its own variables): with both, hosted services call
    # back through it (D-ID's webhook) instead of being polled as often.
    public_base_url: str | None = Field(None, validation_alias=AliasChoices("PUBLIC_BASE_URL"))
    webhook_secret: SecretStr | None = Field(None, validation_alias=AliasChoices("WEBHOOK_SECRET"))

    # Tasks this process serves and loads engines for (RunPod: one image, several endpoints).
    worker_tasks: str = Field(
        "preprocess_avatar,generate_video,render_emotion", validation_alias=AliasChoices("WORKER_TASKS")
    )

    storage: StorageSettings = Field(default_factory=StorageSettings)

    @field_validator("liveportrait_input_size")
    @classmethod
    def _input_size(cls, size: int) -> int:
        if size not in LIVEPORTRAIT_INPUT_SIZES:
            raise ValueError(f"LIVEPORTRAIT_INPUT_SIZE must be one of {', '.join(map(str, LIVEPORTRAIT_INPUT_SIZES))}")
        return size

    @field_validator("sadtalker_size", "sadtalker_render_size")
    @classmethod
    def _sadtalker_size(cls, size: int | None, info: ValidationInfo) -> int | None:
        allowed = SADTALKER_SIZES if info.field_name == "sadtalker_size" else LIVEPORTRAIT_INPUT_SIZES
        if size is not None and size not in allowed:
            raise ValueError(f"{info.field_name.upper()} must be one of {', '.join(map(str, allowed))}")
        return size

    @model_validator(mode="after")
    def _paths_under_home(self) -> "Settings":
        self.avatarctl_home = self.avatarctl_home.expanduser().absolute()
        if not self.avatar_store_uri:
            self.avatar_store_uri = (self.avatarctl_home / "store").as_uri()
        if self.avatar_local_path == Path(""):
            self.avatar_local_path = self.avatarctl_home / "avatars"
        if self.weights_dir == Path(""):
            self.weights_dir = self.avatarctl_home / "weights"
        return self

    @property
    def input_storage(self) -> StorageSettings:
        """The storage settings inputs are read with: when ALLOWED_INPUT_PREFIXES is set, the configured store
        (AVATAR_STORE_URI, the operator's own: avatars, the orchestrator's uploads) is allowed too."""
        if not self.storage.input_prefixes:
            return self.storage
        prefixes = f"{self.storage.allowed_input_prefixes},{store_root_uri(self.avatar_store_uri)}/"
        return self.storage.model_copy(update={"allowed_input_prefixes": prefixes})

    @property
    def input_policy(self) -> InputPolicy:
        """What this worker may read (``storage.access``): ``input_storage``'s prefixes and ALLOW_FILE_URIS."""
        return InputPolicy.from_settings(self.input_storage)

    @property
    def served_tasks(self) -> list[str]:
        return [t.strip() for t in self.worker_tasks.split(",") if t.strip()]
