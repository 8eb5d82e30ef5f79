# Shared configuration of the ecr unit, included by <env>/ecr/terragrunt.hcl
# (test and prod). Terragrunt evaluates this file in the context of the
# including unit: find_in_parent_folders() and get_terragrunt_dir() start from
# <env>/ecr, so env.hcl is that environment's and dependency paths are
# siblings of the unit. Per-environment values belong in <env>/env.hcl.
locals {
  env = read_terragrunt_config(find_in_parent_folders("env.hcl")).locals
}

terraform {
  source = "${dirname(find_in_parent_folders("root.hcl"))}/../modules//ecr"
}

inputs = {
  name         = local.env.name
  force_delete = !local.env.deletion_protection
}
