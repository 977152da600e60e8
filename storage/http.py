"""Single-object reads over https:// and http:// (SSRF-guarded, size-capped, streamed) and from data: URIs.

The address check resolves the host itself before each request (and each redirect hop); the HTTP client
resolves it again to connect, so a DNS server that answers differently within that instant is not caught.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, unquote_to_bytes, urlsplit

import httpx

from storage.access import InputPolicy, check_input_uri, follow_redirect
from storage.base import atomic_file, check_size
from storage.config import StorageSettings
from storage.errors import StorageError

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Identity encoding keeps Content-Length meaningful for the size check.
REQUEST_HEADERS = {"User-Agent": "serverless-talking-head/0.1", "Accept-Encoding": "identity"}
DEFAULT_PORTS = {"http": 80, "https": 443}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def redact(url: str) -> str:
    """``url`` without credentials, query or fragment (signed URLs carry secrets there)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]  # the port as written: a port out of range must not raise here
    return f"{parts.scheme}://{host}{parts.path}"


def byte_cap(settings: StorageSettings, max_bytes: int | None) -> int:
    return settings.http_max_bytes if max_bytes is None else min(max_bytes, settings.http_max_bytes)


def _forbidden_kind(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public unicast address, or None when it is."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    checks = [
        ("loopback", ip.is_loopback),
        ("private", ip.is_private),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("unspecified", ip.is_unspecified),
        ("non-global", not ip.is_global),
    ]
    return next((kind for kind, hit in checks if hit), None)


def check_url_allowed(url: str, settings: StorageSettings) -> None:
    """Refuse (``url_refused``) URLs whose host resolves to any non-public address, unless private URLs are allowed."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS:
        raise StorageError("url_refused", f"refusing {redact(url)}: only http:// and https:// can be fetched")
    try:
        host, port = parts.hostname, parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError as exc:  # a port out of 0..65535
        raise StorageError("url_refused", f"refusing {redact(url)}: {exc}") from exc
    if not host:
        raise StorageError("invalid_uri", f"{redact(url)} has no host")
    if settings.allow_private_urls:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise StorageError("download_failed", f"cannot resolve host {host!r} of {redact(url)}: {exc}") from exc
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        kind = _forbidden_kind(ip)
        if kind:
            raise StorageError(
                "url_refused",
                f"refusing {redact(url)}: host {host!r} resolves to {ip}, a {kind} address; "
                "set ALLOW_PRIVATE_URLS=1 to allow private and local addresses",
            )


def fetch_http(
    uri: str, dest: Path, settings: StorageSettings, max_bytes: int | None = None, policy: InputPolicy | None = None
) -> Path:
    """Stream ``uri`` to ``dest``, following redirects (each hop normalised and checked by ``storage.access``,
    then opened as checked) and refusing more than the cap."""
    cap = byte_cap(settings, max_bytes)
    policy = policy or InputPolicy.from_settings(settings)
    url = check_input_uri(uri, policy)
    deadline = time.monotonic() + settings.http_timeout_s  # for the whole download, redirects included
    try:
        with httpx.Client(timeout=settings.http_timeout_s, headers=REQUEST_HEADERS, follow_redirects=False) as client:
            for _ in range(MAX_REDIRECTS + 1):
                _check_deadline(deadline, uri, settings)
                check_url_allowed(url, settings)
                with client.stream("GET", url) as response:
                    location = response.headers.get("location")
                    if response.status_code in REDIRECT_STATUSES and location:
                        url = follow_redirect(url, location, policy)  # the same rule as the first URL
                        continue
                    _save_response(response, dest, cap, uri, lambda: _check_deadline(deadline, uri, settings))
                    return dest
    except httpx.InvalidURL as exc:  # e.g. a Location header httpx cannot parse (a data: URL): never followed
        raise StorageError("url_refused", f"refusing {redact(uri)} or its redirect: {exc}") from exc
    except httpx.TimeoutException as exc:
        raise StorageError(
            "download_failed", f"{redact(uri)} timed out after {settings.http_timeout_s:g}s ({exc})"
        ) from exc
    except httpx.HTTPError as exc:
        raise StorageError("download_failed", f"{redact(uri)}: {type(exc).__name__}: {exc}") from exc
    raise StorageError("download_failed", f"{redact(uri)}: more than {MAX_REDIRECTS} redirects")


def _check_deadline(deadline: float, uri: str, settings: StorageSettings) -> None:
    if time.monotonic() > deadline:
        raise StorageError(
            "download_failed", f"{redact(uri)} took longer than {settings.http_timeout_s:g}s in all (HTTP_TIMEOUT_S)"
        )


def _save_response(
    response: httpx.Response, dest: Path, cap: int, uri: str, check_deadline: Callable[[], None]
) -> None:
    if response.status_code in (404, 410):
        raise StorageError("not_found", f"{redact(uri)} does not exist (HTTP {response.status_code})")
    if response.status_code != 200:
        raise StorageError("download_failed", f"{redact(uri)} answered HTTP {response.status_code}")
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):  # asked for identity: sizes and caps count the bytes we store
        raise StorageError("download_failed", f"{redact(uri)} sent Content-Encoding {encoding[:40]!r}; only identity")
    declared = response.headers.get("content-length")
    if declared and declared.isdigit():
        check_size(int(declared), cap, redact(uri))
    received = 0
    with atomic_file(dest) as fh:
        for chunk in response.iter_raw():  # as the bytes arrive (iter_bytes would wait for full chunks)
            check_deadline()
            received += len(chunk)
            if received > cap:
                raise StorageError("too_large", f"{redact(uri)} sent more than the limit of {cap} bytes")
            fh.write(chunk)


def fetch_data_uri(uri: str, dest: Path, settings: StorageSettings, max_bytes: int | None = None) -> Path:
    """Decode ``data:[<mime>][;base64],<data>`` (base64 or percent-encoded) into ``dest``."""
    cap = byte_cap(settings, max_bytes)
    header, comma, payload = uri.partition(":")[2].partition(",")
    if not comma:
        raise StorageError("invalid_data_uri", "data: URI has no ',' before its data")
    is_base64 = header.lower().endswith(";base64")
    data = _decode_base64(payload, cap) if is_base64 else unquote_to_bytes(payload)
    check_size(len(data), cap, f"data: URI ({header or 'text/plain'})")
    with atomic_file(dest) as fh:
        fh.write(data)
    return dest


def _decode_base64(payload: str, cap: int) -> bytes:
    text = "".join((unquote(payload) if "%" in payload else payload).split())
    if len(text) * 3 // 4 > cap + 2:
        raise StorageError("too_large", f"data: URI holds about {len(text) * 3 // 4} bytes, over the limit of {cap}")
    altchars = b"-_" if ("-" in text or "_" in text) else None
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=altchars, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise StorageError("invalid_data_uri", f"data: URI has invalid base64 data ({exc})") from exc
