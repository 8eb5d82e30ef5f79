"""Key parsing, the verifier's caches and single flight, its behaviour while the
database is away, and the failed-authentication throttle (no network)."""

from __future__ import annotations

import asyncio

import pytest

from serve_app import auth
from serve_app.cache import Breaker
from serve_app.config import Bucket
from serve_app.errors import DependencyUnavailable, Unauthorized
from serve_app.metrics import AppMetrics
from serve_app.ratelimit import FailedAuthThrottle, RateLimiter


class _Repo:
    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}
        self.down = False
        self.lookups = 0
        self.gate: asyncio.Event | None = None

    async def find(self, key_id: str):
        self.lookups += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise DependencyUnavailable("database unavailable")
        return self.rows.get(key_id)


def _stored(repo: _Repo) -> str:
    key_id, key, digest = auth.new_key()
    repo.rows[key_id] = {"secret_hash": digest, "revoked_at": None}
    return key


def _parsed(key: str) -> tuple[str, str]:
    parsed = auth.parse_bearer(f"Bearer {key}")
    assert parsed is not None
    return parsed


def test_key_format_round_trips() -> None:
    key_id, key, digest = auth.new_key()
    parsed = auth.parse_bearer(f"Bearer {key}")
    assert parsed is not None and parsed[0] == key_id and auth.hash_secret(parsed[1]) == digest
    for bad in (None, "", key, f"Basic {key}", f"Bearer {key}x", "Bearer qa_zz_yy"):
        assert auth.parse_bearer(bad) is None


async def test_verified_keys_are_remembered_and_survive_an_outage() -> None:
    repo = _Repo()
    key = _stored(repo)
    verifier = auth.KeyVerifier(repo, ttl_s=0, metrics=AppMetrics())  # type: ignore[arg-type]
    assert await verifier.verify(_parsed(key)) == key.split("_")[1]
    repo.down = True
    # Known before the outage: still accepted (the route itself then reports the outage).
    assert await verifier.verify(_parsed(key))
    # Never seen: refused as unauthenticated, never as "database down".
    with pytest.raises(auth.KeyUnverifiable):
        await verifier.verify(_parsed(auth.new_key()[1]))


async def test_a_hung_refresh_of_a_known_key_does_not_hold_the_request() -> None:
    """A database that hangs costs a known key at most ``refresh_wait_s``; the
    lookup still finishes on its own and updates the key (here: revoked)."""
    repo = _Repo()
    key = _stored(repo)
    verifier = auth.KeyVerifier(repo, ttl_s=0, metrics=AppMetrics(), refresh_wait_s=0.05)  # type: ignore[arg-type]
    key_id = await verifier.verify(_parsed(key))
    repo.gate = asyncio.Event()  # every lookup from now on hangs until the gate opens
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await verifier.verify(_parsed(key)) == key_id
    assert loop.time() - t0 < 1.0  # the 0.05 s wait, never the hung lookup
    lookups = repo.lookups
    # Callers arriving meanwhile join the one hung lookup instead of starting more.
    assert await verifier.verify(_parsed(key)) == key_id
    assert repo.lookups == lookups
    flight = verifier._lookups.get(key_id)
    assert flight is not None and flight.waiters == 0
    repo.rows[key_id]["revoked_at"] = "now"
    repo.gate.set()
    # The lookup nobody waits for any more still lands: the revocation applies.
    assert await flight.task is None
    assert key_id not in verifier._valid
    repo.gate = None
    with pytest.raises(Unauthorized):
        await verifier.verify(_parsed(key))


async def test_a_revoked_key_fails_on_its_next_request_when_the_database_answers() -> None:
    repo = _Repo()
    key = _stored(repo)
    verifier = auth.KeyVerifier(repo, ttl_s=0, metrics=AppMetrics())  # type: ignore[arg-type]
    key_id = await verifier.verify(_parsed(key))
    repo.rows[key_id]["revoked_at"] = "now"
    with pytest.raises(Unauthorized):
        await verifier.verify(_parsed(key))


async def test_lookups_are_cached_for_the_ttl() -> None:
    repo = _Repo()
    key = _stored(repo)
    verifier = auth.KeyVerifier(repo, ttl_s=60, metrics=AppMetrics())  # type: ignore[arg-type]
    for _ in range(5):
        await verifier.verify(_parsed(key))
    unknown = auth.new_key()[1]
    for _ in range(5):
        with pytest.raises(Unauthorized):
            await verifier.verify(_parsed(unknown))
    assert repo.lookups == 2
    assert not verifier.needs_lookup(key.split("_")[1]) and not verifier.needs_lookup(unknown.split("_")[1])


async def test_unknown_ids_do_not_evict_real_keys() -> None:
    """Finding 3: a flood of made-up ids used to push verified keys out of the
    one shared cache, so each real request went back to the database."""
    repo = _Repo()
    keys = [_stored(repo) for _ in range(3)]
    verifier = auth.KeyVerifier(repo, ttl_s=60, metrics=AppMetrics(), max_entries=5, max_unknown=5)  # type: ignore[arg-type]
    for key in keys:
        await verifier.verify(_parsed(key))
    for _ in range(50):
        with pytest.raises(Unauthorized):
            await verifier.verify(_parsed(auth.new_key()[1]))
    before = repo.lookups
    for key in keys:
        assert await verifier.verify(_parsed(key))
    assert repo.lookups == before


async def test_concurrent_lookups_of_one_unknown_id_are_one_query() -> None:
    repo = _Repo()
    repo.gate = asyncio.Event()
    verifier = auth.KeyVerifier(repo, ttl_s=60, metrics=AppMetrics())  # type: ignore[arg-type]
    forged = _parsed(auth.new_key()[1])
    tries = [asyncio.create_task(verifier.verify(forged)) for _ in range(50)]
    await asyncio.sleep(0.01)
    repo.gate.set()
    results = await asyncio.gather(*tries, return_exceptions=True)
    assert all(isinstance(r, Unauthorized) for r in results)
    assert repo.lookups == 1


async def test_the_throttle_blocks_an_address_after_its_burst_of_failures() -> None:
    """Redis-less (the per-replica fallback buckets); the shared buckets are
    tested on Redis in tests/integration/test_auth_limits.py."""
    metrics = AppMetrics()
    limiter = RateLimiter(None, "p", Breaker(metrics=metrics), metrics,
                          {FailedAuthThrottle.BUCKET: Bucket(rate_per_s=0.01, burst=3)})
    throttle = FailedAuthThrottle(limiter, metrics)
    for _ in range(2):
        await throttle.failed("198.51.100.7")
        assert throttle.blocked_for("198.51.100.7") == 0
    await throttle.failed("198.51.100.7")  # the third empties the bucket
    assert 1 < throttle.blocked_for("198.51.100.7") <= 100
    assert throttle.blocked_for("198.51.100.8") == 0
