# Shared configuration of the network unit, included by <env>/network/terragrunt.hcl
# (test and prod). Terragrunt evaluates this file in the context of the
# including unit: find_in_parent_folders() and get_terragrunt_dir() start from
# <env>/network, so env.hcl is that environment's and dependency paths are
# siblings of the unit. Per-environment values belong in <env>/env.hcl.
locals {
  env = read_terragrunt_config(find_in_parent_folders("env.hcl")).locals
}

terraform {
  source = "${dirname(find_in_parent_folders("root.hcl"))}/../modules//network"
}

inputs = {
  name               = local.env.name
  cluster_name       = local.env.name
  azs                = local.env.azs
  vpc_cidr           = local.env.vpc_cidr
  single_nat_gateway = local.env.single_nat_gateway
}
