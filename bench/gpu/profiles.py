"""The two sizes of the GPU run: ``gpu`` (a lent CUDA machine, under 8 minutes) and ``cpu`` (this kind of
2-core machine, under 3 minutes, so CI keeps the script alive). Every section reads its sizes from here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Profile:
    name: str
    device: str
    budget_s: float  # the whole run, sections included; each section is also boxed (see BOXES_S)
    avatar_side: int  # the recorded avatar's frames (a crop of the astronaut with head motion)
    avatar_frames: int
    clip_seconds: float  # generate_video end to end (text spoken by eSpeak to about this length)
    e2e_requests: int  # generate_video requests in a row (the first with a cold avatar cache, then warm)
    e2e_audio_seconds: float | None  # give generate_video this much audio instead of text (the CPU run's few frames)
    first_frame_seconds: float  # the cold start's request: its first batch of frames is what the timing waits for
    render_seconds: float  # engine.render() throughput, per engine
    runs: int  # timed runs per figure (median), after one warm-up
    wav2lip_batches: tuple[int, ...]
    musetalk_batch: int
    musetalk_tiny: bool  # the tests' tiny MuseTalk (same code path) instead of the 3.4 GB full size
    liveportrait_batch: int
    live_streams: tuple[int, ...]  # concurrent sessions tried, in order, until one misses 25 fps
    live_seconds: float
    compile: tuple[str, ...]  # engines whose torch.compile variant runs (compiled on CUDA; on a CPU, the code path)
    settings: dict[str, object]  # worker settings of the run (fields), beyond the weights' locations
    pytest_box_s: float
    sections_box_s: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


GPU = Profile(
    name="gpu",
    device="cuda",
    budget_s=465.0,
    avatar_side=512,
    avatar_frames=100,
    clip_seconds=10.0,
    e2e_requests=2,
    e2e_audio_seconds=None,
    first_frame_seconds=1.0,
    render_seconds=4.0,
    runs=3,
    wav2lip_batches=(64, 128),
    musetalk_batch=16,
    musetalk_tiny=False,
    liveportrait_batch=16,
    live_streams=(1, 2, 4, 8, 16),
    live_seconds=2.0,
    compile=("liveportrait", "musetalk"),
    settings={"liveportrait_input_size": 256},
    pytest_box_s=150.0,
    sections_box_s={"weights": 150.0, "engine": 120.0, "compile": 120.0},
)

CPU = Profile(
    name="cpu",
    device="cpu",
    budget_s=175.0,
    avatar_side=192,
    avatar_frames=6,
    clip_seconds=0.1,
    e2e_requests=1,
    e2e_audio_seconds=0.08,
    first_frame_seconds=0.08,  # 2 frames: SadTalker refuses a 1-frame utterance (its pose net needs 2)
    render_seconds=0.08,
    runs=1,
    wav2lip_batches=(2,),
    musetalk_batch=2,
    musetalk_tiny=True,
    liveportrait_batch=1,
    live_streams=(1,),
    live_seconds=0.08,
    compile=("musetalk",),  # the same code as LivePortrait's, on the cheaper engine
    settings={"liveportrait_input_size": 128, "sadtalker_render_size": 128},  # about 4x cheaper on a CPU
    pytest_box_s=60.0,
    sections_box_s={"weights": 70.0, "engine": 60.0, "compile": 40.0},
)

PROFILES = {p.name: p for p in (GPU, CPU)}
