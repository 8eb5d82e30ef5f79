#!/usr/bin/env bash
# The Kubernetes side of the k8s-addons unit, run by its terraform_data provisioners
# (main.tf) with everything passed in the environment. Needs aws, kubectl, helm.
#
#   addons.sh crds          server-side apply of CRD_URLS (Gateway API, then gateway.k8s.aws)
#   addons.sh helm          helm upgrade --install RELEASE CHART --repo REPO --version VERSION
#                           -n NAMESPACE with VALUES (YAML text) --wait; an oci:// CHART
#                           (Karpenter) is pulled from its registry, REPO empty
#   addons.sh manifest      server-side apply of MANIFEST (YAML text)
#   addons.sh app-secret    namespace APP_NAMESPACE + Secret app-credentials, read from
#                           Secrets Manager at apply time (never in Terraform state); its
#                           DATABASE_URL carries no password (the pods read it from the
#                           CSI-mounted file DATABASE_PASSWORD_FILE, re-synced on rotation)
#   addons.sh pre-destroy   before the controllers go: delete every RayService (KubeRay's
#                           finalizers need the operator) and Gateway, switch off ALB
#                           deletion protection, and wait until no load balancer of the
#                           cluster is left, then delete Karpenter's NodePools/NodeClaims/
#                           EC2NodeClasses (its instances and instance profiles), so
#                           destroying eks/network is not blocked
# Common: CLUSTER_NAME, REGION. Tests: tests/infra/test_k8s_addons.py runs every
# subcommand against recording stand-ins of aws/kubectl/helm.
set -euo pipefail

: "${CLUSTER_NAME:?}" "${REGION:?}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
umask 077
export KUBECONFIG="$WORK/kubeconfig"

log() { echo "[k8s-addons] $*" >&2; }

kubeconfig() {
  aws eks update-kubeconfig --name "$CLUSTER_NAME" --region "$REGION" --kubeconfig "$KUBECONFIG" >/dev/null
}

cmd_crds() {
  : "${CRD_URLS:?}"
  kubeconfig
  for url in $CRD_URLS; do
    log "CRDs: $url"
    kubectl apply --server-side --force-conflicts -f "$url"
  done
  # The controller detects these kinds once, at start-up: they must be Established first.
  kubectl wait --for condition=Established --timeout=120s \
    crd/gateways.gateway.networking.k8s.io crd/httproutes.gateway.networking.k8s.io \
    crd/loadbalancerconfigurations.gateway.k8s.aws crd/targetgroupconfigurations.gateway.k8s.aws \
    crd/listenerruleconfigurations.gateway.k8s.aws \
    crd/nodepools.karpenter.sh crd/nodeclaims.karpenter.sh crd/ec2nodeclasses.karpenter.k8s.aws
}

cmd_helm() {
  : "${RELEASE:?}" "${CHART:?}" "${VERSION:?}" "${NAMESPACE:?}"
  local source=()
  case "$CHART" in
    oci://*) ;;  # the chart reference is the registry (Karpenter: oci://public.ecr.aws/karpenter/karpenter)
    *) source=(--repo "${REPO:?}") ;;
  esac
  kubeconfig
  printf '%s\n' "${VALUES:-}" > "$WORK/values.yaml"
  log "helm: $RELEASE $CHART $VERSION -> $NAMESPACE"
  helm upgrade --install "$RELEASE" "$CHART" "${source[@]}" --version "$VERSION" \
    --namespace "$NAMESPACE" --create-namespace --values "$WORK/values.yaml" --wait --timeout 10m
}

cmd_manifest() {
  : "${MANIFEST:?}"
  kubeconfig
  printf '%s\n' "$MANIFEST" > "$WORK/manifest.yaml"
  kubectl apply --server-side -f "$WORK/manifest.yaml"
}

secret_string() {
  aws secretsmanager get-secret-value --region "$REGION" --secret-id "$1" --query SecretString --output text
}

cmd_app_secret() {
  : "${APP_NAMESPACE:?}" "${AURORA_SECRET_ARN:?}" "${AURORA_ENDPOINT:?}" "${AURORA_PORT:?}" "${AURORA_DATABASE:?}"
  : "${REDIS_SECRET_ARN:?}" "${REDIS_ENDPOINT:?}" "${REDIS_PORT:?}" "${REDIS_APP_DB:?}"
  kubeconfig
  secret_string "$AURORA_SECRET_ARN" > "$WORK/aurora.json"
  secret_string "$REDIS_SECRET_ARN" > "$WORK/redis-token"
  # rediss:// and sslmode=verify-full: both servers refuse plaintext, and the app checks
  # Aurora's certificate and host name against AWS's RDS CA bundle (in the image at the
  # sslrootcert path; truststore.pki.rds.amazonaws.com/global/global-bundle.pem). No "/<db>"
  # in RAY_REDIS_ADDRESS: Ray 2.60 parses "6379/1" as the port (kuberay/README.md).
  python3 - "$WORK" <<'PY'
import json, os, sys
from urllib.parse import quote
work = sys.argv[1]
creds = json.load(open(os.path.join(work, "aurora.json")))
token = open(os.path.join(work, "redis-token")).read().strip()
e = os.environ
redis = f"{e['REDIS_ENDPOINT']}:{e['REDIS_PORT']}"
values = {
    # No password: RDS rotates it every 7 days. The pods read it per new connection from
    # DATABASE_PASSWORD_FILE, the SecretProviderClass' CSI-mounted file (re-synced).
    "DATABASE_URL": f"postgresql://{quote(creds['username'], safe='')}"
                    f"@{e['AURORA_ENDPOINT']}:{e['AURORA_PORT']}/{e['AURORA_DATABASE']}"
                    "?sslmode=verify-full&sslrootcert=/etc/ssl/certs/rds-global-bundle.pem",
    "REDIS_URL": f"rediss://:{quote(token, safe='')}@{redis}/{e['REDIS_APP_DB']}",
    "RAY_REDIS_ADDRESS": f"rediss://{redis}",
    "RAY_REDIS_PASSWORD": token,
}
with open(os.path.join(work, "app-credentials.env"), "w") as f:
    f.writelines(f"{k}={v}\n" for k, v in values.items())
PY
  kubectl create namespace "$APP_NAMESPACE" --dry-run=client -o yaml | kubectl apply --server-side -f -
  kubectl -n "$APP_NAMESPACE" create secret generic app-credentials \
    --from-env-file="$WORK/app-credentials.env" --dry-run=client -o yaml | kubectl apply --server-side -f -
}

cluster_load_balancers() {
  aws resourcegroupstaggingapi get-resources --region "$REGION" \
    --resource-type-filters elasticloadbalancing:loadbalancer \
    --tag-filters "Key=elbv2.k8s.aws/cluster,Values=$CLUSTER_NAME" \
    --query 'ResourceTagMappingList[].ResourceARN' --output text
}

cmd_pre_destroy() {
  if ! aws eks describe-cluster --name "$CLUSTER_NAME" --region "$REGION" >/dev/null 2>&1; then
    log "cluster $CLUSTER_NAME is gone: nothing to clean up"
    return 0
  fi
  kubeconfig
  # RayServices first, while the KubeRay operator still runs their finalizers (GCS cleanup).
  if kubectl get crd rayservices.ray.io >/dev/null 2>&1; then
    kubectl delete rayservices.ray.io --all --all-namespaces --wait --timeout=10m
  fi
  # ALBs with deletion protection (prod) would refuse the controller's delete.
  for arn in $(cluster_load_balancers); do
    aws elbv2 modify-load-balancer-attributes --region "$REGION" --load-balancer-arn "$arn" \
      --attributes Key=deletion_protection.enabled,Value=false >/dev/null
  done
  if kubectl get crd gateways.gateway.networking.k8s.io >/dev/null 2>&1; then
    kubectl delete gateways.gateway.networking.k8s.io --all --all-namespaces --wait --timeout=10m
  fi
  # The controller deletes the ALB, its target groups and security groups; wait for it.
  local gone=""
  for _ in $(seq 1 "${PRE_DESTROY_POLLS:-60}"); do
    left="$(cluster_load_balancers)"
    if [ -z "$left" ] || [ "$left" = "None" ]; then
      log "no load balancer of $CLUSTER_NAME left"
      gone=1
      break
    fi
    log "waiting for the controller to delete: $left"
    sleep "${PRE_DESTROY_INTERVAL_S:-10}"
  done
  if [ -z "$gone" ]; then
    log "ERROR: load balancers of $CLUSTER_NAME still exist; they would block deleting the VPC"
    return 1
  fi
  # Karpenter's nodes are not Terraform's: while Karpenter still runs, delete its NodePools
  # (their finalizers terminate the instances, whose ENIs would block deleting the subnets
  # and security groups) and EC2NodeClasses (their finalizers delete the instance profiles
  # Karpenter made, which would block deleting the node role).
  if kubectl get crd nodepools.karpenter.sh >/dev/null 2>&1; then
    kubectl delete nodepools.karpenter.sh --all --wait --timeout=10m
    kubectl delete nodeclaims.karpenter.sh --all --wait --timeout=10m
  fi
  if kubectl get crd ec2nodeclasses.karpenter.k8s.aws >/dev/null 2>&1; then
    kubectl delete ec2nodeclasses.karpenter.k8s.aws --all --wait --timeout=10m
  fi
}

case "${1:-}" in
  crds) cmd_crds ;;
  helm) cmd_helm ;;
  manifest) cmd_manifest ;;
  app-secret) cmd_app_secret ;;
  pre-destroy) cmd_pre_destroy ;;
  *) echo "usage: $0 crds|helm|manifest|app-secret|pre-destroy" >&2; exit 2 ;;
esac
