#!/usr/bin/env bash
# Single offline entrypoint for the kuberay/ checks; exits non-zero on any failure.
#   1. .ci/kuberay-setup.sh      tools into .venv-k8s (idempotent)
#   2. serveConfigV2 drift       python -m devtools.kuberay_gen --check
#   3. kuberay_checks.py         kustomize render (all variants), kubernetes-validate
#                                --strict, CRD schemas, policy, Dockerfiles, checkov
#   4. pytest tests/kuberay      incl. the planted-mistake tests
# Env: KUBERAY_CRDS_DIR (default <repo>/../shared/crds), KUBERAY_OUT (rendered output).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
start=$(date +%s)
bash "$ROOT/.ci/kuberay-setup.sh"
PY="$ROOT/.venv-k8s/bin/python"

echo "== serveConfigV2 drift"
"$PY" -m devtools.kuberay_gen --check

echo "== render + validate + policy + checkov + Dockerfiles"
"$PY" "$ROOT/kuberay/scripts/kuberay_checks.py"

echo "== pytest tests/kuberay"
# -c /dev/null: ignore the repo's pytest config; --confcutdir: skip tests/conftest.py
# (it imports the app's dependencies, which .venv-k8s does not have).
"$PY" -m pytest -p no:cacheprovider -c /dev/null --rootdir="$ROOT" --confcutdir="$ROOT/tests/kuberay" \
  "$ROOT/tests/kuberay" -q

echo "kuberay checks OK in $(( $(date +%s) - start ))s"
