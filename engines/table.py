"""The engine table: the one place a lip-sync engine is named.

One row per engine: the module that registers it, its kind (``cpu``: the fallback that needs no weights,
``neural``: loads weights, ``hosted``: a service renders the video), what it animates (``avatar``: stored
avatars, ``portrait``: one image, ``both``), its place in ``auto``'s order, whether auto needs CUDA for it,
its weights (manifest entry names), the setting naming a user's own copy, its licence, whether live sessions
can use it, and the settings its ``load`` receives. The schema's engine enum, auto's order, the weights
manifest's engine mapping, ``health`` and the README's engine list are derived from these rows; a new engine
is one more row plus its module (and its files in the weights manifest).

Settings are named here by their field names in ``handlers.settings.Settings`` (this module imports nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["cpu", "neural", "hosted"]
Input = Literal["avatar", "portrait", "both"]

NON_COMMERCIAL = (
    "Non-commercial: research/academic/personal use only (Rudrabha/Wav2Lip README: trained on LRS2, "
    "any form of commercial use is strictly prohibited)."
)
WAV2LIP256_LICENCE = (
    "Not stated for the weights: published by lipku/LiveTalking (code Apache-2.0), trained on "
    "Wav2Lip's design; confirm the terms with the publisher before commercial use."
)
MUSETALK_LICENCE = (
    "MIT (TMElyralab/MuseTalk: code and weights, commercial use allowed; sd-vae-ft-mse MIT, whisper-tiny "
    "Apache-2.0, face-parsing BiSeNet MIT)"
)
LIVEPORTRAIT_LICENCE = "MIT (KwaiVGI/LivePortrait: code and weights, commercial use allowed)"
SADTALKER_LICENCE = (
    "Apache-2.0 (OpenTalker/SadTalker code; the checkpoints are its v0.0.2-rc release assets, no separate "
    "licence stated: confirm before commercial use)"
)


@dataclass(frozen=True)
class EngineRow:
    name: str  # what requests, the registry and the weights manifest call it
    module: str  # imported on first load: registers the engine class (hosted: the service's client)
    kind: Kind
    input: Input = "both"
    auto: int | None = None  # place in auto's order, lowest first; None: only when asked for by name
    needs_cuda: bool = False  # auto passes it over without CUDA (a few frames/s on a CPU)
    # Manifest entry names. weights_set names the folder of an engine whose files are a set (every file
    # needed, the first stands for the set); without it, any one file serves, in order of preference.
    weights: tuple[str, ...] = ()
    weights_set: str | None = None
    extra_weights: tuple[str, ...] = ()  # optional files of a set, fetched with it
    checkpoint_setting: str | None = None  # Settings field naming a user's own file (or folder, for a set)
    licence: str = ""
    commercial_use: bool | None = None  # None: the terms of the user's own account or files
    live: bool = True  # live sessions can render with it
    precision_setting: str | None = None  # Settings field with its precision (auto, fp32, bf16, fp16)
    options: tuple[str, ...] = ()  # further Settings fields its load receives, named without the engine prefix


ROWS: tuple[EngineRow, ...] = (
    EngineRow(
        "liveportrait",
        "engines.liveportrait.talking",
        "neural",
        input="portrait",
        auto=10,
        needs_cuda=True,
        weights=(
            "liveportrait_warping",
            "liveportrait_appearance",
            "liveportrait_motion",
            "liveportrait_spade",
            "liveportrait_stitching",
        ),
        weights_set="liveportrait",
        checkpoint_setting="liveportrait_dir",
        licence=LIVEPORTRAIT_LICENCE,
        commercial_use=True,
        precision_setting="liveportrait_precision",
        options=("liveportrait_input_size", "liveportrait_compile"),
    ),
    EngineRow(  # seed 001: LivePortrait on CUDA, SadTalker when it cannot load
        "sadtalker",
        "engines.sadtalker.engine",
        "neural",
        input="portrait",
        auto=20,
        needs_cuda=True,
        weights=("sadtalker_256", "sadtalker_mapping_crop", "sadtalker_mapping_full"),
        weights_set="sadtalker",
        extra_weights=("sadtalker_512",),
        checkpoint_setting="sadtalker_dir",
        licence=SADTALKER_LICENCE,
        commercial_use=True,
        precision_setting="sadtalker_precision",
        options=(
            "sadtalker_size",
            "sadtalker_preprocess",
            "sadtalker_still",
            "sadtalker_pose_style",
            "sadtalker_expression_scale",
            "sadtalker_blink",
            "sadtalker_render_size",
        ),
    ),
    EngineRow(
        "musetalk",
        "engines.lipsync.musetalk",
        "neural",
        auto=30,
        needs_cuda=True,
        weights=("musetalk_unet", "musetalk_vae", "musetalk_whisper"),
        weights_set="musetalk",
        extra_weights=(
            "musetalk_unet_config",
            "musetalk_vae_config",
            "musetalk_whisper_config",
            "musetalk_whisper_preprocessor",
            "musetalk_face_parsing",
        ),
        licence=MUSETALK_LICENCE,
        commercial_use=True,
        precision_setting="musetalk_precision",
        options=("musetalk_compile",),
    ),
    EngineRow(
        "wav2lip96",
        "engines.lipsync.wav2lip",
        "neural",
        auto=50,
        weights=("wav2lip96_gan", "wav2lip96"),
        checkpoint_setting="wav2lip96_checkpoint",
        licence=NON_COMMERCIAL,
        commercial_use=False,
        precision_setting="wav2lip_precision",
    ),
    EngineRow(
        "wav2lip256",
        "engines.lipsync.wav2lip",
        "neural",
        auto=40,
        needs_cuda=True,
        weights=("wav2lip256",),
        checkpoint_setting="wav2lip256_checkpoint",
        licence=WAV2LIP256_LICENCE,
        commercial_use=False,
        precision_setting="wav2lip_precision",
    ),
    EngineRow(
        "viseme_warp",
        "engines.lipsync.viseme_warp",
        "cpu",
        auto=100,  # always last: it needs no weights and runs anywhere
        licence="This project's own code (no weights).",
        commercial_use=True,
    ),
    EngineRow(
        "d-id",
        "engines.hosted.did",
        "hosted",
        input="portrait",
        licence="D-ID's terms of service for your account (hosted: the video is rendered by D-ID).",
        live=False,
    ),
)


def rows() -> tuple[EngineRow, ...]:
    """The table as it stands now (read at call time, so a row added to ``ROWS`` counts at once)."""
    return ROWS


def row(name: str) -> EngineRow:
    """The row of engine ``name``; KeyError for a name the table does not hold."""
    for candidate in ROWS:
        if candidate.name == name:
            return candidate
    raise KeyError(name)


def names(kind: Kind | None = None) -> tuple[str, ...]:
    return tuple(r.name for r in ROWS if kind is None or r.kind == kind)


def auto_order() -> tuple[EngineRow, ...]:
    """The rows auto may choose, in the order it tries them (the CPU engine last)."""
    return tuple(sorted((r for r in ROWS if r.auto is not None), key=lambda r: r.auto or 0))


def row_of_module(module: str) -> EngineRow:
    """The row whose engine ``module`` implements (a hosted service's client names its engine this way)."""
    return next(r for r in ROWS if r.module == module)


CPU_ENGINE = names("cpu")[0]


def markdown() -> str:
    """The README's engine list: one line per row."""
    lines = [
        "| engine | kind | input | auto's order | needs CUDA | live | weights | your own copy | commercial use |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = {r.name: i for i, r in enumerate(auto_order(), 1)}
    for r in ROWS:
        files = " or ".join(f"`{w}`" for w in r.weights) or "—"
        if r.weights_set:
            files = f"`fetch-weights {r.name}` ({len(r.weights)} files in `{r.weights_set}/`)"
        own = f"`{r.checkpoint_setting.upper()}`" if r.checkpoint_setting else "—"
        use = {True: "yes", False: "no", None: "your terms"}[r.commercial_use]
        auto = str(order[r.name]) if r.name in order else "—"
        cuda, live = ("yes" if r.needs_cuda else "no"), ("yes" if r.live else "no")
        lines.append(f"| `{r.name}` | {r.kind} | {r.input} | {auto} | {cuda} | {live} | {files} | {own} | {use} |")
    return "\n".join(lines)
