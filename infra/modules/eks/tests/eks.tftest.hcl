mock_provider "aws" {
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
  mock_data "aws_region" {
    defaults = { name = "us-east-1" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
}

variables {
  name                = "qa-test"
  vpc_id              = "vpc-0123456789abcdef0"
  private_subnet_ids  = ["subnet-aaaa", "subnet-bbbb"]
  public_access_cidrs = ["203.0.113.0/24"]
  system_node_group   = { instance_types = ["m6i.xlarge"], min_size = 2, max_size = 3, desired_size = 2 }
}

run "cluster_hardening" {
  command = plan

  assert {
    condition     = one(aws_eks_cluster.this.encryption_config).resources == toset(["secrets"])
    error_message = "Kubernetes secrets must be envelope-encrypted with KMS."
  }

  assert {
    condition     = aws_kms_key.this.enable_key_rotation
    error_message = "The EKS KMS key must rotate."
  }

  assert {
    condition     = length(aws_eks_cluster.this.enabled_cluster_log_types) == 5
    error_message = "All control-plane log types must be enabled."
  }

  assert {
    condition     = aws_eks_cluster.this.vpc_config[0].endpoint_private_access && aws_eks_cluster.this.vpc_config[0].public_access_cidrs == toset(["203.0.113.0/24"])
    error_message = "API endpoint must be private plus an allow-listed public endpoint."
  }

  assert {
    condition     = aws_eks_cluster.this.vpc_config[0].subnet_ids == toset(var.private_subnet_ids)
    error_message = "The control plane must use the private subnets."
  }
}

run "nodes_private_and_imdsv2" {
  command = plan

  assert {
    condition     = alltrue([for ng in aws_eks_node_group.this : ng.subnet_ids == toset(var.private_subnet_ids)])
    error_message = "Nodes must run in the private subnets only."
  }

  assert {
    condition     = alltrue([for lt in aws_launch_template.node : lt.metadata_options[0].http_tokens == "required" && lt.metadata_options[0].http_put_response_hop_limit == 1])
    error_message = "Nodes must require IMDSv2 with a hop limit of 1."
  }

  assert {
    condition     = alltrue([for lt in aws_launch_template.node : lt.block_device_mappings[0].ebs[0].encrypted == "true"])
    error_message = "Node root volumes must be encrypted."
  }
}

run "system_node_group_only" {
  command = plan

  assert {
    condition     = keys(aws_eks_node_group.this) == ["system"]
    error_message = "The only managed node group is the system group: Ray workers run on Karpenter's nodes."
  }

  assert {
    condition     = anytrue([for t in aws_eks_node_group.this["system"].taint : t.key == "CriticalAddonsOnly" && t.effect == "NO_SCHEDULE"])
    error_message = "System nodes must carry the CriticalAddonsOnly NoSchedule taint (keeps Ray workers off them)."
  }

  assert {
    condition     = aws_eks_node_group.this["system"].labels["workload-type"] == "system"
    error_message = "System nodes must be labelled workload-type=system (the Ray head's nodeSelector)."
  }

  assert {
    condition     = jsondecode(aws_eks_addon.this["coredns"].configuration_values).nodeSelector["workload-type"] == "system"
    error_message = "CoreDNS must run on the system group."
  }
}

run "system_group_needs_two_nodes" {
  command = plan

  variables {
    system_node_group = { instance_types = ["m6i.xlarge"], min_size = 1, max_size = 3, desired_size = 1 }
  }

  expect_failures = [var.system_node_group]
}

run "karpenter_names_and_queue" {
  command = plan

  override_resource {
    target          = aws_eks_cluster.this
    override_during = plan
    values = {
      identity              = [{ oidc = [{ issuer = "https://oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE" }] }]
      certificate_authority = [{ data = "Y2E=" }]
    }
  }

  override_resource {
    target          = aws_iam_openid_connect_provider.this
    override_during = plan
    values          = { arn = "arn:aws:iam::123456789012:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE" }
  }

  override_resource {
    target          = aws_sqs_queue.karpenter_interruption
    override_during = plan
    values          = { arn = "arn:aws:sqs:us-east-1:123456789012:qa-test" }
  }

  assert {
    condition     = aws_iam_role.karpenter_node.name == "qa-test-karpenter-node"
    error_message = "The node role must be <cluster>-karpenter-node: the EC2NodeClasses' spec.role names it."
  }

  assert {
    condition     = aws_sqs_queue.karpenter_interruption.name == "qa-test" && aws_sqs_queue.karpenter_interruption.message_retention_seconds == 300 && aws_sqs_queue.karpenter_interruption.sqs_managed_sse_enabled
    error_message = "The interruption queue is named after the cluster, keeps messages 300 s and is encrypted (upstream v1.14.1)."
  }

  assert {
    condition     = aws_eks_access_entry.karpenter_node.type == "EC2_LINUX"
    error_message = "Karpenter's nodes join through an EC2_LINUX access entry."
  }

  assert {
    condition     = length(aws_cloudwatch_event_target.karpenter) == 5 && alltrue([for t in aws_cloudwatch_event_target.karpenter : t.arn == aws_sqs_queue.karpenter_interruption.arn])
    error_message = "All five interruption rules must target the queue."
  }

  assert {
    condition     = aws_ec2_tag.cluster_sg_discovery.value == "qa-test" && aws_security_group.node.tags["karpenter.sh/discovery"] == "qa-test"
    error_message = "The cluster SG and the node SG carry karpenter.sh/discovery=<cluster>."
  }

  assert {
    condition     = jsondecode(aws_iam_role.karpenter_controller.assume_role_policy).Statement[0].Condition.StringEquals["oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE:sub"] == "system:serviceaccount:kube-system:karpenter"
    error_message = "The controller role must trust only kube-system/karpenter."
  }
}

run "lb_controller_irsa_scope" {
  command = plan

  # Computed issuer/ARN values must be known at plan time to inspect the trust policy.
  override_resource {
    target          = aws_eks_cluster.this
    override_during = plan
    values = {
      identity              = [{ oidc = [{ issuer = "https://oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE" }] }]
      certificate_authority = [{ data = "Y2E=" }]
    }
  }

  override_resource {
    target          = aws_iam_openid_connect_provider.this
    override_during = plan
    values          = { arn = "arn:aws:iam::123456789012:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE" }
  }

  assert {
    condition = jsondecode(aws_iam_role.lb_controller.assume_role_policy).Statement[0].Condition.StringEquals == {
      "oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE:sub" = "system:serviceaccount:kube-system:aws-load-balancer-controller"
      "oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE:aud" = "sts.amazonaws.com"
    }
    error_message = "The LB controller role must only be assumable by its own service account."
  }
}

run "public_endpoint_must_be_allow_listed" {
  command = plan

  variables {
    public_access_cidrs = ["0.0.0.0/0"]
  }

  expect_failures = [var.public_access_cidrs]
}

run "network_policy_enforcement" {
  command = plan

  assert {
    condition     = try(jsondecode(aws_eks_addon.this["vpc-cni"].configuration_values).enableNetworkPolicy, "") == "true"
    error_message = "The vpc-cni add-on must enable NetworkPolicy enforcement (enableNetworkPolicy = \"true\")."
  }

  assert {
    condition     = aws_eks_addon.this["vpc-cni"].addon_version == var.vpc_cni_addon_version
    error_message = "The vpc-cni add-on version must be pinned."
  }
}

run "team_and_ci_access_entries" {
  command = plan

  variables {
    cluster_admin_role_arns = ["arn:aws:iam::123456789012:role/qa-team", "arn:aws:iam::123456789012:role/qa-ci"]
  }

  assert {
    condition     = length(aws_eks_access_entry.admin) == 2 && alltrue([for a in aws_eks_access_policy_association.admin : endswith(a.policy_arn, "cluster-access-policy/AmazonEKSClusterAdminPolicy")])
    error_message = "Each team/CI role needs an access entry with the cluster admin policy."
  }
}

run "access_entries_need_role_arns" {
  command = plan

  variables {
    cluster_admin_role_arns = ["qa-team"]
  }

  expect_failures = [var.cluster_admin_role_arns]
}
