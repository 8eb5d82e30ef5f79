"""``python -m serve_app``: the service's own commands, as the images run them
(``migrate`` in a Kubernetes Job or by hand, ``api-key`` from a pod).

Both need ``DATABASE_URL``. On this machine ``python -m devtools migrate|api-key``
fills it in from the run command's local PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from serve_app.settings import Settings


def _say(msg: str) -> None:
    # stderr: stdout carries only what a caller may capture (a new key).
    print(f"[serve_app] {msg}", file=sys.stderr, flush=True)


def cmd_migrate(settings: Settings, _: argparse.Namespace) -> int:
    from serve_app import db

    applied = asyncio.run(db.migrate(settings, _dsn(settings)))
    _say(f"migrations applied: {applied or 'none pending'}")
    return 0


def cmd_api_key(settings: Settings, ns: argparse.Namespace) -> int:
    from serve_app import auth

    dsn = _dsn(settings)
    if ns.action == "create":
        key = asyncio.run(auth.create_api_key(dsn, ns.name, settings))
        _say(f"API key {ns.name!r} created; it is shown once, store it now:")
        print(key)
        return 0
    if ns.action == "revoke":
        if asyncio.run(auth.revoke(dsn, ns.key, settings)):
            _say("revoked (each replica forgets it within auth.key_cache_ttl_s)")
            return 0
        _say("no such active key")
        return 1
    for k in asyncio.run(auth.list_keys(dsn, settings)):
        state = f"revoked {k['revoked_at']:%Y-%m-%d %H:%M}" if k["revoked_at"] else "active"
        print(f"{k['id']}  {k['created_at']:%Y-%m-%d %H:%M}  {state:<24}  {k['name']}")
    return 0


class MissingDatabaseUrl(SystemExit):
    def __init__(self) -> None:
        _say("DATABASE_URL is not set (on this machine: python -m devtools migrate|api-key use the local one)")
        super().__init__(2)


def _dsn(settings: Settings) -> str:
    if not settings.database_url:
        raise MissingDatabaseUrl
    return settings.database_url


def add_service_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``migrate`` and ``api-key``; also registered by ``python -m devtools``."""
    sub.add_parser("migrate", help="apply database migrations to DATABASE_URL").set_defaults(func=cmd_migrate)
    keys = sub.add_parser("api-key", help="create, list or revoke API keys (in DATABASE_URL)")
    actions = keys.add_subparsers(dest="action", required=True)
    actions.add_parser("create", help="create a key and print it once").add_argument("--name", required=True)
    actions.add_parser("revoke", help="revoke a key (the whole key or its id)").add_argument("key")
    actions.add_parser("list", help="ids, names and states of all keys")
    keys.set_defaults(func=cmd_api_key)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app", description=__doc__)
    add_service_commands(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args(argv)
    return ns.func(Settings(), ns)
