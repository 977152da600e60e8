"""The one-shot tasks' requests (preprocess_avatar, generate_video, render_emotion, health) and the types they share."""

from enum import Enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from engines import table
from engines.constants import DEFAULT_VOICE_PROVIDER, EMOTIONS, IMAGE_CONTENT_TYPES, MAX_FACE_INDEX, VOICE_PROVIDERS
from handlers.driving_options import DrivingVideoOptions, check_driven_request

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
DEFAULT_USER_ID = "default"  # the user of requests that name none (the seeds' routes, the CLIs)
MAX_TEXT_CHARS = 5000
URI_SCHEMES = ("s3://", "gs://", "file://", "https://", "http://", "data:")

FACE_INDEX_HELP = (
    "Which face of a photo with several: 0 = the largest (the default), 1 = the next largest, ... "
    "The result says how many it has (`faces_found`) and which one was used (`face_index`)."
)

Identifier = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
"""Avatar, user, video and render ids: letters, digits, `_` and `-`, 1 to 64 characters."""


def _check_uri(value: str) -> str:
    if not value.startswith(URI_SCHEMES):
        allowed = ", ".join(URI_SCHEMES)
        raise ValueError(f"unsupported URI {value[:80]!r}: use one of {allowed}")
    return value


def require_one_of(model: BaseModel, first: str, second: str) -> None:
    """Refuse a request that gives both or neither of two alternative fields."""
    if (getattr(model, first) is None) == (getattr(model, second) is None):
        raise ValueError(f"give exactly one of `{first}` or `{second}`")


class TaskName(str, Enum):
    preprocess_avatar = "preprocess_avatar"
    generate_video = "generate_video"
    render_emotion = "render_emotion"
    health = "health"


class AvatarModel(str, Enum):
    """What an avatar can be prepared for: LiveTalking's wav2lip layout (always) and MuseTalk's material."""

    wav2lip = "wav2lip"
    musetalk = "musetalk"


def lipsync_engine_enum() -> type[Enum]:
    """``auto`` and every row of ``engines.table``, in its order, as the str Enum the schema, CLI and API share
    (member names are the values with ``-`` as ``_``: ``LipSyncEngineName.d_id``)."""
    members = [("auto", "auto"), *((name.replace("-", "_"), name) for name in table.names())]
    return Enum("LipSyncEngineName", members, type=str, module=__name__)


LipSyncEngineName = lipsync_engine_enum()
HOSTED_ENGINES = table.names("hosted")  # a service renders the whole video: one portrait, not streamed
LIVE_ENGINES = ("auto", *(row.name for row in table.rows() if row.live))


class ExpressionEngineName(str, Enum):
    auto = "auto"
    liveportrait = "liveportrait"
    landmark_warp = "landmark_warp"


Emotion = Enum("Emotion", [(name, name) for name in EMOTIONS], type=str, module=__name__)
"""The seven emotions of ``engines.constants.EMOTIONS``, as the str Enum the schema, CLI and API share."""

ImageFormat = Enum("ImageFormat", [(name, name) for name in IMAGE_CONTENT_TYPES], type=str, module=__name__)
"""Output formats of emotion stills (``engines.constants.IMAGE_CONTENT_TYPES``)."""

VoiceProvider = Literal[VOICE_PROVIDERS]  # type: ignore[valid-type]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=True, validate_default=True)


class TaskRequest(_Strict):
    """Fields every task accepts."""

    task: TaskName
    store: str | None = Field(
        None,
        description="Root URI of the object store; None means env AVATAR_STORE_URI, else file://{AVATARCTL_HOME}/store.",
    )

    @model_validator(mode="after")
    def _store_uri(self) -> "TaskRequest":
        if self.store is not None and not self.store.startswith(("s3://", "gs://", "file://")):
            raise ValueError("`store` must be an s3://, gs:// or file:// root URI")
        return self


class PreprocessAvatarRequest(TaskRequest):
    task: Literal[TaskName.preprocess_avatar] = TaskName.preprocess_avatar
    avatar_id: Identifier
    user_id: Identifier
    video: str = Field(description="URI of the training video (s3://, gs://, file://, https://).")
    img_size: Literal[96, 256] = 256
    pads: tuple[int, int, int, int] = Field(
        (0, 10, 0, 0), description="Box padding [top, bottom, left, right] in pixels."
    )
    face_det_batch_size: int = Field(
        16,
        ge=1,
        le=256,
        description="LiveTalking's S3FD batch size, kept for compatibility; the CPU tracker detects frame by frame.",
    )
    nosmooth: bool = False
    model: AvatarModel | None = Field(
        None, description="Engine whose material to prepare besides the wav2lip files (LiveTalking's `model`)."
    )
    models: list[AvatarModel] | None = Field(
        None, max_length=2, description="Several at once, e.g. [wav2lip, musetalk]."
    )
    bbox_shift: int = Field(0, ge=-64, le=64, description="MuseTalk: moves the face box's nose line (px), as upstream.")
    extra_margin: int = Field(10, ge=0, le=64, description="MuseTalk v1.5: pixels added below the chin, as upstream.")
    export_livetalking: list[AvatarModel] = Field(
        default_factory=list, max_length=2, description="Also store TARs LiveTalking's loaders play unchanged."
    )

    @model_validator(mode="after")
    def _video_uri(self) -> "PreprocessAvatarRequest":
        _check_uri(self.video)
        if any(abs(p) > 512 for p in self.pads):
            raise ValueError("`pads` values must be within -512..512 pixels")
        if self.model is not None and self.models is not None:
            raise ValueError("give `model` or `models`, not both")
        if not set(self.export_livetalking) <= set(self.prepared_models):
            raise ValueError("`export_livetalking` can only name the models the avatar is prepared for (`models`)")
        return self

    @property
    def prepared_models(self) -> list[str]:
        """The engines the avatar is prepared for: the wav2lip files always, then the others asked for."""
        asked = [AvatarModel(m).value for m in (self.models or ([self.model] if self.model else []))]
        return [AvatarModel.wav2lip.value, *(m for m in dict.fromkeys(asked) if m != AvatarModel.wav2lip.value)]


class Voice(_Strict):
    provider: VoiceProvider = DEFAULT_VOICE_PROVIDER
    name: str | None = Field(None, max_length=64, description="Voice name (eSpeak: e.g. en-us; OpenAI: alloy).")
    rate: int | None = Field(None, ge=80, le=450, description="Words per minute (eSpeak).")
    pitch: int | None = Field(None, ge=0, le=100, description="Pitch 0..100 (eSpeak).")
    ref_id: str | None = Field(None, max_length=128, description="Fish Audio voice reference id (the seeds' ref_file).")


class GenerateVideoRequest(TaskRequest):
    task: Literal[TaskName.generate_video] = TaskName.generate_video
    user_id: Identifier
    avatar_id: Identifier | None = None
    image: str | None = Field(None, description="Portrait URI, used instead of an avatar.")
    text: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    audio: str | None = Field(None, description="Speech audio URI (wav, mp3, m4a, ogg), used instead of text.")
    driving_video: str | None = Field(
        None,
        description="LivePortrait reenactment: a driving video URI (or a motion template .npz) whose face motion "
        "animates `image` (or the stored avatar's frames); its sound is kept unless `audio` is given.",
    )
    driving_options: DrivingVideoOptions | None = Field(None, description="How `driving_video` drives the face.")
    voice: Voice = Field(default_factory=Voice)
    engine: LipSyncEngineName = LipSyncEngineName.auto
    video_id: Identifier | None = Field(None, description="Output id; generated when absent.")
    face_index: int | None = Field(None, ge=0, le=MAX_FACE_INDEX, description=FACE_INDEX_HELP + " With `image` only.")
    stream: bool = Field(
        False,
        description="Also store the video as fMP4 segments plus an HLS playlist while it renders "
        "(`generated-videos/{user_id}/{video_id}/stream/index.m3u8`); streaming callers get one item per segment.",
    )

    min_lip_sync: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="Fail as `low_quality` when the result's `quality.lip_sync` is under this (0.5: the mouth "
        "clearly follows the speech); the video is still stored and the error carries the result.",
    )

    @model_validator(mode="after")
    def _one_source_each(self) -> "GenerateVideoRequest":
        require_one_of(self, "avatar_id", "image")
        if self.min_lip_sync is not None and (self.driving_video is not None or self.engine in HOSTED_ENGINES):
            raise ValueError("`min_lip_sync` applies to lip-sync renders: not with `driving_video` or a hosted engine")
        if self.driving_video is not None:
            check_driven_request(self.text, self.engine, self.stream)
        else:
            require_one_of(self, "text", "audio")
            if self.driving_options is not None:
                raise ValueError("`driving_options` need a `driving_video`")
        if self.engine in HOSTED_ENGINES and (self.image is None or self.stream or self.face_index is not None):
            raise ValueError(
                f"`engine: {self.engine}` animates one portrait: give `image`, without `stream` or `face_index`"
            )
        if self.face_index is not None and self.image is None:
            raise ValueError("`face_index` picks a face of `image`; an avatar has one face already")
        if self.text is not None and not self.text.strip():
            raise ValueError("`text` is empty: give the sentence to speak")
        for uri in (self.image, self.audio, self.driving_video):
            if uri is not None:
                _check_uri(uri)
        return self


class RenderEmotionRequest(TaskRequest):
    task: Literal[TaskName.render_emotion] = TaskName.render_emotion
    user_id: Identifier
    image: str | None = Field(None, description="Portrait URI or data: base64 URI.")
    avatar_id: Identifier | None = Field(
        None, description="Instead of `image`: this user's avatar (its first frame is the portrait)."
    )
    emotion: Emotion | None = None
    emotions: list[Emotion] | None = Field(None, min_length=1, max_length=7)
    intensity: float = Field(0.7, ge=0.0, le=1.0)
    output_format: ImageFormat = ImageFormat.png
    render_id: Identifier | None = Field(None, description="Output id prefix; generated when absent.")
    engine: ExpressionEngineName = ExpressionEngineName.auto
    face_index: int | None = Field(None, ge=0, le=MAX_FACE_INDEX, description=FACE_INDEX_HELP)

    @model_validator(mode="after")
    def _one_emotion_field(self) -> "RenderEmotionRequest":
        require_one_of(self, "emotion", "emotions")
        require_one_of(self, "image", "avatar_id")
        if self.image is not None:
            _check_uri(self.image)
        return self

    @property
    def emotion_list(self) -> list[str]:
        return [self.emotion] if self.emotion is not None else list(dict.fromkeys(self.emotions or []))


class HealthRequest(TaskRequest):
    task: Literal[TaskName.health] = TaskName.health


REQUEST_MODELS: dict[str, type[TaskRequest]] = {
    TaskName.preprocess_avatar.value: PreprocessAvatarRequest,
    TaskName.generate_video.value: GenerateVideoRequest,
    TaskName.render_emotion.value: RenderEmotionRequest,
    TaskName.health.value: HealthRequest,
}
