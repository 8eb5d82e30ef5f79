variable "name" {
  description = "Name prefix for every resource."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the cache."
  type        = string
}

variable "database_subnet_ids" {
  description = "Isolated subnets for the cache nodes (two AZs)."
  type        = list(string)
}

variable "node_security_group_id" {
  description = "EKS node security group: the only source allowed on 6379."
  type        = string
}

variable "node_type" {
  description = "ElastiCache node type."
  type        = string
  default     = "cache.t4g.micro"
}

variable "num_cache_clusters" {
  description = "Primary plus replicas; 2 or more enables Multi-AZ automatic failover."
  type        = number
  default     = 1
}

variable "engine_version" {
  description = "Redis OSS engine version."
  type        = string
  default     = "7.1"
}

variable "snapshot_retention_days" {
  description = "Daily snapshot retention in days."
  type        = number
  default     = 1
}
