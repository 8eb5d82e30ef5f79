terraform {
  required_version = ">= 1.9"

  # AWS only: the Kubernetes side is applied by addons.sh (kubectl, helm, aws CLI)
  # from terraform_data provisioners, so this module plans, validates and tests
  # offline with the AWS provider alone (helm/kubernetes providers cannot be
  # installed offline), and no secret value ever enters the Terraform state.
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.100, < 6.0"
    }
  }
}
