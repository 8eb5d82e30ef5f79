"""A locust-style load of the real API for the fault tests: a few concurrent
clients, each mixing user creation, user reads and short questions with a
think time, every request bounded by a client timeout (a timeout is a hang).

Every response is classified; acknowledged user creations are recorded so
the test can count them in PostgreSQL afterwards.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

USERS_TIMEOUT_S = 10.0
QUESTION_TIMEOUT_S = 60.0
# A 503 is only the promised behaviour when it comes quickly: a client told
# to retry after waiting longer has effectively hung. A question's 503 may
# come after part of its answer was generated (its replica died mid-answer),
# so it gets the question budget: 8 tokens take 2-5 s here under this load.
FAST_503_S = {"create_user": 5.0, "get_user": 5.0, "question": 10.0}

# Repeated, so the answer cache serves most of them.
QUESTIONS = [
    "What is the capital of France?",
    "Name a primary colour.",
    "What is two plus two?",
    "Say hello.",
]


@dataclass
class Outcome:
    kind: str  # create_user, get_user, question
    started: float  # monotonic
    elapsed: float
    status: int | None  # None: no HTTP response
    verdict: str  # success, fast_503, bad_503, other_status, transport_error, hang, wrong_body
    detail: str = ""


@dataclass
class LoadStats:
    outcomes: list[Outcome] = field(default_factory=list)
    # id -> email of every POST /users answered 200: these must be in PostgreSQL.
    acked: dict[int, str] = field(default_factory=dict)

    def counts(self) -> Counter[str]:
        return Counter(o.verdict for o in self.outcomes)

    def between(self, t0: float, t1: float, kind: str | None = None) -> list[Outcome]:
        return [o for o in self.outcomes if t0 <= o.started < t1 and (kind is None or o.kind == kind)]

    def problems(self, limit: int = 15) -> list[str]:
        bad = [o for o in self.outcomes if o.verdict not in ("success", "fast_503")]
        return [f"{o.kind} {o.status} {o.verdict} {o.elapsed:.2f}s {o.detail[:200]}" for o in bad[:limit]]


def is_envelope(body: Any) -> bool:
    err = body.get("error") if isinstance(body, dict) else None
    return isinstance(err, dict) and all(isinstance(err.get(k), str) and err.get(k) for k in
                                         ("code", "message", "request_id"))


def classify_503(r: httpx.Response, elapsed: float, budget_s: float) -> tuple[str, str]:
    """A 503 must say when to retry, carry our envelope, and come fast."""
    problems = []
    retry_after = r.headers.get("retry-after", "")
    if not retry_after.isdigit():
        problems.append(f"Retry-After={retry_after!r}")
    try:
        body = r.json()
    except ValueError:
        body = None
    if not is_envelope(body):
        # e.g. Serve's proxy answering in plain text while a replica dies.
        problems.append(f"body={r.text[:120]!r} content-type={r.headers.get('content-type')!r}")
    if elapsed > budget_s:
        problems.append(f"slow {elapsed:.1f}s")
    return ("bad_503", "; ".join(problems)) if problems else ("fast_503", "")


class LoadDriver:
    def __init__(self, base_url: str, headers: dict[str, str] | None = None, workers: int = 8,
                 think_s: tuple[float, float] = (0.05, 0.2), tag: str = "load") -> None:
        self.base_url = base_url
        self.headers = headers or {}
        self.workers = workers
        self.think_s = think_s
        self.tag = tag
        self.stats = LoadStats()
        # Workers with an index at or above this only wait: a long recovery
        # (a vLLM engine starting on 2 cores) is not slowed by a full load.
        self.active = workers
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> LoadDriver:
        # Enough connections that no request waits for the client's own pool.
        limits = httpx.Limits(max_connections=self.workers * 2, max_keepalive_connections=self.workers * 2)
        self._client = httpx.AsyncClient(base_url=self.base_url, headers=self.headers, limits=limits)
        self._tasks = [asyncio.create_task(self._worker(i)) for i in range(self.workers)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        assert self._client is not None
        await self._client.aclose()

    async def _worker(self, index: int) -> None:
        rng = random.Random(f"{self.tag}-{index}")
        while not self._stop.is_set():
            if index >= self.active:
                await asyncio.sleep(0.2)
                continue
            roll = rng.random()
            if roll < 0.35 or not self.stats.acked:
                outcome = await self._create_user(rng)
            elif roll < 0.7:
                outcome = await self._get_user(rng)
            else:
                outcome = await self._question(rng)
            self.stats.outcomes.append(outcome)
            pause = rng.uniform(*self.think_s)
            if outcome.status == 503:
                # As a well-behaved client would (bounded, so the test still
                # samples the outage densely).
                pause = max(pause, 0.5)
            try:
                await asyncio.wait_for(self._stop.wait(), pause)
            except TimeoutError:
                pass

    async def _send(self, kind: str, method: str, path: str, timeout: float, check=None,
                    **kw: Any) -> tuple[Outcome, httpx.Response | None]:
        assert self._client is not None
        t0 = time.monotonic()
        try:
            r = await self._client.request(method, path, timeout=timeout, **kw)
        except httpx.TimeoutException as exc:
            return Outcome(kind, t0, time.monotonic() - t0, None, "hang", type(exc).__name__), None
        except httpx.HTTPError as exc:
            return Outcome(kind, t0, time.monotonic() - t0, None, "transport_error",
                           f"{type(exc).__name__}: {exc}"), None
        elapsed = time.monotonic() - t0
        if r.status_code == 503:
            verdict, detail = classify_503(r, elapsed, FAST_503_S[kind])
            return Outcome(kind, t0, elapsed, 503, verdict, detail), r
        if 200 <= r.status_code < 300:
            wrong = check(r) if check else None
            if wrong:
                return Outcome(kind, t0, elapsed, r.status_code, "wrong_body", wrong), r
            return Outcome(kind, t0, elapsed, r.status_code, "success"), r
        return Outcome(kind, t0, elapsed, r.status_code, "other_status", r.text[:200]), r

    async def _create_user(self, rng: random.Random) -> Outcome:
        email = f"f-{uuid.uuid4().hex[:16]}@example.com"

        def check(r: httpx.Response) -> str | None:
            body = r.json()
            return None if body.get("email") == email and isinstance(body.get("id"), int) else f"body {body}"

        outcome, r = await self._send("create_user", "POST", "/users", USERS_TIMEOUT_S, check,
                                      json={"name": "Fault Load", "email": email})
        if outcome.verdict == "success" and r is not None:
            self.stats.acked[r.json()["id"]] = email
        return outcome

    async def _get_user(self, rng: random.Random) -> Outcome:
        user_id = rng.choice(list(self.stats.acked))
        email = self.stats.acked[user_id]

        def check(r: httpx.Response) -> str | None:
            # A cache answering with another key's value (e.g. a stale reply
            # read after a Redis timeout) would show up here.
            body = r.json()
            return None if body.get("id") == user_id and body.get("email") == email else f"body {body}"

        outcome, _ = await self._send("get_user", "GET", f"/users/{user_id}", USERS_TIMEOUT_S, check)
        return outcome

    async def _question(self, rng: random.Random) -> Outcome:
        headers = {}
        if rng.random() < 0.3:
            question = f"Write one word about the number {rng.randint(1, 10**6)}."
            headers["Cache-Control"] = "no-cache"
        else:
            question = rng.choice(QUESTIONS)
            if rng.random() < 0.2:
                headers["Cache-Control"] = "no-cache"

        def check(r: httpx.Response) -> str | None:
            body = r.json()
            ok = body.get("question") == question and isinstance(body.get("answer"), str)
            return None if ok else f"body {str(body)[:200]}"

        outcome, _ = await self._send("question", "POST", "/question", QUESTION_TIMEOUT_S, check,
                                      json={"question": question, "max_tokens": 8}, headers=headers)
        return outcome
