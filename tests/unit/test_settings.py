"""Settings from the environment, and the TLS options they turn into."""

from __future__ import annotations

import ssl

import pytest

from serve_app.cache import create_redis
from serve_app.db import ssl_argument
from serve_app.settings import Settings


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db:5432/app")
    monkeypatch.setenv("COMPANY_NAME", "Initech")
    monkeypatch.setenv("DB_COMMAND_TIMEOUT_S", "3.5")
    s = Settings()
    assert s.database_url == "postgresql://u@db:5432/app"
    assert s.company_name == "Initech"
    assert s.db_command_timeout_s == 3.5


def test_invalid_setting_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_SSLMODE", "sometimes")
    with pytest.raises(ValueError):
        Settings()


@pytest.mark.parametrize(("mode", "expected"), [("disable", False), ("prefer", "prefer"), ("require", "require")])
def test_postgres_tls_modes(mode: str, expected: object) -> None:
    assert ssl_argument(Settings(database_sslmode=mode)) == expected


def test_postgres_verify_full_builds_a_verifying_context() -> None:
    ctx = ssl_argument(Settings(database_sslmode="verify-full"))
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_redis_tls_and_bounded_timeouts() -> None:
    settings = Settings(redis_ssl_ca_certs="/etc/ssl/certs/ca-certificates.crt")
    tls = create_redis(settings, "rediss://:token@cache.example:6379/0")
    kwargs = tls.connection_pool.connection_kwargs
    assert tls.connection_pool.connection_class.__name__ == "SSLConnection"
    assert kwargs["ssl_ca_certs"] == "/etc/ssl/certs/ca-certificates.crt"
    assert kwargs["socket_timeout"] == settings.redis_socket_timeout_s
    assert kwargs["socket_connect_timeout"] == settings.redis_connect_timeout_s
    assert kwargs["retry"].get_retries() == 0
    plain = create_redis(settings, "redis://127.0.0.1:6379/0")
    assert plain.connection_pool.connection_class.__name__ == "Connection"
