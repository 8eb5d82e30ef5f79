"""SmolLM2 on real vLLM through real Ray Serve, over HTTP."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from pathlib import Path

import httpx
import pytest

from serve_app.config import DEFAULT_MODEL_ID, REPO_ROOT
from tests.llm.conftest import DEADLINE_S, GPU_ONLY_MODEL

pytestmark = pytest.mark.llm

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
OUT = REPO_ROOT / "test-output"


def unique_question(text: str = "What is the capital of France?") -> str:
    # A fresh question per test keeps the answer cache out of the way.
    return f"{text} (ref {uuid.uuid4().hex[:6]})"


def engine_metrics(cluster) -> dict[str, float]:
    """vLLM's gauges and counters, summed over engines."""
    out = {"running": 0.0, "finished": 0.0, "tokens": 0.0}
    for line in cluster.metrics().splitlines():
        if line.startswith("ray_vllm_num_requests_running{"):
            out["running"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("ray_vllm_request_success_total{"):
            out["finished"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("ray_vllm_generation_tokens_total{"):
            out["tokens"] += float(line.rsplit(" ", 1)[1])
    return out


def wait_for(cluster, predicate, timeout_s: float, what: str) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if predicate(engine_metrics(cluster)):
            return time.monotonic() - t0
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout_s}s (last: {engine_metrics(cluster)})")


def wait_until_idle(cluster, timeout_s: float) -> float:
    return wait_for(cluster, lambda m: m["running"] == 0, timeout_s, "engines idle")


def test_question_answers(llm_app) -> None:
    q = unique_question()
    t0 = time.perf_counter()
    r = httpx.post(f"{llm_app.url}/question", json={"question": q, "max_tokens": 24, "temperature": 0}, timeout=120)
    took = time.perf_counter() - t0
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["question"] == q
    assert body["model"] == DEFAULT_MODEL_ID
    assert body["answer"].strip()
    assert body["cached"] is False
    assert 0 < body["usage"]["completion_tokens"] <= 24
    print(f"\n/question 24 tokens in {took:.2f}s: {body['answer']!r}")


def test_repeated_question_comes_from_cache(llm_app) -> None:
    q = unique_question("Name a primary colour.")
    payload = {"question": q, "max_tokens": 16, "temperature": 0}
    first = httpx.post(f"{llm_app.url}/question", json=payload, timeout=120)
    assert first.status_code == 200 and first.json()["cached"] is False
    t0 = time.perf_counter()
    # Same question up to case and spacing.
    second = httpx.post(f"{llm_app.url}/question", json={**payload, "question": "  " + q.upper()}, timeout=30)
    took = time.perf_counter() - t0
    assert second.status_code == 200
    assert second.json()["cached"] is True
    assert second.json()["answer"] == first.json()["answer"]
    assert "x-served-by-pool" not in second.headers  # the engine was not asked
    print(f"\ncached answer in {took * 1000:.1f} ms")
    bypass = httpx.post(f"{llm_app.url}/question", json=payload, headers={"Cache-Control": "no-cache"}, timeout=120)
    assert bypass.status_code == 200 and bypass.json()["cached"] is False
    assert bypass.headers["x-served-by-pool"]


@pytest.mark.parametrize(
    "payload",
    [
        {"question": ""},
        {"question": "   "},
        {"question": "x" * 4001},
        {"question": "hi", "max_tokens": 0},
        {"question": "hi", "max_tokens": 2049},  # past max_tokens_cap (2048 in llm_test_args)
        {"question": "hi", "temperature": 2.5},
        {"question": 42},
        {},
    ],
)
def test_bad_questions_are_422(llm_app, payload) -> None:
    r = httpx.post(f"{llm_app.url}/question", json=payload, timeout=30)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_input"
    assert r.json()["error"]["request_id"]


def test_stream_delivers_tokens_before_the_end(llm_app) -> None:
    q = unique_question("Write two sentences about the sea.")
    stamps: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    with httpx.stream("POST", f"{llm_app.url}/question/stream",
                      json={"question": q, "max_tokens": 48, "temperature": 0}, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                stamps.append((time.perf_counter() - t0, event))
    tokens = [t for t, e in stamps if e == "token"]
    done = [t for t, e in stamps if e == "done"]
    assert len(tokens) >= 5 and len(done) == 1
    print(f"\nstream: first token {tokens[0]:.2f}s, last {tokens[-1]:.2f}s, {len(tokens)} token events")
    assert tokens[0] < tokens[-1] - 0.2  # tokens arrive as generated, not in one lump


def test_disconnect_aborts_generation(llm_app) -> None:
    wait_until_idle(llm_app, 60)
    before = engine_metrics(llm_app)
    q = unique_question("Write a 1000-word story about a dragon who learns to sing.")
    with httpx.stream("POST", f"{llm_app.url}/question/stream",
                      json={"question": q, "max_tokens": 512, "temperature": 0}, timeout=120) as r:
        t0 = time.monotonic()
        for line in r.iter_lines():
            if line.startswith("event: done"):
                pytest.fail("the answer finished before the test could disconnect")
            # Keep reading until the engine's gauge shows the request running.
            if time.monotonic() - t0 > 2 and engine_metrics(llm_app)["running"] >= 1:
                break
    # A 512-token answer takes ~20 s here: the gauge must drop well before,
    # and the request must not be counted as finished.
    took = wait_until_idle(llm_app, 8)
    after = engine_metrics(llm_app)
    assert after["finished"] == before["finished"]
    print(f"\nengine idle {took:.1f}s after the client disconnected (max_tokens 512)")


def test_openai_client_round_trip(llm_app) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{llm_app.url}/v1", api_key="unused", max_retries=0, timeout=120)
    ids = [m.id for m in client.models.list().data]
    assert DEFAULT_MODEL_ID in ids and GPU_ONLY_MODEL in ids
    out = client.chat.completions.create(
        model=DEFAULT_MODEL_ID, messages=[{"role": "user", "content": "Say hello."}], max_tokens=12, temperature=0
    )
    assert out.choices[0].message.content.strip()
    assert out.usage.completion_tokens > 0
    stream = client.chat.completions.create(
        model=DEFAULT_MODEL_ID, messages=[{"role": "user", "content": "Count to five."}], max_tokens=16, stream=True
    )
    text = "".join((c.choices[0].delta.content or "") for c in stream if c.choices)
    assert text.strip()


async def test_vllms_benchmark_client_on_the_real_engine(llm_app) -> None:
    """One request of ``vllm bench serve --backend openai-chat`` (random
    dataset: ignore_eos) through /v1 to the real engine: every field the
    benchmark sends passes our allow-list and vLLM's own validation."""
    import aiohttp
    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncInput, async_request_openai_chat_completions

    async with aiohttp.ClientSession() as session:
        out = await async_request_openai_chat_completions(
            RequestFuncInput(prompt=unique_question("Tell me about the sea."), prompt_len=8, output_len=16,
                             api_url=f"{llm_app.url}/v1/chat/completions", model=DEFAULT_MODEL_ID, ignore_eos=True,
                             extra_body={"temperature": 0.0, "top_p": 0.9, "top_k": 20}),
            session,
        )
    assert out.success, out.error
    assert out.output_tokens == 16 and out.ttft > 0


def test_engine_fields_outside_the_allow_list_never_reach_the_engine(llm_app) -> None:
    for extra in ({"n": 8}, {"use_beam_search": True, "n": 4}, {"min_tokens": 400}, {"prompt_logprobs": 20},
                  {"max_tokens": 4096, "ignore_eos": True}):
        r = httpx.post(f"{llm_app.url}/v1/chat/completions", timeout=30,
                       json={"model": DEFAULT_MODEL_ID, "messages": [{"role": "user", "content": "hi"}], **extra})
        assert r.status_code == 422, (extra, r.text)


def test_unknown_model_is_404(llm_app) -> None:
    r = httpx.post(f"{llm_app.url}/v1/chat/completions",
                   json={"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_absent_pool_is_fast_503(llm_app) -> None:
    t0 = time.perf_counter()
    r = httpx.post(f"{llm_app.url}/v1/chat/completions",
                   json={"model": GPU_ONLY_MODEL, "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    took = time.perf_counter() - t0
    assert r.status_code == 503, r.text
    assert int(r.headers["retry-after"]) > 0
    assert r.json()["error"]["request_id"]
    assert took < 2, took


async def test_full_pool_spills_to_the_next(llm_app) -> None:
    async with httpx.AsyncClient(base_url=llm_app.url, timeout=120) as c:
        results = await asyncio.gather(*(
            c.post("/question", json={"question": unique_question(), "max_tokens": 16},
                   headers={"Cache-Control": "no-cache"})
            for _ in range(6)
        ))
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    pools = [r.headers["x-served-by-pool"] for r in results]
    print(f"\nserved by: {pools}")
    assert "primary" in pools and "fallback" in pools


def test_deadline_is_504_and_cancels(llm_app) -> None:
    wait_until_idle(llm_app, 60)
    before = engine_metrics(llm_app)
    t0 = time.perf_counter()
    r = httpx.post(
        f"{llm_app.url}/v1/chat/completions",
        # ~60 s of generation here, far past the deadline.
        json={"model": DEFAULT_MODEL_ID, "messages": [{"role": "user", "content": "Tell a long story."}],
              "max_tokens": 1800, "ignore_eos": True},
        timeout=120,
    )
    took = time.perf_counter() - t0
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "deadline_exceeded"
    assert DEADLINE_S <= took < DEADLINE_S + 5
    wait_until_idle(llm_app, 8)
    assert engine_metrics(llm_app)["finished"] == before["finished"]


def test_dashboard_shows_pools_as_deployments(llm_app) -> None:
    deployments = llm_app.deployments("qa")
    names = set(deployments)
    assert "Ingress" in names
    assert any(n.startswith("primary-pool:") for n in names)
    assert any(n.startswith("fallback-pool:") for n in names)
    for name, d in deployments.items():
        if not name.startswith("gpu-pool:"):
            assert d["status"] == "HEALTHY", (name, d["status"])


def test_request_id_reaches_ingress_and_llm_logs(llm_app) -> None:
    rid = f"trace-{uuid.uuid4().hex[:12]}"
    r = httpx.post(f"{llm_app.url}/question", json={"question": unique_question(), "max_tokens": 4},
                   headers={"X-Request-Id": rid, "Cache-Control": "no-cache"}, timeout=120)
    assert r.status_code == 200 and r.headers["x-request-id"] == rid
    pool = r.headers["x-served-by-pool"]
    # Serve's replica files and the workers' stderr (where vLLM's logging
    # setup sends the engine replica's lines): both are in the dashboard.
    deadline = time.monotonic() + 20
    seen: set[str] = set()
    while time.monotonic() < deadline:
        for f in llm_app.log_files("logs/serve/replica_qa_*.log") + llm_app.log_files("logs/worker-*.err"):
            for line in f.read_text(errors="replace").splitlines():
                if rid in line:
                    seen.update(k for k in ("Ingress", f"{pool}-pool:") if k in line)
        if seen == {"Ingress", f"{pool}-pool:"}:
            return
        time.sleep(0.5)
    raise AssertionError(f"request id {rid} found only in {seen or 'no'} log lines, not ingress and {pool} pool")


def test_dashboard_queries_name_live_metrics(llm_app) -> None:
    """Serve's and vLLM's series the dashboard uses are really exported by this
    cluster (our own are checked against their definitions in the unit tier)."""
    from tests.unit.test_grafana_dashboard import dashboard_metric_names

    theirs = {n for n in dashboard_metric_names() if not n.startswith("ray_qa_")}
    # A streamed answer records time to first token and (greedy, so shareable)
    # an answer-cache lookup.
    with httpx.stream("POST", f"{llm_app.url}/question/stream",
                      json={"question": unique_question(), "max_tokens": 8, "temperature": 0}, timeout=60) as r:
        assert r.status_code == 200
        r.read()
    live: set[str] = set()
    # Gauges are exported when they change: keep the engines busy meanwhile.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (theirs <= live):
        httpx.post(f"{llm_app.url}/question", json={"question": unique_question(), "max_tokens": 8},
                   headers={"Cache-Control": "no-cache"}, timeout=60)
        live |= {line.split("{", 1)[0].split(" ", 1)[0] for line in llm_app.metrics().splitlines()
                 if line and not line.startswith("#")}
        time.sleep(1)
    assert theirs and theirs <= live, theirs - live
    # Ours that this test's own traffic produced.
    deadline = time.monotonic() + 20
    ours = {"ray_qa_http_requests_total", "ray_qa_llm_time_to_first_token_seconds_bucket",
            "ray_qa_cache_lookups_total", "ray_qa_llm_completion_tokens_bucket"}
    while time.monotonic() < deadline and not (ours <= live):
        time.sleep(1)
        live |= {line.split("{", 1)[0].split(" ", 1)[0] for line in llm_app.metrics().splitlines()
                 if line and not line.startswith("#")}
    assert ours <= live, ours - live


def test_serve_page_shows_ingress_and_pools_healthy(llm_app) -> None:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "install Debian's chromium (.ci/run does)"
    OUT.mkdir(exist_ok=True)
    shot = OUT / "ray-dashboard-serve.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],
        )
        try:
            # Token auth is on: the dashboard's API calls carry the token.
            context = browser.new_context(viewport={"width": 1600, "height": 1000},
                                          extra_http_headers=llm_app.auth_headers())
            page = context.new_page()
            page.goto(f"{llm_app.dashboard}/#/serve", wait_until="networkidle", timeout=60_000)
            page.get_by_text("Ingress", exact=True).first.wait_for(timeout=60_000)
            page.get_by_text("primary-pool:", exact=False).first.wait_for(timeout=30_000)
            page.get_by_text("fallback-pool:", exact=False).first.wait_for(timeout=30_000)
            body = page.inner_text("body")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert "RUNNING" in body and "HEALTHY" in body
    assert "DEPLOY_FAILED" not in body
    assert shot.stat().st_size > 10_000


def test_pool_replicas_run_below_the_request_path(llm_app) -> None:
    """The run command starts Ray's workers at nice 0 (the request path:
    ingress, HAProxy); each pool replica lowers its own process to
    ``REPLICA_NICENESS`` so a starting one does not take the cores from the
    running engines, which stay at idle priority (serve_app/pool_server.py)."""
    import contextlib
    import os

    import psutil

    from devtools.local_ray import cluster_processes, is_engine_process
    from serve_app.pool_server import REPLICA_NICENESS

    replicas: dict[str, list[int]] = {}
    engines: list[int] = []
    for p in cluster_processes(llm_app.cluster_id):
        with contextlib.suppress(psutil.Error):
            title = (p.cmdline() or [""])[0]
            if title.startswith("ray::ServeReplica:"):
                replicas.setdefault(title, []).append(os.getpriority(os.PRIO_PROCESS, p.pid))
            elif is_engine_process(p):
                engines.append(os.sched_getscheduler(p.pid))
    pools = {t: v for t, v in replicas.items() if "-pool:" in t}
    ingress = {t: v for t, v in replicas.items() if t.endswith(":Ingress")}
    assert len(pools) == 2 and ingress, sorted(replicas)
    assert all(v == [REPLICA_NICENESS] * len(v) for v in pools.values()), pools
    assert all(v == [0] * len(v) for v in ingress.values()), ingress
    assert engines and set(engines) == {os.SCHED_IDLE}, engines


def test_engine_processes_carry_the_pools_openmp_settings(llm_app) -> None:
    """The CPU pool's OpenMP settings reach the processes that run OpenMP:
    vLLM spawns its engine core and workers, and a setting lost on the way
    (Ray's worker env, the replica's, vLLM's own configure_omp_envs) would
    leave libgomp's defaults in place without a trace. Read from the real
    llm tier's engine processes."""
    import contextlib

    import psutil

    from devtools.local_ray import cluster_processes, is_engine_process
    from tests.serve_harness import args_from_serve_config

    cpu = next(p for m in args_from_serve_config()["llm"]["models"] for p in m["pools"] if p["name"] == "cpu")
    wanted = {k: cpu["env"][k] for k in ("GOMP_SPINCOUNT",)}
    seen: list[dict[str, str | None]] = []
    for p in cluster_processes(llm_app.cluster_id):
        with contextlib.suppress(psutil.Error):
            if is_engine_process(p):
                env = p.environ()
                seen.append({k: env.get(k) for k in (*wanted, "OMP_WAIT_POLICY")})
    assert seen and all(s == {**wanted, "OMP_WAIT_POLICY": None} for s in seen), seen


def test_one_bench_client_process_serves_every_run(llm_app, tmp_path) -> None:
    """vLLM's benchmark client as `make bench` runs it: one process for every
    run (loadtests/bench_vllm.py BenchClient), here on our /v1 to the real
    engine. Two runs each complete every prompt, from the same pid; a run
    that fails (a tokenizer path that does not exist) raises with the
    client's traceback and leaves the process serving the next run."""
    from loadtests.bench import model_path
    from loadtests.bench_vllm import BenchClient

    tiny = {"input_len": 16, "output_len": 4, "num_prompts": 4, "concurrency": 2}
    with BenchClient() as client:
        pid = client.proc.pid
        runs = [client.run(llm_app.url, DEFAULT_MODEL_ID, model_path(), tiny, seed=i) for i in range(2)]
        for r in runs:
            assert r["completed"] == 4 and r["failed"] == 0, r
            assert r["output_throughput"] > 0 and r["median_ttft_ms"] > 0 and r["wall_s"] > 0, r
        assert client.proc.pid == pid and client.proc.poll() is None
        with pytest.raises(RuntimeError, match="vLLM benchmark client failed"):
            client.run(llm_app.url, DEFAULT_MODEL_ID, str(tmp_path / "no-tokenizer"), tiny)
        again = client.run(llm_app.url, DEFAULT_MODEL_ID, model_path(), tiny, seed=3)
        assert again["completed"] == 4 and client.proc.pid == pid
    assert client.proc.poll() is not None  # closed with the block


def test_locustfiles_question_journeys_pass_on_the_real_engine(llm_app, locust_bin, session_api_key,
                                                               tmp_path) -> None:
    """The locustfile's LLM journeys, headless and short, against this tier's
    app on the real engine, as users run it (API keys on the users routes:
    each simulated user creates its user first). They were in tests/loadtests
    before, on an app that tier could only borrow from this module's scope, so
    they never ran."""
    from tests.loadtests.test_locust_smoke import run_locust

    proc, stats = run_locust(locust_bin, llm_app.url, tmp_path, "--tags", "llm", users=2, seconds=8,
                             env={"LOADTEST_MAX_TOKENS": "8", "LOADTEST_P95_MS": "/question=60000",
                                  "LOADTEST_API_KEY": session_api_key})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    ran = [name for name in stats if "/question" in name]
    assert ran, f"no question journey ran: {sorted(stats)}"
    for name in ran:
        assert int(stats[name]["Request Count"]) > 0 and int(stats[name]["Failure Count"]) == 0, stats[name]
