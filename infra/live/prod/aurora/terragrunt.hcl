include "root" {
  path = find_in_parent_folders("root.hcl")
}

locals {
  env = read_terragrunt_config(find_in_parent_folders("env.hcl")).locals
}

terraform {
  source = "../../../modules//aurora"
}

dependency "network" {
  config_path = "../network"

  mock_outputs = {
    vpc_id              = "vpc-00000000000000000"
    database_subnet_ids = ["subnet-00000000000000003", "subnet-00000000000000004"]
  }
  mock_outputs_allowed_terraform_commands = ["init", "validate", "plan"]
}

dependency "eks" {
  config_path = "../eks"

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
