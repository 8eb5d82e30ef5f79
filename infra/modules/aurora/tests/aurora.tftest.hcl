mock_provider "aws" {
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
}

variables {
  name                   = "qa-test"
  vpc_id                 = "vpc-0123456789abcdef0"
  database_subnet_ids    = ["subnet-aaaa", "subnet-bbbb"]
  node_security_group_id = "sg-0node"
}

run "tls_and_encryption" {
  command = plan

  assert {
    condition     = anytrue([for p in aws_rds_cluster_parameter_group.this.parameter : p.name == "rds.force_ssl" && p.value == "1"])
    error_message = "rds.force_ssl=1 must be set so that only TLS connections are accepted."
  }

  assert {
    condition     = aws_rds_cluster.this.storage_encrypted && aws_rds_cluster.this.manage_master_user_password
    error_message = "Storage must be encrypted and the master password managed by Secrets Manager."
  }

  assert {
    condition     = aws_rds_cluster.this.engine == "aurora-postgresql" && startswith(aws_rds_cluster.this.engine_version, "17.")
    error_message = "Engine must be Aurora PostgreSQL 17."
  }

  assert {
    condition     = aws_rds_cluster.this.serverlessv2_scaling_configuration[0].min_capacity == 0.5 && aws_rds_cluster.this.serverlessv2_scaling_configuration[0].max_capacity == 1
    error_message = "Test sizing must be Serverless v2 0.5-1 ACU."
  }

  assert {
    condition     = aws_rds_cluster.this.backup_retention_period >= 7 && aws_rds_cluster.this.deletion_protection
    error_message = "Backups and deletion protection must be on by default."
  }

  assert {
    condition     = alltrue([for i in aws_rds_cluster_instance.this : !i.publicly_accessible])
    error_message = "Instances must not be publicly accessible."
  }
}

run "sg_only_from_nodes" {
  command = plan

  assert {
    condition     = alltrue([for r in aws_security_group.this.ingress : r.from_port == 5432 && r.to_port == 5432 && r.security_groups == toset(["sg-0node"])])
    error_message = "Aurora must only admit the node security group on 5432."
  }

  assert {
    condition     = alltrue([for r in aws_security_group.this.ingress : length(coalesce(r.cidr_blocks, [])) == 0 && length(coalesce(r.ipv6_cidr_blocks, [])) == 0])
    error_message = "Aurora must not be open to any CIDR."
  }
}
