"""Orchestrator settings: where jobs are stored, which backend runs each task, limits and secrets.

Built from the environment once (``OrchestratorSettings()``) and passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from handlers.schemas import IceServer
from handlers.settings import HOME_ENV, default_home

ICE_URL_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")
LIVE_SESSION_END_MARGIN_S = 60.0  # a worker past its session's maximum length has this long to end it


class BackendKind(str, Enum):
    """Where a job runs: in this process, on a RunPod endpoint, or on a deployed Modal class."""

    local = "local"
    runpod = "runpod"
    modal = "modal"


@dataclass(frozen=True)
class BackendSpec:
    """A parsed backend spec: ``local``, ``runpod:<endpoint_id>`` or ``modal:<app>/<Class>``."""

    kind: BackendKind
    target: str = ""

    def __str__(self) -> str:
        return self.kind.value if self.kind is BackendKind.local else f"{self.kind.value}:{self.target}"


def parse_backend_spec(spec: str) -> BackendSpec:
    """Parse a backend spec; ValueError naming the accepted forms when it is malformed."""
    kind, _, target = spec.strip().partition(":")
    forms = "`local`, `runpod:<endpoint_id>` or `modal:<app>/<Class>`"
    if kind == BackendKind.local.value and not target:
        return BackendSpec(BackendKind.local)
    if kind == BackendKind.runpod.value and target and "/" not in target:
        return BackendSpec(BackendKind.runpod, target)
    if kind == BackendKind.modal.value:
        app, _, cls = target.partition("/")
        if app and cls and "/" not in cls:
            return BackendSpec(BackendKind.modal, target)
    raise ValueError(f"backend {spec!r} is not valid: use {forms}")


class OrchestratorSettings(BaseSettings):
    """Everything the job service, its backends and the HTTP API read from the environment."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    # State: the job database and the API's secrets live under AVATARCTL_HOME unless set (handlers.settings).
    avatarctl_home: Path = Field(default_factory=default_home, validation_alias=AliasChoices(HOME_ENV))
    database_url: str = Field("", validation_alias=AliasChoices("DATABASE_URL"))  # "": sqlite:///{home}/jobs.db

    # Which backend runs each task: `local`, `runpod:<endpoint_id>` or `modal:<app>/<Class>`.
    backend_preprocess_avatar: str = Field("local", validation_alias=AliasChoices("BACKEND_PREPROCESS_AVATAR"))
    backend_generate_video: str = Field("local", validation_alias=AliasChoices("BACKEND_GENERATE_VIDEO"))
    backend_render_emotion: str = Field("local", validation_alias=AliasChoices("BACKEND_RENDER_EMOTION"))
    backend_health: str = Field("local", validation_alias=AliasChoices("BACKEND_HEALTH"))
    backend_live_session: str = Field("local", validation_alias=AliasChoices("BACKEND_LIVE_SESSION"))

    runpod_api_key: str | None = Field(None, validation_alias=AliasChoices("RUNPOD_API_KEY"))
    runpod_base_url: str = Field("https://api.runpod.ai/v2", validation_alias=AliasChoices("RUNPOD_BASE_URL"))

    # Execution time limits per task (the seeds' LIVETALKING_* names are accepted).
    avatar_timeout_s: float = Field(
        1800.0, gt=0, validation_alias=AliasChoices("AVATAR_TIMEOUT_S", "LIVETALKING_AVATAR_TIMEOUT")
    )
    video_timeout_s: float = Field(
        600.0, gt=0, validation_alias=AliasChoices("VIDEO_TIMEOUT_S", "LIVETALKING_VIDEO_TIMEOUT")
    )
    emotion_timeout_s: float = Field(300.0, gt=0, validation_alias=AliasChoices("EMOTION_TIMEOUT_S"))
    health_timeout_s: float = Field(60.0, gt=0, validation_alias=AliasChoices("HEALTH_TIMEOUT_S"))
    # How long a job may wait for a worker before it starts (on top of its execution limit).
    queue_timeout_s: float = Field(3600.0, ge=0, validation_alias=AliasChoices("QUEUE_TIMEOUT_S"))

    # Seed 002's provider switch for POST /generate: `d-id` renders with D-ID (engine `d-id`, DID_API_KEY on
    # the workers) instead of the in-process engines.
    avatar_provider: Literal["sadtalker", "d-id"] = Field("sadtalker", validation_alias=AliasChoices("AVATAR_PROVIDER"))

    api_token: str | None = Field(None, validation_alias=AliasChoices("API_TOKEN"))
    webhook_secret: str | None = Field(None, validation_alias=AliasChoices("WEBHOOK_SECRET"))
    public_base_url: str | None = Field(None, validation_alias=AliasChoices("PUBLIC_BASE_URL"))
    # The key of the API's signed file URLs (results in a file:// store); generated under {home}/secrets when unset.
    url_signing_secret: str | None = Field(None, min_length=16, validation_alias=AliasChoices("URL_SIGNING_SECRET"))

    # HTTP request bodies (uploads excepted: they stream to disk under their own limits), and `data:` inputs
    # over MAX_INLINE_DATA_BYTES, which are stored in the store and passed by URI instead of kept in the job row.
    max_request_bytes: int = Field(32 * 2**20, ge=1024, validation_alias=AliasChoices("MAX_REQUEST_BYTES"))
    max_inline_data_bytes: int = Field(256 * 2**10, ge=0, validation_alias=AliasChoices("MAX_INLINE_DATA_BYTES"))
    # Tenancy: bearer token -> the user ids it may act for (JSON); API_TOKEN stays the operator's, for every user.
    tenant_tokens: dict[str, list[str]] = Field(default_factory=dict, validation_alias=AliasChoices("TENANT_TOKENS"))
    # Comma-separated URI prefixes inputs must start with (empty: any); the workers enforce the same variable.
    allowed_input_prefixes: str = Field("", validation_alias=AliasChoices("ALLOWED_INPUT_PREFIXES"))

    # GET /v1/jobs/{id}/events: open streams per tenant (the operator counts as one) and in all, and how long
    # one stream may stay open before it ends with an `expired` event (the client reconnects).
    event_streams_per_tenant: int = Field(16, ge=1, validation_alias=AliasChoices("EVENT_STREAMS_PER_TENANT"))
    max_event_streams: int = Field(256, ge=1, validation_alias=AliasChoices("MAX_EVENT_STREAMS"))
    event_stream_max_s: float = Field(3600.0, gt=0, validation_alias=AliasChoices("EVENT_STREAM_MAX_S"))

    poll_interval_s: float = Field(1.0, gt=0, validation_alias=AliasChoices("POLL_INTERVAL_S"))
    poll_max_interval_s: float = Field(15.0, gt=0, validation_alias=AliasChoices("POLL_MAX_INTERVAL_S"))
    local_workers: int = Field(2, ge=1, le=64, validation_alias=AliasChoices("LOCAL_WORKERS"))
    # Tries of one remote call on transient errors, and runs of a local job across restarts.
    max_attempts: int = Field(3, ge=1, le=20, validation_alias=AliasChoices("MAX_ATTEMPTS"))
    # Replicas: how long a replica's claim on a job lasts without renewal (renewed every third of it), and
    # how long a local runner may stay silent before another replica runs its job again.
    lease_s: float = Field(15.0, ge=0.5, le=3600, validation_alias=AliasChoices("LEASE_S"))

    # Live sessions (orchestrator.core.live): caps across every replica, the session's limits (sent in its task),
    # how long the API waits for the worker, and the ICE servers browsers and workers use.
    realtime_max_sessions: int = Field(4, ge=1, validation_alias=AliasChoices("REALTIME_MAX_SESSIONS"))
    realtime_max_sessions_per_user: int = Field(
        2, ge=1, validation_alias=AliasChoices("REALTIME_MAX_SESSIONS_PER_USER")
    )
    realtime_max_duration_s: float = Field(
        3600.0, gt=0, le=6 * 3600, validation_alias=AliasChoices("REALTIME_MAX_DURATION_S")
    )
    realtime_idle_timeout_s: float = Field(300.0, gt=0, validation_alias=AliasChoices("REALTIME_IDLE_TIMEOUT_S"))
    realtime_answer_timeout_s: float = Field(60.0, gt=0, validation_alias=AliasChoices("REALTIME_ANSWER_TIMEOUT_S"))
    realtime_say_timeout_s: float = Field(30.0, gt=0, validation_alias=AliasChoices("REALTIME_SAY_TIMEOUT_S"))
    realtime_heartbeat_timeout_s: float = Field(
        30.0, gt=0, validation_alias=AliasChoices("REALTIME_HEARTBEAT_TIMEOUT_S")
    )
    # Address space of one local session process (RLIMIT_AS; the local backend runs one session per process).
    realtime_session_memory_mb: int = Field(4096, ge=256, validation_alias=AliasChoices("REALTIME_SESSION_MEMORY_MB"))
    ice_servers: list[IceServer] = Field(
        default_factory=list, max_length=8, validation_alias=AliasChoices("ICE_SERVERS")
    )
    turn_secret: str | None = Field(None, validation_alias=AliasChoices("TURN_SECRET"))

    # LiveTalking's web API (``orchestrator.api.livetalking``): its routes, whose sessions, which avatar.
    livetalking_routes: bool = Field(True, validation_alias=AliasChoices("LIVETALKING_ROUTES"))
    livetalking_prefix: str = Field(
        "", pattern=r"^(/[A-Za-z0-9_.-]+)*$", validation_alias=AliasChoices("LIVETALKING_PREFIX")
    )
    livetalking_user_id: str | None = Field(None, validation_alias=AliasChoices("LIVETALKING_USER_ID"))
    livetalking_avatar_id: str | None = Field(None, validation_alias=AliasChoices("LIVETALKING_AVATAR_ID"))
    livetalking_image: str | None = Field(None, validation_alias=AliasChoices("LIVETALKING_IMAGE"))
    livetalking_web_dir: Path | None = Field(None, validation_alias=AliasChoices("LIVETALKING_WEB_DIR"))
    livetalking_cors_origins: str = Field("", validation_alias=AliasChoices("LIVETALKING_CORS_ORIGINS"))
    # The OpenAI-compatible LLM that answers LiveTalking's `type: "chat"` (POST {LLM_BASE_URL}/chat/completions).
    llm_base_url: str | None = Field(None, validation_alias=AliasChoices("LLM_BASE_URL"))
    llm_api_key: str | None = Field(None, validation_alias=AliasChoices("LLM_API_KEY"))
    llm_model: str | None = Field(None, validation_alias=AliasChoices("LLM_MODEL"))
    llm_system_prompt: str = Field(
        "You are a friendly assistant speaking through a talking avatar: answer in a few short sentences.",
        validation_alias=AliasChoices("LLM_SYSTEM_PROMPT"),
    )
    llm_timeout_s: float = Field(60.0, gt=0, validation_alias=AliasChoices("LLM_TIMEOUT_S"))

    @model_validator(mode="after")
    def _state_under_home(self) -> OrchestratorSettings:
        self.avatarctl_home = self.avatarctl_home.expanduser().absolute()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.avatarctl_home / 'jobs.db'}"
        return self

    @property
    def secrets_dir(self) -> Path:
        return self.avatarctl_home / "secrets"

    @field_validator(
        "backend_preprocess_avatar",
        "backend_generate_video",
        "backend_render_emotion",
        "backend_health",
        "backend_live_session",
    )
    @classmethod
    def _valid_backend(cls, value: str) -> str:
        return str(parse_backend_spec(value))

    @field_validator("ice_servers")
    @classmethod
    def _ice_urls(cls, servers: list[IceServer]) -> list[IceServer]:
        for server in servers:
            for url in [server.urls] if isinstance(server.urls, str) else server.urls:
                if not url.startswith(ICE_URL_SCHEMES):
                    raise ValueError(f"ICE server URL {url[:80]!r} must start with one of {', '.join(ICE_URL_SCHEMES)}")
        return servers

    @field_validator("runpod_base_url", "public_base_url", "llm_base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @property
    def input_prefixes(self) -> tuple[str, ...]:
        """ALLOWED_INPUT_PREFIXES as a tuple (empty: every input URI is allowed)."""
        return tuple(prefix.strip() for prefix in self.allowed_input_prefixes.split(",") if prefix.strip())

    @property
    def auth_required(self) -> bool:
        return bool(self.api_token or self.tenant_tokens)

    def backend_spec(self, task: str) -> BackendSpec:
        """The backend configured for ``task``."""
        return parse_backend_spec(getattr(self, f"backend_{task}"))

    def timeout_for(self, task: str) -> float:
        """The execution time limit of ``task`` in seconds."""
        return {
            "preprocess_avatar": self.avatar_timeout_s,
            "generate_video": self.video_timeout_s,
            "render_emotion": self.emotion_timeout_s,
            "live_session": self.live_session_timeout_s,
        }.get(task, self.health_timeout_s)

    @property
    def live_session_timeout_s(self) -> float:
        """A live session's execution limit: its maximum length, the wait for its answer and a margin to end."""
        return self.realtime_max_duration_s + self.realtime_answer_timeout_s + LIVE_SESSION_END_MARGIN_S
