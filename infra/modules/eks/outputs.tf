output "cluster_name" {
  description = "EKS cluster name."
  value       = aws_eks_cluster.this.name
}

output "cluster_endpoint" {
  description = "Kubernetes API endpoint."
  value       = aws_eks_cluster.this.endpoint
}

output "cluster_certificate_authority_data" {
  description = "Base64 CA bundle of the API server."
  value       = aws_eks_cluster.this.certificate_authority[0].data
}

output "cluster_security_group_id" {
  description = "EKS-managed cluster security group (control plane and nodes)."
  value       = aws_eks_cluster.this.vpc_config[0].cluster_security_group_id
}

output "node_security_group_id" {
  description = "Security group carried by every node: the only source the data stores admit."
  value       = aws_security_group.node.id
}

output "oidc_provider_arn" {
  description = "IAM OIDC provider ARN, for further IRSA roles."
  value       = aws_iam_openid_connect_provider.this.arn
}

output "oidc_issuer_url" {
  description = "OIDC issuer URL of the cluster."
  value       = aws_eks_cluster.this.identity[0].oidc[0].issuer
}

output "node_role_arn" {
  description = "IAM role of the managed node groups."
  value       = aws_iam_role.node.arn
}

output "lb_controller_role_arn" {
  description = "IRSA role for the AWS Load Balancer Controller service account."
  value       = aws_iam_role.lb_controller.arn
}

output "kms_key_arn" {
  description = "KMS key encrypting Kubernetes secrets and control-plane logs."
  value       = aws_kms_key.this.arn
}

output "gpu_node_labels" {
  description = "Labels of the GPU nodes (the GPU worker group's nodeSelector, the device plugin's affinity)."
  value       = local.gpu_node_labels
}
