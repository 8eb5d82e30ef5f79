"""PostgreSQL connection pool and schema migrations.

Migrations are ordered ``serve_app/migrations/NNNN_name.sql`` files (package data,
read with importlib.resources, so they travel with the installed package into the
images) applied once each, inside one transaction holding an advisory lock, so
replicas that start together apply them exactly once and the others wait, then see
them applied. ``sql/schema.sql`` at the repo root is the readable current schema.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from urllib.parse import parse_qs, urlsplit

import asyncpg

from serve_app.settings import Settings

log = logging.getLogger(__name__)

MIGRATIONS_PACKAGE = "serve_app"
MIGRATIONS_DIR = "migrations"
# Any constant shared by every replica works; this spells "qa-migrations".
MIGRATION_LOCK_ID = 0x71612D6D6967

_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

# Errors that mean "the database cannot serve right now" rather than a bug.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    TimeoutError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.QueryCanceledError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.PostgresConnectionError,
    # A rejected password: during a rotation, until the new one reaches the password
    # file. A fast 503 with Retry-After, never a 500.
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
    # A pooled connection whose backend was terminated (pg_terminate_backend, a
    # failover) can fail its next query with "cannot switch to state ...; another
    # operation is in progress" instead of a connection error: seen under load in
    # tests/integration/test_credential_rotation.py. The pool discards it.
    asyncpg.exceptions.InternalClientError,
)


class MigrationsMissing(RuntimeError):
    """The migration files are not where the package says: a broken build or
    image, not an outage. Deliberately not an OSError, so it is never mistaken
    for "database unavailable" and retried for ever."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations_dir() -> Traversable:
    return resources.files(MIGRATIONS_PACKAGE) / MIGRATIONS_DIR


def load_migrations(directory: Traversable | None = None) -> list[Migration]:
    """Every migration, ordered; raises MigrationsMissing when there is none."""
    directory = migrations_dir() if directory is None else directory
    try:
        entries = sorted(directory.iterdir(), key=lambda p: p.name)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise MigrationsMissing(f"migrations folder {directory} is missing: the package was built "
                                f"without its package data (serve_app/migrations/*.sql)") from exc
    migrations = []
    for path in entries:
        m = _MIGRATION_FILE.match(path.name)
        if not m:
            continue
        migrations.append(Migration(int(m.group(1)), m.group(2), path.read_text(encoding="utf-8")))
    if not migrations:
        raise MigrationsMissing(f"no NNNN_name.sql migration in {directory}")
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions in {directory}")
    return migrations


async def apply_migrations(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[int]:
    """Apply pending migrations; returns the versions applied by this call."""
    migrations = load_migrations() if migrations is None else migrations
    applied_now: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    INTEGER     PRIMARY KEY,
                   name       TEXT        NOT NULL,
                   applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for m in migrations:
            if m.version in done:
                continue
            log.info("applying migration %04d_%s", m.version, m.name)
            await conn.execute(m.sql)
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.version, m.name)
            applied_now.append(m.version)
    return applied_now


def _dsn_params(dsn: str) -> dict[str, str]:
    query = parse_qs(urlsplit(dsn).query)
    return {k: v[-1] for k, v in query.items() if v}


def ssl_mode(settings: Settings, dsn: str) -> str:
    """``DATABASE_SSLMODE`` when set, else the DSN's ``sslmode``, else libpq's
    default ``prefer``."""
    return settings.database_sslmode or _dsn_params(dsn).get("sslmode") or "prefer"


def ssl_argument(settings: Settings, dsn: str) -> ssl.SSLContext | str | bool:
    """asyncpg's ``ssl=``. Whatever is passed there replaces the DSN's own
    sslmode (asyncpg 0.32 ``connect_utils._parse_connect_dsn_and_args``), so
    the mode is resolved here, from both, once."""
    mode = ssl_mode(settings, dsn)
    if mode == "disable":
        return False
    if mode in ("verify-ca", "verify-full"):
        root = settings.database_ssl_root_cert or _dsn_params(dsn).get("sslrootcert")
        ctx = ssl.create_default_context(cafile=str(root) if root else None)
        ctx.check_hostname = mode == "verify-full"
        return ctx
    return mode  # asyncpg understands "allow", "prefer" and "require" as libpq does


def password_argument(settings: Settings) -> Callable[[], str] | None:
    """The password of each new connection, read when it is opened (see
    Settings.database_password_file); None: the DSN's."""
    path = settings.database_password_file
    if path is None:
        return None

    def current_password() -> str:
        return path.read_text(encoding="utf-8").strip()

    return current_password


async def create_pool(settings: Settings, dsn: str) -> asyncpg.Pool:
    """A pool that does not connect eagerly, so the service starts while the
    database is down and recovers by itself when it returns."""
    return await asyncpg.create_pool(
        dsn,
        password=password_argument(settings),
        min_size=0,
        max_size=settings.db_pool_max_size,
        timeout=settings.db_connect_timeout_s,
        command_timeout=settings.db_command_timeout_s,
        ssl=ssl_argument(settings, dsn),
        # The server gives up when the client does: a statement the client
        # stopped waiting for stops holding locks and a backend. Sent in the
        # startup packet, so it costs no round trip.
        server_settings={"statement_timeout": f"{round(settings.db_command_timeout_s * 1000)}ms"},
        # Connections that die while the database restarts are replaced on
        # the next acquire instead of failing the request that gets them.
        max_inactive_connection_lifetime=60,
    )


async def connect(settings: Settings, dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(
        dsn,
        password=password_argument(settings),
        timeout=settings.db_connect_timeout_s,
        command_timeout=max(settings.db_command_timeout_s, 30.0),
        ssl=ssl_argument(settings, dsn),
    )


async def migrate(settings: Settings, dsn: str, migrations: list[Migration] | None = None) -> list[int]:
    # Loaded before connecting: a missing file is reported as itself, never as an outage.
    migrations = load_migrations() if migrations is None else migrations
    conn = await connect(settings, dsn)
    try:
        return await apply_migrations(conn, migrations)
    finally:
        await conn.close()
