"""Request id: accepted from ``X-Request-Id`` or generated, echoed on every response.

A pure ASGI middleware (not BaseHTTPMiddleware) so streaming responses are not
buffered and the per-request cost stays small.
"""

from __future__ import annotations

import contextvars
import dataclasses
import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
# Client-supplied ids end up in logs and headers: keep them short and inert.
_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def current_request_id() -> str | None:
    return _request_id.get()


def _adopt_in_serve(rid: str) -> None:
    """Make ``rid`` Serve's request id for the rest of this request: Serve's
    log lines of this replica and the calls it makes to the LLM pools carry it.

    Serve's proxy already puts the client's id there, but its
    throughput-optimized direct ingress does not always; a private contextvar
    is the only handle on it (ray 2.60), so a rename costs only this.
    """
    try:
        from ray.serve import context
    except ImportError:
        return
    var = getattr(context, "_serve_request_context", None)
    current = var.get() if var is not None else None
    if current is not None and current.request_id != rid:
        var.set(dataclasses.replace(current, request_id=rid))


def accept_or_generate(candidate: str | None) -> str:
    if candidate and _VALID.match(candidate):
        return candidate
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """``behind_serve_proxy``: Ray Serve's proxy already picked the id (the
    client's, or a fresh one), passes it in the header and adds it to the
    response itself; use it unchanged and add no second header."""

    def __init__(self, app: ASGIApp, behind_serve_proxy: bool = False) -> None:
        self.app = app
        self.behind_serve_proxy = behind_serve_proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                supplied = value.decode("latin-1")
                break
        if self.behind_serve_proxy and supplied:
            _adopt_in_serve(supplied)
            token = _request_id.set(supplied)
            try:
                await self.app(scope, receive, send)
            finally:
                _request_id.reset(token)
            return
        rid = accept_or_generate(supplied)
        token = _request_id.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", rid.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _request_id.reset(token)
