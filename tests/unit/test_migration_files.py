"""Migrations ship as package data; a missing folder is a clear error, never an outage."""

from __future__ import annotations

import pytest
from asgi_lifespan import LifespanManager

from serve_app import db
from serve_app.config import AppArgs
from serve_app.http import create_app
from serve_app.settings import Settings


def test_migrations_are_package_data():
    migrations = db.load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert db.migrations_dir().is_dir() and str(db.migrations_dir()).endswith("serve_app/migrations")


async def test_missing_folder_is_not_classed_as_database_unavailable(monkeypatch):
    # The old mistake: FileNotFoundError (an OSError) was one of UNAVAILABLE_ERRORS,
    # so an image without the files retried "database unavailable" for ever.
    monkeypatch.setattr(db, "MIGRATIONS_DIR", "no-such-folder")
    with pytest.raises(db.MigrationsMissing, match="package data") as exc:
        db.load_migrations()
    assert not isinstance(exc.value, db.UNAVAILABLE_ERRORS)
    # The app's startup fails at once (before any connection is tried).
    app = create_app(AppArgs(), Settings(database_url="postgresql://unused@127.0.0.1:1/x", redis_url=None,
                                         database_sslmode="disable"))
    with pytest.raises(db.MigrationsMissing):
        async with LifespanManager(app):
            pass


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(db.MigrationsMissing, match=r"no NNNN_name\.sql"):
        db.load_migrations(tmp_path)
