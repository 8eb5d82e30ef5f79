"""Request metrics, cache metrics and structured access logs (app in process)."""

from __future__ import annotations

import io
import json
import logging

import httpx
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def log_lines():
    """Every JSON line the app's loggers write during the test."""
    from serve_app.logs import JsonFormatter, configure_logging

    configure_logging("INFO")
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("serve_app")
    logger.addHandler(handler)
    try:
        yield lambda: [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]
    finally:
        logger.removeHandler(handler)


async def test_request_and_cache_metrics_count_what_happened(client: httpx.AsyncClient) -> None:
    metrics = client.resources.metrics
    user = (await client.post("/users", json={"name": "M", "email": "m@example.com"})).json()
    for _ in range(5):
        assert (await client.get(f"/users/{user['id']}")).status_code == 200
    assert (await client.get("/users/999999")).status_code == 404
    assert metrics.count("requests", route="/users/{user_id}", status="200") == 5
    assert metrics.count("requests", route="/users/{user_id}", status="404") == 1
    assert metrics.count("requests", route="/users", method="POST", status="200") == 1
    # First read misses, the next four hit; the unknown id misses once.
    assert metrics.count("cache", cache="user", result="miss") == 2
    assert metrics.count("cache", cache="user", result="hit") == 4
    assert metrics.count("latency", route="/users/{user_id}") == 6


async def test_access_log_is_json_with_request_id_and_error_type(client: httpx.AsyncClient, log_lines) -> None:
    await client.post("/users", json={"name": "Grace Hopper", "email": "grace.hopper@example.com"})
    r = await client.post("/users", json={"name": "Grace Hopper", "email": "GRACE.HOPPER@example.com"},
                          headers={"X-Request-Id": "trace-me-42"})
    assert r.status_code == 409
    lines = log_lines()
    access = [entry for entry in lines if entry["logger"] == "serve_app.access"]
    mine = [entry for entry in access if entry.get("request_id") == "trace-me-42"]
    assert len(mine) == 1
    assert mine[0]["http_route"] == "/users" and mine[0]["status"] == 409
    assert mine[0]["error_code"] == "conflict" and mine[0]["latency_ms"] > 0
    text = json.dumps(lines).lower()
    assert "grace.hopper@example.com" not in text and "grace hopper" not in text
