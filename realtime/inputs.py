"""What a live session accepts as input, checked before any work: data-channel messages (the same model as
``/say``), their rate, and text cut into pieces the speech synthesizer handles one at a time.

eSpeak NG is one library per process behind one lock: a 5,000-character text held it for about 0.75 s.
Synthesised ``speech_piece_chars`` at a time (sentences kept whole where they fit), each piece holds
the lock for tens of milliseconds, other sessions' speech interleaves, and the first piece plays while
the rest is made.
"""

from __future__ import annotations

import json
import re
import textwrap
import time

from pydantic import ValidationError

from errors import error_body
from handlers import validation_message
from handlers.errors import TaskError
from handlers.schemas import SayRequest
from realtime.limits import RealtimeSettings

SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")


def say_message(message: str | bytes, limits: RealtimeSettings) -> SayRequest:
    """A data-channel message as a say request: plain text, or a JSON object ``{"text", "voice"?}``."""
    if isinstance(message, bytes):
        raise TaskError("invalid_message", "Binary data-channel messages are not accepted: send text or JSON.")
    if len(message) > limits.max_message_bytes or len(message.encode("utf-8")) > limits.max_message_bytes:
        raise TaskError(
            "message_too_large", f"A data-channel message may have {limits.max_message_bytes} bytes at most."
        )
    try:
        if message.lstrip().startswith("{"):
            return SayRequest.model_validate_json(message)
        return SayRequest(text=message)
    except ValidationError as exc:
        raise TaskError("invalid_input", validation_message(exc)) from None


def error_reply(exc: TaskError) -> str:
    return json.dumps(error_body(exc.code, exc.message))


class MessageRate:
    """A token bucket: ``rate`` messages per second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate, self._burst = rate, float(burst)
        self._tokens = float(burst)
        self._at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


def speech_pieces(text: str, max_chars: int) -> list[str]:
    """``text`` in pieces of at most ``max_chars``: whole sentences packed together, a longer sentence cut
    between words (a word longer than a piece is cut too)."""
    pieces: list[str] = []
    current = ""
    for sentence in SENTENCE_END.split(text.strip()):
        for part in textwrap.wrap(sentence, max_chars, break_on_hyphens=False) or []:
            if current and len(current) + 1 + len(part) > max_chars:
                pieces.append(current)
                current = part
            else:
                current = f"{current} {part}" if current else part
    if current:
        pieces.append(current)
    return pieces
