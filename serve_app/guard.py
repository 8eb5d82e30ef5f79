"""Who may call what, how often and how many at once.

Pure ASGI middlewares that decide before the body is read, so a refused
request costs no parsing: API-key auth and rate limits per route group, and
the replica's admission limit. Health, docs and the root stay open.
"""

from __future__ import annotations

import math
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.auth import parse_bearer
from serve_app.config import AppArgs
from serve_app.errors import AppError, Overloaded, RateLimited, error_response


def route_group(path: str) -> str | None:
    if path == "/users" or path.startswith("/users/"):
        return "users"
    if path in ("/question", "/question/stream") or path.startswith("/v1/"):
        return "questions"
    return None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


async def _refuse(exc: AppError, scope: Scope, receive: Receive, send: Send) -> None:
    response = error_response(
        exc.status_code, exc.code, exc.message, retry_after_s=exc.retry_after_s, headers=exc.headers
    )
    await response(scope, receive, send)


class GuardMiddleware:
    """Authenticates (``auth``: key or open per group) and rate-limits per API
    key, or per client address when a group is open and no key is sent.
    Needs the lifespan's ``auth``, ``limiter`` and ``metrics`` in the scope state."""

    def __init__(self, app: ASGIApp, args: AppArgs) -> None:
        self.app = app
        self.args = args

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        group = route_group(scope["path"]) if scope["type"] == "http" else None
        if group is None:
            await self.app(scope, receive, send)
            return
        state = scope["state"]
        try:
            client = await self._identify(group, scope, state)
            headers = await self._limit(group, client, state)
        except AppError as exc:
            await _refuse(exc, scope, receive, send)
            return
        if not headers:
            await self.app(scope, receive, send)
            return
        raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *raw]
            await send(message)

        await self.app(scope, receive, send_with_limits)

    async def _identify(self, group: str, scope: Scope, state: dict[str, Any]) -> str:
        header = _header(scope, b"authorization")
        # On an open route, a token that is not one of our keys (OpenAI
        # clients must send some api_key) is anonymous; one of ours must be valid.
        if getattr(self.args.auth, group) == "key" or parse_bearer(header) is not None:
            key_id = await state["auth"].verify(header)
            state["principal"] = f"key:{key_id}"
        else:
            state["principal"] = f"ip:{self._client_address(scope)}"
        return state["principal"]

    def _client_address(self, scope: Scope) -> str:
        if self.args.rate_limits.trust_forwarded_for:
            forwarded = _header(scope, b"x-forwarded-for")
            if forwarded:
                # The load balancer appends the address it saw; anything left
                # of it came from the client and can be forged.
                return forwarded.rsplit(",", 1)[-1].strip()
        client = scope.get("client")
        return client[0] if client else "unknown"

    async def _limit(self, group: str, client: str, state: dict[str, Any]) -> dict[str, str]:
        if not self.args.rate_limits.enabled:
            return {}
        decision = await state["limiter"].take(group, client)
        if not decision.allowed:
            state["metrics"].rate_limited(group)
            raise RateLimited(retry_after_s=max(1, math.ceil(decision.retry_after_s)), headers=decision.headers())
        return decision.headers()


class AdmissionMiddleware:
    """At most ``limit`` guarded requests in flight per replica; beyond that a
    fast 503 envelope with Retry-After. Set below the ingress's
    ``max_ongoing_requests`` so this answers before Serve starts queueing (and
    before Serve's own plain-text 503)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or route_group(scope["path"]) is None:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            await _refuse(Overloaded(retry_after_s=1), scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
