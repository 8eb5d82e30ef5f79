# Shared configuration of the eks unit, included by <env>/eks/terragrunt.hcl
# (test and prod). Terragrunt evaluates this file in the context of the
# including unit: find_in_parent_folders() and get_terragrunt_dir() start from
# <env>/eks, so env.hcl is that environment's and dependency paths are
# siblings of the unit. Per-environment values belong in <env>/env.hcl.
locals {
  env = read_terragrunt_config(find_in_parent_folders("env.hcl")).locals
}

terraform {
  source = "${dirname(find_in_parent_folders("root.hcl"))}/../modules//eks"
}

dependency "network" {
  config_path = "${get_terragrunt_dir()}/../network"

  mock_outputs = {
    vpc_id             = "vpc-00000000000000000"
    private_subnet_ids = ["subnet-00000000000000001", "subnet-00000000000000002"]
  }
  mock_outputs_allowed_terraform_commands = ["init", "validate", "plan"]
}

inputs = {
  name                = local.env.name
  vpc_id              = dependency.network.outputs.vpc_id
  private_subnet_ids  = dependency.network.outputs.private_subnet_ids
  public_access_cidrs = local.env.api_public_access_cidrs
  system_node_group   = local.env.system_node_group

  cluster_admin_role_arns = local.env.cluster_admin_role_arns
}
