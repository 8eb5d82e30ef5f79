# The HTTPS certificate of the service's hostname: an ACM certificate validated by
# DNS in the given Route53 zone, or an existing ACM certificate passed in. Its ARN
# reaches the Gateway through k8s-addons' deploy_values output and the applied
# overlay (kuberay/scripts/release.py); nothing in kuberay/ carries a literal ARN.

locals {
  request = var.existing_certificate_arn == ""
  validation = local.request ? {
    for o in aws_acm_certificate.this[0].domain_validation_options : o.domain_name => o
  } : {}
}

resource "aws_acm_certificate" "this" {
  count = local.request ? 1 : 0

  domain_name       = var.domain_name
  validation_method = "DNS"

  lifecycle {
    create_before_destroy = true
  }
}

# Keyed by the (known) domain name: the validation options are only known after apply.
resource "aws_route53_record" "validation" {
  for_each = local.request ? toset([var.domain_name]) : toset([])

  zone_id         = var.route53_zone_id
  name            = local.validation[each.key].resource_record_name
  type            = local.validation[each.key].resource_record_type
  records         = [local.validation[each.key].resource_record_value]
  ttl             = 300
  allow_overwrite = true
}

# Apply waits here until ACM has issued the certificate, so the ALB never gets a
# pending one.
resource "aws_acm_certificate_validation" "this" {
  count = local.request ? 1 : 0

  certificate_arn         = aws_acm_certificate.this[0].arn
  validation_record_fqdns = [for r in aws_route53_record.validation : r.fqdn]
}
