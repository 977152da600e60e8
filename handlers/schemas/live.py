"""The live session: the worker's long-running task and its control channel."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints, model_validator

from handlers.schemas.tasks import (
    LIVE_ENGINES,
    MAX_TEXT_CHARS,
    REQUEST_MODELS,
    Identifier,
    LipSyncEngineName,
    TaskRequest,
    Voice,
    _check_uri,
    _Strict,
    require_one_of,
)

# ---- live sessions (the worker's long-running task and its control channel) -------------------
#
# A live session runs on a worker (RunPod, Modal or a local worker process) as the task `live_session`.
# The worker never accepts connections: it dials out to the orchestrator's per-session control URL
# (`control.url`, authenticated with `Authorization: Bearer <control.token>`):
#
#   POST {url}/answer    LiveAnswer          the SDP answer, once, as soon as the peer connection is set up
#   GET  {url}/commands?after=<seq>&wait=<s> -> SessionCommands (long-poll; 410 once the session was ended)
#   POST {url}/events    SessionEvents       `said` (per say or play command), `heartbeat` (every few s)
#   POST {url}/end       SessionEnd          once, when the session ends for any reason
#
# Media flows browser <-> worker over ICE (STUN/TURN from `ice_servers`); the data channel goes straight
# to the worker. The task's result is a LiveSessionResult when the session is over.

LIVE_SESSION_TASK = "live_session"  # a task of the workers, not a one-shot job (not in TaskName / REQUEST_MODELS)
SESSION_ID_PATTERN = r"^[0-9a-f]{32}$"
MAX_SDP_CHARS = 100_000

SessionId = Annotated[str, StringConstraints(pattern=SESSION_ID_PATTERN)]


class SessionDescription(BaseModel):
    """A WebRTC session description, as RTCSessionDescription's JSON."""

    sdp: str = Field(max_length=MAX_SDP_CHARS)
    type: Literal["offer", "answer"]


class IceServer(_Strict):
    """One STUN/TURN server, as RTCIceServer's JSON (``ICE_SERVERS`` holds a list of these)."""

    urls: str | list[str] = Field(description="stun:host:port, turn:host:port?transport=udp|tcp, turns:...")
    username: str | None = None
    credential: str | None = None


class LiveControl(_Strict):
    """Where the worker reports and takes commands: the orchestrator's per-session control URL and token."""

    url: str = Field(
        description="Base URL of this session's control routes (https://, or http:// inside a private network)."
    )
    token: str = Field(min_length=16, max_length=256, description="Bearer token of this session's control routes.")


class LiveSessionRequest(TaskRequest):
    task: Literal["live_session"] = "live_session"
    session_id: SessionId
    user_id: Identifier
    avatar_id: Identifier | None = None
    image: str | None = Field(None, description="Portrait URI, used instead of an avatar.")
    engine: LipSyncEngineName = LipSyncEngineName.auto
    voice: Voice = Field(default_factory=Voice)
    offer: SessionDescription
    control: LiveControl
    ice_servers: list[IceServer] = Field(default_factory=list, max_length=8)
    max_duration_s: float = Field(3600.0, gt=0, le=6 * 3600, description="The session ends after this long.")
    idle_timeout_s: float = Field(300.0, gt=0, description="The session ends after this long without input.")

    @model_validator(mode="after")
    def _one_source(self) -> "LiveSessionRequest":
        require_one_of(self, "avatar_id", "image")
        if self.engine not in LIVE_ENGINES:
            raise ValueError(f"`engine: {self.engine}` is not live-capable: use one of {', '.join(LIVE_ENGINES)}")
        if self.image is not None:
            _check_uri(self.image)
        if self.offer.type != "offer":
            raise ValueError("`offer.type` must be `offer`")
        return self


class LiveAnswer(BaseModel):
    """Worker -> orchestrator: the SDP answer and the engine the session renders with."""

    answer: SessionDescription
    engine: dict[str, Any] = Field(default_factory=dict)


class SessionCommand(BaseModel):
    """Orchestrator -> worker: `say` (speak `text`), `play` (play the speech file `audio`), each cutting off what
    plays unless `queued` (then after it), `interrupt` (stop speaking, drop what is queued), `stop`."""

    seq: int = Field(ge=1)
    kind: Literal["say", "play", "interrupt", "stop"]
    text: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    voice: Voice | None = None
    audio: str | None = Field(None, max_length=2048, description="`play`: the audio file's URI (in the store).")
    queued: bool = Field(False, description="`say`, `play`: after the speech scheduled, not cutting it off.")


class SessionCommands(BaseModel):
    commands: list[SessionCommand]


class LiveSessionStats(BaseModel):
    """What a session did; reported with heartbeats and at its end."""

    seconds: float = 0.0
    frames_sent: int = 0
    frames_dropped: int = 0
    frames_repeated: int = 0
    utterances: int = 0
    engine: str | None = None
    quality: dict[str, Any] | None = Field(
        None,
        description="generate_video's `quality` for the frames sent so far (engines.quality.QualityMeter's report).",
        exclude_if=lambda value: value is None,
    )


class SessionEvent(BaseModel):
    kind: Literal["said", "heartbeat", "error"]
    seq: int | None = Field(None, description="The command this answers (`said`, `error`).")
    duration_s: float | None = Field(None, description="`said`: seconds of speech now playing.")
    error_code: str | None = None
    error: str | None = None
    stats: LiveSessionStats | None = None


class SessionEvents(BaseModel):
    events: list[SessionEvent] = Field(max_length=64)


SessionEndReason = Literal["closed", "stopped", "idle", "max_duration", "peer_failed", "error"]


class SessionEnd(BaseModel):
    reason: SessionEndReason
    error_code: str | None = None
    error: str | None = None
    stats: LiveSessionStats = Field(default_factory=LiveSessionStats)


class LiveSessionResult(BaseModel):
    session_id: str
    reason: SessionEndReason
    stats: LiveSessionStats


class SayRequest(_Strict):
    """What a live avatar is asked to say: the body of `/say`, and of a data-channel message as JSON (a plain
    text message is its `text`)."""

    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    voice: Voice = Field(default_factory=Voice)

    @model_validator(mode="after")
    def _something_to_say(self) -> "SayRequest":
        if not self.text.strip():
            raise ValueError("`text` is empty: give the sentence to speak")
        return self


TASK_MODELS: dict[str, type[TaskRequest]] = {**REQUEST_MODELS, LIVE_SESSION_TASK: LiveSessionRequest}
"""Every task a worker may be given: the one-shot jobs and the live session."""
