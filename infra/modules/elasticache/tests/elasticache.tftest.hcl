mock_provider "aws" {
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_secretsmanager_random_password" {
    defaults = { random_password = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" }
  }
}

variables {
  name                   = "qa-test"
  vpc_id                 = "vpc-0123456789abcdef0"
  database_subnet_ids    = ["subnet-aaaa", "subnet-bbbb"]
  node_security_group_id = "sg-0node"
}

run "encryption_and_auth" {
  command = plan

  assert {
    condition     = aws_elasticache_replication_group.this.transit_encryption_enabled && aws_elasticache_replication_group.this.at_rest_encryption_enabled
    error_message = "Redis must encrypt in transit and at rest."
  }

  assert {
    condition     = nonsensitive(aws_elasticache_replication_group.this.auth_token != null && length(aws_elasticache_replication_group.this.auth_token) >= 16)
    error_message = "Redis must require an AUTH token."
  }

  assert {
    condition     = startswith(aws_elasticache_replication_group.this.engine_version, "7.1")
    error_message = "Engine must be Redis 7.1."
  }
}

run "sg_only_from_nodes" {
  command = plan

  assert {
    condition     = alltrue([for r in aws_security_group.this.ingress : r.from_port == 6379 && r.to_port == 6379 && r.security_groups == toset(["sg-0node"])])
    error_message = "Redis must only admit the node security group on 6379."
  }

  assert {
    condition     = alltrue([for r in aws_security_group.this.ingress : length(coalesce(r.cidr_blocks, [])) == 0 && length(coalesce(r.ipv6_cidr_blocks, [])) == 0])
    error_message = "Redis must not be open to any CIDR."
  }
}

run "multi_az_in_prod" {
  command = plan

  variables {
    num_cache_clusters = 2
  }

  assert {
    condition     = aws_elasticache_replication_group.this.multi_az_enabled && aws_elasticache_replication_group.this.automatic_failover_enabled
    error_message = "Two or more nodes must enable Multi-AZ failover."
  }
}
