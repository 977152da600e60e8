"""Speech engines: real eSpeak NG synthesis, and the HTTP providers against a local server."""

from __future__ import annotations

import base64
import html
import json
import logging
import re
import struct
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, quote_plus

import numpy as np
import pytest

from engines.codecs.audio import encode_wav
from engines.errors import EngineError
from engines.tts import Speech, VoiceParams, load_synthesizer, resample
from tests.conftest import free_port

ESPEAK_RATE = 22050


def synth(text: str, **voice: object) -> Speech:
    return load_synthesizer("espeak").synthesize(text, VoiceParams(**voice))


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if len(samples) else 0.0


# ---------------------------------------------------------------- eSpeak NG


def test_espeak_hello_world_is_speech_with_a_timeline() -> None:
    speech = synth("Hello world")
    assert speech.sample_rate == ESPEAK_RATE
    assert speech.samples.dtype == np.float32 and speech.samples.ndim == 1
    assert 0.3 < speech.duration_s < 2.0
    assert rms(speech.samples) > 0.02 and float(np.abs(speech.samples).max()) <= 1.0
    symbols = [p.symbol for p in speech.phonemes]
    assert {"h", "l", "w", "d"} <= set(symbols)
    starts = [p.start for p in speech.phonemes]
    assert starts == sorted(starts)
    for p in speech.phonemes:
        assert 0.0 <= p.start < p.end <= speech.duration_s + 1e-9
    for before, after in zip(speech.phonemes, speech.phonemes[1:], strict=False):
        assert before.end <= after.start + 1e-9  # no overlaps


def test_espeak_timeline_matches_the_audio() -> None:
    """A sentence break is a '_' entry over near-silence; the vowels around it are loud."""
    speech = synth("Hello world. How are you?")
    pauses = [p for p in speech.phonemes if p.symbol == "_" and p.end - p.start > 0.1]
    assert pauses, "expected a pause between the sentences"
    pause = pauses[0]
    rate = speech.sample_rate

    def window(p, margin: float = 0.02) -> np.ndarray:
        return speech.samples[int((p.start + margin) * rate) : int((p.end - margin) * rate)]

    vowels = [p for p in speech.phonemes if p.symbol.lstrip("',") in {"oU", "3:", "aU", "A@"}]
    assert len(vowels) >= 3
    assert rms(window(pause)) < 0.1 * min(rms(window(v)) for v in vowels)


def test_espeak_rate_changes_duration_and_does_not_leak() -> None:
    text = "The quick brown fox jumps over the lazy dog."
    default = synth(text)
    slow, fast = synth(text, rate=120), synth(text, rate=300)
    assert fast.duration_s < 0.8 * default.duration_s < 0.8 * slow.duration_s
    assert fast.phonemes[-1].end < slow.phonemes[-1].end
    synth(text, rate=450, pitch=90)
    again = synth(text)  # the previous call's rate and pitch must not carry over
    # eSpeak varies by up to ~2% between identical calls; a leaked rate of 450 would be over 40% shorter.
    assert abs(again.duration_s - default.duration_s) < 0.05 * default.duration_s
    assert abs(median_f0(again.samples) - median_f0(default.samples)) < 5.0


def median_f0(samples: np.ndarray) -> float:
    """Median pitch of voiced 40 ms frames (normalised autocorrelation peak in 60..400 Hz)."""
    size, lo, hi = int(0.04 * ESPEAK_RATE), ESPEAK_RATE // 400, ESPEAK_RATE // 60
    pitches = []
    for start in range(0, len(samples) - size, size // 2):
        frame = samples[start : start + size].astype(np.float64)
        frame -= frame.mean()
        corr = np.correlate(frame, frame, "full")[size - 1 :]
        if corr[0] < 1e-3:
            continue
        lag = lo + int(np.argmax(corr[lo:hi] / corr[0]))
        if corr[lag] / corr[0] > 0.6:
            pitches.append(ESPEAK_RATE / lag)
    assert len(pitches) >= 5, "too few voiced frames to measure pitch"
    return float(np.median(pitches))


def test_espeak_pitch_moves_the_voice() -> None:
    text = "Hello world, how are you today?"
    assert median_f0(synth(text, pitch=90).samples) > 1.4 * median_f0(synth(text, pitch=10).samples)


def test_espeak_other_voices_and_unknown_voice() -> None:
    assert synth("Bonjour tout le monde", name="fr").duration_s > 0.5
    with pytest.raises(EngineError) as err:
        synth("Hello", name="xx-nonexistent")
    assert err.value.code == "unknown_voice"
    assert "en-us" in err.value.message and "xx-nonexistent" in err.value.message


@pytest.mark.parametrize("text", ["", "   \n", "..."])
def test_espeak_empty_text(text: str) -> None:
    with pytest.raises(EngineError) as err:
        synth(text)
    assert err.value.code == "empty_text"


def test_espeak_rejects_fish_options() -> None:
    with pytest.raises(EngineError) as err:
        synth("Hello", ref_id="abc")
    assert err.value.code == "unsupported_voice_option"


def test_espeak_is_safe_across_threads() -> None:
    """Concurrent callers each get their own text's speech: the global library state is serialised."""
    texts = ["One two three.", "Four five six seven.", "Eight nine.", "Ten, eleven, twelve, thirteen."] * 2
    sequential = [synth(t) for t in texts]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(synth, texts))
    for a, b in zip(sequential, parallel, strict=True):
        assert [p.symbol for p in a.phonemes] == [p.symbol for p in b.phonemes]
        # eSpeak itself varies by up to ~2% between identical sequential calls (measured: 30 runs of
        # "One two three." span 0.781-0.795 s); these texts differ from each other by far more than 5%.
        assert abs(a.duration_s - b.duration_s) < 0.05 * a.duration_s


# ---------------------------------------------------------------- registry and resampling


def test_resample_keeps_tone_and_length() -> None:
    t = np.arange(ESPEAK_RATE) / ESPEAK_RATE
    tone = np.sin(2 * np.pi * 440.0 * t).astype(np.float32)
    out = resample(tone, ESPEAK_RATE, 16000)
    assert out.dtype == np.float32 and len(out) == 16000
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    assert abs(np.argmax(spectrum) * 16000 / len(out) - 440.0) < 1.5
    np.testing.assert_array_equal(resample(tone, 16000, 16000), tone)


def test_load_synthesizer_errors() -> None:
    with pytest.raises(EngineError) as err:
        load_synthesizer("nope")
    assert err.value.code == "unknown_tts_provider" and "espeak" in err.value.message
    with pytest.raises(EngineError) as err:
        load_synthesizer("openai", api_key="k", base_url="http://127.0.0.1:9")  # no model
    assert err.value.code == "tts_not_configured" and "model" in err.value.message


@pytest.mark.parametrize("provider, key_env", [("fish", "FISH_API_KEY"), ("openai", "OPENAI_API_KEY")])
@pytest.mark.parametrize("key", [None, ""])
def test_missing_api_key_is_not_configured(provider: str, key_env: str, key: str | None) -> None:
    extra = {"model": "tts-1"} if provider == "openai" else {}
    with pytest.raises(EngineError) as err:
        load_synthesizer(provider, api_key=key, base_url="http://127.0.0.1:9", **extra)
    assert err.value.code == "tts_not_configured" and key_env in err.value.message


# ---------------------------------------------------------------- HTTP providers against a local server

TONE_HZ = 440.0
TONE_S = 0.75


def tone(rate: int) -> np.ndarray:
    t = np.arange(int(rate * TONE_S)) / rate
    return (0.4 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)


def streamed_wav(samples: np.ndarray, rate: int) -> bytes:
    """A WAV as streaming servers send it: RIFF and data sizes unknown (0xFFFFFFFF)."""
    data = bytearray(encode_wav(samples, rate))
    data[4:8] = struct.pack("<I", 0xFFFFFFFF)
    data[40:44] = struct.pack("<I", 0xFFFFFFFF)
    assert data[36:40] == b"data"
    return bytes(data)


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: dict


@dataclass
class FakeProvider:
    """Records each request and answers from a script of (status, body, headers); default: a WAV tone."""

    url: str
    default_audio: bytes
    requests: list[Recorded] = field(default_factory=list)
    script: deque = field(default_factory=deque)


ECHO_HEADERS = b"<echo the request headers>"


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    fake = FakeProvider(url="", default_audio=encode_wav(tone(44100), 44100))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802  (http.server's naming)
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json.loads(raw) if raw else {}
            fake.requests.append(Recorded("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            status, content, headers = fake.script.popleft() if fake.script else (200, fake.default_audio, {})
            if content == ECHO_HEADERS:  # a provider that answers an error with the request's own headers
                content = json.dumps({"error": "denied", "request_headers": dict(self.headers)}).encode()
            time.sleep(float(headers.pop("X-Test-Delay", 0)))
            self.send_response(status)
            for name, value in {"Content-Type": "audio/wav", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield fake
    server.shutdown()
    server.server_close()


def fish(url: str, **options: object):
    return load_synthesizer("fish", api_key="fish-key", base_url=url, retry_wait_s=0.01, **options)


def openai(url: str, **options: object):
    return load_synthesizer("openai", api_key="oa-key", base_url=url, model="tts-test", retry_wait_s=0.01, **options)


def assert_is_the_tone(speech: Speech, rate: int) -> None:
    assert speech.sample_rate == rate and speech.phonemes == []
    assert speech.samples.dtype == np.float32
    assert abs(speech.duration_s - TONE_S) < 0.003
    spectrum = np.abs(np.fft.rfft(speech.samples * np.hanning(len(speech.samples))))
    assert abs(np.argmax(spectrum) * rate / len(speech.samples) - TONE_HZ) < 2.0


def test_fish_sends_the_documented_request(provider: FakeProvider) -> None:
    speech = fish(provider.url).synthesize("Hello from the fish.", VoiceParams(ref_id="ref-123"))
    assert_is_the_tone(speech, 24000)
    (request,) = provider.requests
    assert (request.method, request.path) == ("POST", "/v1/tts")
    assert request.headers["authorization"] == "Bearer fish-key"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["model"] == "s2-pro"
    assert request.body == {
        "text": "Hello from the fish.",
        "reference_id": "ref-123",
        "format": "wav",
        "sample_rate": 24000,
        "latency": "normal",
    }


def test_fish_rate_maps_to_prosody_speed_and_name_is_refused(provider: FakeProvider) -> None:
    fish(provider.url, model="s1").synthesize("Quick.", VoiceParams(rate=350))
    assert provider.requests[0].body["prosody"] == {"speed": 2.0}
    assert provider.requests[0].headers["model"] == "s1"
    with pytest.raises(EngineError) as err:
        fish(provider.url).synthesize("Hi", VoiceParams(name="alloy"))
    assert err.value.code == "unsupported_voice_option" and "ref_id" in err.value.message
    assert len(provider.requests) == 1


def test_openai_sends_the_documented_request(provider: FakeProvider) -> None:
    provider.script.append((200, streamed_wav(tone(24000), 24000), {}))
    speech = openai(provider.url + "/v1/").synthesize("Hello there.", VoiceParams(name="nova", rate=210))
    assert_is_the_tone(speech, 24000)
    (request,) = provider.requests
    assert (request.method, request.path) == ("POST", "/v1/audio/speech")
    assert request.headers["authorization"] == "Bearer oa-key"
    assert request.body == {
        "model": "tts-test",
        "input": "Hello there.",
        "voice": "nova",
        "response_format": "wav",
        "speed": 1.2,
    }


def test_openai_default_voice_and_pitch_refused(provider: FakeProvider) -> None:
    openai(provider.url).synthesize("Hi.", VoiceParams())
    assert provider.requests[0].body["voice"] == "alloy" and "speed" not in provider.requests[0].body
    with pytest.raises(EngineError) as err:
        openai(provider.url).synthesize("Hi.", VoiceParams(pitch=40))
    assert err.value.code == "unsupported_voice_option"
    assert len(provider.requests) == 1


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failure_is_not_retried(provider: FakeProvider, status: int) -> None:
    provider.script.append((status, b'{"status": 401, "message": "invalid api key"}', {}))
    with pytest.raises(EngineError) as err:
        fish(provider.url).synthesize("Hello", VoiceParams())
    assert err.value.code == "tts_auth_failed" and "FISH_API_KEY" in err.value.message
    assert "fish-key" not in err.value.message
    assert len(provider.requests) == 1


def test_server_error_then_success_is_retried(provider: FakeProvider) -> None:
    provider.script.append((500, b"upstream exploded", {}))
    speech = openai(provider.url).synthesize("Hello", VoiceParams())
    assert_is_the_tone(speech, 24000)
    assert len(provider.requests) == 2


def test_rate_limit_retries_are_bounded(provider: FakeProvider) -> None:
    provider.script.extend([(429, b'{"message": "slow down"}', {"Retry-After": "0"})] * 5)
    with pytest.raises(EngineError) as err:
        fish(provider.url, max_attempts=3).synthesize("Hello", VoiceParams())
    assert err.value.code == "tts_rate_limited" and "slow down" in err.value.message
    assert len(provider.requests) == 3


def test_client_error_reports_status_and_snippet(provider: FakeProvider) -> None:
    provider.script.append(
        (422, b'[{"loc": ["body", "text"], "msg": "too long"}]', {"Content-Type": "application/json"})
    )
    with pytest.raises(EngineError) as err:
        openai(provider.url).synthesize("Hello", VoiceParams())
    assert err.value.code == "tts_provider_error"
    assert "422" in err.value.message and "too long" in err.value.message
    assert len(provider.requests) == 1


def test_non_audio_body_is_a_provider_error(provider: FakeProvider) -> None:
    provider.script.append((200, b'{"audio_url": "https://example.com/a.mp3"}', {"Content-Type": "application/json"}))
    with pytest.raises(EngineError) as err:
        fish(provider.url).synthesize("Hello", VoiceParams())
    assert err.value.code == "tts_provider_error" and "decode" in err.value.message


def test_unreachable_provider() -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(EngineError) as err:
        fish(closed, max_attempts=2).synthesize("Hello", VoiceParams())
    assert err.value.code == "tts_provider_unreachable"


def test_slow_provider_times_out_without_retrying(provider: FakeProvider) -> None:
    provider.script.append((200, provider.default_audio, {"X-Test-Delay": "1.0"}))
    with pytest.raises(EngineError) as err:
        openai(provider.url, timeout_s=0.2).synthesize("Hello", VoiceParams())
    assert err.value.code == "tts_provider_timeout"
    assert len(provider.requests) == 1


@pytest.mark.parametrize("status", [401, 422, 500])
def test_provider_error_bodies_never_carry_the_key_into_errors_or_logs(
    provider: FakeProvider, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Class: provider error bodies are cut and redacted (a provider echoing Authorization would leak the key)."""
    provider.script.extend([(status, ECHO_HEADERS, {"Content-Type": "application/json"})] * 3)
    with caplog.at_level(logging.DEBUG), pytest.raises(EngineError) as err:
        openai(provider.url, max_attempts=2).synthesize("Hello", VoiceParams())
    assert provider.requests[0].headers["authorization"] == "Bearer oa-key"  # the server did see it
    assert str(status) in err.value.message and "denied" in err.value.message and "[redacted]" in err.value.message
    assert "oa-key" not in err.value.message and "oa-key" not in caplog.text
    assert len(err.value.message) < 500


ODD_KEY = "sk-Ab/Cd+eF=gh&Ij:9~xyzzy"


def _echoes() -> dict[str, str]:
    percent = quote(ODD_KEY, safe="")
    return {
        "percent": percent,
        "percent_lowercase_hex": re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), percent),
        "plus": quote_plus(ODD_KEY),
        "path_quoted": quote(ODD_KEY),
        "json": json.dumps(ODD_KEY)[1:-1].replace("/", "\\/"),
        "html": html.escape(ODD_KEY),
        "hex": ODD_KEY.encode().hex().upper(),
        "base64_bearer": base64.b64encode(f"Bearer {ODD_KEY}".encode()).decode(),
        "base64_basic": base64.b64encode(f"user:{ODD_KEY}".encode()).decode(),
        "base64url": base64.urlsafe_b64encode(ODD_KEY.encode()).decode(),
    }


@pytest.mark.parametrize("encoding", sorted(_echoes()))
def test_provider_echoes_of_the_key_in_simple_encodings_are_redacted(provider: FakeProvider, encoding: str) -> None:
    """Class: key echoes that redaction missed: URL-encoded (either hex case, `+` for spaces), JSON- or
    HTML-escaped, hex and base64 (Basic or Bearer) forms of the key are redacted from errors."""
    echoed = _echoes()[encoding]
    body = f'{{"error": "denied", "echo": "{echoed}", "url": "https://p.example/v1?key={quote(ODD_KEY)}"}}'
    provider.script.extend([(401, body.encode(), {"Content-Type": "application/json"})] * 3)
    synth = load_synthesizer("openai", api_key=ODD_KEY, base_url=provider.url, model="tts-test", retry_wait_s=0.01)
    with pytest.raises(EngineError) as err:
        synth.synthesize("Hello", VoiceParams())
    message = err.value.message
    assert "denied" in message and "[redacted]" in message
    assert echoed not in message and echoed.lower() not in message.lower(), message
    assert "xyzzy" not in message and ODD_KEY not in message, message
