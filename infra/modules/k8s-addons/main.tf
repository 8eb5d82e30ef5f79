# --- Gateway API CRDs -----------------------------------------------------------
# Upstream ships them as a plain manifest (no chart). Server-side apply keeps the
# step idempotent; it needs the aws CLI and kubectl on the machine running apply.
resource "terraform_data" "gateway_api_crds" {
  triggers_replace = [var.gateway_api_version, var.cluster_name]

  provisioner "local-exec" {
    interpreter = ["/bin/bash", "-euo", "pipefail", "-c"]
    command     = <<-EOT
      kubeconfig="$(mktemp)"
      trap 'rm -f "$kubeconfig"' EXIT
      aws eks update-kubeconfig --name "${var.cluster_name}" --region "${var.region}" --kubeconfig "$kubeconfig" >/dev/null
      kubectl --kubeconfig "$kubeconfig" apply --server-side -f \
        "https://github.com/kubernetes-sigs/gateway-api/releases/download/${var.gateway_api_version}/standard-install.yaml"
    EOT
  }
}

# --- AWS Load Balancer Controller (ALB for the Gateway API HTTPRoute) ---------------
resource "helm_release" "aws_load_balancer_controller" {
  name       = "aws-load-balancer-controller"
  namespace  = "kube-system"
  repository = "https://aws.github.io/eks-charts"
  chart      = "aws-load-balancer-controller"
  version    = var.lb_controller_chart_version
  wait       = true

  values = [yamlencode({
    clusterName  = var.cluster_name
    region       = var.region
    vpcId        = var.vpc_id
    replicaCount = 2
    serviceAccount = {
      create      = true
      name        = "aws-load-balancer-controller"
      annotations = { "eks.amazonaws.com/role-arn" = var.lb_controller_role_arn }
    }
    # The IRSA policy grants no WAF/Shield permissions.
    enableShield = false
    enableWaf    = false
    enableWafv2  = false
    controllerConfig = {
      featureGates = { ALBGatewayAPI = true }
    }
  })]

  depends_on = [terraform_data.gateway_api_crds]
}

# --- KubeRay operator -------------------------------------------------------------------
resource "helm_release" "kuberay_operator" {
  name             = "kuberay-operator"
  namespace        = "kuberay-system"
  create_namespace = true
  repository       = "https://ray-project.github.io/kuberay-helm/"
  chart            = "kuberay-operator"
  version          = var.kuberay_operator_chart_version
  wait             = true
}

# --- NVIDIA device plugin (advertises nvidia.com/gpu on GPU nodes) ---------------------
resource "helm_release" "nvidia_device_plugin" {
  name             = "nvidia-device-plugin"
  namespace        = "nvidia-device-plugin"
  create_namespace = true
  repository       = "https://nvidia.github.io/k8s-device-plugin"
  chart            = "nvidia-device-plugin"
  version          = var.nvidia_device_plugin_chart_version

  values = [yamlencode({
    nodeSelector = { "workload-type" = "gpu-inference" }
    tolerations  = [{ key = "nvidia.com/gpu", operator = "Exists", effect = "NoSchedule" }]
  })]
}

# --- app-credentials: connection strings for the Ray pods (envFrom) --------------------
data "aws_secretsmanager_secret_version" "aurora_master" {
  secret_id = var.aurora_master_user_secret_arn
}

data "aws_secretsmanager_secret_version" "redis_auth" {
  secret_id = var.redis_auth_token_secret_arn
}

locals {
  aurora_creds = jsondecode(data.aws_secretsmanager_secret_version.aurora_master.secret_string)
  redis_token  = data.aws_secretsmanager_secret_version.redis_auth.secret_string
  redis_host   = "${var.redis_endpoint}:${var.redis_port}"
}

resource "kubernetes_namespace_v1" "app" {
  metadata {
    name = var.app_namespace
  }
}

resource "kubernetes_secret_v1" "app_credentials" {
  metadata {
    name      = "app-credentials"
    namespace = kubernetes_namespace_v1.app.metadata[0].name
  }

  # rediss:// and sslmode=require: both servers refuse plaintext connections.
  data = {
    DATABASE_URL = "postgresql://${urlencode(local.aurora_creds.username)}:${urlencode(local.aurora_creds.password)}@${var.aurora_endpoint}:${var.aurora_port}/${var.aurora_database_name}?sslmode=require"
    REDIS_URL    = "rediss://:${urlencode(local.redis_token)}@${local.redis_host}/${var.redis_app_db}"
    # No "/<db>" suffix: Ray 2.60 cannot select a logical db (its address
    # parser takes "6379/1" as the port). KubeRay namespaces GCS keys by the
    # RayCluster's UID instead, so they never meet the app's cache keys.
    RAY_REDIS_ADDRESS  = "rediss://${local.redis_host}"
    RAY_REDIS_PASSWORD = local.redis_token
  }
}
