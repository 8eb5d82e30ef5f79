include "root" {
  path = find_in_parent_folders("root.hcl")
}

locals {
  env = read_terragrunt_config(find_in_parent_folders("env.hcl")).locals
}

terraform {
  source = "../../../modules//eks"
}

dependency "network" {
  config_path = "../network"

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
  cpu_node_group      = local.env.cpu_node_group
  gpu_node_group      = local.env.gpu_node_group
}
