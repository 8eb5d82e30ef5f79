mock_provider "aws" {
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
}

variables {
  name = "qa-test"
}

run "repositories_hardened" {
  command = plan

  assert {
    condition     = toset(keys(aws_ecr_repository.this)) == toset(["ray-cpu", "ray-gpu"])
    error_message = "CPU and GPU Ray image repositories must exist."
  }

  assert {
    condition     = alltrue([for r in aws_ecr_repository.this : r.image_tag_mutability == "IMMUTABLE" && r.image_scanning_configuration[0].scan_on_push])
    error_message = "Tags must be immutable and images scanned on push."
  }

  assert {
    condition     = alltrue([for r in aws_ecr_repository.this : r.encryption_configuration[0].encryption_type == "KMS"])
    error_message = "Repositories must be KMS-encrypted."
  }

  assert {
    condition     = length(aws_ecr_lifecycle_policy.this) == length(aws_ecr_repository.this)
    error_message = "Every repository needs a lifecycle policy."
  }
}
