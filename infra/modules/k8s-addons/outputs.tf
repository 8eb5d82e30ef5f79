output "app_credentials_secret" {
  description = "namespace/name of the Kubernetes Secret consumed by the Ray pods via envFrom."
  value       = "${var.app_namespace}/app-credentials"
}

output "kuberay_operator_version" {
  description = "Deployed KubeRay operator chart version."
  value       = terraform_data.release["kuberay-operator"].output.version
}

output "lb_controller_version" {
  description = "Deployed AWS Load Balancer Controller chart version."
  value       = terraform_data.release["aws-load-balancer-controller"].output.version
}

output "deploy_values" {
  description = "Input of kuberay/scripts/release.py: ECR repositories, certificate, hostname, VPC CIDR, cluster."
  value       = var.deploy_values
}

output "app_role_arn" {
  description = "Role of the Ray pods (Pod Identity, qa/qa-ray): reads the Aurora secret only."
  value       = aws_iam_role.app.arn
}

output "karpenter_version" {
  description = "Deployed Karpenter chart version."
  value       = terraform_data.release["karpenter"].output.version
}
