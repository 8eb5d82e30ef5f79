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

output "system_node_labels" {
  description = "Labels of the system node group (nodeSelector of the system pods and the Ray head)."
  value       = local.system_node_labels
}

output "karpenter_controller_role_arn" {
  description = "IRSA role of the Karpenter controller (service account kube-system/karpenter)."
  value       = aws_iam_role.karpenter_controller.arn
}

output "karpenter_node_role_name" {
  description = "IAM role of Karpenter's nodes: the EC2NodeClasses' spec.role."
  value       = aws_iam_role.karpenter_node.name
}

output "karpenter_interruption_queue_name" {
  description = "SQS queue of EC2 interruption events: the chart's settings.interruptionQueue."
  value       = aws_sqs_queue.karpenter_interruption.name
}
