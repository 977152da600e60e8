"""`generate_video`'s `driving_video` rules and `driving_options` (part of the task contract, ``handlers.schemas``):
how a driving video moves the face, upstream LivePortrait's switches under their own names (without ``flag_``)."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DrivingVideoOptions(BaseModel):
    """LivePortrait's video-driven switches: upstream's inference and crop arguments, without ``flag_``."""

    model_config = ConfigDict(extra="forbid")

    relative_motion: bool = Field(True, description="Motion since the first driving frame (false: absolute).")
    animation_region: Literal["all", "exp", "pose", "lip", "eyes"] = "all"
    stitching: bool = Field(True, description="Stitch the face to the shoulders (upstream: off for large motion).")
    paste_back: bool = Field(True, description="Paste the face into the source frame (needs stitching), else the crop.")
    crop_driving_video: bool = Field(False, description="Crop a square driving video too (others always are).")
    driving_option: Literal["expression-friendly", "pose-friendly"] = "expression-friendly"
    driving_multiplier: float = Field(1.0, gt=0.0, le=4.0)
    normalize_lip: bool = Field(False, description="Close the source's open lips first (relative motion).")
    eye_retargeting: bool = Field(False, description="Upstream's work-in-progress eye-open transfer.")
    lip_retargeting: bool = Field(False, description="Upstream's work-in-progress lip-open transfer.")
    scale: float = Field(2.3, ge=1.0, le=4.0, description="Source crop size over the face (larger: smaller face).")
    vx_ratio: float = Field(0.0, ge=-1.0, le=1.0, description="Source crop offset, of its size.")
    vy_ratio: float = Field(-0.125, ge=-1.0, le=1.0, description="Source crop offset (negative: up).")
    scale_crop_driving_video: float = Field(2.2, ge=1.0, le=4.0)
    vx_ratio_crop_driving_video: float = Field(0.0, ge=-1.0, le=1.0)
    vy_ratio_crop_driving_video: float = Field(-0.1, ge=-1.0, le=1.0)
    smooth_observation_variance: float = Field(3e-7, gt=0.0, le=1.0, description="Source-video smoothing.")


DRIVEN_ENGINES = ("auto", "liveportrait")


def check_driven_request(text: str | None, engine: str, stream: bool) -> None:
    """`driving_video` sets the timing and the face motion: `audio` may replace its sound, `text` may not."""
    if text is not None:
        raise ValueError("`driving_video` sets the timing: give `audio` to replace its sound, not `text`")
    if engine not in DRIVEN_ENGINES:
        raise ValueError("`driving_video` is rendered by LivePortrait: leave `engine` as auto or liveportrait")
    if stream:
        raise ValueError("`stream` is not offered with `driving_video`")
