"""Every environment variable the README documents (its tables, and the live-session limits) is set through the
environment to a valid value, and the settings objects are built from it (issue 20: LIVEPORTRAIT_INPUT_SIZE
set to its own default failed validation, so every task answered internal_error)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from handlers.settings import Settings
from orchestrator.core.config import OrchestratorSettings
from realtime.limits import RealtimeSettings
from storage.config import StorageSettings

README = Path(__file__).resolve().parents[1] / "README.md"
SETTINGS_CLASSES: tuple[type[BaseSettings], ...] = (Settings, StorageSettings, OrchestratorSettings, RealtimeSettings)

# A valid value for each documented variable, unlike its default, so the test sees it arrive.
VALUES = {
    "AVATARCTL_HOME": "/tmp/env-test-home",
    "URL_SIGNING_SECRET": "env-test-signing-secret-0123456789",
    "AVATAR_STORE_URI": "file:///tmp/env-test-store",
    "AVATAR_LOCAL_PATH": "/tmp/env-test-avatars",
    "AVATAR_REVALIDATE_S": "5",
    "HAND_PLACED_AVATARS": "owned",
    "WORKER_TASKS": "render_emotion",
    "WEIGHTS_DIR": "/tmp/env-test-weights",
    "WAV2LIP96_CHECKPOINT": "/tmp/w96.pth",
    "WAV2LIP256_CHECKPOINT": "/tmp/w256.pth",
    "WAV2LIP_PRECISION": "fp32",
    "MUSETALK_PRECISION": "bf16",
    "MUSETALK_COMPILE": "1",
    "LIVEPORTRAIT_DIR": "/tmp/env-test-liveportrait",
    "LIVEPORTRAIT_PRECISION": "fp16",
    "LIVEPORTRAIT_COMPILE": "1",
    "LIVEPORTRAIT_INPUT_SIZE": "128",
    "SADTALKER_DIR": "/tmp/env-test-sadtalker",
    "SADTALKER_PRECISION": "bf16",
    "SADTALKER_SIZE": "512",
    "SADTALKER_RENDER_SIZE": "128",
    "SADTALKER_PREPROCESS": "full",
    "SADTALKER_STILL": "1",
    "SADTALKER_POSE_STYLE": "7",
    "SADTALKER_EXPRESSION_SCALE": "1.5",
    "SADTALKER_BLINK": "0",
    "S3_ENDPOINT_URL": "http://127.0.0.1:9000",
    "S3_AWS_REGION": "eu-west-1",
    "S3_AWS_ACCESS_KEY_ID": "env-test-id",
    "S3_AWS_SECRET_ACCESS_KEY": "env-test-secret",
    "GOOGLE_CLOUD_PROJECT": "env-test-project",
    "GOOGLE_APPLICATION_CREDENTIALS": "/tmp/env-test-creds.json",
    "GCS_PUBLIC": "1",
    "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9023",
    "SIGNED_URL_TTL": "600",
    "ALLOW_PRIVATE_URLS": "1",
    "ALLOW_FILE_URIS": "0",
    "HTTP_MAX_BYTES": "1000000",
    "HTTP_TIMEOUT_S": "5",
    "ALLOWED_INPUT_PREFIXES": "s3://inputs/,https://cdn.example.com/",
    "ALLOWED_STORE_PREFIXES": "s3://tenant-stores/",
    "MAX_VIDEO_BYTES": "1000000",
    "MAX_VIDEO_SECONDS": "60",
    "MAX_VIDEO_SIDE": "1080",
    "MAX_FACE_GAP_FRAMES": "6",
    "MAX_AUDIO_SECONDS": "60",
    "VIDEO_CRF": "23",
    "VIDEO_PRESET": "medium",
    "AVATAR_FRAME_CACHE_MB": "64",
    "MAX_IMAGE_BYTES": "1000000",
    "MAX_IMAGE_PIXELS": "1000000",
    "EMOTION_MAX_SIDE": "1024",
    "FISH_API_KEY": "env-test-fish",
    "FISH_BASE_URL": "https://fish.example.com",
    "OPENAI_API_KEY": "env-test-openai",
    "OPENAI_BASE_URL": "https://openai.example.com",
    "OPENAI_TTS_MODEL": "tts-1",
    "DID_API_KEY": "env-test-did",
    "DID_BASE_URL": "https://did.example.com",
    "DID_TIMEOUT_S": "120",
    "DID_REQUEST_TIMEOUT_S": "10",
    "DID_POLL_INTERVAL_S": "1",
    "DID_POLL_MAX_INTERVAL_S": "5",
    "AVATAR_PROVIDER": "d-id",
    "DATABASE_URL": "sqlite:////tmp/env-test-jobs.db",
    "BACKEND_PREPROCESS_AVATAR": "runpod:ep-avatars",
    "BACKEND_GENERATE_VIDEO": "modal:avatars/Worker",
    "BACKEND_RENDER_EMOTION": "runpod:ep-emotions",
    "BACKEND_HEALTH": "runpod:ep-health",
    "BACKEND_LIVE_SESSION": "runpod:ep-live",
    "RUNPOD_API_KEY": "env-test-runpod",
    "RUNPOD_BASE_URL": "http://127.0.0.1:8090/v2",
    "AVATAR_TIMEOUT_S": "100",
    "VIDEO_TIMEOUT_S": "100",
    "EMOTION_TIMEOUT_S": "100",
    "QUEUE_TIMEOUT_S": "100",
    "API_TOKEN": "env-test-operator",
    "TENANT_TOKENS": '{"env-test-tenant": ["u1", "u2"]}',
    "MAX_REQUEST_BYTES": "2048",
    "MAX_INLINE_DATA_BYTES": "10",
    "EVENT_STREAMS_PER_TENANT": "4",
    "MAX_EVENT_STREAMS": "8",
    "EVENT_STREAM_MAX_S": "60",
    "WEBHOOK_SECRET": "env-test-webhook",
    "PUBLIC_BASE_URL": "https://api.example.com",
    "LEASE_S": "5",
    "POLL_INTERVAL_S": "2",
    "POLL_MAX_INTERVAL_S": "20",
    "LOCAL_WORKERS": "3",
    "MAX_ATTEMPTS": "4",
    "REALTIME_MAX_SESSIONS": "2",
    "REALTIME_MAX_SESSIONS_PER_USER": "1",
    "REALTIME_IDLE_TIMEOUT_S": "30",
    "REALTIME_MAX_SIDE": "256",
    "REALTIME_MAX_DURATION_S": "600",
    "REALTIME_SETUP_TIMEOUT_S": "20",
    "REALTIME_MAX_OFFER_MEDIA": "3",
    "REALTIME_MAX_REMOTE_CANDIDATES": "6",
    "REALTIME_ALLOW_PRIVATE_CANDIDATES": "1",
    "REALTIME_ICE_TRANSPORT_POLICY": "relay",
    "REALTIME_HEARTBEAT_S": "2",
    "REALTIME_POLL_WAIT_S": "10",
    "REALTIME_CONTROL_TIMEOUT_S": "5",
    "REALTIME_CONTROL_LOST_S": "15",
    "REALTIME_MAX_MESSAGE_BYTES": "8192",
    "REALTIME_MESSAGES_PER_S": "2",
    "REALTIME_MESSAGE_BURST": "4",
    "REALTIME_MAX_REPLY_BUFFER_BYTES": "4096",
    "REALTIME_MAX_MIC_LEAD_S": "1",
    "REALTIME_SPEECH_PIECE_CHARS": "120",
    "REALTIME_ANSWER_TIMEOUT_S": "20",
    "REALTIME_SAY_TIMEOUT_S": "10",
    "REALTIME_HEARTBEAT_TIMEOUT_S": "12",
    "REALTIME_SESSION_MEMORY_MB": "2048",
    "ICE_SERVERS": '[{"urls": "stun:stun.example.com:3478"}]',
    "TURN_SECRET": "env-test-turn",
    "LIVETALKING_ROUTES": "false",
    "LIVETALKING_PREFIX": "/lt",
    "LIVETALKING_USER_ID": "env-test-user",
    "LIVETALKING_AVATAR_ID": "env-test-avatar",
    "LIVETALKING_IMAGE": "https://example.com/portrait.png",
    "LIVETALKING_WEB_DIR": "/tmp",
    "LIVETALKING_CORS_ORIGINS": "https://example.com",
    "LLM_API_KEY": "env-test-llm-key",
    "LLM_BASE_URL": "https://llm.example.com/v1",
    "LLM_MODEL": "env-test-model",
    "LLM_SYSTEM_PROMPT": "Answer briefly.",
    "LLM_TIMEOUT_S": "30",
}


def documented_variables() -> list[str]:
    """The upper-case names in the first cell of the README's table rows, and the REALTIME_* limits named in
    its text."""
    text = README.read_text(encoding="utf-8")
    names: list[str] = []
    for line in text.splitlines():
        cells = line.split("|")
        if line.startswith("|") and len(cells) > 2 and not set(cells[1].strip()) <= set("- "):
            names += re.findall(r"`([A-Z][A-Z0-9_]{2,})`", cells[1])
    names += re.findall(r"`(REALTIME_[A-Z0-9_]+)`", text)
    return sorted(set(names))


def _fields_reading(name: str) -> list[tuple[type[BaseSettings], str]]:
    """(settings class, field) pairs whose value comes from environment variable ``name``."""
    found = []
    for cls in SETTINGS_CLASSES:
        prefix = str(cls.model_config.get("env_prefix") or "").upper()
        for field_name, info in cls.model_fields.items():
            alias = info.validation_alias
            names = (
                [str(a) for a in alias.choices] if isinstance(alias, AliasChoices) else [prefix + field_name.upper()]
            )
            if name in names:
                found.append((cls, field_name))
    return found


def test_every_documented_variable_has_a_test_value_and_a_reader() -> None:
    """Class: documented variables nobody reads, or that this test would not try."""
    documented = documented_variables()
    assert "LIVEPORTRAIT_INPUT_SIZE" in documented and len(documented) > 60
    missing = [name for name in documented if name not in VALUES]
    assert not missing, f"add a valid value for {missing} to VALUES"
    unread = [name for name in documented if not _fields_reading(name)]
    assert not unread, f"documented but read by no settings class: {unread}"


def test_every_documented_variable_set_through_the_environment_builds_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Class: settings validation of values as the environment spells them (strings): every documented
    variable at once, each arriving in its field as a value unlike the default."""
    documented = documented_variables()
    for name in documented:
        monkeypatch.setenv(name, VALUES[name])
    built: dict[type[BaseSettings], Any] = {cls: cls() for cls in SETTINGS_CLASSES}
    for name in documented:
        for cls, field_name in _fields_reading(name):
            value = getattr(built[cls], field_name)
            assert value != cls.model_fields[field_name].default, f"{name}={VALUES[name]!r} did not reach {field_name}"


@pytest.mark.parametrize("size", ["128", "256", "384", "512"])
def test_liveportrait_input_size_from_the_environment(monkeypatch: pytest.MonkeyPatch, size: str) -> None:
    """The bug found in passing: LIVEPORTRAIT_INPUT_SIZE, its default included, read from the environment."""
    monkeypatch.setenv("LIVEPORTRAIT_INPUT_SIZE", size)
    assert Settings().liveportrait_input_size == int(size)
    monkeypatch.setenv("LIVEPORTRAIT_INPUT_SIZE", "200")
    with pytest.raises(ValueError, match="128, 256, 384, 512"):
        Settings()
