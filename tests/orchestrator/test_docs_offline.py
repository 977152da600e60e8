"""/docs and /redoc render their operation lists in headless Chromium with the network off: their scripts and
styles come from this server (the fastapi-offline package's copies), not a CDN."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from handlers.settings import Settings
from orchestrator.api import create_app
from orchestrator.core.config import OrchestratorSettings
from orchestrator.core.service import JobService
from orchestrator.devtools.emulator import BackgroundServer
from tests.browser import needs_chromium, offline_page


@pytest.fixture
def api_url(tmp_path: Path, local_settings: Settings) -> Iterator[str]:
    service = JobService(OrchestratorSettings(database_url=f"sqlite:///{tmp_path / 'jobs.db'}", api_token="t"))
    with BackgroundServer(create_app(service)) as server:
        yield server.url
    service.stop()


def test_the_docs_pages_name_only_local_assets(api_url: str) -> None:
    for path in ("/docs", "/redoc"):
        page = httpx.get(api_url + path)
        assert page.status_code == 200 and "cdn." not in page.text and "fonts.googleapis" not in page.text, path
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        answer = httpx.get(f"{api_url}/docs-static/{asset}")
        assert answer.status_code == 200 and len(answer.content) > 100_000, asset


@needs_chromium
def test_swagger_ui_renders_the_operations_offline(api_url: str) -> None:
    with offline_page() as (page, blocked):
        page.goto(api_url + "/docs")
        page.wait_for_selector(".opblock-summary-path", timeout=30000)
        paths = page.locator(".opblock-summary-path").all_inner_texts()
        assert "/v1/jobs/{job_id}" in [p.replace("\u200b", "") for p in paths], paths
        assert page.locator(".opblock").count() >= 15
    assert blocked == []


@needs_chromium
def test_redoc_renders_the_operations_offline(api_url: str) -> None:
    with offline_page() as (page, blocked):
        page.goto(api_url + "/redoc")
        page.wait_for_function("document.body.innerText.includes('Submit a render_emotion job')", timeout=30000)
        body = page.inner_text("body")
        assert "Follow a job (Server-Sent Events)" in body and "Upload input" in body
    # the only outside request redoc's bundle makes is its footer's "API docs by Redocly" logo
    assert all(url.endswith("logo-mini.svg") for url in blocked), blocked
