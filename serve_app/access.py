"""Access log and request metrics: one JSON line and one set of samples per request."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.errors import track_errors
from serve_app.metrics import AppMetrics

log = logging.getLogger("serve_app.access")


class AccessLogMiddleware:
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
            # The route template ("/users/{user_id}"), never the raw path: it
            # keeps metric cardinality bounded and ids out of the logs.
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.request(route, scope["method"], status, elapsed)
            log.info(
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
