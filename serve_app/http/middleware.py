"""The outer middlewares of the request pipeline (pure ASGI: responses,
streamed ones included, pass through untouched). Their order is set in
``serve_app.http.factory.MIDDLEWARE``; the per-route steps that follow routing
are in ``serve_app.http.policy``."""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app import request_id
from serve_app.http.errors import REQUEST_ID_SCOPE_KEY, internal_error, track_errors
from serve_app.http.headers import header
from serve_app.metrics import AppMetrics

log = logging.getLogger("serve_app.http")
access_log = logging.getLogger("serve_app.access")


class RequestIdMiddleware:
    """Accepts a valid ``X-Request-Id`` or makes one; the id is in every log
    line, error body and engine request of this request.

    ``behind_serve_proxy``: Serve's own middleware (ray 2.60
    ``http_util.RequestIdMiddleware``) already put an id in the header (the
    client's, or a fresh one) and echoes it in the response itself; we add
    no second header. A client's id that is not valid (too long, odd
    characters) is replaced in our logs, bodies and Serve's context."""

    def __init__(self, app: ASGIApp, behind_serve_proxy: bool = False) -> None:
        self.app = app
        self.behind_serve_proxy = behind_serve_proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = header(scope, b"x-request-id")
        rid = request_id.accept_or_generate(supplied)
        scope[REQUEST_ID_SCOPE_KEY] = rid
        token = request_id.set_request_id(rid)
        try:
            if self.behind_serve_proxy:
                if rid != supplied:
                    request_id.adopt_in_serve(rid)
                await self.app(scope, receive, send)
                return
            raw = rid.encode("latin-1")

            async def send_with_id(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [
                        *(h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"),
                        (b"x-request-id", raw),
                    ]
                await send(message)

            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset_request_id(token)


class AccessLogMiddleware:
    """One JSON line and one set of metric samples per request, labelled with
    the route template (``/users/{user_id}``, never the raw path: bounded
    metric cardinality, no ids in logs). Refusals by the route's own policy
    (401, 413, 429) happen after routing, so they carry their route too."""

    def __init__(self, app: ASGIApp, metrics: AppMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500
        errors = track_errors()

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            elapsed = time.perf_counter() - t0
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.request(route, scope["method"], status, elapsed)
            access_log.info(
                "%s %s %s %.1fms",
                scope["method"], route, status, elapsed * 1000,
                extra={
                    "http_route": route,
                    "method": scope["method"],
                    "status": status,
                    "latency_ms": round(elapsed * 1000, 2),
                    "error_code": errors.get("code"),
                },
            )


class ErrorEnvelopeMiddleware:
    """The catch-all: whatever the pipeline or a route raises becomes the 500
    envelope with the request id, never Starlette's plain-text 500 nor a
    dropped connection.

    A ``CancelledError`` is let through only when this request's own task is
    being cancelled (the client left; Serve cancels the handler). One that
    arrives otherwise (someone else's cancelled work surfacing here) is an
    error like any other."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise
            log.error("request failed: a cancellation it did not ask for reached it", exc_info=True)
            if started:
                raise
            await internal_error()(scope, receive, send)
        except Exception:
            log.exception("unhandled error")
            if started:  # mid-stream: nothing sane left to send
                raise
            await internal_error()(scope, receive, send)
