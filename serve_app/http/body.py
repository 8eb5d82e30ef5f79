"""Request bodies: read at most the route's cap, refuse JSON nested too deep,
then replay the checked body to the route. Runs after authentication (so an
anonymous caller cannot make the service read 64 KiB it would refuse anyway)
and before any parser: FastAPI's ``json.loads`` recurses once per level.
"""

from __future__ import annotations

import re

from starlette.types import Message, Receive, Scope

from serve_app.errors import InvalidInput, PayloadTooLarge
from serve_app.http.headers import header

# Our routes read no body on these; skipping them keeps reads free of any cost.
BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
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


def declared_length(scope: Scope) -> int | None:
    value = (header(scope, b"content-length") or "").strip()
    if not value.isdigit():
        return None
    # Long digit strings are over any cap; int() of thousands of digits is
    # itself refused by Python.
    return int(value) if len(value) <= 18 else 2**63


def _may_be_json(scope: Scope) -> bool:
    content_type = (header(scope, b"content-type") or "").split(";", 1)[0].strip().lower()
    return content_type.encode("latin-1") not in _FORM_TYPES


def has_body(scope: Scope) -> bool:
    return scope["method"] not in BODYLESS_METHODS


async def read_capped(scope: Scope, receive: Receive, max_bytes: int, max_json_depth: int) -> Receive:
    """Reads the request body (refusing one past ``max_bytes`` with 413, a
    declared one before reading a byte) and checks its JSON depth (422);
    returns a ``receive`` that replays it."""
    declared = declared_length(scope)
    if declared is not None and declared > max_bytes:
        raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            # The client left mid-upload: hand the route what it would have
            # seen without this step.
            return _replay(b"".join(chunks), receive, more_body=True, then=message)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    if _may_be_json(scope) and exceeds_json_depth(body, max_json_depth):
        raise InvalidInput(f"JSON nested deeper than {max_json_depth} levels")
    return _replay(body, receive)


def _too_large(max_bytes: int) -> PayloadTooLarge:
    # Closing stops the server from draining (reading and discarding) the
    # rest of an oversize upload just to keep the connection alive.
    return PayloadTooLarge(f"request body larger than {max_bytes} bytes", headers={"Connection": "close"})


def _replay(body: bytes, receive: Receive, *, more_body: bool = False, then: Message | None = None) -> Receive:
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": more_body}]
    if then is not None:
        pending.append(then)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        # Later calls are the route listening for a disconnect (streaming
        # responses do): those go to the server.
        return await receive()

    return replayed
