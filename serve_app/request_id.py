"""The request id of the request being served: a context variable read by the
logs, the error envelope and the LLM client (which passes it to the pools).

Set by ``serve_app.http.middleware.RequestIdMiddleware``.
"""

from __future__ import annotations

import contextvars
import dataclasses
import re
import uuid

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
# Client-supplied ids end up in logs, error bodies and the engines' request
# ids: keep them short and inert.
_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def current_request_id() -> str | None:
    return _request_id.get()


def set_request_id(rid: str) -> contextvars.Token[str | None]:
    return _request_id.set(rid)


def reset_request_id(token: contextvars.Token[str | None]) -> None:
    _request_id.reset(token)


def is_valid(candidate: str | None) -> bool:
    return bool(candidate) and _VALID.match(candidate) is not None  # type: ignore[arg-type]


def accept_or_generate(candidate: str | None) -> str:
    return candidate if is_valid(candidate) else uuid.uuid4().hex  # type: ignore[return-value]


def adopt_in_serve(rid: str) -> None:
    """Make ``rid`` Serve's request id for the rest of this request: Serve's
    log lines of this replica and the calls it makes to the LLM pools carry it.

    Serve takes the client's header as is (its own middleware, ray 2.60
    ``serve/_private/http_util.py`` ``RequestIdMiddleware``); when we replace
    an invalid one, Serve's context must follow. A private contextvar is the
    only handle on it, so a rename costs only this.
    """
    try:
        from ray.serve import context
    except ImportError:
        return
    var = getattr(context, "_serve_request_context", None)
    current = var.get() if var is not None else None
    if current is not None and current.request_id != rid:
        var.set(dataclasses.replace(current, request_id=rid))
