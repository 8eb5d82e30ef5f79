"""Loaded beside loadtests/locustfile.py by the redeploy scenario
(``locust -f loadtests/locustfile.py,tests/faults/locust_recorder.py``): writes
every request locust makes as one JSON line to $LOCUST_RECORD, so the test can
judge each one (a 503 must be fast and say when to retry; a users request must
not fail at all; nothing may be cut off) and count created users in
PostgreSQL. Runs in .venv-load (locust), imports nothing of the app.
"""

from __future__ import annotations

import json
import os
from typing import Any

from locust import events

# Line-buffered: one line per request, kept even if locust is stopped hard.
_OUT = open(os.environ["LOCUST_RECORD"], "a", buffering=1)


def _envelope(body: Any) -> bool:
    err = body.get("error") if isinstance(body, dict) else None
    return isinstance(err, dict) and all(isinstance(err.get(k), str) and err.get(k)
                                         for k in ("code", "message", "request_id"))


@events.request.add_listener
def _record(request_type: str, name: str, response_time: float, response: Any = None, exception: Any = None,
            start_time: float | None = None, **_: Any) -> None:
    status = getattr(response, "status_code", None) or None
    headers = getattr(response, "headers", None) or {}
    line: dict[str, Any] = {
        "method": request_type, "name": name, "start": start_time, "elapsed_s": response_time / 1000,
        "status": status, "retry_after": headers.get("retry-after"),
        "error": None if exception is None else f"{type(exception).__name__}: {exception}"[:300],
    }
    # (A stream's 200 body was consumed by the journey; its 503 is plain JSON.)
    if status is not None and (name != "/question/stream" or status == 503):
        try:
            body = json.loads(getattr(response, "text", "") or "null")
        except ValueError:
            body = None
        if status == 503:
            line["envelope"] = _envelope(body)
        if name == "/users [create]" and status == 200 and isinstance(body, dict):
            line["created"] = {"id": body.get("id"), "email": body.get("email")}
    _OUT.write(json.dumps(line) + "\n")
