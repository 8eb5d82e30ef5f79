include "root" {
  path = find_in_parent_folders("root.hcl")
}

locals {
  env = read_terragrunt_config(find_in_parent_folders("env.hcl")).locals
}

terraform {
  source = "../../../modules//network"
}

inputs = {
  name               = local.env.name
  cluster_name       = local.env.name
  azs                = local.env.azs
  vpc_cidr           = local.env.vpc_cidr
  single_nat_gateway = local.env.single_nat_gateway
}
