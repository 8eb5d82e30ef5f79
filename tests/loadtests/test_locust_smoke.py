"""The locustfile, headless and short, against real stacks: the journeys pass
and the thresholds turn a miss into a non-zero exit."""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

from tests.loadtests.conftest import REPO

LOCUSTFILE = REPO / "loadtests" / "locustfile.py"


def run_locust(locust_bin: Path, host: str, tmp_path: Path, *extra: str, users: int = 4, seconds: int = 6,
               env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], dict[str, dict]]:
    prefix = tmp_path / "run"
    cmd = [str(locust_bin), "-f", str(LOCUSTFILE), "--headless", "-u", str(users), "-r", str(users),
           "-t", f"{seconds}s", "--host", host, "--csv", str(prefix), "--only-summary", "--stop-timeout", "30",
           *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, cwd=REPO,
                          env={**os.environ, **(env or {})})
    stats = {}
    stats_file = Path(f"{prefix}_stats.csv")
    if stats_file.exists():
        with stats_file.open() as f:
            for row in csv.DictReader(f):
                stats[f"{row['Type']} {row['Name']}"] = row
    return proc, stats


def test_users_journeys_pass_against_plain_uvicorn(locust_bin: Path, uvicorn_stack: str, tmp_path: Path) -> None:
    proc, stats = run_locust(locust_bin, uvicorn_stack, tmp_path, "--exclude-tags", "llm")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "THRESHOLDS PASSED" in out
    for route in ("POST /users [create]", "GET /users/[id]", "GET /users"):
        assert route in stats, f"{route} never ran: {sorted(stats)}"
        assert int(stats[route]["Request Count"]) > 0
        assert int(stats[route]["Failure Count"]) == 0, stats[route]
    assert not any(name.startswith("POST /question") for name in stats), "llm journeys were excluded"


def test_missed_threshold_exits_non_zero(locust_bin: Path, uvicorn_stack: str, tmp_path: Path) -> None:
    proc, _ = run_locust(locust_bin, uvicorn_stack, tmp_path, "--exclude-tags", "llm", "--p95-ms",
                         "/users/[id]=0.001,/users=0.001", seconds=3,
                         env={"LOADTEST_MAX_ERROR_RATE": "0.5"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-4000:]
    assert "THRESHOLD MISSED" in out and "p95" in out
