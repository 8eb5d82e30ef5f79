"""The one mapping of errors to HTTP: every failure leaves the service as the
same JSON envelope carrying the request id, documented in the OpenAPI.

- ``envelope`` builds the response; nothing else in the code base does.
- ``install_handlers`` maps ``AppError``, FastAPI's validation errors and
  Starlette's HTTP exceptions (404, 405) onto it, and sets the backstop for
  anything that escapes the middlewares themselves.
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.errors import AppError, Overloaded
from serve_app.request_id import current_request_id

log = logging.getLogger(__name__)

# Set per request by the access log, so the error code chosen deep in the
# stack reaches its log line and metrics.
_error_info: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("error_info", default=None)
# Where RequestIdMiddleware also leaves the id, for the backstop handler that
# runs outside it (its context variable is reset by then).
REQUEST_ID_SCOPE_KEY = "qa.request_id"

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "rate_limited",
}


def track_errors() -> dict[str, str]:
    holder: dict[str, str] = {}
    _error_info.set(holder)
    return holder


def envelope(
    status_code: int,
    code: str,
    message: str,
    *,
    details: Any = None,
    retry_after_s: int | None = None,
    headers: dict[str, str] | None = None,
    request_id: str | None = None,
) -> JSONResponse:
    rid = request_id or current_request_id()
    holder = _error_info.get()
    if holder is not None:
        holder["code"] = code
    body: dict[str, Any] = {
        "error": {"code": code, "message": message, "request_id": rid},
        # FastAPI clients of the replaced service read "detail".
        "detail": message,
    }
    if details is not None:
        body["error"]["details"] = details
    out_headers = dict(headers or {})
    if retry_after_s is not None:
        out_headers["Retry-After"] = str(retry_after_s)
    return JSONResponse(body, status_code=status_code, headers=out_headers)


def from_app_error(exc: AppError) -> JSONResponse:
    # Shedding load is routine (and the access line records it): a warning
    # per shed request would add work exactly when there is too much.
    if exc.status_code >= 500 and not isinstance(exc, Overloaded):
        log.warning("request failed: %s (%s)", exc.code, exc.message)
    return envelope(exc.status_code, exc.code, exc.message, details=exc.details, retry_after_s=exc.retry_after_s,
                    headers=exc.headers)


def internal_error(request_id: str | None = None) -> JSONResponse:
    return envelope(500, "internal_error", "internal error", request_id=request_id)


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Echoing the offending input back could leak it into client logs and can
    # be huge; location and reason are enough to fix the request.
    return [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(_: Request, exc: AppError) -> JSONResponse:
        return from_app_error(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return envelope(422, "invalid_input", "request validation failed", details=_validation_details(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return envelope(exc.status_code, code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _backstop(request: Request, _: Exception) -> JSONResponse:
        # Starlette's ServerErrorMiddleware (outermost) calls this for an error
        # raised by the request-id or access-log middlewares themselves, which
        # sit outside ErrorEnvelopeMiddleware; it logs the traceback itself.
        return internal_error(request.scope.get(REQUEST_ID_SCOPE_KEY))


# -- OpenAPI ----------------------------------------------------------------------------
class ErrorBody(BaseModel):
    code: str
    message: str
    request_id: str
    details: Any = None


class ErrorEnvelope(BaseModel):
    """The one error shape (``envelope``)."""

    error: ErrorBody
    detail: str


def documented(statuses: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a router or route: each status answered with the envelope."""
    return {status: {"model": ErrorEnvelope, "description": text} for status, text in statuses.items()}
