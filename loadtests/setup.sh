#!/usr/bin/env bash
# Creates .venv-load with locust and matplotlib at pinned versions (idempotent:
# does nothing when the pins are already installed). The app's .venv is untouched.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${LOAD_VENV:-.venv-load}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
REQ=loadtests/requirements.txt
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
# wrk (C load generator) is used by bench.py when present; optional.
command -v wrk >/dev/null || echo "[loadtests] optional: apt-get install -y wrk (lighter load generator for bench.py)"
