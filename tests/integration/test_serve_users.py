"""The users API deployed with `serve deploy` on a real Ray cluster, over HTTP."""

from __future__ import annotations

import statistics
import time
import uuid

import httpx
import pytest

from tests.conftest import REDIS_URL
from tests.serve_harness import args_from_serve_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def users_app(ray_cluster, session_database):
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    config = ray_cluster.serve_config(
        args_from_serve_config(llm=None),
        {"DATABASE_URL": session_database, "REDIS_URL": REDIS_URL, "REDIS_KEY_PREFIX": prefix,
         "COMPANY_NAME": "Serve Test Co"},
    )
    took = ray_cluster.deploy(config)
    print(f"\nusers app deployed in {took:.1f}s")
    return ray_cluster


def test_root_and_health_over_serve(users_app) -> None:
    assert httpx.get(users_app.url + "/").json() == {"company": "Serve Test Co", "status": "running"}
    assert httpx.get(users_app.url + "/healthz").json() == {"status": "ok"}
    r = httpx.get(users_app.url + "/readyz")
    assert r.status_code == 200 and r.json()["checks"]["postgres"] == "ok"


def test_users_round_trip_and_errors_over_serve(users_app) -> None:
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    with httpx.Client(base_url=users_app.url, timeout=10) as c:
        user = c.post("/users", json={"name": "Serve", "email": email}).json()
        assert c.get(f"/users/{user['id']}").json() == user
        r = c.post("/users", json={"name": "Again", "email": email.upper()})
        assert r.status_code == 409 and r.json()["error"]["request_id"] == r.headers["x-request-id"]
        r = c.post("/users", json={"name": "", "email": "x"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"
        r = c.get("/users/123456789", headers={"X-Request-Id": "client-id-1"})
        assert r.status_code == 404
        assert r.headers.get_list("x-request-id") == ["client-id-1"]
        assert r.json()["error"]["request_id"] == "client-id-1"
        assert any(u["id"] == user["id"] for u in c.get("/users?limit=200").json())


def test_cold_and_cached_latency_over_serve(users_app) -> None:
    """Prints the cold and cached GET /users/{id} latency through Serve (for the notes)."""
    with httpx.Client(base_url=users_app.url, timeout=10) as c:
        cold, warm = [], []
        for _ in range(20):
            user = c.post("/users", json={"name": "L", "email": f"{uuid.uuid4().hex[:8]}@example.com"}).json()
            t0 = time.perf_counter()
            assert c.get(f"/users/{user['id']}").status_code == 200
            cold.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            assert c.get(f"/users/{user['id']}").status_code == 200
            warm.append(time.perf_counter() - t0)
    print(f"\nGET /users/{{id}} through Serve: cold p50 {statistics.median(cold) * 1000:.1f} ms, "
          f"cached p50 {statistics.median(warm) * 1000:.1f} ms")
    assert statistics.median(warm) < 1.0
