output "vpc_id" {
  description = "ID of the VPC."
  value       = aws_vpc.this.id
}

output "vpc_cidr" {
  description = "IPv4 CIDR of the VPC."
  value       = aws_vpc.this.cidr_block
}

output "public_subnet_ids" {
  description = "Public subnets (internet-facing ALB), in AZ order."
  value       = [for az in var.azs : aws_subnet.public[az].id]
}

output "private_subnet_ids" {
  description = "Private subnets (EKS nodes and pods), in AZ order."
  value       = [for az in var.azs : aws_subnet.private[az].id]
}

output "database_subnet_ids" {
  description = "Isolated database subnets (Aurora, ElastiCache), in AZ order."
  value       = [for az in var.azs : aws_subnet.database[az].id]
}

output "nat_public_ips" {
  description = "Egress IPs of the NAT gateways (for allow-lists of third parties)."
  value       = [for eip in aws_eip.nat : eip.public_ip]
}
