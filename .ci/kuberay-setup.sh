#!/usr/bin/env bash
# Idempotent tool setup for the KubeRay manifest checks (kuberay/scripts/check.sh).
# Everything lands in the git-ignored venv /work/main/.venv-k8s (repo root/.venv-k8s):
#   checkov             security scan of the rendered manifests (+ extracted Ray pods)
#   kubernetes-validate built-in kinds, --strict
#   jsonschema          custom resources against the upstream CRDs' openAPIV3Schema
#   cel-python          their x-kubernetes-validations CEL rules (kuberay/scripts/cel_rules.py)
#   pykustomize         the real kustomize Go library (api v0.21.3) behind cffi: no
#                       kustomize/kubectl binary is needed. Its metadata says
#                       Requires-Python >=3.14 but the wheel is py3-none-any ctypes/cffi
#                       code that runs on 3.11: installed with --ignore-requires-python.
#   pydantic, pydantic-settings, pyyaml: so devtools.kuberay_gen/config import here.
#   dockerfile-parse, pytest
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${KUBERAY_VENV:-$ROOT/.venv-k8s}"
CHECKOV_VERSION="3.3.30"
KV_VERSION="1.37.0"
PYKUSTOMIZE_VERSION="0.1.4"
PYTEST_VERSION="9.0.2"
DFP_VERSION="2.0.1"
CEL_VERSION="0.5.0"
STAMP_VALUE="checkov=$CHECKOV_VERSION kv=$KV_VERSION pykustomize=$PYKUSTOMIZE_VERSION pytest=$PYTEST_VERSION dfp=$DFP_VERSION cel=$CEL_VERSION v2"

log() { echo "[kuberay-setup] $*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  python3 -m venv "$VENV"
fi
echo '*' > "$VENV/.gitignore"

if [ "$(cat "$VENV/.stamp" 2>/dev/null || true)" != "$STAMP_VALUE" ]; then
  log "installing checkov $CHECKOV_VERSION, kubernetes-validate $KV_VERSION, pykustomize $PYKUSTOMIZE_VERSION, pytest $PYTEST_VERSION"
  PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
  "${PIP[@]}" "checkov==$CHECKOV_VERSION" "kubernetes-validate==$KV_VERSION" \
    "pytest==$PYTEST_VERSION" "dockerfile-parse==$DFP_VERSION" "cel-python==$CEL_VERSION" \
    jsonschema pyyaml "pydantic>=2" pydantic-settings cffi
  "${PIP[@]}" --no-deps --ignore-requires-python "pykustomize==$PYKUSTOMIZE_VERSION"
  echo "$STAMP_VALUE" > "$VENV/.stamp"
fi

"$VENV/bin/python" - <<'PY'
import asyncio, celpy, checkov, jsonschema, kubernetes_validate, pykustomize, pydantic, yaml, dockerfile_parse  # noqa: F401
PY
log "ok: $VENV"
if [ "${1:-}" = "--print-env" ]; then
  echo "export KUBERAY_VENV='$VENV'"
fi
