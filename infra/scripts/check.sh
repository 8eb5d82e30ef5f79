#!/usr/bin/env bash
# Single entrypoint for every offline infra check. Exits non-zero on any failure.
#   bash infra/scripts/check.sh
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
eval "$(bash .ci/infra-setup.sh --print-env)" || { echo "infra-setup failed" >&2; exit 1; }
PY="$INFRA_VENV/bin/python"
TF="$INFRA_TERRAFORM"

failed=()
step() {
  local name="$1"; shift
  local t0=$SECONDS
  echo "=== $name"
  if "$@"; then
    echo "--- ok: $name ($((SECONDS - t0))s)"
  else
    echo "--- FAILED: $name ($((SECONDS - t0))s)"
    failed+=("$name")
  fi
}

# Modules whose providers all exist offline (AWS only) get the full terraform
# treatment; the rest (k8s-addons: helm, kubernetes) rely on module_check.py.
aws_only_modules() {
  for d in infra/modules/*/; do
    grep -Eq 'source\s*=\s*"hashicorp/(helm|kubernetes)"' "$d"*.tf || basename "$d"
  done
}

tf_module() {
  local m="$1" dir="infra/modules/$1"
  export TF_DATA_DIR="$INFRA_CACHE/tfdata/$m"
  "$TF" -chdir="$dir" init -backend=false -input=false -no-color >"$INFRA_CACHE/init-$m.log" 2>&1 \
    || { cat "$INFRA_CACHE/init-$m.log"; return 1; }
  "$TF" -chdir="$dir" validate -no-color || return 1
  if compgen -G "$dir/tests/*.tftest.hcl" >/dev/null; then
    "$TF" -chdir="$dir" test -no-color || return 1
  else
    echo "no terraform tests in $dir" && return 1
  fi
}

step "parse every .tf/.hcl" "$PY" infra/scripts/parse_check.py infra
step "terraform fmt (.tf, .tftest.hcl, .hcl)" "$PY" infra/scripts/fmt_check.py infra
step "module config check (all modules)" "$PY" infra/scripts/module_check.py
step "terragrunt consistency" "$PY" infra/scripts/tg_check.py infra/live
for m in $(aws_only_modules); do
  step "terraform init/validate/test: $m" tf_module "$m"
done
unset TF_DATA_DIR
step "checkov" "$INFRA_VENV/bin/checkov" --config-file infra/.checkov.yaml -d infra/
# -c /dev/null: ignore the app's pytest config in pyproject.toml; --confcutdir: and its tests/conftest.py.
step "pytest tests/infra" "$PY" -m pytest tests/infra -p no:cacheprovider -c /dev/null --rootdir "$ROOT" --confcutdir tests/infra -q

echo
if [ ${#failed[@]} -gt 0 ]; then
  printf 'FAILED: %s\n' "${failed[@]}"
  exit 1
fi
echo "All infra checks passed in ${SECONDS}s."
