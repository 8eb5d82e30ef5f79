"""Fixtures of the load-test smoke tests: the load-test venv and a plain-uvicorn
stack on its own database and Redis prefix. The locustfile's LLM journeys run
in the llm tier (tests/llm/test_question_api.py), on the LLM app it deploys."""

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
