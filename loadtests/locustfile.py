"""User journeys of the Q&A service for locust (run from .venv-load, see loadtests/README.md).

Journeys and weights (a mostly-reading population that asks now and then):
  read a user 40, list users 15, create a user 5       (tag: users)
  ask a repeated question 20, ask a question 10, stream an answer 10   (tag: llm)

Request names are grouped by route ("/users/[id]", "/question [repeat]", ...).
``--exclude-tags llm`` (or LOADTEST_QUESTIONS=0) runs the users journeys only.

Pass/fail thresholds, checked when locust quits (the exit code is 1 when missed):
  --max-error-rate 0.01           env LOADTEST_MAX_ERROR_RATE
  --p95-ms "/users/[id]=250,..."  env LOADTEST_P95_MS (per route, ms; merged over the defaults below)
  --min-requests 1                env LOADTEST_MIN_REQUESTS (a route with fewer fails the run, unless 0)

Step load: LOADTEST_SHAPE=step selects StepLoadShape (LOADTEST_STEP_USERS users added every
LOADTEST_STEP_SECONDS, LOADTEST_STEPS steps, then stop); otherwise -u/-r/-t apply.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from typing import Any

from locust import FastHttpUser, LoadTestShape, between, events, tag, task

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Why is the sky blue?",
    "Give one tip for writing clean code.",
    "What does a CPU do?",
]
REPEATED = "What is the capital of France?"
MAX_TOKENS = int(os.environ.get("LOADTEST_MAX_TOKENS", "24"))

# p95 per route in ms: generous for a 2-core CPU box; tighten per environment.
DEFAULT_P95_MS = {
    "/users/[id]": 500,
    "/users": 800,
    "/users [create]": 1000,
    "/question": 60_000,
    "/question [repeat]": 60_000,
    "/question/stream": 60_000,
}


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--max-error-rate", type=float, env_var="LOADTEST_MAX_ERROR_RATE", default=0.01,
                        help="fail the run above this share of failed requests")
    parser.add_argument("--p95-ms", type=str, env_var="LOADTEST_P95_MS", default="",
                        help='per-route p95 limits in ms, e.g. "/users/[id]=200,/question=20000"')
    parser.add_argument("--min-requests", type=int, env_var="LOADTEST_MIN_REQUESTS", default=0,
                        help="fail when a route that ran has fewer requests than this (0: no check)")


def parse_p95(spec: str) -> dict[str, float]:
    limits = dict(DEFAULT_P95_MS)
    for part in filter(None, (p.strip() for p in spec.split(","))):
        route, _, ms = part.rpartition("=")
        limits[route.strip()] = float(ms)
    return limits


def check_thresholds(stats: Any, max_error_rate: float, p95_limits: dict[str, float],
                     min_requests: int = 0) -> list[str]:
    """The reasons the run fails (empty: it passes)."""
    problems = []
    total = stats.total
    if total.num_requests == 0:
        problems.append("no request was made")
    elif total.fail_ratio > max_error_rate:
        problems.append(f"error rate {total.fail_ratio:.2%} > {max_error_rate:.2%}")
    for (name, method), entry in sorted(stats.entries.items()):
        if entry.num_requests == 0:
            continue
        if min_requests and entry.num_requests < min_requests:
            problems.append(f"{method} {name}: {entry.num_requests} requests < {min_requests}")
        limit = p95_limits.get(name)
        p95 = entry.get_response_time_percentile(0.95)
        if limit is not None and p95 is not None and p95 > limit:
            problems.append(f"{method} {name}: p95 {p95:.0f} ms > {limit:.0f} ms")
    return problems


@events.quitting.add_listener
def _thresholds(environment: Any, **_: Any) -> None:
    opts = environment.parsed_options
    if opts is None:
        return
    problems = check_thresholds(environment.stats, opts.max_error_rate, parse_p95(opts.p95_ms), opts.min_requests)
    for p in problems:
        print(f"THRESHOLD MISSED: {p}")
    if problems:
        environment.process_exit_code = 1
    else:
        print("THRESHOLDS PASSED")


QUESTIONS_ON = os.environ.get("LOADTEST_QUESTIONS", "1") not in ("0", "false", "no")


# /users needs an API key (`python -m serve_app api-key create --name locust`).
# One key is one client to the rate limiter: raise rate_limits in the
# deployment under test, or the run measures the limiter (429s fail it).
API_KEY = os.environ.get("LOADTEST_API_KEY")


class QAUser(FastHttpUser):
    wait_time = between(0.5, 2.0)
    default_headers = {"Authorization": f"Bearer {API_KEY}"} if API_KEY else None

    def on_start(self) -> None:
        self.known_ids: list[int] = []
        self._create()

    def _create(self) -> None:
        email = f"load-{uuid.uuid4().hex[:12]}@example.com"
        with self.client.post("/users", json={"name": "Load Tester", "email": email}, name="/users [create]",
                              catch_response=True) as r:
            if r.status_code == 200:
                self.known_ids.append(r.json()["id"])
                r.success()
            else:
                r.failure(f"create: {r.status_code} {r.text[:200]}")

    @tag("users")
    @task(5)
    def create_user(self) -> None:
        self._create()

    @tag("users")
    @task(40)
    def read_user(self) -> None:
        if not self.known_ids:
            return self._create()
        uid = random.choice(self.known_ids)
        with self.client.get(f"/users/{uid}", name="/users/[id]", catch_response=True) as r:
            if r.status_code == 200 and r.json().get("id") == uid:
                r.success()
            else:
                r.failure(f"read: {r.status_code} {r.text[:200]}")

    @tag("users")
    @task(15)
    def list_users(self) -> None:
        self.client.get(f"/users?limit=20&offset={random.choice([0, 0, 0, 20])}", name="/users")

    def _ask(self, question: str, name: str, no_cache: bool) -> None:
        headers = {"Cache-Control": "no-cache"} if no_cache else {}
        body = {"question": question, "max_tokens": MAX_TOKENS}
        if not no_cache:
            # Greedy: only such answers (or ones at the deployment's defaults)
            # are shared through the answer cache (serve_app.cache.answer_is_shareable).
            body["temperature"] = 0
        with self.client.post("/question", json=body, headers=headers, name=name, catch_response=True) as r:
            if r.status_code == 200 and r.json().get("answer") is not None:
                r.success()
            else:
                r.failure(f"question: {r.status_code} {r.text[:200]}")

    @tag("llm")
    @task(20 if QUESTIONS_ON else 0)
    def ask_repeated(self) -> None:
        self._ask(REPEATED, "/question [repeat]", no_cache=False)

    @tag("llm")
    @task(10 if QUESTIONS_ON else 0)
    def ask_fresh(self) -> None:
        self._ask(f"{random.choice(QUESTIONS)} ({uuid.uuid4().hex[:6]})", "/question", no_cache=True)

    @tag("llm")
    @task(10 if QUESTIONS_ON else 0)
    def stream_answer(self) -> None:
        body = {"question": random.choice(QUESTIONS), "max_tokens": MAX_TOKENS}
        t0 = time.perf_counter()
        with self.client.post("/question/stream", json=body, headers={"Cache-Control": "no-cache"},
                              name="/question/stream", stream=True, catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"stream: status {r.status_code}")
                return
            try:
                events_seen = parse_sse("".join(r.iter_content(chunk_size=1024, decode_content=True)))
            except Exception as exc:
                r.failure(f"stream: {exc}")
                return
            # The recorded time is the whole stream, not only the headers.
            r.request_meta["response_time"] = (time.perf_counter() - t0) * 1000
            done = [d for e, d in events_seen if e == "done"]
            if done and "answer" in json.loads(done[0]) and any(e == "token" for e, _ in events_seen):
                r.success()
            else:
                r.failure(f"stream: no token/done event in {[e for e, _ in events_seen]}")


def parse_sse(text: str) -> list[tuple[str, str]]:
    """(event, data) pairs of a Server-Sent Events body."""
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        event, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            out.append((event, "\n".join(data)))
    return out


if os.environ.get("LOADTEST_SHAPE", "") == "step":

    class StepLoadShape(LoadTestShape):
        """Adds LOADTEST_STEP_USERS users every LOADTEST_STEP_SECONDS, for LOADTEST_STEPS steps."""

        step_users = int(os.environ.get("LOADTEST_STEP_USERS", "10"))
        step_seconds = float(os.environ.get("LOADTEST_STEP_SECONDS", "30"))
        steps = int(os.environ.get("LOADTEST_STEPS", "5"))

        def tick(self) -> tuple[int, float] | None:
            run_time = self.get_run_time()
            step = int(run_time // self.step_seconds)
            if step >= self.steps:
                return None
            return (step + 1) * self.step_users, float(self.step_users)
