"""Weights from a Hugging Face cache folder, such as RunPod's model cache.

An endpoint that declares a Hugging Face model gets it on the worker's local disk before the worker starts,
in the Hub's cache layout: ``{hub}/models--{org}--{name}/snapshots/{revision}/{path in the repository}``
(``refs/{branch}`` names the revision). The weights manifest downloads from ``huggingface.co/{org}/{name}/
resolve/{branch}/{path}`` URLs, so each manifest file has one place in such a cache. ``model_cache_view``
links the manifest files found there into one folder in the weights layout (MuseTalk's set comes from three
repositories), which the resolver searches like any weights folder. A cached file is a link into the cache's
``blobs/``, named by the sha256 the Hub recorded for the file's content: ``hub_sha256`` reads it, so such a
file is verified like a pinned one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

HF_RESOLVE = re.compile(r"^https://huggingface\.co/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)$")
SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class HubFile:
    repo: str  # org/name
    revision: str  # branch or commit
    path: str  # inside the repository


def hub_file(url: str) -> HubFile | None:
    """Where a ``huggingface.co/.../resolve/...`` download URL's file sits in a Hub cache; None for other URLs."""
    match = HF_RESOLVE.match(url)
    return HubFile(match["repo"], match["revision"], match["path"]) if match else None


def snapshot(hub: Path, repo: str, revision: str) -> Path | None:
    """The repository's snapshot folder: the one ``refs/{revision}`` names, the commit itself, or else the
    newest one (a cache written without refs)."""
    model = hub / f"models--{repo.replace('/', '--')}"
    snapshots = model / "snapshots"
    ref = model / "refs" / revision
    if ref.is_file():
        named = snapshots / ref.read_text().strip()
        return named if named.is_dir() else None
    if (snapshots / revision).is_dir():
        return snapshots / revision
    found = [p for p in snapshots.iterdir() if p.is_dir()] if snapshots.is_dir() else []
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def cached_files(hub: Path, wanted: Iterable[tuple[str, str]]) -> dict[str, Path]:
    """(file name in the weights layout, download URL) pairs -> the cached file of each one found in ``hub``."""
    found = {}
    for filename, url in wanted:
        source = hub_file(url)
        folder = snapshot(hub, source.repo, source.revision) if source else None
        if folder is not None and (folder / source.path).is_file():
            found[filename] = folder / source.path
    return found


def _link(link: Path, target: Path) -> None:
    """``link`` -> ``target``, replaced atomically (another worker process may be making the same view)."""
    if link.is_symlink() and os.readlink(link) == str(target):
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    temporary = link.with_name(f".{link.name}.{os.getpid()}")
    temporary.unlink(missing_ok=True)
    os.symlink(target, temporary)
    os.replace(temporary, link)


@lru_cache(maxsize=8)
def _view(hub: Path, stamp: int, wanted: tuple[tuple[str, str], ...]) -> Path | None:
    files = cached_files(hub, wanted)
    if not files:
        return None
    digest = hashlib.sha1(str(hub).encode()).hexdigest()[:12]
    view = Path(tempfile.gettempdir()) / f"model-cache-view-{os.getuid()}-{digest}"
    for filename, target in files.items():
        _link(view / filename, target)
    log.info("weights from the model cache %s: %s", hub, ", ".join(sorted(files)))
    return view


def model_cache_view(hub: Path, wanted: Iterable[tuple[str, str]]) -> Path | None:
    """A weights folder of links to the ``wanted`` files found in the Hub cache ``hub``; None without any.

    Made once per process and cache state (the cache folder's modification time)."""
    try:
        stamp = hub.stat().st_mtime_ns
    except OSError:
        return None
    return _view(hub, stamp, tuple(wanted))


def hub_sha256(path: Path) -> str | None:
    """The sha256 a Hub cache recorded for a cached file (its blob's name), when ``path`` links to one."""
    try:
        blob = path.resolve(strict=True)
    except OSError:
        return None
    return blob.name if blob.parent.name == "blobs" and SHA256.fullmatch(blob.name) else None
