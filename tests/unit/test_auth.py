"""Key parsing and the verifier's behaviour while the database is away."""

from __future__ import annotations

import pytest

from serve_app import auth
from serve_app.errors import DependencyUnavailable, Unauthorized
from serve_app.metrics import AppMetrics


class _Repo:
    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}
        self.down = False
        self.lookups = 0

    async def find(self, key_id: str):
        self.lookups += 1
        if self.down:
            raise DependencyUnavailable("database unavailable")
        return self.rows.get(key_id)


def _stored(repo: _Repo) -> str:
    key_id, key, digest = auth.new_key()
    repo.rows[key_id] = {"secret_hash": digest, "revoked_at": None}
    return key


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
    assert await verifier.verify(f"Bearer {key}") == key.split("_")[1]
    repo.down = True
    # Known before the outage: still accepted (the route itself then reports the outage).
    assert await verifier.verify(f"Bearer {key}")
    # Never seen: refused as unauthenticated, never as "database down".
    with pytest.raises(Unauthorized):
        await verifier.verify(f"Bearer {auth.new_key()[1]}")


async def test_lookups_are_cached_for_the_ttl() -> None:
    repo = _Repo()
    key = _stored(repo)
    verifier = auth.KeyVerifier(repo, ttl_s=60, metrics=AppMetrics())  # type: ignore[arg-type]
    for _ in range(5):
        await verifier.verify(f"Bearer {key}")
    unknown = auth.new_key()[1]
    for _ in range(5):
        with pytest.raises(Unauthorized):
            await verifier.verify(f"Bearer {unknown}")
    assert repo.lookups == 2
