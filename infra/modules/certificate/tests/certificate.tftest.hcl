mock_provider "aws" {
  mock_resource "aws_acm_certificate" {
    defaults = {
      arn = "arn:aws:acm:us-east-1:123456789012:certificate/11111111-2222-3333-4444-555555555555"
      domain_validation_options = [{
        domain_name           = "qa.example.com"
        resource_record_name  = "_abc.qa.example.com."
        resource_record_type  = "CNAME"
        resource_record_value = "_xyz.acm-validations.aws."
      }]
    }
  }
}

variables {
  domain_name     = "qa.example.com"
  route53_zone_id = "Z0123456789ABCDEFGHIJ"
}

run "requests_a_dns_validated_certificate" {
  command = plan

  assert {
    condition     = aws_acm_certificate.this[0].domain_name == "qa.example.com" && aws_acm_certificate.this[0].validation_method == "DNS"
    error_message = "A new certificate must be requested for domain_name and validated by DNS."
  }

  assert {
    condition     = length(aws_acm_certificate_validation.this) == 1
    error_message = "Apply must wait for the certificate to be issued."
  }
}

run "validation_records_go_to_the_zone" {
  command = apply

  assert {
    condition     = alltrue([for r in aws_route53_record.validation : r.zone_id == "Z0123456789ABCDEFGHIJ"])
    error_message = "DNS validation records must be created in route53_zone_id."
  }

  assert {
    condition     = output.certificate_arn == "arn:aws:acm:us-east-1:123456789012:certificate/11111111-2222-3333-4444-555555555555"
    error_message = "certificate_arn must be the validated certificate."
  }
}

run "existing_certificate_is_passed_through" {
  command = plan

  variables {
    existing_certificate_arn = "arn:aws:acm:us-east-1:123456789012:certificate/aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
  }

  assert {
    condition     = length(aws_acm_certificate.this) == 0 && output.certificate_arn == "arn:aws:acm:us-east-1:123456789012:certificate/aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    error_message = "An existing certificate ARN must be used as is, with nothing requested."
  }
}

run "placeholder_certificate_arn_is_refused" {
  command = plan

  variables {
    existing_certificate_arn = "arn:aws:acm:REGION:ACCOUNT:certificate/SET-IN-OVERLAY"
  }

  expect_failures = [var.existing_certificate_arn]
}
