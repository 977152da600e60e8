"""Bounds on session descriptions, checked before any work: an offer (or a worker's answer) is a plain SDP text
of limited size, starting with ``v=0``, made of ``<letter>=<value>`` lines, with a few media sections and a
bounded number of ICE candidates. What a real SDP parser refuses beyond this is refused by the worker, before
it answers."""

from __future__ import annotations

import re

from handlers.errors import TaskError
from handlers.schemas import MAX_SDP_CHARS

MAX_MEDIA_SECTIONS = 8  # audio, video and the data channel, with room to spare
MAX_CANDIDATES = 64
MAX_LINE_CHARS = 4096
SDP_LINE = re.compile(r"^[a-z]=[^\x00-\x08\x0a-\x1f\x7f]*$")


class InvalidSdp(TaskError):
    def __init__(self, what: str, message: str) -> None:
        super().__init__("invalid_sdp", f"The {what} is not a usable SDP: {message}.")


def check_sdp(sdp: str, what: str = "offer") -> None:
    """InvalidSdp unless ``sdp`` is within the bounds above."""
    if len(sdp) > MAX_SDP_CHARS:
        raise InvalidSdp(what, f"over {MAX_SDP_CHARS} characters")
    lines = [line for line in sdp.replace("\r\n", "\n").split("\n") if line]
    if not lines or lines[0] != "v=0":
        raise InvalidSdp(what, "it must start with the line `v=0`")
    media = candidates = 0
    for number, line in enumerate(lines, 1):
        if len(line) > MAX_LINE_CHARS or not SDP_LINE.match(line):
            raise InvalidSdp(what, f"line {number} is not `<letter>=<value>`")
        media += line.startswith("m=")
        candidates += line.startswith("a=candidate:")
    if not 1 <= media <= MAX_MEDIA_SECTIONS:
        raise InvalidSdp(what, f"it has {media} media sections (m= lines); 1 to {MAX_MEDIA_SECTIONS} are accepted")
    if candidates > MAX_CANDIDATES:
        raise InvalidSdp(what, f"it lists {candidates} ICE candidates; at most {MAX_CANDIDATES} are accepted")
