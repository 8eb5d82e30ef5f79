# What the Ray pods may do in AWS: read the Aurora master secret, nothing else. Used by the
# Secrets Store CSI driver's AWS provider, which fetches the secret as the pod's service
# account (usePodIdentity in the SecretProviderClass) and writes its password to the
# mounted file. EKS Pod Identity rather than IRSA: the association below binds the role
# to qa/qa-ray from here, so the committed kuberay/ ServiceAccount needs no
# account-specific role-ARN annotation (the controllers' IRSA roles are set through their
# chart values instead, which infra writes).

resource "aws_iam_role" "app" {
  name = "${var.cluster_name}-app-db-secret"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Action    = ["sts:AssumeRole", "sts:TagSession"]
      Principal = { Service = "pods.eks.amazonaws.com" }
    }]
  })
}

resource "aws_iam_role_policy" "app" {
  name = "read-aurora-secret"
  role = aws_iam_role.app.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "ReadTheAuroraSecretOnly"
        Effect   = "Allow"
        Action   = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
        Resource = var.aurora_master_user_secret_arn
      },
      {
        # The secret is encrypted with Aurora's KMS key: decrypt through Secrets Manager only.
        Sid       = "DecryptThroughSecretsManager"
        Effect    = "Allow"
        Action    = "kms:Decrypt"
        Resource  = var.aurora_kms_key_arn
        Condition = { StringEquals = { "kms:ViaService" = "secretsmanager.${var.region}.amazonaws.com" } }
      },
    ]
  })
}

resource "aws_eks_pod_identity_association" "app" {
  cluster_name    = var.cluster_name
  namespace       = var.app_namespace
  service_account = var.app_service_account
  role_arn        = aws_iam_role.app.arn
}
