# IRSA role for the AWS Load Balancer Controller, trusted only by its own service
# account. The policy follows the upstream iam_policy.json, with "*" resources
# narrowed to this account and region, and without WAF/Shield (disabled in the chart).

locals {
  oidc_issuer_host   = replace(aws_eks_cluster.this.identity[0].oidc[0].issuer, "https://", "")
  lb_controller_sa   = "system:serviceaccount:kube-system:aws-load-balancer-controller"
  elb_arn_prefix     = "arn:${local.partition}:elasticloadbalancing:${local.region}:${local.account_id}"
  ec2_arn_prefix     = "arn:${local.partition}:ec2:${local.region}:${local.account_id}"
  cluster_tag_absent = { "aws:ResourceTag/elbv2.k8s.aws/cluster" = "false" }

  # One IRSA trust policy per controller role, each trusted only by its own service
  # account (jsonencode rather than a policy document so the trust scope is testable
  # at plan time). The Karpenter role uses local.karpenter_sa (karpenter.tf).
  irsa_trust_policy = {
    for role, sa in { lb_controller = local.lb_controller_sa, karpenter = local.karpenter_sa } : role => jsonencode({
      Version = "2012-10-17"
      Statement = [{
        Effect    = "Allow"
        Action    = "sts:AssumeRoleWithWebIdentity"
        Principal = { Federated = aws_iam_openid_connect_provider.this.arn }
        Condition = {
          StringEquals = {
            "${local.oidc_issuer_host}:sub" = sa
            "${local.oidc_issuer_host}:aud" = "sts.amazonaws.com"
          }
        }
      }]
    })
  }
}

resource "aws_iam_role" "lb_controller" {
  name               = "${var.name}-aws-load-balancer-controller"
  assume_role_policy = local.irsa_trust_policy["lb_controller"]
}

data "aws_iam_policy_document" "lb_controller" {
  statement {
    sid       = "ServiceLinkedRole"
    actions   = ["iam:CreateServiceLinkedRole"]
    resources = ["arn:${local.partition}:iam::${local.account_id}:role/aws-service-role/elasticloadbalancing.amazonaws.com/*"]
    condition {
      test     = "StringEquals"
      variable = "iam:AWSServiceName"
      values   = ["elasticloadbalancing.amazonaws.com"]
    }
  }

  # Describe/Get calls do not support resource-level permissions.
  statement {
    sid = "Read"
    actions = [
      "ec2:DescribeAccountAttributes", "ec2:DescribeAddresses", "ec2:DescribeAvailabilityZones",
      "ec2:DescribeInternetGateways", "ec2:DescribeVpcs", "ec2:DescribeVpcPeeringConnections",
      "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups", "ec2:DescribeInstances",
      "ec2:DescribeNetworkInterfaces", "ec2:DescribeTags", "ec2:DescribeRouteTables",
      "elasticloadbalancing:DescribeLoadBalancers", "elasticloadbalancing:DescribeLoadBalancerAttributes",
      "elasticloadbalancing:DescribeListeners", "elasticloadbalancing:DescribeListenerCertificates",
      "elasticloadbalancing:DescribeListenerAttributes", "elasticloadbalancing:DescribeSSLPolicies",
      "elasticloadbalancing:DescribeRules", "elasticloadbalancing:DescribeTargetGroups",
      "elasticloadbalancing:DescribeTargetGroupAttributes", "elasticloadbalancing:DescribeTargetHealth",
      "elasticloadbalancing:DescribeTags", "elasticloadbalancing:DescribeTrustStores",
      "elasticloadbalancing:DescribeCapacityReservation",
      "acm:ListCertificates", "iam:ListServerCertificates",
    ]
    resources = ["*"]
  }

  statement {
    sid       = "VpcSecurityGroups"
    actions   = ["ec2:GetSecurityGroupsForVpc"]
    resources = ["${local.ec2_arn_prefix}:vpc/${var.vpc_id}"]
  }

  statement {
    sid     = "Certificates"
    actions = ["acm:DescribeCertificate", "iam:GetServerCertificate"]
    resources = [
      "arn:${local.partition}:acm:${local.region}:${local.account_id}:certificate/*",
      "arn:${local.partition}:iam::${local.account_id}:server-certificate/*",
    ]
  }

  statement {
    sid       = "CreateSecurityGroup"
    actions   = ["ec2:CreateSecurityGroup"]
    resources = ["${local.ec2_arn_prefix}:security-group/*", "${local.ec2_arn_prefix}:vpc/${var.vpc_id}"]
  }

  statement {
    sid       = "TagNewSecurityGroup"
    actions   = ["ec2:CreateTags"]
    resources = ["${local.ec2_arn_prefix}:security-group/*"]
    condition {
      test     = "StringEquals"
      variable = "ec2:CreateAction"
      values   = ["CreateSecurityGroup"]
    }
    condition {
      test     = "Null"
      variable = "aws:RequestTag/elbv2.k8s.aws/cluster"
      values   = ["false"]
    }
  }

  # Only security groups the controller itself created and tagged.
  statement {
    sid = "ManageOwnSecurityGroups"
    actions = [
      "ec2:CreateTags", "ec2:DeleteTags", "ec2:AuthorizeSecurityGroupIngress",
      "ec2:RevokeSecurityGroupIngress", "ec2:DeleteSecurityGroup",
    ]
    resources = ["${local.ec2_arn_prefix}:security-group/*"]
    condition {
      test     = "Null"
      variable = "aws:ResourceTag/elbv2.k8s.aws/cluster"
      values   = ["false"]
    }
  }

  # Node and cluster SGs: the controller opens them to the ALB for target traffic.
  statement {
    sid       = "OpenNodeSecurityGroups"
    actions   = ["ec2:AuthorizeSecurityGroupIngress", "ec2:RevokeSecurityGroupIngress"]
    resources = ["${local.ec2_arn_prefix}:security-group/*"]
    condition {
      test     = "StringEquals"
      variable = "ec2:Vpc"
      values   = ["${local.ec2_arn_prefix}:vpc/${var.vpc_id}"]
    }
  }

  statement {
    sid     = "CreateLoadBalancers"
    actions = ["elasticloadbalancing:CreateLoadBalancer", "elasticloadbalancing:CreateTargetGroup"]
    resources = [
      "${local.elb_arn_prefix}:loadbalancer/app/*/*",
      "${local.elb_arn_prefix}:loadbalancer/net/*/*",
      "${local.elb_arn_prefix}:targetgroup/*/*",
    ]
    condition {
      test     = "Null"
      variable = "aws:RequestTag/elbv2.k8s.aws/cluster"
      values   = ["false"]
    }
  }

  statement {
    sid = "ListenersAndRules"
    actions = [
      "elasticloadbalancing:CreateListener", "elasticloadbalancing:DeleteListener",
      "elasticloadbalancing:CreateRule", "elasticloadbalancing:DeleteRule",
      "elasticloadbalancing:ModifyListener", "elasticloadbalancing:AddListenerCertificates",
      "elasticloadbalancing:RemoveListenerCertificates", "elasticloadbalancing:ModifyRule",
      "elasticloadbalancing:SetRulePriorities",
    ]
    resources = [
      "${local.elb_arn_prefix}:loadbalancer/app/*/*",
      "${local.elb_arn_prefix}:loadbalancer/net/*/*",
      "${local.elb_arn_prefix}:listener/app/*/*/*",
      "${local.elb_arn_prefix}:listener/net/*/*/*",
      "${local.elb_arn_prefix}:listener-rule/app/*/*/*/*",
      "${local.elb_arn_prefix}:listener-rule/net/*/*/*/*",
    ]
  }

  statement {
    sid = "TagOwnLoadBalancers"
    actions = [
      "elasticloadbalancing:AddTags", "elasticloadbalancing:RemoveTags",
      "elasticloadbalancing:ModifyLoadBalancerAttributes", "elasticloadbalancing:SetIpAddressType",
      "elasticloadbalancing:SetSecurityGroups", "elasticloadbalancing:SetSubnets",
      "elasticloadbalancing:DeleteLoadBalancer", "elasticloadbalancing:ModifyTargetGroup",
      "elasticloadbalancing:ModifyTargetGroupAttributes", "elasticloadbalancing:DeleteTargetGroup",
      "elasticloadbalancing:ModifyListenerAttributes", "elasticloadbalancing:ModifyCapacityReservation",
      "elasticloadbalancing:ModifyIpPools",
    ]
    resources = [
      "${local.elb_arn_prefix}:loadbalancer/app/*/*",
      "${local.elb_arn_prefix}:loadbalancer/net/*/*",
      "${local.elb_arn_prefix}:targetgroup/*/*",
    ]
    condition {
      test     = "Null"
      variable = "aws:ResourceTag/elbv2.k8s.aws/cluster"
      values   = ["false"]
    }
  }

  statement {
    sid     = "TagListeners"
    actions = ["elasticloadbalancing:AddTags", "elasticloadbalancing:RemoveTags"]
    resources = [
      "${local.elb_arn_prefix}:listener/app/*/*/*",
      "${local.elb_arn_prefix}:listener/net/*/*/*",
      "${local.elb_arn_prefix}:listener-rule/app/*/*/*/*",
      "${local.elb_arn_prefix}:listener-rule/net/*/*/*/*",
    ]
  }

  statement {
    sid     = "TagOnCreate"
    actions = ["elasticloadbalancing:AddTags"]
    resources = [
      "${local.elb_arn_prefix}:loadbalancer/app/*/*",
      "${local.elb_arn_prefix}:loadbalancer/net/*/*",
      "${local.elb_arn_prefix}:targetgroup/*/*",
    ]
    condition {
      test     = "StringEquals"
      variable = "elasticloadbalancing:CreateAction"
      values   = ["CreateTargetGroup", "CreateLoadBalancer"]
    }
    condition {
      test     = "Null"
      variable = "aws:RequestTag/elbv2.k8s.aws/cluster"
      values   = ["false"]
    }
  }

  statement {
    sid       = "Targets"
    actions   = ["elasticloadbalancing:RegisterTargets", "elasticloadbalancing:DeregisterTargets"]
    resources = ["${local.elb_arn_prefix}:targetgroup/*/*"]
  }
}

resource "aws_iam_role_policy" "lb_controller" {
  name   = "aws-load-balancer-controller"
  role   = aws_iam_role.lb_controller.id
  policy = data.aws_iam_policy_document.lb_controller.json
}
