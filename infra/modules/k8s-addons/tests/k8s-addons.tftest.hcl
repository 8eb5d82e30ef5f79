mock_provider "aws" {}

variables {
  region                        = "us-east-1"
  cluster_name                  = "qa-test"
  vpc_id                        = "vpc-0123456789abcdef0"
  lb_controller_role_arn        = "arn:aws:iam::123456789012:role/qa-test-aws-load-balancer-controller"
  aurora_endpoint               = "qa.cluster-abc.us-east-1.rds.amazonaws.com"
  aurora_port                   = 5432
  aurora_database_name          = "qa"
  aurora_master_user_secret_arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:rds!cluster-abc"
  redis_endpoint                = "master.qa-test.abc.use1.cache.amazonaws.com"
  redis_port                    = 6379
  redis_auth_token_secret_arn   = "arn:aws:secretsmanager:us-east-1:123456789012:secret:qa-test-redis"
  aurora_kms_key_arn            = "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555"

  system_node_labels                = { "workload-type" = "system" }
  karpenter_controller_role_arn     = "arn:aws:iam::123456789012:role/qa-test-karpenter-controller"
  karpenter_interruption_queue_name = "qa-test"
  deploy_values = {
    environment     = "test"
    region          = "us-east-1"
    cluster_name    = "qa-test"
    vpc_cidr        = "10.20.0.0/16"
    repository_urls = { "ray-cpu" = "123456789012.dkr.ecr.us-east-1.amazonaws.com/qa-test/ray-cpu" }
    certificate_arn = "arn:aws:acm:us-east-1:123456789012:certificate/11111111-2222-3333-4444-555555555555"
    domain_name     = "qa.example.com"
    route53_zone_id = "Z0123456789ABCDEFGHIJ"
  }
}

run "gateway_stack_versions" {
  command = plan

  assert {
    condition     = terraform_data.release["aws-load-balancer-controller"].input.version == "3.5.0"
    error_message = "The AWS Load Balancer Controller must be chart 3.x (3.5.0): ALB HTTPRoute support is GA from v3.0."
  }

  assert {
    condition     = slice(terraform_data.crds.input.crd_urls, 0, 2) == ["https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.6.1/standard-install.yaml", "https://raw.githubusercontent.com/kubernetes-sigs/aws-load-balancer-controller/v3.5.0/config/crd/gateway/gateway-crds.yaml"]
    error_message = "Gateway API v1.6.1 standard CRDs, then the controller's own gateway.k8s.aws CRDs at its tag, must be installed."
  }

  assert {
    condition     = yamldecode(terraform_data.release["aws-load-balancer-controller"].input.values).controllerConfig.featureGates.ALBGatewayAPI == true
    error_message = "The ALBGatewayAPI feature gate must be on."
  }

  assert {
    condition     = yamldecode(terraform_data.release["aws-load-balancer-controller"].input.values).serviceAccount.annotations["eks.amazonaws.com/role-arn"] == var.lb_controller_role_arn
    error_message = "The controller's service account must use its IRSA role."
  }

  assert {
    condition     = yamldecode(terraform_data.gatewayclass.input.manifest).spec.controllerName == "gateway.k8s.aws/alb" && yamldecode(terraform_data.gatewayclass.input.manifest).metadata.name == "aws-alb"
    error_message = "GatewayClass aws-alb must name the controller gateway.k8s.aws/alb."
  }

  assert {
    condition     = terraform_data.release["nvidia-device-plugin"].input.version == "0.20.0"
    error_message = "The NVIDIA device plugin chart must be 0.20.0 (its values are checked by tests/infra)."
  }
}

run "no_secret_in_plan_or_state" {
  command = plan

  assert {
    condition     = !strcontains(jsonencode(terraform_data.app_credentials.input), "password")
    error_message = "app-credentials values must be read at apply time, never planned."
  }

  assert {
    condition     = output.deploy_values == var.deploy_values
    error_message = "deploy_values must be handed out unchanged."
  }
}

run "old_controller_chart_is_refused" {
  command = plan

  variables {
    lb_controller_version = "1.13.0"
  }

  expect_failures = [var.lb_controller_version]
}

run "old_gateway_api_is_refused" {
  command = plan

  variables {
    gateway_api_version = "v1.3.0"
  }

  expect_failures = [var.gateway_api_version]
}

run "karpenter_release" {
  command = plan

  assert {
    condition     = terraform_data.release["karpenter"].input.version == "1.14.1" && terraform_data.release["karpenter"].input.chart == "oci://public.ecr.aws/karpenter/karpenter" && terraform_data.release["karpenter"].input.namespace == "kube-system"
    error_message = "Karpenter 1.14.1 from its OCI chart, release karpenter in kube-system (the IRSA role trusts kube-system/karpenter)."
  }

  assert {
    condition     = yamldecode(terraform_data.release["karpenter"].input.values).settings.clusterName == var.cluster_name && yamldecode(terraform_data.release["karpenter"].input.values).settings.interruptionQueue == var.karpenter_interruption_queue_name
    error_message = "settings.clusterName and settings.interruptionQueue must be the cluster and the eks unit's queue."
  }

  assert {
    condition     = yamldecode(terraform_data.release["karpenter"].input.values).serviceAccount.annotations["eks.amazonaws.com/role-arn"] == var.karpenter_controller_role_arn
    error_message = "Karpenter's service account must use its IRSA role."
  }

  assert {
    condition     = yamldecode(terraform_data.release["karpenter"].input.values).controller.env[0].value == var.region
    error_message = "Karpenter is given its region (pods cannot reach IMDS)."
  }

  assert {
    condition     = alltrue([for r in ["karpenter", "kuberay-operator", "aws-load-balancer-controller"] : yamldecode(terraform_data.release[r].input.values).nodeSelector["workload-type"] == "system"])
    error_message = "Karpenter, the KubeRay operator and the LB controller run on the system node group."
  }

  assert {
    condition     = contains(terraform_data.crds.input.crd_urls, "https://raw.githubusercontent.com/aws/karpenter-provider-aws/v1.14.1/pkg/apis/crds/karpenter.sh_nodepools.yaml")
    error_message = "Karpenter's CRDs are applied from its tag."
  }
}

run "db_password_file_and_least_privilege" {
  command = plan

  assert {
    condition     = yamldecode(terraform_data.release["secrets-store-csi-driver-provider-aws"].input.values)["secrets-store-csi-driver"].enableSecretRotation == true
    error_message = "The CSI driver must re-sync mounted secrets (enableSecretRotation)."
  }

  assert {
    condition     = yamldecode(terraform_data.secret_provider_class.input.manifest).spec.provider == "aws" && strcontains(yamldecode(terraform_data.secret_provider_class.input.manifest).spec.parameters.objects, var.aurora_master_user_secret_arn)
    error_message = "The SecretProviderClass mounts the Aurora master secret through the AWS provider."
  }

  assert {
    condition     = jsondecode(aws_iam_role_policy.app.policy).Statement[0].Resource == var.aurora_master_user_secret_arn && length(jsondecode(aws_iam_role_policy.app.policy).Statement) == 2
    error_message = "The Ray pods' role may read exactly the Aurora secret (and decrypt it through Secrets Manager)."
  }

  assert {
    condition     = aws_eks_pod_identity_association.app.namespace == "qa" && aws_eks_pod_identity_association.app.service_account == "qa-ray"
    error_message = "The role is bound to qa/qa-ray only."
  }
}
