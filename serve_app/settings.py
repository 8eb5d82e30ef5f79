"""Process settings: the only place that reads the environment.

Deploy-time knobs (replicas, TTLs, pools) live in ``serve_config.yaml`` args
(see ``serve_app.config``); this holds what differs per machine or is secret.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    company_name: str = "Acme AI"

    # Unset means "start a local server under data_dir" (run command only).
    database_url: str | None = None
    redis_url: str | None = None

    # TLS: on AWS both must be on (Aurora has rds.force_ssl=1, ElastiCache has
    # transit encryption). Redis TLS is chosen by the rediss:// scheme.
    # PostgreSQL: set here, this mode wins; unset, the DSN's ?sslmode= does
    # (and without either, libpq's default "prefer").
    database_sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = None
    database_ssl_root_cert: Path | None = None
    # Credentials that survive rotation: when set, every NEW connection reads the
    # password from this file (a Kubernetes Secret volume that a secret operator
    # re-syncs from Secrets Manager; the kubelet refreshes the file in place), so a
    # rotated password is picked up without a restart. Overrides a password in DATABASE_URL.
    database_password_file: Path | None = None
    redis_ssl_ca_certs: Path | None = None

    # asyncpg has no query or acquire timeout by default: a stalled database
    # would otherwise hold every request forever. The pool opens connections
    # on demand (no minimum), so a replica starts while the database is down.
    db_pool_max_size: int = Field(default=10, ge=1)
    db_connect_timeout_s: float = Field(default=2.0, gt=0)
    db_command_timeout_s: float = Field(default=2.0, gt=0)
    db_acquire_timeout_s: float = Field(default=1.0, gt=0)

    # redis-py defaults to a 5 s socket timeout and retries; a hung Redis
    # would stall every request. A cache miss is cheaper than waiting.
    redis_socket_timeout_s: float = Field(default=0.25, gt=0)
    redis_connect_timeout_s: float = Field(default=0.25, gt=0)
    # After a Redis failure, skip Redis for this long instead of paying the
    # timeout on every request.
    redis_breaker_cooldown_s: float = Field(default=2.0, ge=0)
    # Namespaces keys so that tests and several apps can share one Redis.
    redis_key_prefix: str = "qa"

    # Local run defaults (embedded PostgreSQL/Redis, model folder).
    data_dir: Path = Path(".local")
    model_dir: Path = Path("models")
    model_source: str = "local-gguf"

    log_level: str = "INFO"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment for a child process (Ray, local servers): ours plus ``extra``.

    Lives here so that this module stays the only one touching ``os.environ``.
    """
    return {**os.environ, **extra}
