variable "domain_name" {
  description = "Public hostname of the service (the Gateway's HTTPS listener, the ALB's DNS alias)."
  type        = string

  validation {
    condition     = can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]{2,}$", var.domain_name))
    error_message = "domain_name must be a lowercase DNS name such as qa.example.com."
  }
}

variable "route53_zone_id" {
  description = "Route53 hosted zone that serves domain_name: DNS validation records and the ALB alias go there."
  type        = string

  validation {
    condition     = can(regex("^Z[A-Z0-9]{1,31}$", var.route53_zone_id))
    error_message = "route53_zone_id must be a Route53 hosted zone id (Z...)."
  }
}

variable "existing_certificate_arn" {
  description = "An issued ACM certificate for domain_name to use instead of requesting one (empty: request and DNS-validate a new one)."
  type        = string
  default     = ""

  validation {
    condition     = var.existing_certificate_arn == "" || can(regex("^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/[0-9a-f-]{36}$", var.existing_certificate_arn))
    error_message = "existing_certificate_arn must be an ACM certificate ARN."
  }
}
