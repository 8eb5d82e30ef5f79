variable "name" {
  description = "Name prefix for every resource (e.g. qa-test)."
  type        = string
}

variable "vpc_cidr" {
  description = "IPv4 CIDR of the VPC; a /16 leaves room for the /20 node subnets."
  type        = string
  default     = "10.0.0.0/16"
}

variable "azs" {
  description = "Availability zones to spread subnets over (exactly two)."
  type        = list(string)

  validation {
    condition     = length(var.azs) == 2
    error_message = "Exactly two availability zones are expected."
  }
}

variable "single_nat_gateway" {
  description = "One shared NAT gateway (cheap, test) instead of one per AZ (resilient, prod)."
  type        = bool
  default     = false
}

variable "cluster_name" {
  description = "EKS cluster name, used for the kubernetes.io/cluster/<name> subnet tags."
  type        = string
}

variable "flow_log_retention_days" {
  description = "CloudWatch retention of VPC flow logs in days."
  type        = number
  default     = 365
}
