"""Throwaway PostgreSQL and Redis servers that the fault tests may stop, hang and kill.

Each server has its own data folder and port on 127.0.0.1 and is a child
process of the test run. The machine's shared servers (PostgreSQL on 5432,
Redis on 6379) are never touched: every signal goes to a pid this module
started, or to a child of it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from devtools.local_ray import free_port

SHARED_PORTS = (5432, 6379)


def _pg_bin(name: str) -> str:
    # Debian installs the server binaries outside PATH, one folder per major version.
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} not found under /usr/lib/postgresql/*/bin")
    return found[-1]


def _wait_until(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout_s}s")


def _signal_tree(root: psutil.Process, sig: signal.Signals) -> list[psutil.Process]:
    """Sends ``sig`` to ``root`` and all its descendants; returns them."""
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    return procs


class ThrowawayPostgres:
    """A PostgreSQL cluster in a temporary folder, TCP on 127.0.0.1 only. Auth: trust,
    or ``host_auth`` (e.g. scram-sha-256) on TCP with trust on its own unix socket,
    where ``admin_dsn`` connects."""

    def __init__(self, host_auth: str = "trust") -> None:
        self.host_auth = host_auth
        self.port = free_port()
        assert self.port not in SHARED_PORTS
        self.root = Path(tempfile.mkdtemp(prefix="qa-faults-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None
        # initdb and postgres refuse to run as root.
        self._user = "postgres" if os.geteuid() == 0 else None
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.admin_dsn = f"postgresql://postgres@/postgres?host={self.root}&port={self.port}"

    def _popen_user(self) -> dict[str, str]:
        return {"user": self._user, "group": self._user} if self._user else {}

    def init(self) -> None:
        if self._user:
            shutil.chown(self.root, self._user, self._user)
        subprocess.run(
            [_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
             f"--auth-host={self.host_auth}", "-E", "UTF8",
             "--locale=C", "--no-sync"],
            check=True, capture_output=True, timeout=120, cwd=self.root, **self._popen_user(),
        )

    def start(self) -> None:
        log = self.log.open("ab")
        self.proc = subprocess.Popen(
            [_pg_bin("postgres"), "-D", str(self.data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}",
             "-c", "max_connections=100"],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.root, **self._popen_user(),
        )
        log.close()
        _wait_until(self.ready, 60, f"PostgreSQL on {self.port}")

    def ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"PostgreSQL exited; log:\n{self.log.read_text()[-3000:]}")
        out = subprocess.run([_pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-t", "1"],
                             capture_output=True, check=False)
        return out.returncode == 0

    def _procs(self) -> list[psutil.Process]:
        assert self.proc is not None
        root = psutil.Process(self.proc.pid)
        try:
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, mode: str = "immediate") -> None:
        """``immediate`` is a crash stop (SIGQUIT): committed rows survive only through the WAL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.resume()  # a stopped postmaster cannot act on the signal
        self.proc.send_signal({"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode])
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _signal_tree(psutil.Process(self.proc.pid), signal.SIGKILL)
            self.proc.wait(timeout=10)

    def hang(self) -> int:
        """SIGSTOP the postmaster and every backend: connections stay open and go silent."""
        procs = self._procs()
        for p in procs:
            p.send_signal(signal.SIGSTOP)
        return len(procs)

    def resume(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        for p in self._procs():
            try:
                p.send_signal(signal.SIGCONT)
            except psutil.NoSuchProcess:
                pass

    def destroy(self) -> None:
        self.stop("fast")
        shutil.rmtree(self.root, ignore_errors=True)

    @classmethod
    @contextlib.contextmanager
    def running(cls, host_auth: str = "trust") -> Iterator[ThrowawayPostgres]:
        """A started cluster for a test's own use, destroyed afterwards."""
        pg = cls(host_auth)
        pg.init()
        pg.start()
        try:
            yield pg
        finally:
            pg.destroy()


class ThrowawayRedis:
    """redis-server with no persistence, bound to 127.0.0.1 on its own port."""

    def __init__(self) -> None:
        self.port = free_port()
        assert self.port not in SHARED_PORTS
        self.root = Path(tempfile.mkdtemp(prefix="qa-faults-redis-"))
        self.log = self.root / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server not found (Debian package redis-server)")
        log = self.log.open("ab")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--dir", str(self.root)],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
        )
        log.close()
        _wait_until(self.ready, 30, f"Redis on {self.port}")

    def ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited; log:\n{self.log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.resume()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def hang(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
