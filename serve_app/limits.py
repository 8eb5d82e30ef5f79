"""Input limits enforced before the app sees a request body, and the OpenAPI
declaration of the error envelope every failure shares.

A pure ASGI middleware (not BaseHTTPMiddleware): responses, streamed ones
included, pass through untouched. Only request bodies are held back, and never
more than the cap, so the size and JSON-depth checks can answer with a clean
error before any route, or FastAPI's recursive ``json.loads``, runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.config import InputLimits
from serve_app.errors import AppError, InvalidInput, PayloadTooLarge, error_response

# Our routes read no body on these; skipping them keeps reads free of any cost.
_BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# Parsed by python-multipart, never by a JSON parser. Everything else may be:
# FastAPI parses JSON content types, and /v1/chat/completions parses any body.
_FORM_TYPES = frozenset({b"multipart/form-data", b"application/x-www-form-urlencoded"})
# A JSON string; an unterminated one runs to the end of the body. The unrolled
# loop keeps long strings linear.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
# Keeps brackets only, objects and arrays alike.
_AS_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def exceeds_json_depth(body: bytes, max_depth: int) -> bool:
    """Whether ``body`` nests arrays/objects deeper than ``max_depth``, found
    without parsing: Python's JSON parser recurses once per level, so a deep
    document must be refused before it reaches the parser.

    Every step is a C-level bytes operation: at the default 64 KiB cap the
    worst shape measured (a thousand arrays nested exactly to the limit) costs
    about 5 ms and ordinary bodies microseconds, where a per-token Python loop
    costs over 20 ms on 64 KiB of brackets."""
    # Fewer opening brackets than the limit cannot nest past it (brackets in
    # strings are over-counted, which only sends the body to the exact scan).
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return False
    brackets = _STRING.sub(b"", body).translate(_AS_BRACKETS, _NOT_BRACKETS)
    if b"[" * (max_depth + 1) in brackets:  # the usual attack, found in one scan
        return True
    # Each pass removes every innermost pair, so lowering the nesting by one:
    # a pair still there after max_depth passes sits deeper than allowed.
    passes = 0
    while len(reduced := brackets.replace(b"[]", b"")) < len(brackets):
        if passes == max_depth:
            return True
        brackets = reduced
        passes += 1
    # Left: unmatched closers, then unmatched openers (malformed JSON). Closers
    # buy no depth; openers count in full, over everything they might enclose.
    return passes + brackets.count(b"[") > max_depth


def _declared_length(headers: list[tuple[bytes, bytes]]) -> tuple[int | None, bytes]:
    length: int | None = None
    content_type = b""
    for name, value in headers:
        if name == b"content-length":
            value = value.strip()
            # Long digit strings are over any cap; int() of thousands of
            # digits is itself refused by Python.
            if value.isdigit():
                length = int(value) if len(value) <= 18 else 2**63
        elif name == b"content-type":
            content_type = value
    return length, content_type


def _may_be_json(content_type: bytes) -> bool:
    return content_type.split(b";", 1)[0].strip().lower() not in _FORM_TYPES


async def _reject(exc: AppError, scope: Scope, receive: Receive, send: Send, *, close: bool = False) -> None:
    # Closing stops the server from draining (reading and discarding) the rest
    # of an oversize upload just to keep the connection alive.
    headers = {"Connection": "close"} if close else None
    await error_response(exc.status_code, exc.code, exc.message, details=exc.details, headers=headers)(
        scope, receive, send
    )


class InputLimitsMiddleware:
    """Caps request bodies at ``limits.max_body_bytes`` (413: declared
    Content-Length refused before reading, chunked uploads cut off when they
    pass the cap) and refuses JSON nested deeper than ``limits.max_json_depth``
    (422). The checked body is then replayed to the app."""

    def __init__(self, app: ASGIApp, limits: InputLimits) -> None:
        self.app = app
        self.max_body_bytes = limits.max_body_bytes
        self.max_json_depth = limits.max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in _BODYLESS_METHODS:
            await self.app(scope, receive, send)
            return
        declared, content_type = _declared_length(scope["headers"])
        if declared is not None and declared > self.max_body_bytes:
            await _reject(self._too_large(), scope, receive, send, close=True)
            return

        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # The client left mid-upload: hand the app what it would have
                # seen without this middleware.
                await self.app(scope, _replay(b"".join(chunks), receive, more_body=True, then=message), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _reject(self._too_large(), scope, receive, send, close=True)
                return
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break

        body = b"".join(chunks)
        if _may_be_json(content_type) and exceeds_json_depth(body, self.max_json_depth):
            exc = InvalidInput(f"JSON nested deeper than {self.max_json_depth} levels")
            await _reject(exc, scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body larger than {self.max_body_bytes} bytes")


def _replay(body: bytes, receive: Receive, *, more_body: bool = False, then: Message | None = None) -> Receive:
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": more_body}]
    if then is not None:
        pending.append(then)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        # Later calls are the app listening for a disconnect (streaming
        # responses do): those go to the server.
        return await receive()

    return replayed


# -- OpenAPI ----------------------------------------------------------------------
class ErrorBody(BaseModel):
    code: str
    message: str
    request_id: str
    details: Any = None


class ErrorEnvelope(BaseModel):
    """The one error shape (``serve_app.errors.error_response``)."""

    error: ErrorBody
    detail: str


_ENVELOPE_REF = {"$ref": "#/components/schemas/ErrorEnvelope"}
_BODY_METHOD_ERRORS = {
    "400": "the body could not be read (e.g. not UTF-8)",
    "413": "request body larger than the configured cap",
    "422": "invalid input (validation failed, malformed or too deeply nested JSON)",
}
_BODY_METHODS = frozenset({"post", "put", "patch", "delete"})
_GUARD_ERRORS = {
    "401": "missing, malformed, unknown or revoked API key",
    "429": "rate limit exceeded (Retry-After, RateLimit-* headers)",
    "503": "a dependency is down or the replica is at max_in_flight (Retry-After)",
}
_FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")
_MARK = "_documents_error_envelope"


def document_error_responses(app: FastAPI, guarded: Callable[[str], bool] = lambda _path: False) -> None:
    """Makes the OpenAPI document tell the truth about errors, so clients and
    contract tests can rely on it:

    - every 4xx an operation declares (FastAPI's 422, a route's own
      ``responses={404: {"description": ...}}``, 401/429 added later) gets the
      envelope as its body, replacing FastAPI's ``HTTPValidationError``, whose
      ``detail`` list is not what this service sends;
    - every operation of a body method also declares the 400/413/422 that
      ``InputLimitsMiddleware`` and body parsing can answer;
    - every path ``guarded`` selects declares the 401, 429 and 503 (envelope)
      of authentication, rate limits and admission.

    5xx responses are left as routes declare them (``/readyz``'s 503 is not an
    envelope); routes that can answer an envelope 503/504 should declare it
    with ``model=ErrorEnvelope``. Call once, after the routes are added.
    """
    generate: Callable[[], dict[str, Any]] = app.openapi
    if getattr(generate, _MARK, False):
        return
    done = False

    def openapi() -> dict[str, Any]:
        nonlocal done
        schema = generate()
        if not done:
            _declare_errors(schema, guarded)
            done = True
        return schema

    setattr(openapi, _MARK, True)
    app.openapi = openapi  # type: ignore[method-assign]


def _declare_errors(schema: dict[str, Any], guarded: Callable[[str], bool]) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    envelope = ErrorEnvelope.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(envelope.pop("$defs", {}))
    components["ErrorEnvelope"] = envelope
    for path, methods in schema.get("paths", {}).items():
        for method, operation in methods.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            if guarded(path):
                for status, description in _GUARD_ERRORS.items():
                    responses.setdefault(status, {"description": description})
                responses["503"].setdefault("content", {"application/json": {"schema": dict(_ENVELOPE_REF)}})
            if method in _BODY_METHODS:
                for status, description in _BODY_METHOD_ERRORS.items():
                    responses.setdefault(status, {"description": description})
            for status, response in responses.items():
                if status.startswith("4") and _is_default_or_empty(response):
                    response["content"] = {"application/json": {"schema": dict(_ENVELOPE_REF)}}
    if "HTTPValidationError" not in str(schema.get("paths", {})):
        for name in _FASTAPI_VALIDATION:
            components.pop(name, None)


def _is_default_or_empty(response: dict[str, Any]) -> bool:
    content = response.get("content")
    if not content:
        return True
    ref = content.get("application/json", {}).get("schema", {}).get("$ref", "")
    return ref.endswith("/HTTPValidationError")
