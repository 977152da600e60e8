"""Headless Chromium for page tests: Debian's package driven by Playwright (no browser download), and a page
that may reach this machine only (every request to another host is aborted and recorded)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest

CHROMIUM = next((path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None)
NO_BROWSER = "no Chromium: this browser test did not run (.ci/run installs Debian's chromium)"
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason=NO_BROWSER)
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
BROWSER_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-ui-for-media-stream",
    "--disable-features=WebRtcHideLocalIpsWithMdns",  # plain host candidates: the server cannot resolve mDNS names
]


@contextmanager
def offline_page(viewport: tuple[int, int] = (1100, 900)) -> Iterator[tuple[object, list[str]]]:
    """A Chromium page whose requests to any host but this machine's are aborted; yields (page, blocked URLs)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra has it)")
    blocked: list[str] = []

    def local_only(route) -> None:  # noqa: ANN001 (playwright's Route)
        host = urlsplit(route.request.url).hostname or ""
        if route.request.url.startswith(("data:", "blob:")) or host in LOCAL_HOSTS:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort("internetdisconnected")

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
            context.route("**/*", local_only)
            yield context.new_page(), blocked
        finally:
            browser.close()
