"""Speech from HTTP providers behind the SpeechSynthesizer interface: Fish Audio and OpenAI-compatible APIs.

- ``fish``: ``POST {base}/v1/tts``, JSON ``{"text", "reference_id", "format": "wav", "sample_rate",
  "latency"}`` with a ``model`` header (Fish Audio's documented request; the body is the audio).
- ``openai``: ``POST {base}/v1/audio/speech``, JSON ``{"model", "input", "voice", "response_format": "wav"}``.

Both authenticate with ``Authorization: Bearer <key>``, retry 429 and 5xx answers and dropped
connections a bounded number of times (honouring ``Retry-After``), and return no phoneme timeline.
``VoiceParams.rate`` (words per minute) maps to the providers' speed factor; pitch is not offered.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import re
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from engines.codecs.audio import decode_audio_bytes
from engines.errors import EngineError
from engines.tts import Speech, VoiceParams, register

logger = logging.getLogger(__name__)

SAMPLE_RATE = 24000  # both providers offer 24 kHz wav; callers resample
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 120.0  # a long text can take a while before the first byte
MAX_ATTEMPTS = 3
RETRY_WAIT_S = 1.0  # first back-off; doubles per attempt
MAX_RETRY_WAIT_S = 20.0  # also caps a server's Retry-After
MAX_RESPONSE_BYTES = 100 * 1024 * 1024
SNIPPET_CHARS = 300
REDACTED = "[redacted]"
MIN_SECRET_OVERLAP = 4
# A credential the body names ("Authorization: Bearer x", "api_key=x", "x-api-key": "x"): its value goes.
CREDENTIAL_FIELD = re.compile(r"(?i)((?:authorization|api[-_]?key|bearer)\W{0,4}(?:bearer\s+)?)[^\s\"',;&]+")
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Dropped or refused connections are worth another try; a read timeout is not (it would just double the wait).
RETRY_TRANSPORT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError)
# VoiceParams.rate is words per minute; ~175 wpm is ordinary speech (eSpeak's default), i.e. speed 1.0.
NORMAL_WPM = 175.0

FISH_MODEL = "s2-pro"
FISH_LATENCY = "normal"
FISH_SAMPLE_RATES = frozenset({8000, 16000, 24000, 32000, 44100})
FISH_SPEED_RANGE = (0.5, 2.0)
OPENAI_VOICE = "alloy"
OPENAI_SPEED_RANGE = (0.25, 4.0)


class _RetryableStatus(Exception):
    def __init__(self, status: int, snippet: str, retry_after_s: float | None) -> None:
        super().__init__(f"HTTP {status}: {snippet}")
        self.status = status
        self.snippet = snippet
        self.retry_after_s = retry_after_s


def _snippet(body: bytes, secret: str) -> str:
    """A cut, redacted reason from an error body: a provider may echo the request's headers back."""
    text = _redact(body[: SNIPPET_CHARS * 4].decode("utf-8", errors="replace"), secret)
    return " ".join(text.split())[:SNIPPET_CHARS] or "(empty body)"


def _secret_forms(secret: str) -> list[str]:
    """The key as a provider might echo it: as is, percent-encoded (either case), JSON- or HTML-escaped, in
    hex, or inside base64 (the stretch of a base64 text that depends on the key alone, at any alignment)."""
    raw = secret.encode()
    escaped = json.dumps(secret)[1:-1]
    forms = {secret, quote(secret, safe=""), quote_plus(secret), quote(secret), escaped, escaped.replace("/", "\\/")}
    forms |= {html.escape(secret), raw.hex()}
    for shift in range(3):  # the key may start at any byte of a base64 quantum
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            core = encode(b"\0" * shift + raw).decode().rstrip("=")[4 if shift else 0 : -4]
            forms.add(core if len(core) >= 8 else "")
    return sorted((form for form in forms if len(form) >= MIN_SECRET_OVERLAP), key=len, reverse=True)


def _redact(text: str, secret: str) -> str:
    for form in _secret_forms(secret):
        text = re.sub(re.escape(form), REDACTED, text, flags=re.IGNORECASE)
        for size in range(len(form) - 1, MIN_SECRET_OVERLAP - 1, -1):  # the key cut by the body prefix's end
            if text.lower().endswith(form[:size].lower()):
                text = text[:-size] + REDACTED
                break
    return CREDENTIAL_FIELD.sub(lambda m: m.group(1) + REDACTED, text)


def _body_prefix(response: httpx.Response) -> bytes:
    """The start of an error body, without reading a possibly huge page in full."""
    prefix = b""
    for chunk in response.iter_bytes():
        prefix += chunk
        if len(prefix) >= SNIPPET_CHARS * 4:
            break
    return prefix


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:  # an HTTP date: fall back to our own back-off
        return None


class _HttpSynthesizer:
    """Shared request, retry and error handling; subclasses build the provider's request."""

    name: str
    provider_title: str
    api_key_env: str  # named in errors so an operator knows what to set
    endpoint: str
    speed_range: tuple[float, float]

    def __init__(
        self,
        api_key: str | None,
        base_url: str,
        sample_rate: int = SAMPLE_RATE,
        timeout_s: float = READ_TIMEOUT_S,
        max_attempts: int = MAX_ATTEMPTS,
        retry_wait_s: float = RETRY_WAIT_S,
    ) -> None:
        if not api_key:
            raise EngineError(
                "tts_not_configured", f"{self.provider_title} speech needs an API key: set {self.api_key_env}"
            )
        if not base_url.startswith(("http://", "https://")):
            raise EngineError("tts_not_configured", f"{self.provider_title} base URL {base_url!r} is not http(s)")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.sample_rate = sample_rate
        self.timeout = httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S)
        self.max_attempts = max_attempts
        self.retry_wait_s = retry_wait_s

    @property
    def url(self) -> str:
        base = self.base_url.removesuffix("/v1")  # accept bases given with or without the /v1 prefix
        return f"{base}{self.endpoint}"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}", "Accept": "audio/wav"}

    def _body(self, text: str, voice: VoiceParams) -> dict[str, Any]:
        raise NotImplementedError

    def _speed(self, voice: VoiceParams) -> float | None:
        if voice.rate is None:
            return None
        low, high = self.speed_range
        speed = voice.rate / NORMAL_WPM
        if not low <= speed <= high:
            logger.warning(
                "%s: rate %d wpm (speed %.2f) clipped to %.2f..%.2f", self.name, voice.rate, speed, low, high
            )
        return round(min(max(speed, low), high), 3)

    def synthesize(self, text: str, voice: VoiceParams) -> Speech:
        if not text or not text.strip():
            raise EngineError("empty_text", "`text` is empty: give the sentence to speak")
        if voice.pitch is not None:
            raise EngineError("unsupported_voice_option", f"`voice.pitch` is an eSpeak option; {self.name} has none")
        audio = self._post(self._body(text, voice))
        try:
            samples = decode_audio_bytes(audio, sample_rate=self.sample_rate)
        except EngineError as exc:
            raise EngineError(
                "tts_provider_error", f"{self.provider_title} answered with audio we cannot decode: {exc.message}"
            ) from exc
        logger.debug("%s: %d chars -> %.2f s", self.name, len(text), len(samples) / self.sample_rate)
        return Speech(samples=samples, sample_rate=self.sample_rate, phonemes=[])

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, _RetryableStatus) and error.retry_after_s is not None:
            return min(error.retry_after_s, MAX_RETRY_WAIT_S)
        return min(self.retry_wait_s * 2 ** (state.attempt_number - 1), MAX_RETRY_WAIT_S)

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        logger.warning("%s: attempt %d failed (%s); retrying", self.name, state.attempt_number, error)

    def _post(self, body: dict[str, Any]) -> bytes:
        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self._wait,
            retry=retry_if_exception_type((_RetryableStatus, *RETRY_TRANSPORT_ERRORS)),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            with httpx.Client(timeout=self.timeout) as client:
                return retrying(self._post_once, client, body)
        except _RetryableStatus as exc:
            code = "tts_rate_limited" if exc.status == 429 else "tts_provider_error"
            raise EngineError(
                code,
                f"{self.provider_title} still answered HTTP {exc.status} after {self.max_attempts} attempts: "
                f"{exc.snippet}",
            ) from exc
        except httpx.TimeoutException as exc:
            raise EngineError("tts_provider_timeout", f"{self.provider_title} did not answer in time: {exc!r}") from exc
        except httpx.HTTPError as exc:
            raise EngineError("tts_provider_unreachable", f"cannot reach {self.url}: {exc!r}") from exc

    def _post_once(self, client: httpx.Client, body: dict[str, Any]) -> bytes:
        with client.stream("POST", self.url, json=body, headers=self._headers()) as response:
            if not response.is_success:
                self._raise_for_status(response.status_code, _body_prefix(response), response.headers)
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise EngineError(
                        "tts_provider_error", f"{self.provider_title} audio exceeds {MAX_RESPONSE_BYTES} bytes"
                    )
                chunks.append(chunk)
        return b"".join(chunks)

    def _raise_for_status(self, status: int, content: bytes, headers: httpx.Headers) -> None:
        snippet = _snippet(content, self.api_key)
        if status in (401, 403):
            raise EngineError(
                "tts_auth_failed",
                f"{self.provider_title} refused the API key ({self.api_key_env}): HTTP {status}: {snippet}",
            )
        if status in RETRY_STATUSES:
            raise _RetryableStatus(status, snippet, _retry_after(headers.get("retry-after")))
        raise EngineError("tts_provider_error", f"{self.provider_title} answered HTTP {status}: {snippet}")


@register("fish")
class FishAudioSynthesizer(_HttpSynthesizer):
    """Fish Audio; ``VoiceParams.ref_id`` picks the voice model (the provider's default voice when absent)."""

    name = "fish"
    provider_title = "Fish Audio"
    api_key_env = "FISH_API_KEY"
    endpoint = "/v1/tts"
    speed_range = FISH_SPEED_RANGE

    def __init__(self, api_key: str | None, base_url: str, model: str = FISH_MODEL, **options: Any) -> None:
        super().__init__(api_key, base_url, **options)
        if self.sample_rate not in FISH_SAMPLE_RATES:
            raise ValueError(f"Fish Audio wav sample rates are {sorted(FISH_SAMPLE_RATES)}, got {self.sample_rate}")
        self.model = model

    def _headers(self) -> dict[str, str]:
        return {**super()._headers(), "model": self.model}

    def _body(self, text: str, voice: VoiceParams) -> dict[str, Any]:
        if voice.name is not None:
            raise EngineError(
                "unsupported_voice_option",
                "`voice.name` is not used by Fish Audio: give the voice model id as `ref_id`",
            )
        body: dict[str, Any] = {
            "text": text,
            "format": "wav",
            "sample_rate": self.sample_rate,
            "latency": FISH_LATENCY,
        }
        if voice.ref_id is not None:
            body["reference_id"] = voice.ref_id
        speed = self._speed(voice)
        if speed is not None:
            body["prosody"] = {"speed": speed}
        return body


@register("openai")
class OpenAISpeechSynthesizer(_HttpSynthesizer):
    """OpenAI's speech endpoint or a compatible server; ``VoiceParams.name`` is the voice (default alloy)."""

    name = "openai"
    provider_title = "OpenAI speech"
    api_key_env = "OPENAI_API_KEY"
    endpoint = "/v1/audio/speech"
    speed_range = OPENAI_SPEED_RANGE

    def __init__(self, api_key: str | None, base_url: str, model: str, **options: Any) -> None:
        super().__init__(api_key, base_url, **options)
        self.model = model

    def _body(self, text: str, voice: VoiceParams) -> dict[str, Any]:
        if voice.ref_id is not None:
            raise EngineError("unsupported_voice_option", "`voice.ref_id` is a Fish Audio option; use `voice.name`")
        body: dict[str, Any] = {
            "model": self.model,
            "input": text,
            "voice": voice.name or OPENAI_VOICE,
            "response_format": "wav",
        }
        speed = self._speed(voice)
        if speed is not None:
            body["speed"] = speed
        return body
