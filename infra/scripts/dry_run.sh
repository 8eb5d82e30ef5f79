#!/usr/bin/env bash
# Offline dry run of docs/deploy-eks.md: everything of the walkthrough that can run
# without AWS, a cluster or a Docker engine (CI runs it from `make test`).
#   1. infra/scripts/dry_run.py (.venv-infra): the doc's commands are all known and parse;
#      every Terragrunt unit of test and prod planned with its inputs resolved against its
#      dependencies' mock outputs; the k8s-addons unit's deploy_values written out
#   2. kuberay/scripts/release.py --dry-run with those values (the commands the real run
#      would run, printed) writing kuberay/deploy/<env>, the overlay the doc applies
#   3. that overlay rendered and validated (kuberay_checks.py applied, .venv-k8s)
#   4. the image file-set test (pytest in .venv, local PostgreSQL), unless
#      DRY_RUN_SKIP_IMAGE_TEST=1 (make test runs it in its integration tier already)
#   bash infra/scripts/dry_run.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
start=$SECONDS
eval "$(bash .ci/infra-setup.sh --print-env)"
bash .ci/kuberay-setup.sh >/dev/null
OUT="$INFRA_CACHE/dry-run"
rm -rf "$OUT" && mkdir -p "$OUT"

echo "== 1. the walkthrough's commands; every unit planned with mock dependency outputs"
"$INFRA_VENV/bin/python" infra/scripts/dry_run.py --out "$OUT"

SHA="$(git rev-parse --short=12 HEAD)"
for env in test prod; do
  echo "== 2. release.py --env $env --dry-run (what the real run would do)"
  python3 kuberay/scripts/release.py --env "$env" --dry-run --values "$OUT/$env/deploy_values.json" \
    --out "kuberay/deploy/$env" --sha "$SHA"
  echo "== 3. kubectl apply --server-side -k kuberay/deploy/$env: rendered and validated offline"
  .venv-k8s/bin/python kuberay/scripts/kuberay_checks.py applied --env "$env" --dir "kuberay/deploy/$env" \
    --values "$OUT/$env/deploy_values.json" --tag "2.60.0-$SHA"
done

if [ "${DRY_RUN_SKIP_IMAGE_TEST:-0}" != 1 ]; then
  echo "== 4. the images' file sets: migrate and serve from them (local PostgreSQL)"
  .venv/bin/python -m pytest tests/integration/test_image_files.py -q
fi
echo "dry run OK in $((SECONDS - start))s (AWS, the cluster, helm and docker were not run: docs/deploy-eks.md)"
