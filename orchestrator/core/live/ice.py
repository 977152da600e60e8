"""ICE servers for live sessions: ``ICE_SERVERS`` (RTCConfiguration's ``iceServers`` JSON) and, with ``TURN_SECRET``,
time-limited TURN credentials in coturn's ``use-auth-secret`` scheme (the TURN REST API): the username is
``<expiry unix time>:<label>`` and the credential ``base64(HMAC-SHA1(secret, username))``, so the TURN server
checks them with the shared secret alone and they stop working at the expiry.

Each TURN entry of ``ICE_SERVERS`` without its own ``username``/``credential`` gets such a pair; STUN entries and
TURN entries with static credentials are passed on as they are. Browsers get theirs from
``GET /v1/sessions/ice-servers``; each session's worker gets its own in the ``live_session`` task.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

from handlers.schemas import IceServer

TURN_SCHEMES = ("turn:", "turns:")


def turn_credentials(secret: str, label: str, ttl_s: float, now: float | None = None) -> tuple[str, str]:
    """(username, credential) valid for ``ttl_s`` seconds from ``now``, for a TURN server sharing ``secret``."""
    expiry = int((time.time() if now is None else now) + ttl_s)
    username = f"{expiry}:{label}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def _urls(server: IceServer) -> list[str]:
    return [server.urls] if isinstance(server.urls, str) else list(server.urls)


def ice_servers_for(
    servers: list[IceServer], turn_secret: str | None, label: str, ttl_s: float
) -> list[dict[str, Any]]:
    """RTCIceServer dicts for one peer: TURN entries without credentials get time-limited ones."""
    result = []
    for server in servers:
        entry = server.model_dump(exclude_none=True)
        is_turn = any(url.startswith(TURN_SCHEMES) for url in _urls(server))
        if is_turn and turn_secret and server.username is None and server.credential is None:
            entry["username"], entry["credential"] = turn_credentials(turn_secret, label, ttl_s)
        result.append(entry)
    return result
