"""What the one-shot tasks answer."""

from typing import Any

from pydantic import BaseModel, Field

# ---- results -------------------------------------------------------------------------------


class StoredObject(BaseModel):
    uri: str
    url: str | None = Field(description="Signed or public URL; null when the store cannot sign (reason logged).")
    bytes: int
    sha256: str


class PreprocessAvatarResult(BaseModel):
    avatar: StoredObject
    num_frames: int
    fps: float
    img_size: int
    timings_ms: dict[str, float]
    engine: dict[str, Any]
    models: list[str] = ["wav2lip"]
    livetalking: dict[str, StoredObject] | None = Field(
        None, description="`export_livetalking`'s TARs by model.", exclude_if=lambda value: value is None
    )


class GenerateVideoResult(BaseModel):
    video: StoredObject
    video_id: str
    num_frames: int
    duration_s: float
    fps: float
    width: int
    height: int
    timings_ms: dict[str, float]
    engine: dict[str, Any]
    playlist: StoredObject | None = Field(
        None,
        description="The HLS playlist (ended) of a `stream: true` request; absent otherwise.",
        exclude_if=lambda value: value is None,
    )
    faces_found: int | None = Field(
        None, description="With `image`: the faces in it.", exclude_if=lambda value: value is None
    )
    face_index: int | None = Field(
        None, description="With `image`: the face animated (0 = the largest).", exclude_if=lambda value: value is None
    )
    quality: dict[str, Any] | None = Field(
        None,
        description="Measured on the frames made: `lip_sync` (mouth opening vs speech energy, Pearson at the best "
        "`lag_frames` within +-2), `silent_held_still`, `frames_face_lost`, `av_offset_ms`, `cost_share` of the "
        "render time; absent for driving-video and hosted renders.",
        exclude_if=lambda value: value is None,
    )
    low_quality: bool | None = Field(
        None,
        description="With `min_lip_sync`: true when the score was under it (the job failed as `low_quality`).",
        exclude_if=lambda value: value is None,
    )


class StreamSegment(BaseModel):
    """One item of a streamed generate_video: a segment already in the store (the result comes last)."""

    index: int
    uri: str
    url: str | None
    duration_s: float
    playlist_uri: str
    timings_ms: dict[str, float] = Field(description="`ready`: request start to segment stored; `upload`.")


class EmotionRender(BaseModel):
    emotion: str
    intensity: float
    uri: str
    url: str | None
    width: int
    height: int
    latency_ms: float


class RenderEmotionResult(BaseModel):
    renders: list[EmotionRender]
    engine: dict[str, Any]
    gpu_used: bool
    faces_found: int = Field(1, description="The faces in the image.")
    face_index: int = Field(0, description="The face rendered (0 = the largest).")
