# prod: same units as test; differs only by these values (sizes,
# NAT per AZ, deletion protection).
locals {
  project     = "qa"
  environment = "prod"
  name        = "qa-prod"
  region      = "us-east-1"
  azs         = ["us-east-1a", "us-east-1b"]
  vpc_cidr    = "10.30.0.0/16"

  single_nat_gateway  = false
  deletion_protection = true

  # Operators' egress ranges; replace before the first apply.
  api_public_access_cidrs = ["203.0.113.0/24"]

  # Set by the operator's environment at plan/apply time (docs/deploy-eks.md); the
  # defaults only serve offline plans. QA_DOMAIN must lie in the Route53 zone
  # QA_ROUTE53_ZONE_ID; QA_CERTIFICATE_ARN (optional) reuses an issued certificate.
  domain_name              = get_env("QA_DOMAIN", "qa.example.com")
  route53_zone_id          = get_env("QA_ROUTE53_ZONE_ID", "Z00000000000000000000")
  existing_certificate_arn = get_env("QA_CERTIFICATE_ARN", "")
  # Team/CI roles with cluster-admin access entries (comma-separated ARNs).
  cluster_admin_role_arns = compact(split(",", get_env("QA_ADMIN_ROLE_ARNS", "")))

  # System pods only (Karpenter x2, CoreDNS, controllers, KubeRay operator, the Ray head; two
  # heads during a NewCluster upgrade). Ray workers run on Karpenter's nodes
  # (kuberay/components/karpenter), GPU ones from zero.
  system_node_group = { instance_types = ["m6i.xlarge"], min_size = 3, max_size = 4, desired_size = 3 }

  aurora_min_acu        = 0.5
  aurora_max_acu        = 8
  aurora_instance_count = 2

  redis_node_type          = "cache.m7g.large"
  redis_num_cache_clusters = 2

  tags = {
    Project     = "qa"
    Environment = "prod"
    ManagedBy   = "terragrunt"
  }
}
