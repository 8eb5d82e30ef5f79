"""The error hierarchy: what can go wrong, with the HTTP status each maps to.

Raised anywhere (repositories, the LLM client, the request pipeline); turned
into the one JSON envelope only by ``serve_app.http.errors``.
"""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    status_code = 500
    code = "internal_error"
    message = "internal error"

    def __init__(
        self,
        message: str | None = None,
        *,
        details: Any = None,
        retry_after_s: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.details = details
        self.retry_after_s = retry_after_s
        self.headers = dict(headers or {})


class InvalidInput(AppError):
    status_code = 422
    code = "invalid_input"
    message = "invalid input"


class Unauthorized(AppError):
    status_code = 401
    code = "unauthorized"
    message = "a valid API key is required (Authorization: Bearer <key>)"

    def __init__(self, message: str | None = None, **kw: Any) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="qa"'}, **kw)


class RateLimited(AppError):
    status_code = 429
    code = "rate_limited"
    message = "rate limit exceeded, retry later"


class NotFound(AppError):
    status_code = 404
    code = "not_found"
    message = "not found"


class Conflict(AppError):
    status_code = 409
    code = "conflict"
    message = "conflict"


class PayloadTooLarge(AppError):
    status_code = 413
    code = "payload_too_large"
    message = "request body too large"


class DependencyUnavailable(AppError):
    """A dependency (database, model) cannot serve now; the client should retry."""

    status_code = 503
    code = "unavailable"
    message = "service temporarily unavailable"

    def __init__(self, message: str | None = None, *, retry_after_s: int = 2, **kw: Any) -> None:
        super().__init__(message, retry_after_s=retry_after_s, **kw)


class Overloaded(DependencyUnavailable):
    code = "overloaded"
    message = "too many requests in flight, retry shortly"


class DeadlineExceeded(AppError):
    status_code = 504
    code = "deadline_exceeded"
    message = "the answer took too long and was cancelled"
