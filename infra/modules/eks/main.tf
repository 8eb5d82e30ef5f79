data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name

  # The only managed node group: a small, fixed group for the system pods (Karpenter
  # itself, CoreDNS, the LB controller, the KubeRay operator, the Ray head). The Ray
  # workers run on nodes Karpenter launches from kuberay/components/karpenter (NodePools
  # ray-cpu and ray-gpu), so the GPU pool costs nothing while it is at zero replicas.
  # The taint keeps everything that does not tolerate it (the Ray workers) off these
  # nodes; CriticalAddonsOnly is the key Karpenter's chart v1.14.1 tolerates by default
  # (charts/karpenter/values.yaml `tolerations`). Whoever belongs here selects the label
  # and tolerates the taint: k8s-addons' chart values, the coredns add-on below, the
  # RayService head group (kuberay/scripts/kuberay_checks.py ties the two together).
  system_node_labels = { "workload-type" = "system" }
  system_node_taints = [{ key = "CriticalAddonsOnly", value = "true", effect = "NO_SCHEDULE" }]

  node_groups = {
    system = merge(var.system_node_group, {
      ami_type = "AL2023_x86_64_STANDARD"
      labels   = local.system_node_labels
      taints   = local.system_node_taints
    })
  }

  # Where system pods go: the group's label, and a toleration of its taint.
  system_tolerations = [for t in local.system_node_taints : { key = t.key, operator = "Exists", effect = "NoSchedule" }]
}

# --- KMS: envelope encryption of Kubernetes secrets and of the control-plane logs

resource "aws_kms_key" "this" {
  description         = "${var.name} EKS secrets and logs"
  enable_key_rotation = true
  policy = jsonencode({
    Version = "2012-10-17"
    # In a key policy "*" means this key only; the account root delegates to IAM.
    Statement = [
      {
        Sid       = "AccountAdmin"
        Effect    = "Allow"
        Principal = { AWS = "arn:${local.partition}:iam::${local.account_id}:root" }
        Action    = "kms:*"
        Resource  = "*"
      },
      {
        Sid       = "CloudWatchLogs"
        Effect    = "Allow"
        Principal = { Service = "logs.${local.region}.amazonaws.com" }
        Action    = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
        Resource  = "*"
        Condition = {
          ArnLike = { "kms:EncryptionContext:aws:logs:arn" = "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:*" }
        }
      },
    ]
  })
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}-eks"
  target_key_id = aws_kms_key.this.key_id
}

# Created up front so EKS does not make an unencrypted, never-expiring one.
resource "aws_cloudwatch_log_group" "cluster" {
  name              = "/aws/eks/${var.name}/cluster"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
}

# --- Cluster -------------------------------------------------------------------

data "aws_iam_policy_document" "cluster_assume" {
  statement {
    actions = ["sts:AssumeRole", "sts:TagSession"]
    principals {
      type        = "Service"
      identifiers = ["eks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "cluster" {
  name               = "${var.name}-eks-cluster"
  assume_role_policy = data.aws_iam_policy_document.cluster_assume.json
}

resource "aws_iam_role_policy_attachment" "cluster" {
  role       = aws_iam_role.cluster.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonEKSClusterPolicy"
}

resource "aws_eks_cluster" "this" {
  name                      = var.name
  version                   = var.kubernetes_version
  role_arn                  = aws_iam_role.cluster.arn
  enabled_cluster_log_types = ["api", "audit", "authenticator", "controllerManager", "scheduler"]

  access_config {
    authentication_mode                         = "API"
    bootstrap_cluster_creator_admin_permissions = true
  }

  vpc_config {
    subnet_ids              = var.private_subnet_ids
    endpoint_private_access = true
    endpoint_public_access  = length(var.public_access_cidrs) > 0
    public_access_cidrs     = length(var.public_access_cidrs) > 0 ? var.public_access_cidrs : null
  }

  encryption_config {
    resources = ["secrets"]
    provider {
      key_arn = aws_kms_key.this.arn
    }
  }

  depends_on = [aws_iam_role_policy_attachment.cluster, aws_cloudwatch_log_group.cluster]
}

# Identity-only SG attached to every node: Aurora and ElastiCache admit this SG and
# nothing else. Traffic rules for nodes come from the EKS-managed cluster SG.
resource "aws_security_group" "node" {
  name        = "${var.name}-node"
  description = "Identifies EKS worker nodes as clients of the data stores"
  vpc_id      = var.vpc_id

  # Karpenter's EC2NodeClasses select their security groups by this tag (with the
  # cluster SG, tagged in karpenter.tf), so its nodes reach the data stores too.
  tags = { Name = "${var.name}-node", "karpenter.sh/discovery" = var.name }
}

# IRSA. thumbprint_list is omitted: IAM trusts the EKS OIDC issuer through its
# own CA library, and provider 5.x computes the thumbprint when it is not given.
resource "aws_iam_openid_connect_provider" "this" {
  url            = aws_eks_cluster.this.identity[0].oidc[0].issuer
  client_id_list = ["sts.amazonaws.com"]
}

resource "aws_eks_addon" "this" {
  # eks-pod-identity-agent: the Ray pods' role (k8s-addons, reads the Aurora secret for the
  # Secrets Store CSI driver's AWS provider) is bound by a Pod Identity association.
  for_each = toset(["vpc-cni", "kube-proxy", "coredns", "eks-pod-identity-agent"])

  cluster_name                = aws_eks_cluster.this.name
  addon_name                  = each.key
  addon_version               = each.key == "vpc-cni" ? var.vpc_cni_addon_version : null
  resolve_conflicts_on_update = "OVERWRITE"
  # NetworkPolicy enforcement (kuberay/ default-denies ingress and admits the ALB
  # and the KubeRay operator): the VPC CNI's network policy agent is off unless
  # `enableNetworkPolicy` is "true" (a string: charts/aws-vpc-cni/values.yaml of
  # amazon-vpc-cni-k8s v1.21.1, the add-on's configuration schema mirrors it).
  configuration_values = lookup(local.addon_configuration, each.key, null)

  # coredns stays degraded until there are nodes to run on.
  depends_on = [aws_eks_node_group.this]
}

locals {
  addon_configuration = {
    vpc-cni = jsonencode({ enableNetworkPolicy = "true" })
    # CoreDNS on the system group: its add-on schema takes nodeSelector and tolerations
    # (`aws eks describe-addon-configuration --addon-name coredns` lists them); not
    # checked offline against AWS.
    coredns = jsonencode({ nodeSelector = local.system_node_labels, tolerations = local.system_tolerations })
  }
}

# --- Nodes -------------------------------------------------------------------------

data "aws_iam_policy_document" "node_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "node" {
  name               = "${var.name}-eks-node"
  assume_role_policy = data.aws_iam_policy_document.node_assume.json
}

resource "aws_iam_role_policy_attachment" "node" {
  for_each = toset([
    "AmazonEKSWorkerNodePolicy",
    "AmazonEKS_CNI_Policy",
    "AmazonEC2ContainerRegistryReadOnly",
    "AmazonSSMManagedInstanceCore",
  ])

  role       = aws_iam_role.node.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/${each.key}"
}

resource "aws_launch_template" "node" {
  for_each = local.node_groups

  name_prefix            = "${var.name}-${each.key}-"
  update_default_version = true
  vpc_security_group_ids = [aws_eks_cluster.this.vpc_config[0].cluster_security_group_id, aws_security_group.node.id]

  # IMDSv2 only, and a hop limit of 1 so pods cannot borrow the node role.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size           = each.value.disk_size_gb
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = { Name = "${var.name}-${each.key}" }
  }
}

resource "aws_eks_node_group" "this" {
  for_each = local.node_groups

  cluster_name    = aws_eks_cluster.this.name
  node_group_name = "${var.name}-${each.key}"
  node_role_arn   = aws_iam_role.node.arn
  subnet_ids      = var.private_subnet_ids
  ami_type        = each.value.ami_type
  capacity_type   = "ON_DEMAND"
  instance_types  = each.value.instance_types
  labels          = each.value.labels

  dynamic "taint" {
    for_each = each.value.taints
    content {
      key    = taint.value.key
      value  = taint.value.value
      effect = taint.value.effect
    }
  }

  scaling_config {
    min_size     = each.value.min_size
    max_size     = each.value.max_size
    desired_size = each.value.desired_size
  }

  update_config {
    max_unavailable = 1
  }

  launch_template {
    id      = aws_launch_template.node[each.key].id
    version = aws_launch_template.node[each.key].latest_version
  }

  depends_on = [aws_iam_role_policy_attachment.node]
}

# --- Cluster access for people and CI (the creator's bootstrap admin is not enough) -----

resource "aws_eks_access_entry" "admin" {
  for_each = toset(var.cluster_admin_role_arns)

  cluster_name  = aws_eks_cluster.this.name
  principal_arn = each.value
  type          = "STANDARD"
}

resource "aws_eks_access_policy_association" "admin" {
  for_each = aws_eks_access_entry.admin

  cluster_name  = aws_eks_cluster.this.name
  principal_arn = each.value.principal_arn
  policy_arn    = "arn:${local.partition}:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"

  access_scope {
    type = "cluster"
  }
}
