# Shared configuration of the k8s-addons unit, included by <env>/k8s-addons/terragrunt.hcl
# (test and prod). Terragrunt evaluates this file in the context of the
# including unit: find_in_parent_folders() and get_terragrunt_dir() start from
# <env>/k8s-addons, so env.hcl is that environment's and dependency paths are
# siblings of the unit. Per-environment values belong in <env>/env.hcl.
locals {
  env = read_terragrunt_config(find_in_parent_folders("env.hcl")).locals
}

terraform {
  source = "${dirname(find_in_parent_folders("root.hcl"))}/../modules//k8s-addons"
}

# Mocks that mirror the environment (its CIDR, names, hostname), so a plan on an empty
# account and the dry run (infra/scripts/dry_run.sh) see what the real outputs will be.
dependency "network" {
  config_path = "${get_terragrunt_dir()}/../network"

  mock_outputs = {
    vpc_id   = "vpc-00000000000000000"
    vpc_cidr = local.env.vpc_cidr
  }
  mock_outputs_allowed_terraform_commands = ["init", "validate", "plan"]
}

dependency "eks" {
  config_path = "${get_terragrunt_dir()}/../eks"

  mock_outputs = {
    cluster_name                      = local.env.name
    lb_controller_role_arn            = "arn:aws:iam::000000000000:role/mock"
    system_node_labels                = { "workload-type" = "system" }
    karpenter_controller_role_arn     = "arn:aws:iam::000000000000:role/${local.env.name}-karpenter-controller"
    karpenter_interruption_queue_name = local.env.name
  }
  mock_outputs_allowed_terraform_commands = ["init", "validate", "plan"]
}

dependency "aurora" {
  config_path = "${get_terragrunt_dir()}/../aurora"

  mock_outputs = {
    cluster_endpoint       = "mock.cluster.us-east-1.rds.amazonaws.com"
    port                   = 5432
    database_name          = "qa"
    master_user_secret_arn = "arn:aws:secretsmanager:us-east-1:000000000000:secret:mock-aurora"
    kms_key_arn            = "arn:aws:kms:us-east-1:000000000000:key/00000000-0000-0000-0000-000000000000"
  }
  mock_outputs_allowed_terraform_commands = ["init", "validate", "plan"]
}

dependency "elasticache" {
  config_path = "${get_terragrunt_dir()}/../elasticache"

  mock_outputs = {
    primary_endpoint      = "mock.cache.amazonaws.com"
    port                  = 6379
    auth_token_secret_arn = "arn:aws:secretsmanager:us-east-1:000000000000:secret:mock-redis"
  }
  mock_outputs_allowed_terraform_commands = ["init", "validate", "plan"]
}

dependency "ecr" {
  config_path = "${get_terragrunt_dir()}/../ecr"

  mock_outputs = {
    repository_urls = {
      ray-cpu = "000000000000.dkr.ecr.${local.env.region}.amazonaws.com/${local.env.name}/ray-cpu"
      ray-gpu = "000000000000.dkr.ecr.${local.env.region}.amazonaws.com/${local.env.name}/ray-gpu"
    }
  }
  mock_outputs_allowed_terraform_commands = ["init", "validate", "plan"]
}

dependency "certificate" {
  config_path = "${get_terragrunt_dir()}/../certificate"

  mock_outputs = {
    certificate_arn = "arn:aws:acm:us-east-1:000000000000:certificate/00000000-0000-0000-0000-000000000000"
    domain_name     = local.env.domain_name
    route53_zone_id = local.env.route53_zone_id
  }
  mock_outputs_allowed_terraform_commands = ["init", "validate", "plan"]
}

inputs = {
  region                        = local.env.region
  vpc_id                        = dependency.network.outputs.vpc_id
  cluster_name                  = dependency.eks.outputs.cluster_name
  lb_controller_role_arn        = dependency.eks.outputs.lb_controller_role_arn
  aurora_endpoint               = dependency.aurora.outputs.cluster_endpoint
  aurora_port                   = dependency.aurora.outputs.port
  aurora_database_name          = dependency.aurora.outputs.database_name
  aurora_master_user_secret_arn = dependency.aurora.outputs.master_user_secret_arn
  redis_endpoint                = dependency.elasticache.outputs.primary_endpoint
  redis_port                    = dependency.elasticache.outputs.port
  redis_auth_token_secret_arn   = dependency.elasticache.outputs.auth_token_secret_arn
  aurora_kms_key_arn            = dependency.aurora.outputs.kms_key_arn

  # Karpenter and the system node group, from the eks unit (names tied by tests/infra).
  system_node_labels                = dependency.eks.outputs.system_node_labels
  karpenter_controller_role_arn     = dependency.eks.outputs.karpenter_controller_role_arn
  karpenter_interruption_queue_name = dependency.eks.outputs.karpenter_interruption_queue_name

  # For kuberay/scripts/release.py (terragrunt output -json deploy_values).
  deploy_values = {
    environment     = local.env.environment
    region          = local.env.region
    cluster_name    = dependency.eks.outputs.cluster_name
    vpc_cidr        = dependency.network.outputs.vpc_cidr
    repository_urls = dependency.ecr.outputs.repository_urls
    certificate_arn = dependency.certificate.outputs.certificate_arn
    domain_name     = dependency.certificate.outputs.domain_name
    route53_zone_id = dependency.certificate.outputs.route53_zone_id
  }
}
