"""ASGI middleware of the ingress, installed in one place (`install`) so hardening can slot in more.

Order, outermost first: request metrics (sees every response: 401, 429 and 413 included), CORS (only
when `security.cors_origins` is set; outside the key check, so preflights need no key and refusals carry
CORS headers), API keys and rate limits (`security.AccessControl`), then the body-size limit. The body
limit rejects a declared Content-Length at once and counts streamed bytes otherwise; a body that grows
past the limit raises `BodyTooLarge` from `receive`, which the app answers with 413.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import timing
from ..metrics import RateLimitMetrics
from ..settings import AppSettings
from .codecs import json_response
from .errors import BodyTooLarge
from .security import AccessControl, KeyStore, document, rate_limiter

Recorder = Callable[[str, str, int, float, dict[str, float]], None]  # endpoint, method, status, latency_ms, stages


class BodySizeLimit:
    """413 for bodies over `limit` bytes, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await json_response({"detail": str(BodyTooLarge(self.limit))}, 413)(scope, receive, send)
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counting_receive, send)


class RequestMetrics:
    """Reports (route template, method, status code, latency, stage times) of every HTTP request to `record`,
    and tells the client where the ingress's time went in a Server-Timing header (`timing.py`).

    The router leaves the matched route in the scope; a request answered before routing (a 413 from the
    body limit) is matched against `routes` here, so it is still counted under its endpoint.
    """

    def __init__(self, app: ASGIApp, record: Recorder, routes: Sequence[BaseRoute]) -> None:
        self.app, self.record, self.routes = app, record, routes

    def endpoint(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is None:
            route = next((r for r in self.routes if r.matches(scope)[0] == Match.FULL), None)
        return getattr(route, "path", None) or "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        stages = timing.start()
        status = 500

        async def capturing_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                elapsed = 1e3 * (time.perf_counter() - started)
                MutableHeaders(scope=message).append("Server-Timing", timing.server_timing(stages, elapsed))
            await send(message)

        try:
            await self.app(scope, receive, capturing_send)
        finally:
            self.record(self.endpoint(scope), scope["method"], status, 1e3 * (time.perf_counter() - started),
                        stages)


def install(app: FastAPI, settings: AppSettings, record: Recorder) -> None:
    """Add the middleware stack; `add_middleware` wraps, so the last added is outermost.

    Loads the API keys (raises, failing the replica's start, when keys are required and none is found)
    and documents the access rules in the app's OpenAPI document.
    """
    security = settings.security
    keys = KeyStore(security)
    limit = security.rate_limit
    limiter = rate_limiter(limit, metrics=RateLimitMetrics) if limit.requests_per_s > 0 else None
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes)
    if keys.enabled or limiter is not None:
        app.add_middleware(AccessControl, keys=keys if keys.enabled else None, limiter=limiter)
    if security.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=security.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "Accept"],
                           expose_headers=["X-Job-Id", "Retry-After"], max_age=600)
    app.add_middleware(RequestMetrics, record=record, routes=app.routes)
    build_openapi = app.openapi
    app.openapi = lambda: document(build_openapi(), keys.enabled, limiter is not None)  # type: ignore[method-assign]
