"""Route protection, declared by the routes and enforced by one pipeline.

A router declares what its routes need (``Protection``: an auth group and a
body cap) through its route class; the auth mode and the limits of each group
come from ``AppArgs``. After routing, and before FastAPI reads the body or
runs a dependency, ``PolicyGate`` runs the steps of the request pipeline that
depend on the route, in this order:

    pre-auth throttle -> auth -> rate limit -> admission -> body limits -> route

The pipeline never looks at the path: a route added without a declaration
gets the strictest policy (a key, the strictest bucket, a 1 KiB body cap), and
a non-root ``route_prefix`` changes nothing because the route, not the URL, is
what carries the policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.datastructures import MutableHeaders
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.auth import KeyUnverifiable, parse_bearer
from serve_app.config import AppArgs
from serve_app.errors import Overloaded, RateLimited, Unauthorized
from serve_app.http import body
from serve_app.http.errors import documented
from serve_app.http.headers import client_address, header

if TYPE_CHECKING:
    from serve_app.http.resources import Resources

Group = Literal["public", "users", "questions", "undeclared"]
PRINCIPAL_SCOPE_KEY = "qa.principal"


@dataclass(frozen=True)
class Protection:
    """What a router's routes declare: the auth group (whose auth mode and
    rate limit ``AppArgs`` sets) and the largest body they accept."""

    group: Group
    body_bytes: int = 0

    def route_class(self) -> type[APIRoute]:
        """An ``APIRoute`` subclass carrying this declaration: give it to
        ``APIRouter(route_class=...)``. A class attribute, so declaring costs
        nothing per request (a dependency would be solved on every call)."""
        return type(f"{self.group.title()}Route", (APIRoute,), {"protection": self})

    def responses(self) -> dict[int | str, dict[str, Any]]:
        """The errors the pipeline can answer on these routes (``responses=`` of the router)."""
        if self.group == "public":
            return {}
        return documented({
            401: "missing, malformed, unknown or revoked API key",
            429: "rate limit, token budget or failed-authentication throttle exceeded (Retry-After)",
            503: "a dependency is down or the replica is at max_in_flight (Retry-After)",
        })

    def body_responses(self) -> dict[int | str, dict[str, Any]]:
        """The body errors, for the routes that take one (``responses=`` of the route)."""
        return documented({
            400: "the body could not be read (e.g. not UTF-8)",
            413: f"request body larger than {self.body_bytes} bytes",
            422: "invalid input (validation failed, malformed or too deeply nested JSON)",
        })


UNDECLARED = Protection("undeclared", body_bytes=1024)


@dataclass(frozen=True)
class Principal:
    """Who is calling: ``key:<id>`` for an API key, ``ip:<address>`` otherwise."""

    id: str
    address: str

    @property
    def has_key(self) -> bool:
        return self.id.startswith("key:")


@dataclass(frozen=True)
class Policy:
    """A declaration resolved against the args: what the gate enforces."""

    group: Group
    auth: Literal["none", "optional", "key"]  # none: public; optional: anonymous, but a key sent must be valid
    bucket: str | None  # rate-limit bucket, None: not limited
    body_bytes: int

    @classmethod
    def resolve(cls, protection: Protection, args: AppArgs) -> Policy:
        limits = args.rate_limits
        if protection.group == "public":
            return cls("public", "none", None, protection.body_bytes)
        if protection.group == "undeclared":
            # Most protected, whatever the args say of the declared groups: a
            # key, and the bucket with the lower rate.
            name = min(("users", "questions"), key=lambda g: getattr(limits, g).rate_per_s)
            return cls("undeclared", "key", name if limits.enabled else None, protection.body_bytes)
        mode = getattr(args.auth, protection.group)
        return cls(protection.group, "key" if mode == "key" else "optional",
                   protection.group if limits.enabled else None, protection.body_bytes)


class Admission:
    """At most ``limit`` guarded requests in flight per replica; beyond that a
    fast 503 envelope with Retry-After. Set below the ingress's
    ``max_ongoing_requests`` so this answers before Serve starts queueing (and
    before Serve's own plain-text 503)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0


class PolicyGate:
    """The per-route part of the request pipeline; wraps one route's ASGI app."""

    def __init__(self, route_app: ASGIApp, policy: Policy, args: AppArgs) -> None:
        self.app = route_app
        self.policy = policy
        self.max_json_depth = args.limits.max_json_depth
        self.trusted = args.rate_limits.proxy_networks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        policy = self.policy
        if policy.auth == "none":  # public: the body step only
            if body.has_body(scope):
                receive = await body.read_capped(scope, receive, policy.body_bytes, self.max_json_depth)
            await self.app(scope, receive, send)
            return
        res: Resources = scope["app"].state.resources
        address = client_address(scope, self.trusted)
        key = parse_bearer(header(scope, b"authorization"))
        # Whether checking this key would cost a database query.
        lookup = key is not None and res.keys.needs_lookup(key[0])
        if lookup:
            self.throttle(res, address)  # 1. pre-auth throttle
        principal = await self.authenticate(res, key, lookup, address, scope)  # 2. auth
        scope[PRINCIPAL_SCOPE_KEY] = principal
        send = await self.rate_limit(res, principal, send)  # 3. rate limit
        admission = res.admission  # 4. admission
        if admission.in_flight >= admission.limit:
            raise Overloaded(retry_after_s=1)
        admission.in_flight += 1
        try:
            if body.has_body(scope):  # 5. body limits
                receive = await body.read_capped(scope, receive, policy.body_bytes, self.max_json_depth)
            await self.app(scope, receive, send)  # 6. the route
        finally:
            admission.in_flight -= 1

    # -- the steps, in pipeline order --------------------------------------------------
    @staticmethod
    def throttle(res: Resources, address: str) -> None:
        """An address past its failed-authentication budget gets 429 for any
        key this replica would have to look up: before any database query.
        From memory, no Redis round trip (``FailedAuthThrottle``); keys
        already verified here cost nothing and are not held up."""
        blocked = res.throttle.blocked_for(address)
        if blocked:
            res.metrics.rate_limited(res.throttle.BUCKET)
            raise RateLimited("too many failed authentication attempts from this address",
                              retry_after_s=max(1, math.ceil(blocked)))

    async def authenticate(self, res: Resources, key: tuple[str, str] | None, lookup: bool, address: str,
                           scope: Scope) -> Principal:
        # On an open route a token that is not one of our keys (OpenAI clients
        # must send some api_key) is anonymous; one of ours must be valid.
        if key is None:
            if self.policy.auth == "key":
                res.metrics.auth_failure("missing" if header(scope, b"authorization") is None else "malformed")
                raise Unauthorized()
            return Principal(f"ip:{address}", address)
        try:
            key_id = await res.keys.verify(key)
        except KeyUnverifiable:
            raise  # the database is away: not the caller's failure
        except Unauthorized:
            if lookup:  # only failures that cost a lookup are counted (one Redis call)
                await res.throttle.failed(address)
            raise
        return Principal(f"key:{key_id}", address)

    async def rate_limit(self, res: Resources, principal: Principal, send: Send) -> Send:
        if self.policy.bucket is None:
            return send
        decision = await res.limiter.take(self.policy.bucket, principal.id)
        if not decision.allowed:
            res.metrics.rate_limited(self.policy.bucket)
            raise RateLimited(retry_after_s=max(1, math.ceil(decision.retry_after_s)), headers=decision.headers())
        extra = decision.headers()

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in extra.items():
                    headers.append(name, value)
            await send(message)

        return send_with_limits


def protection_of(route: BaseRoute) -> Protection:
    declared = getattr(route, "protection", None)
    return declared if isinstance(declared, Protection) else UNDECLARED


def apply(app: FastAPI, args: AppArgs) -> None:
    """Wraps every route of ``app`` in its gate (once; idempotent, so the
    lifespan can call it again for routes added after ``create_app``)."""
    for route in app.router.routes:
        current = getattr(route, "app", None)
        if current is None or isinstance(current, PolicyGate):
            continue
        route.app = PolicyGate(current, Policy.resolve(protection_of(route), args), args)  # type: ignore[attr-defined]
