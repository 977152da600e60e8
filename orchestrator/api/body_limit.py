"""Request body limits for the API and the RunPod emulator: refused with 413 before a route reads the body."""

from __future__ import annotations

from collections.abc import Callable

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from errors import error_body


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is over this route's limit of {limit} bytes.")


class BodyLimit:
    """ASGI middleware refusing request bodies over ``limit_for(path)`` bytes with 413: by Content-Length before
    the route runs, and by counting while a body without one streams in."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_for(scope["path"])
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            body = error_body("too_large", BodyTooLarge(limit).detail)
            return await JSONResponse(body, status_code=413)(scope, receive, send)
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)  # an HTTPException: the route's body parsing lets it through
            return message

        await self.app(scope, counted, send)
