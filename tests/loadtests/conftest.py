"""Fixtures of the load-test smoke tests: the load-test venv, a plain-uvicorn
stack on its own database and Redis prefix, and the LLM stack of the session
when the llm tier already deployed one (never started here: too costly)."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REDIS_URL, create_database, drop_database, drop_prefix, pg_dsn

REPO = Path(__file__).resolve().parents[2]
LOAD_VENV = REPO / ".venv-load"


@pytest.fixture(scope="session")
def locust_bin() -> Path:
    """.venv-load/bin/locust, made by loadtests/setup.sh (idempotent, pinned)."""
    binary = LOAD_VENV / "bin" / "locust"
    if not binary.exists():
        subprocess.run(["bash", str(REPO / "loadtests" / "setup.sh")], check=True, cwd=REPO, timeout=900)
    return binary


@pytest.fixture
def uvicorn_stack() -> Iterator[str]:
    from loadtests.bench import Uvicorn

    name = asyncio.run(create_database())
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    env = {"DATABASE_URL": pg_dsn(name), "REDIS_URL": REDIS_URL, "REDIS_KEY_PREFIX": prefix,
           "DATABASE_SSLMODE": "disable"}
    try:
        # The open stack: the smoke test drives the journeys without an API key.
        with Uvicorn(env, full_app=False) as u:
            yield u.url
    finally:
        asyncio.run(drop_database(name))
        asyncio.run(drop_prefix(prefix))


@pytest.fixture
def session_llm_stack(request: pytest.FixtureRequest):
    """The `llm_app` of tests/llm when this session already deployed it, else skip.

    tests/llm's fixtures are not visible from here and requesting a copy would
    deploy a second LLM app; so this looks the instance up in pytest's cache.
    """
    manager = request._fixturemanager
    fixture_defs = []
    by_node = getattr(manager, "_arg2node2fixturedefs", {}).get("llm_app", {})  # pytest >= 9
    for defs in by_node.values():
        fixture_defs.extend(defs)
    fixture_defs.extend(getattr(manager, "_arg2fixturedefs", {}).get("llm_app", []))  # older pytest
    for fixture_def in fixture_defs:
        cached = getattr(fixture_def, "cached_result", None)
        if cached and cached[0] is not None:
            return cached[0]
    pytest.skip("no LLM stack in this session (run with tests/llm first: "
                "pytest tests/llm tests/loadtests)")
