variable "region" {
  description = "AWS region of the cluster."
  type        = string
}

variable "cluster_name" {
  description = "EKS cluster name."
  type        = string
}

variable "cluster_endpoint" {
  description = "Kubernetes API endpoint."
  type        = string
}

variable "cluster_certificate_authority_data" {
  description = "Base64 CA bundle of the API server."
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

variable "lb_controller_chart_version" {
  description = "aws-load-balancer-controller Helm chart version (Gateway API support needs >= 1.13)."
  type        = string
  default     = "1.13.0"
}

variable "gateway_api_version" {
  description = "Gateway API release whose standard-channel CRDs are installed."
  type        = string
  default     = "v1.3.0"
}

variable "kuberay_operator_chart_version" {
  description = "KubeRay operator Helm chart version."
  type        = string
  default     = "1.7.0"
}

variable "nvidia_device_plugin_chart_version" {
  description = "NVIDIA device plugin Helm chart version."
  type        = string
  default     = "0.17.1"
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

