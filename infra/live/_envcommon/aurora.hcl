# Shared configuration of the aurora unit, included by <env>/aurora/terragrunt.hcl
# (test and prod). Terragrunt evaluates this file in the context of the
# including unit: find_in_parent_folders() and get_terragrunt_dir() start from
# <env>/aurora, so env.hcl is that environment's and dependency paths are
# siblings of the unit. Per-environment values belong in <env>/env.hcl.
locals {
  env = read_terragrunt_config(find_in_parent_folders("env.hcl")).locals
}

terraform {
  source = "${dirname(find_in_parent_folders("root.hcl"))}/../modules//aurora"
}

dependency "network" {
  config_path = "${get_terragrunt_dir()}/../network"

  mock_outputs = {
    vpc_id              = "vpc-00000000000000000"
    database_subnet_ids = ["subnet-00000000000000003", "subnet-00000000000000004"]
  }
  mock_outputs_allowed_terraform_commands = ["init", "validate", "plan"]
}

dependency "eks" {
  config_path = "${get_terragrunt_dir()}/../eks"

  mock_outputs = {
    node_security_group_id = "sg-00000000000000000"
  }
  mock_outputs_allowed_terraform_commands = ["init", "validate", "plan"]
}

inputs = {
  name                   = local.env.name
  vpc_id                 = dependency.network.outputs.vpc_id
  database_subnet_ids    = dependency.network.outputs.database_subnet_ids
  node_security_group_id = dependency.eks.outputs.node_security_group_id
  min_capacity           = local.env.aurora_min_acu
  max_capacity           = local.env.aurora_max_acu
  instance_count         = local.env.aurora_instance_count
  deletion_protection    = local.env.deletion_protection
  skip_final_snapshot    = !local.env.deletion_protection
}
