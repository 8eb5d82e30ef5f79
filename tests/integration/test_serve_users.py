"""The users API deployed with `serve deploy` on a real Ray cluster, over HTTP."""

from __future__ import annotations

import contextlib
import statistics
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import REDIS_URL
from tests.serve_harness import args_from_serve_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def users_app(ray_cluster, session_database, session_api_key):
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    config = ray_cluster.serve_config(
        args_from_serve_config(llm=None),
        {"DATABASE_URL": session_database, "REDIS_URL": REDIS_URL, "REDIS_KEY_PREFIX": prefix,
         "COMPANY_NAME": "Serve Test Co"},
    )
    took = ray_cluster.deploy(config)
    print(f"\nusers app deployed in {took:.1f}s")
    ray_cluster.api_headers = {"Authorization": f"Bearer {session_api_key}"}
    return ray_cluster


def test_root_and_health_over_serve(users_app) -> None:
    assert httpx.get(users_app.url + "/").json() == {"company": "Serve Test Co", "status": "running"}
    assert httpx.get(users_app.url + "/healthz").json() == {"status": "ok"}
    r = httpx.get(users_app.url + "/readyz")
    assert r.status_code == 200 and r.json()["checks"]["postgres"] == "ok"


def test_alb_health_check_path_behind_haproxy(users_app) -> None:
    """`/-/healthz` is what the ALB's target group (kuberay/base/gateway.yaml,
    TargetGroupConfiguration healthCheckPath) and KubeRay's worker probes ask for; in the
    run command's throughput-optimized mode it is answered through the HAProxy on the
    HTTP port, the same as on the pods."""
    env = users_app.env
    assert env.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") == "1" and env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1"
    gateway = (Path(__file__).resolve().parents[2] / "kuberay" / "base" / "gateway.yaml").read_text()
    assert "healthCheckPath: /-/healthz" in gateway
    r = httpx.get(users_app.url + "/-/healthz", timeout=5)
    assert r.status_code == 200, (r.status_code, r.text)
    # The app's own liveness route answers beside it: the proxy routes the rest to the app.
    assert httpx.get(users_app.url + "/healthz", timeout=5).json() == {"status": "ok"}


def test_request_path_runs_at_the_daemons_niceness(users_app) -> None:
    """Ray 2.60 starts its workers at nice 15 unless RAY_worker_niceness says
    otherwise; in a Serve cluster those workers are the request path (the
    ingress replica, the proxies, HAProxy under the HAProxyManager). The run
    command's cluster (and the RayService, tests/unit/test_ray_env.py) sets 0:
    the same as Ray's daemons, so they no longer win every contested slice."""
    import os

    import psutil

    from devtools.local_ray import cluster_processes

    names: dict[str, list[int]] = {}
    for p in cluster_processes(users_app.cluster_id):
        with contextlib.suppress(psutil.Error):
            names.setdefault(p.name(), []).append(os.getpriority(os.PRIO_PROCESS, p.pid))
    request_path = {n: v for n, v in names.items() if n.startswith("ray::ServeRepli") or n == "haproxy"}
    assert any(n.startswith("ray::ServeRepli") for n in request_path), sorted(names)
    assert "haproxy" in request_path, sorted(names)
    assert names.get("raylet") and set(names["raylet"]) == {0}, names.get("raylet")
    assert all(v == [0] * len(v) for v in request_path.values()), request_path


def test_users_round_trip_and_errors_over_serve(users_app) -> None:
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    with httpx.Client(base_url=users_app.url, timeout=10, headers=users_app.api_headers) as c:
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
    with httpx.Client(base_url=users_app.url, timeout=10, headers=users_app.api_headers) as c:
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


def _scrape_series(cluster, route: str, method: str, status: str) -> float:
    total = 0.0
    for line in cluster.metrics().splitlines():
        if (line.startswith("ray_qa_http_requests") and f'route="{route}"' in line
                and f'method="{method}"' in line and f'status="{status}"' in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_request_metrics_reach_the_metrics_endpoint(users_app) -> None:
    # A series no other request produces (POST /healthz is a 405), so no
    # earlier request still on its way to the exporter can move it.
    assert _scrape_series(users_app, "/healthz", "POST", "405") == 0
    for _ in range(7):
        assert httpx.post(users_app.url + "/healthz").status_code == 405
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _scrape_series(users_app, "/healthz", "POST", "405") < 7:
        time.sleep(0.5)
    assert _scrape_series(users_app, "/healthz", "POST", "405") == 7


def test_no_email_or_name_in_any_log(users_app) -> None:
    email = f"private.person.{uuid.uuid4().hex[:8]}@example.com"
    with httpx.Client(base_url=users_app.url, timeout=10, headers=users_app.api_headers) as c:
        assert c.post("/users", json={"name": "Private Person", "email": email}).status_code == 200
        conflict = c.post("/users", json={"name": "Private Person", "email": email})
        assert conflict.status_code == 409
    rid = conflict.json()["error"]["request_id"]

    def logs() -> dict[str, str]:
        files = users_app.log_files("logs/serve/*.log") + users_app.log_files("logs/worker-*")
        return {f.name: f.read_text(errors="replace") for f in files}

    # Log files are written asynchronously: wait until the 409's own access
    # line is there, so everything these requests logged has been written.
    deadline = time.monotonic() + 30
    while not any(rid in text for text in logs().values()):
        assert time.monotonic() < deadline, f"request {rid} never reached the logs"
        time.sleep(0.2)
    leaks = [name for name, text in logs().items() if email in text]
    assert not leaks, leaks


def test_local_prometheus_scrapes_the_app_metrics(users_app, tmp_path) -> None:
    from devtools.local_ray import free_port
    from devtools.monitoring import start_prometheus, stop_prometheus

    targets = [f"127.0.0.1:{p}" for p in (users_app.metrics_port, *users_app.worker_metrics_ports)]
    url = start_prometheus(tmp_path, targets, port=free_port())
    try:
        for _ in range(3):
            httpx.get(users_app.url + "/healthz")
        deadline = time.monotonic() + 60
        result = []
        while time.monotonic() < deadline and not result:
            time.sleep(1)
            try:
                r = httpx.get(f"{url}/api/v1/query", params={"query": 'ray_qa_http_requests_total{route="/healthz"}'})
                result = r.json()["data"]["result"]
            except (httpx.HTTPError, KeyError, ValueError):
                continue
        assert result, "Prometheus never scraped the app's request counter"
    finally:
        stop_prometheus(tmp_path)


def test_an_invalid_request_id_is_replaced_over_serve(users_app) -> None:
    """Serve takes the client's X-Request-Id as is; ours must not end up in
    error bodies, logs or engine requests unvalidated."""
    bad = "x" * 300
    r = httpx.get(users_app.url + "/users/987654321", headers={**users_app.api_headers, "X-Request-Id": bad})
    assert r.status_code == 404
    rid = r.json()["error"]["request_id"]
    assert rid != bad and len(rid) == 32 and int(rid, 16) >= 0


def test_routes_stay_protected_under_a_route_prefix(users_app, session_database, session_api_key) -> None:
    """Finding 5, on real Serve: under route_prefix /api, Ray 2.60 keeps the
    full path (/api/users); protection comes from the route, not the path.
    Redeploys the app: runs after the tests that need it at "/" (the
    replicas test after it deploys its own config)."""
    config = users_app.serve_config(
        args_from_serve_config(llm=None),
        {"DATABASE_URL": session_database, "REDIS_URL": REDIS_URL, "REDIS_KEY_PREFIX": f"t-{uuid.uuid4().hex}"},
    )
    config["applications"][0]["route_prefix"] = "/api"
    users_app.deploy(config)
    with httpx.Client(base_url=users_app.url + "/api", timeout=10) as c:
        for path in ("/users", "/users/1"):
            r = c.get(path)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", r.text
        assert c.get("/users", headers=users_app.api_headers).status_code == 200
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/openapi.json").json()["servers"] == [{"url": "/api"}]


def test_rate_limit_holds_across_two_ingress_replicas(users_app, session_database, session_api_key) -> None:
    """Two ingress replicas share one bucket per key in Redis. Redeploys the
    app, so it runs last in this module."""
    args = args_from_serve_config(llm=None)
    args["ingress"]["num_replicas"] = 2
    args["rate_limits"]["users"] = {"rate_per_s": 0.05, "burst": 6}
    config = users_app.serve_config(
        args, {"DATABASE_URL": session_database, "REDIS_URL": REDIS_URL, "REDIS_KEY_PREFIX": f"t-{uuid.uuid4().hex}"}
    )
    users_app.deploy(config)
    ingress = users_app.deployments("qa")["Ingress"]
    running = [r for r in ingress["replicas"] if r["state"] == "RUNNING"]
    assert ingress["status"] == "HEALTHY" and len(running) == 2, ingress
    codes = []
    with httpx.Client(base_url=users_app.url, timeout=10, headers=users_app.api_headers) as c:
        for _ in range(18):
            r = c.get("/users?limit=1")
            codes.append(r.status_code)
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1 and r.json()["error"]["code"] == "rate_limited"
    print(f"\n18 requests over 2 ingress replicas with a burst of 6: {codes.count(200)} allowed")
    # One bucket: 6 (plus at most one refilled token), not 6 per replica.
    assert 6 <= codes.count(200) <= 7 and codes.count(429) >= 11, codes
