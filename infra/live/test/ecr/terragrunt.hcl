include "root" {
  path = find_in_parent_folders("root.hcl")
}

locals {
  env = read_terragrunt_config(find_in_parent_folders("env.hcl")).locals
}

terraform {
  source = "../../../modules//ecr"
}

inputs = {
  name         = local.env.name
  force_delete = !local.env.deletion_protection
}
