variable "name" {
  description = "Cluster name; also the prefix of every resource."
  type        = string
}

variable "kubernetes_version" {
  description = "EKS Kubernetes minor version."
  type        = string
  default     = "1.35"
}

variable "vpc_id" {
  description = "VPC that hosts the cluster."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets for the control-plane ENIs and all nodes."
  type        = list(string)

  validation {
    condition     = length(var.private_subnet_ids) >= 2
    error_message = "EKS needs subnets in at least two AZs."
  }
}

variable "public_access_cidrs" {
  description = "CIDRs allowed to reach the public API endpoint; empty disables the public endpoint entirely."
  type        = list(string)
  default     = []

  validation {
    condition     = !contains(var.public_access_cidrs, "0.0.0.0/0")
    error_message = "The public API endpoint must be allow-listed, not open to 0.0.0.0/0."
  }
}

variable "system_node_group" {
  description = "The managed node group of the system pods (Karpenter, CoreDNS, controllers, KubeRay operator, Ray head); the Ray workers run on Karpenter's nodes. Size it for two Ray heads at once (a NewCluster upgrade) plus two Karpenter replicas on separate nodes."
  type = object({
    instance_types = list(string)
    min_size       = number
    max_size       = number
    desired_size   = number
    disk_size_gb   = optional(number, 50)
  })

  validation {
    condition     = var.system_node_group.min_size >= 2
    error_message = "Karpenter's chart runs 2 replicas with a required hostname anti-affinity: the system group needs >= 2 nodes."
  }
}

variable "log_retention_days" {
  description = "Retention of the control-plane log group in days."
  type        = number
  default     = 365
}

variable "vpc_cni_addon_version" {
  description = "Pinned vpc-cni EKS add-on version (its enableNetworkPolicy setting is checked against that upstream release)."
  type        = string
  default     = "v1.21.1-eksbuild.1"
}

variable "cluster_admin_role_arns" {
  description = "IAM roles (a team's, CI's) given cluster-admin access entries; the cluster creator's bootstrap access alone locks everyone else out."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.cluster_admin_role_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$", a))])
    error_message = "cluster_admin_role_arns must be IAM role ARNs."
  }
}
