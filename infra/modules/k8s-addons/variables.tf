variable "region" {
  description = "AWS region of the cluster."
  type        = string
}

variable "cluster_name" {
  description = "EKS cluster name."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the cluster (given to the LB controller: pods cannot reach IMDS)."
  type        = string
}

variable "lb_controller_role_arn" {
  description = "IRSA role ARN for the AWS Load Balancer Controller."
  type        = string
}

variable "lb_controller_version" {
  description = "AWS Load Balancer Controller version: the chart version and the controller's tag (chart 3.5.0 is appVersion v3.5.0; ALB HTTPRoute support is GA from v3.0)."
  type        = string
  default     = "3.5.0"

  validation {
    condition     = can(regex("^3\\.[0-9]+\\.[0-9]+$", var.lb_controller_version))
    error_message = "Use a 3.x controller: chart 1.13.x is controller v2.13, which has no ALB Gateway API support."
  }
}

variable "gateway_api_version" {
  description = "Gateway API release whose standard-channel CRDs are installed (the controller v3.5 is built for v1.6)."
  type        = string
  default     = "v1.6.1"

  validation {
    condition     = can(regex("^v1\\.([5-9]|[1-9][0-9])\\.[0-9]+$", var.gateway_api_version))
    error_message = "Gateway API must be >= v1.5 for the 3.x controller."
  }
}

variable "kuberay_operator_chart_version" {
  description = "KubeRay operator Helm chart version."
  type        = string
  default     = "1.7.0"
}

variable "nvidia_device_plugin_chart_version" {
  description = "NVIDIA device plugin Helm chart version (values/nvidia-device-plugin.yaml is checked against its values.yaml)."
  type        = string
  default     = "0.20.0"
}

variable "app_namespace" {
  description = "Namespace of the Ray Serve application, where app-credentials is created."
  type        = string
  default     = "qa"
}

variable "aurora_endpoint" {
  description = "Aurora writer endpoint."
  type        = string
}

variable "aurora_port" {
  description = "Aurora port."
  type        = number
}

variable "aurora_database_name" {
  description = "Application database name."
  type        = string
}

variable "aurora_master_user_secret_arn" {
  description = "Secrets Manager secret with the Aurora master credentials."
  type        = string
}

variable "redis_endpoint" {
  description = "ElastiCache primary endpoint."
  type        = string
}

variable "redis_port" {
  description = "ElastiCache port."
  type        = number
}

variable "redis_auth_token_secret_arn" {
  description = "Secrets Manager secret with the Redis AUTH token."
  type        = string
}

variable "redis_app_db" {
  description = "Redis logical db of the application cache."
  type        = number
  default     = 0
}


variable "deploy_values" {
  description = "What the applied kuberay overlay needs from infra (ECR repositories, certificate, hostname, VPC CIDR), handed out unchanged as the deploy_values output for kuberay/scripts/release.py."
  type = object({
    environment     = string
    region          = string
    cluster_name    = string
    vpc_cidr        = string
    repository_urls = map(string)
    certificate_arn = string
    domain_name     = string
    route53_zone_id = string
  })
}

variable "system_node_labels" {
  description = "Labels of the system node group (eks output): the nodeSelector of Karpenter, the LB controller and the KubeRay operator, which also tolerate its CriticalAddonsOnly taint."
  type        = map(string)
}

variable "karpenter_version" {
  description = "Karpenter version: the OCI chart version and the git tag its CRDs are applied from (NodePools/EC2NodeClasses are validated against ../shared/crds/karpenter-v1.14.1)."
  type        = string
  default     = "1.14.1"
}

variable "karpenter_controller_role_arn" {
  description = "IRSA role of the Karpenter controller (eks output)."
  type        = string
}

variable "karpenter_interruption_queue_name" {
  description = "SQS interruption queue (eks output): the chart's settings.interruptionQueue."
  type        = string
}

variable "secrets_store_provider_aws_chart_version" {
  description = "secrets-store-csi-driver-provider-aws chart version (installs the Secrets Store CSI driver 1.5.3 as its subchart, rotation on)."
  type        = string
  default     = "2.1.1"
}

variable "db_password_provider_class" {
  description = "Name of the SecretProviderClass that mounts the Aurora password (kuberay/ references it)."
  type        = string
  default     = "aurora-password"
}

variable "app_service_account" {
  description = "Service account of the Ray pods, bound to the role that may read the Aurora secret."
  type        = string
  default     = "qa-ray"
}

variable "aurora_kms_key_arn" {
  description = "KMS key that encrypts the Aurora master secret (aurora output)."
  type        = string
}
