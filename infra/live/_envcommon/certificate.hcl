# Shared configuration of the certificate unit, included by <env>/certificate/terragrunt.hcl
# (test and prod). Per-environment values belong in <env>/env.hcl.
locals {
  env = read_terragrunt_config(find_in_parent_folders("env.hcl")).locals
}

terraform {
  source = "${dirname(find_in_parent_folders("root.hcl"))}/../modules//certificate"
}

inputs = {
  domain_name              = local.env.domain_name
  route53_zone_id          = local.env.route53_zone_id
  existing_certificate_arn = local.env.existing_certificate_arn
}
