"""Downloading one file for ``fetch-weights``: resume, retries, checksum, atomic rename (build time only).

Resume is an HTTP Range request from a ``.part`` file's size; the checksum record (``.sha256`` sidecar) lands
atomically before the file it pins, so a crash never leaves an unpinned file.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from engines.errors import EngineError

if TYPE_CHECKING:
    import httpx
    from rich.progress import Progress

log = logging.getLogger(__name__)

CHECKSUM_SUFFIX = ".sha256"  # sidecar written by fetch-weights: pins unpinned manifest entries
PART_SUFFIX = ".part"
CHUNK_BYTES = 1 << 20
FETCH_ATTEMPTS = 4
CONNECT_TIMEOUT_S = 30.0
READ_TIMEOUT_S = 120.0


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _stream_to_part(client: httpx.Client, url: str, part: Path, progress: Progress) -> None:
    """Append the remaining bytes of ``url`` to ``part`` (HTTP Range from its current size)."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 416 and have:  # nothing left to send: the part is complete
            return
        response.raise_for_status()
        if response.headers.get("content-type", "").startswith("text/html"):
            raise EngineError(
                "download_failed",
                f"{url} answered with a web page, not the file (a sign-in or confirmation page?): "
                "download it by hand and pass --url/--sha256, or use --base-url with a mirror.",
            )
        resumed = response.status_code == 206
        if have and not resumed:
            log.info("server ignored the range request: restarting %s", part.name)
            have = 0
        length = response.headers.get("content-length")
        total = have + int(length) if length else None
        task = progress.add_task(part.name.removesuffix(PART_SUFFIX), total=total, completed=have)
        with part.open("ab" if resumed else "wb") as f:
            for chunk in response.iter_bytes():  # as received: an interrupted stream keeps every byte
                f.write(chunk)
                progress.advance(task, len(chunk))


def download(url: str, dest: Path, sha256: str | None, show_progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` with resume and retries; check ``sha256``; rename atomically."""
    import httpx
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + PART_SUFFIX)
    timeout = httpx.Timeout(CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with (
        httpx.Client(follow_redirects=True, timeout=timeout) as client,
        Progress(*columns, disable=not show_progress, transient=True) as progress,
    ):
        for attempt in range(1, FETCH_ATTEMPTS + 1):
            try:
                _stream_to_part(client, url, part, progress)
                break
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                status = getattr(getattr(exc, "response", None), "status_code", 0)
                if attempt == FETCH_ATTEMPTS or 400 <= status < 500:
                    raise EngineError("download_failed", f"Downloading {url} failed: {exc}") from None
                log.warning("download of %s interrupted (%s); resuming (attempt %d)", dest.name, exc, attempt + 1)
    return _finish(part, dest, sha256)


def _finish(part: Path, dest: Path, sha256: str | None) -> Path:
    actual = hash_file(part)
    if sha256 and actual != sha256.lower():
        part.unlink()  # a wrong file cannot be resumed into the right one
        raise EngineError("checksum_mismatch", f"{dest.name}: downloaded sha256 {actual}, expected {sha256}.")
    # the checksum record lands (atomically) before the file it pins, so a crash never leaves an unpinned file
    sidecar = dest.with_name(dest.name + CHECKSUM_SUFFIX)
    staged = sidecar.with_name(sidecar.name + ".tmp")
    staged.write_text(f"{actual}  {dest.name}\n")
    os.replace(staged, sidecar)
    os.replace(part, dest)
    log.info("fetched %s (sha256 %s)", dest, actual)
    return dest
