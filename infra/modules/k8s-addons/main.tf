# Everything the cluster needs before kuberay/ is applied, in this order:
#   1. CRDs: Gateway API standard channel, then the controller's gateway.k8s.aws kinds
#   2. AWS Load Balancer Controller (chart 3.x: ALB Gateway API support is GA from v3.0)
#   3. GatewayClass aws-alb (controllerName gateway.k8s.aws/alb)
#   4. Karpenter (its CRDs in step 1), KubeRay operator, NVIDIA device plugin, Secrets
#      Store CSI driver + its AWS provider (rotation on)
#   5. namespace + Secret app-credentials (read from Secrets Manager at apply time; the
#      database password is not in it) + SecretProviderClass aurora-password (the file
#      DATABASE_PASSWORD_FILE names, re-synced by the CSI driver)
# Each step is a terraform_data whose provisioner runs addons.sh; a change of its input
# (versions, values, manifests, endpoints) re-runs it. On destroy, pre_destroy runs first
# (it depends on every step): it deletes the RayServices and Gateways while the
# controllers still run and waits until the ALB is gone.

locals {
  script  = "${path.module}/addons.sh"
  cluster = { CLUSTER_NAME = var.cluster_name, REGION = var.region }

  crd_urls = [
    "https://github.com/kubernetes-sigs/gateway-api/releases/download/${var.gateway_api_version}/standard-install.yaml",
    # Chart 3.x ships them in crds/, which helm installs on first install only, never on upgrade.
    "https://raw.githubusercontent.com/kubernetes-sigs/aws-load-balancer-controller/v${var.lb_controller_version}/config/crd/gateway/gateway-crds.yaml",
    # Karpenter's chart ships its CRDs in crds/ too (first install only): applied here so an
    # upgrade of var.karpenter_version upgrades them (the NodePool/EC2NodeClass schemas of
    # ../shared/crds/karpenter-v1.14.1 are these files at the v1.14.1 tag).
    "https://raw.githubusercontent.com/aws/karpenter-provider-aws/v${var.karpenter_version}/pkg/apis/crds/karpenter.sh_nodepools.yaml",
    "https://raw.githubusercontent.com/aws/karpenter-provider-aws/v${var.karpenter_version}/pkg/apis/crds/karpenter.sh_nodeclaims.yaml",
    "https://raw.githubusercontent.com/aws/karpenter-provider-aws/v${var.karpenter_version}/pkg/apis/crds/karpenter.k8s.aws_ec2nodeclasses.yaml",
  ]

  releases = {
    aws-load-balancer-controller = {
      chart     = "aws-load-balancer-controller"
      repo      = "https://aws.github.io/eks-charts"
      version   = var.lb_controller_version
      namespace = "kube-system"
      values = templatefile("${path.module}/values/aws-load-balancer-controller.yaml.tftpl", {
        chart_version = var.lb_controller_version
        cluster_name  = var.cluster_name
        region        = var.region
        vpc_id        = var.vpc_id
        role_arn      = var.lb_controller_role_arn
        node_selector = var.system_node_labels
      })
    }
    # Release name "karpenter" in kube-system => service account kube-system/karpenter
    # (the subject of the controller's IRSA role). OCI chart: no --repo (addons.sh).
    karpenter = {
      chart     = "oci://public.ecr.aws/karpenter/karpenter"
      repo      = ""
      version   = var.karpenter_version
      namespace = "kube-system"
      values = templatefile("${path.module}/values/karpenter.yaml.tftpl", {
        chart_version      = var.karpenter_version
        cluster_name       = var.cluster_name
        region             = var.region
        interruption_queue = var.karpenter_interruption_queue_name
        role_arn           = var.karpenter_controller_role_arn
        node_selector      = var.system_node_labels
      })
    }
    kuberay-operator = {
      chart     = "kuberay-operator"
      repo      = "https://ray-project.github.io/kuberay-helm/"
      version   = var.kuberay_operator_chart_version
      namespace = "kuberay-system"
      values = templatefile("${path.module}/values/kuberay-operator.yaml.tftpl", {
        chart_version = var.kuberay_operator_chart_version
        node_selector = var.system_node_labels
      })
    }
    secrets-store-csi-driver-provider-aws = {
      chart     = "secrets-store-csi-driver-provider-aws"
      repo      = "https://aws.github.io/secrets-store-csi-driver-provider-aws"
      version   = var.secrets_store_provider_aws_chart_version
      namespace = "kube-system"
      values    = file("${path.module}/values/secrets-store-csi-driver-provider-aws.yaml")
    }
    nvidia-device-plugin = {
      chart     = "nvidia-device-plugin"
      repo      = "https://nvidia.github.io/k8s-device-plugin"
      version   = var.nvidia_device_plugin_chart_version
      namespace = "nvidia-device-plugin"
      values    = file("${path.module}/values/nvidia-device-plugin.yaml")
    }
  }
}

# terraform_data runs a create-time provisioner only when it is (re)created, and a
# changed `input` alone updates in place: `triggers_replace` repeats what each step
# applies, so a new version, values file or manifest runs the step again.
resource "terraform_data" "crds" {
  input            = { crd_urls = local.crd_urls }
  triggers_replace = local.crd_urls

  provisioner "local-exec" {
    command     = "${local.script} crds"
    environment = merge(local.cluster, { CRD_URLS = join(" ", local.crd_urls) })
  }
}

resource "terraform_data" "release" {
  for_each = local.releases

  input            = each.value
  triggers_replace = each.value

  provisioner "local-exec" {
    command = "${local.script} helm"
    environment = merge(local.cluster, {
      RELEASE   = each.key
      CHART     = each.value.chart
      REPO      = each.value.repo
      VERSION   = each.value.version
      NAMESPACE = each.value.namespace
      VALUES    = each.value.values
    })
  }

  # The LB controller detects the Gateway kinds once, at start-up.
  depends_on = [terraform_data.crds]
}

resource "terraform_data" "gatewayclass" {
  input            = { manifest = file("${path.module}/manifests/gatewayclass.yaml") }
  triggers_replace = file("${path.module}/manifests/gatewayclass.yaml")

  provisioner "local-exec" {
    command     = "${local.script} manifest"
    environment = merge(local.cluster, { MANIFEST = self.input.manifest })
  }

  depends_on = [terraform_data.release]
}

locals {
  app_credentials_ids = {
    namespace         = var.app_namespace
    aurora_secret_arn = var.aurora_master_user_secret_arn
    aurora_endpoint   = "${var.aurora_endpoint}:${var.aurora_port}/${var.aurora_database_name}"
    redis_secret_arn  = var.redis_auth_token_secret_arn
    redis_endpoint    = "${var.redis_endpoint}:${var.redis_port}/${var.redis_app_db}"
  }
}

resource "terraform_data" "app_credentials" {
  # Identifiers only: the values are read by addons.sh at apply time, so a plan with
  # mock dependency outputs never calls Secrets Manager, and no secret is in the state.
  # Re-read (and re-written) when an identifier changes, or with
  # `terragrunt apply -replace=terraform_data.app_credentials` after a rotation.
  input            = local.app_credentials_ids
  triggers_replace = local.app_credentials_ids

  provisioner "local-exec" {
    command = "${local.script} app-secret"
    environment = merge(local.cluster, {
      APP_NAMESPACE     = var.app_namespace
      AURORA_SECRET_ARN = var.aurora_master_user_secret_arn
      AURORA_ENDPOINT   = var.aurora_endpoint
      AURORA_PORT       = tostring(var.aurora_port)
      AURORA_DATABASE   = var.aurora_database_name
      REDIS_SECRET_ARN  = var.redis_auth_token_secret_arn
      REDIS_ENDPOINT    = var.redis_endpoint
      REDIS_PORT        = tostring(var.redis_port)
      REDIS_APP_DB      = tostring(var.redis_app_db)
    })
  }
}

# The Aurora password as a file in the Ray pods (kuberay/: a CSI volume with this class,
# mounted where DATABASE_PASSWORD_FILE points). The driver re-reads it every
# rotationPollInterval; the provider authenticates as the pod's service account (qa-ray),
# whose Pod Identity role may read exactly this secret (app_identity.tf).
locals {
  secret_provider_class = templatefile("${path.module}/manifests/secretproviderclass.yaml.tftpl", {
    namespace  = var.app_namespace
    name       = var.db_password_provider_class
    region     = var.region
    secret_arn = var.aurora_master_user_secret_arn
  })
}

resource "terraform_data" "secret_provider_class" {
  input            = { manifest = local.secret_provider_class }
  triggers_replace = local.secret_provider_class

  provisioner "local-exec" {
    command     = "${local.script} manifest"
    environment = merge(local.cluster, { MANIFEST = self.input.manifest })
  }

  # The CRD comes with the driver chart; the namespace with app_credentials.
  depends_on = [terraform_data.release, terraform_data.app_credentials]
}

# Destroyed first (it depends on everything above): removes what the controllers built
# in AWS (the ALB, its target groups and security groups) while they still run.
resource "terraform_data" "pre_destroy" {
  input = local.cluster

  provisioner "local-exec" {
    when        = destroy
    command     = "${path.module}/addons.sh pre-destroy"
    environment = self.input
  }

  depends_on = [terraform_data.release, terraform_data.gatewayclass, terraform_data.app_credentials, terraform_data.secret_provider_class]
}
