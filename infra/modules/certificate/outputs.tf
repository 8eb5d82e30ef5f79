output "certificate_arn" {
  description = "ARN of the issued ACM certificate for domain_name."
  value       = local.request ? aws_acm_certificate_validation.this[0].certificate_arn : var.existing_certificate_arn
}

output "domain_name" {
  description = "Public hostname of the service."
  value       = var.domain_name
}

output "route53_zone_id" {
  description = "Hosted zone of domain_name (for the ALB alias record)."
  value       = var.route53_zone_id
}
