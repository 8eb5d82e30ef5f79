output "app_credentials_secret" {
  description = "namespace/name of the Kubernetes Secret consumed by the Ray pods via envFrom."
  value       = "${kubernetes_secret_v1.app_credentials.metadata[0].namespace}/${kubernetes_secret_v1.app_credentials.metadata[0].name}"
}

output "kuberay_operator_version" {
  description = "Deployed KubeRay operator chart version."
  value       = helm_release.kuberay_operator.version
}

output "lb_controller_version" {
  description = "Deployed AWS Load Balancer Controller chart version."
  value       = helm_release.aws_load_balancer_controller.version
}
