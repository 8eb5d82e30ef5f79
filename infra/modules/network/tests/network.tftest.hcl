mock_provider "aws" {
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
  mock_data "aws_region" {
    defaults = { name = "us-east-1" }
  }
}

variables {
  name         = "qa-test"
  cluster_name = "qa-test"
  azs          = ["us-east-1a", "us-east-1b"]
}

run "single_nat_in_test" {
  command = plan

  variables {
    single_nat_gateway = true
  }

  assert {
    condition     = length(aws_nat_gateway.this) == 1
    error_message = "single_nat_gateway must create exactly one NAT gateway."
  }
}

run "subnet_roles_and_isolation" {
  command = plan

  assert {
    condition     = length(aws_nat_gateway.this) == 2
    error_message = "Prod layout must have one NAT gateway per AZ."
  }

  assert {
    condition     = alltrue([for s in aws_subnet.public : s.tags["kubernetes.io/role/elb"] == "1" && !s.map_public_ip_on_launch])
    error_message = "Public subnets must carry the ALB role tag and not auto-assign public IPs."
  }

  assert {
    condition     = alltrue([for s in aws_subnet.private : lookup(s.tags, "karpenter.sh/discovery", "") == var.cluster_name]) && alltrue([for s in concat(values(aws_subnet.public), values(aws_subnet.database)) : !contains(keys(s.tags), "karpenter.sh/discovery")])
    error_message = "Karpenter discovers the private subnets only (karpenter.sh/discovery=<cluster>)."
  }

  assert {
    condition     = alltrue([for s in aws_subnet.private : s.tags["kubernetes.io/role/internal-elb"] == "1"])
    error_message = "Private (node) subnets must carry the internal-elb role tag."
  }

  assert {
    condition     = alltrue([for s in aws_subnet.private : !s.map_public_ip_on_launch])
    error_message = "Node subnets must be private."
  }

  assert {
    condition     = alltrue([for r in aws_route.private_nat : r.destination_cidr_block == "0.0.0.0/0" && r.gateway_id == null])
    error_message = "Private subnets must egress through NAT, never directly through the internet gateway."
  }

  assert {
    condition     = aws_flow_log.this.traffic_type == "ALL"
    error_message = "VPC flow logs must capture all traffic."
  }
}

run "image_pulls_stay_off_the_nat" {
  command = plan

  assert {
    condition     = aws_vpc_endpoint.s3.vpc_endpoint_type == "Gateway" && aws_vpc_endpoint.s3.service_name == "com.amazonaws.us-east-1.s3"
    error_message = "S3 needs a gateway endpoint on every private route table (ECR image layers are served from S3)."
  }

  assert {
    condition     = toset([for e in aws_vpc_endpoint.interface : e.service_name]) == toset(["com.amazonaws.us-east-1.ecr.api", "com.amazonaws.us-east-1.ecr.dkr"]) && alltrue([for e in aws_vpc_endpoint.interface : e.private_dns_enabled])
    error_message = "ECR api and dkr need interface endpoints with private DNS, so pulls do not cross the NAT."
  }

  assert {
    condition     = tolist(one(aws_security_group.endpoints.ingress).cidr_blocks) == tolist(["10.0.0.0/16"]) && one(aws_security_group.endpoints.ingress).from_port == 443
    error_message = "The interface endpoints must admit HTTPS from the VPC only."
  }
}
