"""A local stand-in for D-ID's talks API, following its documented shapes (docs.d-id.com, "Talks"):

``POST /talks`` ``{"source_url", "script": {"type": "audio", "audio_url"}, "webhook"?}`` -> 201 ``{"id": "tlk_...",
"object": "talk", "created_at", "status": "created"}``; ``GET /talks/{id}`` -> the talk, ``status`` created ->
started -> done (``result_url``) or ``error`` / ``rejected`` (``error: {"kind", "description"}``); errors are
``{"kind", "description"}`` with 401 (AuthorizationError), 402 (InsufficientCreditsError), 429 (TooManyRequests,
``Retry-After``). Like D-ID it downloads ``source_url`` and ``audio_url`` when a talk is created, and calls the
talk's ``webhook`` with the done talk. ``mode`` picks the scenario a test plays.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response


@dataclass
class FakeDid:
    key: str
    mode: str = "done"  # done | webhook | error | rejected | http_401 | http_402 | http_429 | never | elsewhere
    polls_until_done: int = 2
    result_mp4: bytes = b""
    result_host: str | None = None  # the URL results are served from (the fake's own by default)
    talks: dict[str, dict[str, Any]] = field(default_factory=dict)
    fetched: dict[str, bytes] = field(default_factory=dict)
    auth_headers: list[str] = field(default_factory=list)
    posts: int = 0
    polls: int = 0
    webhook_answers: list[int] = field(default_factory=list)
    url: str = ""

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/talks")
        async def create(request: Request) -> Response:
            self.posts += 1
            self.auth_headers.append(request.headers.get("authorization", ""))
            refused = self._refusal(request)
            if refused is not None:
                return refused
            body = await request.json()
            script = body.get("script") or {}
            if script.get("type") != "audio" or not body.get("source_url") or not script.get("audio_url"):
                return JSONResponse({"kind": "ValidationError", "description": "bad script"}, status_code=400)
            for name in ("source_url", "audio_url"):
                url = body[name] if name == "source_url" else script["audio_url"]
                got = httpx.get(url, timeout=10)
                if got.status_code != 200:
                    return JSONResponse({"kind": "FetchError", "description": f"{name}: {got.status_code}"}, 400)
                self.fetched[name] = got.content
            talk_id = f"tlk_{len(self.talks) + 1:06d}"
            talk = {"id": talk_id, "object": "talk", "created_at": "2026-01-01T00:00:00.000Z", "status": "created"}
            self.talks[talk_id] = {**talk, "polls": 0, "webhook": body.get("webhook")}
            if self.mode == "webhook" and body.get("webhook"):
                threading.Thread(target=self._call_webhook, args=(talk_id,), daemon=True).start()
            return JSONResponse(talk, status_code=201)

        @app.get("/talks/{talk_id}")
        def get(talk_id: str, request: Request) -> Response:
            self.polls += 1
            refused = self._refusal(request)
            if refused is not None:
                return refused
            talk = self.talks.get(talk_id)
            if talk is None:
                return JSONResponse({"kind": "NotFoundError", "description": "talk not found"}, status_code=404)
            talk["polls"] += 1
            return JSONResponse(self._view(talk))

        @app.get("/results/{name}")
        def result(name: str) -> Response:
            return Response(self.result_mp4, media_type="video/mp4")

        return app

    def _refusal(self, request: Request) -> Response | None:
        if request.headers.get("authorization") != f"Basic {self.key}" or self.mode == "http_401":
            echo = request.headers.get("authorization", "")  # a careless server echoing the header back
            return JSONResponse({"kind": "AuthorizationError", "description": f"user unauthenticated: {echo}"}, 401)
        if self.mode == "http_402":
            return JSONResponse({"kind": "InsufficientCreditsError", "description": "not enough credits"}, 402)
        if self.mode == "http_429":
            body = {"kind": "TooManyRequests", "description": "rate limit"}
            return JSONResponse(body, 429, headers={"Retry-After": "0"})
        return None

    def _view(self, talk: dict[str, Any]) -> dict[str, Any]:
        view = {k: v for k, v in talk.items() if k not in ("polls", "webhook")}
        if talk["status"] in ("done", "error", "rejected"):
            return {**view, **self._final(talk["id"])} if talk["status"] == "done" else view
        if self.mode in ("done", "elsewhere") and talk["polls"] >= self.polls_until_done:
            talk.update(self._final(talk["id"]))
        elif self.mode == "error" and talk["polls"] >= self.polls_until_done:
            talk.update(status="error", error={"kind": "FaceError", "description": "no face in the source image"})
        elif self.mode == "rejected":
            talk.update(status="rejected", error={"kind": "ModerationError", "description": "content rejected"})
        else:
            talk["status"] = "started"
        return {k: v for k, v in talk.items() if k not in ("polls", "webhook")}

    def _final(self, talk_id: str) -> dict[str, Any]:
        host = self.result_host or self.url
        return {"status": "done", "result_url": f"{host}/results/{talk_id}.mp4?Signature=abc"}

    def _call_webhook(self, talk_id: str) -> None:
        time.sleep(0.3)
        talk = self.talks[talk_id]
        talk.update(self._final(talk_id))
        answer = httpx.post(talk["webhook"], json={k: v for k, v in talk.items() if k not in ("polls", "webhook")})
        self.webhook_answers.append(answer.status_code)
