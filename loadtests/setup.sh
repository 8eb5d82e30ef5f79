#!/usr/bin/env bash
# Creates .venv-load with locust and matplotlib at pinned versions (idempotent:
# does nothing when the pins are already installed). The app's .venv is untouched.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${LOAD_VENV:-.venv-load}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
REQ=loadtests/requirements.txt
# wrk (Debian's C load generator): bench.py's users-path load with ~7 % of a
# core, where its aiohttp fallback took 30-48 % of the 2 cores the servers
# share (loadtests/results/report.md). Best effort: without it bench.py uses
# aiohttp and its report names the generator.
if ! command -v wrk >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends wrk \
      >/dev/null; } || echo "[loadtests] could not install wrk: bench.py will use its aiohttp load generator" >&2
fi
STAMP="$VENV/.requirements.sha256"
want=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ -x "$VENV/bin/locust" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "[loadtests] $VENV is up to date ($("$VENV/bin/locust" --version 2>/dev/null | head -1))"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ"
echo "$want" > "$STAMP"
echo "[loadtests] $VENV ready: $("$VENV/bin/locust" --version | head -1)"
