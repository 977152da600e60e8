"""Signalling checks made before a session does any work: the offer's size and media sections, its ICE
candidates (where the worker's connectivity checks may go), its syntax; the answer's size.

Remote candidates are filtered where aiortc takes them, in the offer's text: a candidate is kept when its
address is a global unicast IP (private, loopback, link-local, shared, multicast and mDNS names only with
``allow_private_candidates``) on a port >= 1024, and at most ``max_remote_candidates`` are kept per
session, so the connectivity checks a client can make the worker send are bounded by its own local
candidates times that cap. Trickled candidates are not taken (the offer carries them all).
"""

from __future__ import annotations

import ipaddress
import logging

from handlers.errors import TaskError
from handlers.schemas import MAX_SDP_CHARS
from realtime.limits import RealtimeSettings

log = logging.getLogger(__name__)

CANDIDATE_PREFIX = "a=candidate:"
MEDIA_PREFIX = "m="
MIN_CANDIDATE_PORT = 1024
MDNS_SUFFIX = ".local"
MAX_ANSWER_CHARS = MAX_SDP_CHARS  # what LiveAnswer (and so the orchestrator) accepts


class InvalidSdp(TaskError):
    def __init__(self, what: str) -> None:
        super().__init__("invalid_sdp", f"The offer is not a usable WebRTC session description: {what}")


def checked_offer(sdp: str, limits: RealtimeSettings) -> str:
    """The offer as the session will use it (refused candidates removed); TaskError before any other work."""
    if len(sdp) > MAX_SDP_CHARS:
        raise TaskError("offer_too_large", f"The offer has {len(sdp)} characters; the limit is {MAX_SDP_CHARS}.")
    lines = sdp.splitlines()
    media = sum(1 for line in lines if line.startswith(MEDIA_PREFIX))
    if media > limits.max_offer_media:
        raise TaskError(
            "offer_too_large", f"The offer has {media} media sections; the limit is {limits.max_offer_media}."
        )
    if not lines or lines[0].strip() != "v=0":
        raise InvalidSdp("it must start with `v=0`")
    if media == 0:
        raise InvalidSdp("it has no media section (m=)")
    kept = _filtered_candidates(lines, limits)
    text = "\r\n".join(kept) + "\r\n"
    _parse(text)
    return text


def _parse(text: str) -> None:
    """aiortc's own parser on the offer: anything it cannot read is the client's error, not ours."""
    from aiortc import sdp as aiortc_sdp

    try:
        aiortc_sdp.SessionDescription.parse(text)
    except Exception as exc:  # the parser raises ValueError, IndexError, KeyError ... on malformed lines
        raise InvalidSdp(f"{type(exc).__name__}: {str(exc)[:200]}") from None


def _filtered_candidates(lines: list[str], limits: RealtimeSettings) -> list[str]:
    kept: list[str] = []
    candidates = dropped = 0
    for line in lines:
        if not line.startswith(CANDIDATE_PREFIX):
            kept.append(line)
            continue
        reason = candidate_refusal(line[len(CANDIDATE_PREFIX) :], limits)
        if reason is None and candidates >= limits.max_remote_candidates:
            reason = f"more than {limits.max_remote_candidates} candidates"
        if reason is not None:
            dropped += 1
            log.debug("remote candidate dropped: %s", reason)
            continue
        candidates += 1
        kept.append(line)
    if dropped:
        log.info("offer: %d remote candidates kept, %d dropped", candidates, dropped)
    return kept


def candidate_refusal(value: str, limits: RealtimeSettings) -> str | None:
    """Why a remote candidate (``a=candidate:`` value) may not be checked, or None when it may."""
    from aiortc.sdp import candidate_from_sdp

    try:
        candidate = candidate_from_sdp(value)
    except Exception as exc:
        raise InvalidSdp(f"a candidate line cannot be read ({type(exc).__name__})") from None
    if not 0 < candidate.port < 65536:
        raise InvalidSdp(f"a candidate has port {candidate.port}")
    if candidate.port < MIN_CANDIDATE_PORT:
        return f"port {candidate.port} below {MIN_CANDIDATE_PORT}"
    host = candidate.ip
    if host.lower().endswith(MDNS_SUFFIX):
        return None if limits.allow_private_candidates else "an mDNS name (a local-network address)"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "not an IP address"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_multicast or address.is_unspecified:
        return f"a multicast or unspecified address ({address})"
    if not address.is_global and not limits.allow_private_candidates:
        return f"a non-global address ({address})"
    return None


def checked_answer(answer: dict[str, str]) -> dict[str, str]:
    """The worker's SDP answer, refused before it is posted (or the session committed) when too large."""
    if len(answer["sdp"]) > MAX_ANSWER_CHARS:
        raise TaskError(
            "answer_too_large",
            f"The session's answer has {len(answer['sdp'])} characters (limit {MAX_ANSWER_CHARS}): offer fewer media.",
        )
    return answer
