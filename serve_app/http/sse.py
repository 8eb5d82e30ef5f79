"""The one Server-Sent Events writer: every byte of an event stream goes
through ``frame``, and ``response`` sets the headers every stream needs.

Routes open the upstream (the engine's first chunk) before building the
response, so a failure to start is still a JSON error with its status; a
failure after the 200 is an error event in the stream's own dialect.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import StreamingResponse

MEDIA_TYPE = "text/event-stream"
DONE = "[DONE]"  # OpenAI's end-of-stream marker


def frame(data: str | dict[str, Any], event: str | None = None) -> bytes:
    """One event: ``data`` (a dict is JSON-encoded; a string is sent as is and
    must be a single line, as JSON text is)."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


def response(frames: AsyncIterator[bytes], headers: dict[str, str] | None = None) -> StreamingResponse:
    return StreamingResponse(
        frames,
        media_type=MEDIA_TYPE,
        # no-cache: intermediaries must not store a stream; X-Accel-Buffering:
        # proxies that buffer (nginx) must pass each event on at once.
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
    )
