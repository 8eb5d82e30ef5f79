"""Settings from the environment, and the TLS options they turn into."""

from __future__ import annotations

import ssl
from pathlib import Path

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


DSN = "postgresql://u@db.example:5432/app"


@pytest.mark.parametrize(("mode", "expected"), [("disable", False), ("prefer", "prefer"), ("require", "require")])
def test_postgres_tls_modes(mode: str, expected: object) -> None:
    assert ssl_argument(Settings(database_sslmode=mode), DSN) == expected


@pytest.mark.parametrize(
    ("dsn_mode", "env_mode", "expected"),
    [
        (None, None, "prefer"),  # libpq's default
        ("require", None, "require"),  # finding 6: the DSN's mode used to lose to the default
        ("disable", None, False),
        ("require", "disable", False),  # DATABASE_SSLMODE, when set, wins
        ("disable", "require", "require"),
    ],
)
def test_the_dsn_mode_wins_unless_the_setting_is_set(dsn_mode: str | None, env_mode: str | None,
                                                     expected: object) -> None:
    dsn = DSN + (f"?sslmode={dsn_mode}" if dsn_mode else "")
    assert ssl_argument(Settings(database_sslmode=env_mode), dsn) == expected


def test_postgres_verify_full_builds_a_verifying_context() -> None:
    ctx = ssl_argument(Settings(database_sslmode="verify-full"), DSN)
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_verify_full_from_the_dsn_with_its_root_certificate() -> None:
    """What the EKS secret asks for (infra/modules/k8s-addons): the DSN's own
    sslrootcert is the CA the server must chain to."""
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    ctx = ssl_argument(Settings(), f"{DSN}?sslmode=verify-full&sslrootcert={bundle}")
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.cert_store_stats()["x509_ca"] > 0
    ca = ssl_argument(Settings(), f"{DSN}?sslmode=verify-ca&sslrootcert={bundle}")
    assert isinstance(ca, ssl.SSLContext) and ca.verify_mode == ssl.CERT_REQUIRED and not ca.check_hostname


def test_every_setting_is_read_by_the_code() -> None:
    """A knob nothing reads only misleads (finding 7: db_pool_min_size was
    one): each Settings field appears as ``settings.<field>`` somewhere."""
    import serve_app

    root = Path(serve_app.__file__).parent.parent
    code = "".join(p.read_text() for d in ("serve_app", "devtools") for p in (root / d).rglob("*.py"))
    unread = [name for name in Settings.model_fields if f".{name}" not in code]
    assert not unread, unread


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


def test_the_eks_secret_asks_for_verify_full() -> None:
    """infra/modules/k8s-addons/addons.sh writes DATABASE_URL into the
    app-credentials secret (tests/infra/test_k8s_addons.py runs it on stubs):
    its sslmode is what the pods use, as DATABASE_SSLMODE is not set there."""
    import re

    from serve_app.db import ssl_mode

    root = Path(__file__).resolve().parents[2]
    script = (root / "infra" / "modules" / "k8s-addons" / "addons.sh").read_text()
    url = re.search(r'"DATABASE_URL":\s*f"postgresql://.*?\n\s*"(\?[^"]+)"', script, re.DOTALL)
    assert url is not None, "DATABASE_URL's query string not found in addons.sh"
    dsn = "postgresql://u:p@db.example:5432/qa" + url.group(1)
    assert ssl_mode(Settings(), dsn) == "verify-full"
    assert "sslrootcert=/" in dsn
    deployed = (root / "kuberay").rglob("*.yaml")
    assert not any("DATABASE_SSLMODE" in p.read_text() for p in deployed)
