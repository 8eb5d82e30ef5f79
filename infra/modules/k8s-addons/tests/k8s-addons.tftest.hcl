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
    condition     = terraform_data.crds.input.crd_urls == ["https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.6.1/standard-install.yaml", "https://raw.githubusercontent.com/kubernetes-sigs/aws-load-balancer-controller/v3.5.0/config/crd/gateway/gateway-crds.yaml"]
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
