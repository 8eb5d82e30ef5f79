variable "name" {
  description = "Name prefix for every resource."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the database."
  type        = string
}

variable "database_subnet_ids" {
  description = "Isolated database subnets (two AZs)."
  type        = list(string)
}

variable "node_security_group_id" {
  description = "EKS node security group: the only source allowed on 5432."
  type        = string
}

variable "engine_version" {
  description = "Aurora PostgreSQL engine version (major 17)."
  type        = string
  default     = "17.4"

  validation {
    condition     = startswith(var.engine_version, "17.")
    error_message = "The parameter group family is aurora-postgresql17: keep the engine on major 17."
  }
}

variable "database_name" {
  description = "Initial database created in the cluster."
  type        = string
  default     = "qa"
}

variable "master_username" {
  description = "Master user; its password is generated and rotated by Secrets Manager."
  type        = string
  default     = "qa_admin"
}

variable "min_capacity" {
  description = "Serverless v2 minimum ACUs."
  type        = number
  default     = 0.5
}

variable "max_capacity" {
  description = "Serverless v2 maximum ACUs."
  type        = number
  default     = 1
}

variable "instance_count" {
  description = "Number of db.serverless instances (1 writer + readers in other AZs)."
  type        = number
  default     = 1
}

variable "backup_retention_days" {
  description = "Automated backup retention in days."
  type        = number
  default     = 7
}

variable "deletion_protection" {
  description = "Block deletion of the cluster (on in prod)."
  type        = bool
  default     = true
}

variable "skip_final_snapshot" {
  description = "Skip the final snapshot on destroy (only for throw-away environments)."
  type        = bool
  default     = false
}
