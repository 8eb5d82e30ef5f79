# test: CPU-only serving, smallest sizes, one NAT, nothing protected from destroy.
locals {
  project     = "qa"
  environment = "test"
  name        = "qa-test"
  region      = "us-east-1"
  azs         = ["us-east-1a", "us-east-1b"]
  vpc_cidr    = "10.20.0.0/16"

  single_nat_gateway  = true
  deletion_protection = false

  # Operators' egress ranges; replace before the first apply.
  api_public_access_cidrs = ["203.0.113.0/24"]

  # Set by the operator's environment at plan/apply time (docs/deploy-eks.md); the
  # defaults only serve offline plans. QA_DOMAIN must lie in the Route53 zone
  # QA_ROUTE53_ZONE_ID; QA_CERTIFICATE_ARN (optional) reuses an issued certificate.
  domain_name              = get_env("QA_DOMAIN", "qa-test.example.com")
  route53_zone_id          = get_env("QA_ROUTE53_ZONE_ID", "Z00000000000000000000")
  existing_certificate_arn = get_env("QA_CERTIFICATE_ARN", "")
  # Team/CI roles with cluster-admin access entries (comma-separated ARNs).
  cluster_admin_role_arns = compact(split(",", get_env("QA_ADMIN_ROLE_ARNS", "")))

  # System pods only (Karpenter x2, CoreDNS, controllers, KubeRay operator, the Ray head; two
  # heads during a NewCluster upgrade). Ray workers run on Karpenter's nodes
  # (kuberay/components/karpenter), GPU ones from zero.
  system_node_group = { instance_types = ["m6i.xlarge"], min_size = 2, max_size = 3, desired_size = 2 }

  aurora_min_acu        = 0.5
  aurora_max_acu        = 1
  aurora_instance_count = 1

  redis_node_type          = "cache.t4g.micro"
  redis_num_cache_clusters = 1

  tags = {
    Project     = "qa"
    Environment = "test"
    ManagedBy   = "terragrunt"
  }
}
