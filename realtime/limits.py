"""Live-session limits of one worker process (env ``REALTIME_<FIELD>``) and the errors they raise.

Memory budget of one session (what bounds each buffer it holds):

- avatar frames: a portrait is scaled to ``max_side`` (512 px: its animated frames about 0.8 MB each);
  a stored avatar's frames are decoded lazily through the process's shared frame cache
  (``AVATAR_FRAME_CACHE_MB``), not per session;
- speech: one utterance is at most ``MAX_TEXT_CHARS`` (5,000) characters, synthesised ``speech_piece_chars``
  at a time and at most ``MAX_AUDIO_SECONDS`` long (16 kHz float32: 64 KB per second of speech); a new
  utterance replaces what is still queued;
- microphone audio: scheduled at most ``max_mic_lead_s`` ahead of the clock, the rest dropped;
- data-channel messages: ``max_message_bytes`` each, ``messages_per_s`` (burst ``message_burst``) each
  session, replies skipped while ``max_reply_buffer_bytes`` are unsent;
- signalling: an offer of ``MAX_SDP_CHARS`` with ``max_offer_media`` media sections and
  ``max_remote_candidates`` candidates at most; control answers of ``max_control_body_bytes``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from handlers.errors import TaskError


class RealtimeSettings(BaseSettings):
    """Live-session limits (env ``REALTIME_<FIELD>``), read once by the entry point."""

    model_config = SettingsConfigDict(env_prefix="REALTIME_", extra="ignore")

    max_sessions: int = Field(4, ge=1, description="Live sessions one worker process holds at once.")
    idle_timeout_s: float = Field(300.0, gt=0, description="In-process sessions: closed after this long without input.")
    max_duration_s: float = Field(
        3600.0, gt=0, description="A session ends after this long at most, whatever it asks (keep under the timeout)."
    )
    max_side: int = Field(512, ge=64, description="Portraits are scaled to this side at most for live video.")
    setup_timeout_s: float = Field(60.0, gt=0, description="Avatar, peer connection and ICE gathering, at most.")

    # Signalling and ICE.
    max_offer_media: int = Field(4, ge=1, le=16, description="Media sections (m-lines) an offer may have.")
    max_remote_candidates: int = Field(12, ge=1, le=64, description="Remote ICE candidates kept per session.")
    allow_private_candidates: bool = Field(
        False, description="Accept private, loopback and mDNS remote candidates (local networks and tests)."
    )
    ice_transport_policy: Literal["all", "relay"] = Field("all", description="`relay`: TURN candidates only.")

    # The control channel (the orchestrator's per-session URL).
    heartbeat_s: float = Field(5.0, gt=0, description="Seconds between heartbeats (with the session's statistics).")
    poll_wait_s: float = Field(20.0, gt=0, le=60, description="How long one command long-poll may wait.")
    control_timeout_s: float = Field(10.0, gt=0, description="Time limit of one control request (beyond the wait).")
    control_lost_s: float = Field(
        30.0, gt=0, description="A session whose control URL stays unreachable this long ends itself."
    )
    max_control_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="Largest control answer read.")

    # Inputs on the data channel and the microphone.
    max_message_bytes: int = Field(32 * 1024, ge=256, description="Largest data-channel message.")
    messages_per_s: float = Field(4.0, gt=0, description="Data-channel messages per second (steady rate).")
    message_burst: int = Field(8, ge=1, description="Data-channel messages accepted at once above the rate.")
    max_reply_buffer_bytes: int = Field(64 * 1024, ge=1024, description="Replies are skipped beyond this unsent.")
    max_mic_lead_s: float = Field(2.0, gt=0, description="Microphone audio scheduled at most this far ahead.")
    speech_piece_chars: int = Field(
        240, ge=40, description="Text is synthesised this many characters at a time (other sessions interleave)."
    )


class SessionLimitReached(TaskError):
    def __init__(self, limit: int) -> None:
        super().__init__("too_many_sessions", f"This worker holds {limit} live sessions at most; try again later.")


class RealtimeUnavailable(TaskError):
    def __init__(self) -> None:
        super().__init__("realtime_unavailable", "Live sessions need the `realtime` extra (aiortc) on this server.")


class SessionNotFound(TaskError):
    def __init__(self, session_id: str) -> None:
        super().__init__("session_not_found", f"No live session {session_id!r} (it ended or never existed).")
