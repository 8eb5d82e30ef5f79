"""Plant security mistakes in copies of the modules: `terraform test` (and
checkov where a rule exists) must catch each one."""
from __future__ import annotations

import subprocess

import pytest

from infra_helpers import REPO_ROOT, copy_module, replace_once, run_terraform_test

PLANTS = [
    pytest.param("eks", "main.tf", 'http_tokens                 = "required"', 'http_tokens                 = "optional"',
                 "IMDSv2", id="eks-drop-imdsv2"),
    pytest.param("eks", "main.tf", 'system_node_taints = [{ key = "CriticalAddonsOnly", value = "true", effect = "NO_SCHEDULE" }]',
                 "system_node_taints = []", "CriticalAddonsOnly NoSchedule taint", id="eks-drop-system-taint"),
    # Karpenter's names: the EC2NodeClasses name the node role, the chart names the queue.
    pytest.param("eks", "karpenter.tf", 'karpenter_node_role  = "${var.name}-karpenter-node"',
                 'karpenter_node_role  = "KarpenterNodeRole-${var.name}"', "<cluster>-karpenter-node",
                 id="eks-karpenter-node-role-renamed"),
    pytest.param("eks", "karpenter.tf", "karpenter_queue_name = var.name", 'karpenter_queue_name = "${var.name}-q"',
                 "interruption queue is named after the cluster", id="eks-karpenter-queue-renamed"),
    pytest.param("k8s-addons", "main.tf", "interruption_queue = var.karpenter_interruption_queue_name",
                 'interruption_queue = "${var.cluster_name}-q"', "settings.interruptionQueue",
                 id="k8s-addons-karpenter-wrong-queue"),
    pytest.param("eks", "main.tf", 'jsonencode({ enableNetworkPolicy = "true" })', 'jsonencode({ enableNetworkPolicy = "false" })',
                 "NetworkPolicy enforcement", id="eks-no-network-policy-enforcement"),
    pytest.param("k8s-addons", "variables.tf", 'default     = "3.5.0"', 'default     = "1.13.0"',
                 "3.x controller", id="k8s-addons-old-controller-chart"),
    pytest.param("k8s-addons", "manifests/gatewayclass.yaml", "controllerName: gateway.k8s.aws/alb",
                 "controllerName: gateway.k8s.aws/nlb", "gateway.k8s.aws/alb", id="k8s-addons-wrong-gatewayclass"),
    pytest.param("network", "main.tf", 'for_each = toset(["ecr.api", "ecr.dkr"])', 'for_each = toset(["ecr.api"])',
                 "ECR api and dkr need interface endpoints", id="network-no-ecr-dkr-endpoint"),
    pytest.param("network", "main.tf", '"karpenter.sh/discovery" = var.cluster_name', '"karpenter.sh/discovery" = "other"',
                 "Karpenter discovers the private subnets only", id="network-no-karpenter-discovery-tag"),
    pytest.param("certificate", "main.tf", 'validation_method = "DNS"', 'validation_method = "EMAIL"',
                 "validated by DNS", id="certificate-not-dns-validated"),
    pytest.param("k8s-addons", "app_identity.tf", "Resource = var.aurora_master_user_secret_arn",
                 'Resource = "*"', "exactly the Aurora secret", id="k8s-addons-app-role-reads-every-secret"),
    pytest.param("eks", "main.tf", "subnet_ids      = var.private_subnet_ids", "subnet_ids      = [\"subnet-public\"]",
                 "private subnets only", id="eks-nodes-in-public-subnet"),
    pytest.param("aurora", "main.tf", "security_groups = [var.node_security_group_id]",
                 'security_groups = [var.node_security_group_id]\n    cidr_blocks     = ["0.0.0.0/0"]',
                 "not be open to any CIDR", id="aurora-sg-open-to-world"),
    pytest.param("aurora", "main.tf", 'name  = "rds.force_ssl"\n    value = "1"', 'name  = "rds.force_ssl"\n    value = "0"',
                 "rds.force_ssl=1", id="aurora-tls-not-forced"),
    pytest.param("elasticache", "main.tf", "transit_encryption_enabled = true", "transit_encryption_enabled = false",
                 "encrypt in transit", id="redis-no-tls"),
    pytest.param("ecr", "main.tf", 'image_tag_mutability = "IMMUTABLE"', 'image_tag_mutability = "MUTABLE"',
                 "immutable", id="ecr-mutable-tags"),
]


@pytest.mark.parametrize("module,file,old,new,message", PLANTS)
def test_terraform_test_catches_planted_mistake(tmp_path, tf_env, module, file, old, new, message):
    mod = copy_module(module, tmp_path)
    replace_once(mod / file, old, new)
    res = run_terraform_test(mod, tf_env)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert message in out, out


def test_unmodified_module_passes(tmp_path, tf_env):
    res = run_terraform_test(copy_module("aurora", tmp_path), tf_env)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("module,file,old,new,check_id", [
    pytest.param("elasticache", "main.tf", "transit_encryption_enabled = true", "transit_encryption_enabled = false",
                 "CKV_AWS_30", id="redis-no-tls"),
    pytest.param("ecr", "main.tf", 'image_tag_mutability = "IMMUTABLE"', 'image_tag_mutability = "MUTABLE"',
                 "CKV_AWS_51", id="ecr-mutable-tags"),
    pytest.param("eks", "main.tf", "enable_key_rotation = true", "enable_key_rotation = false",
                 "CKV_AWS_7", id="kms-no-rotation"),
])
def test_checkov_catches_planted_mistake(tmp_path, tf_env, module, file, old, new, check_id):
    mod = copy_module(module, tmp_path)
    replace_once(mod / file, old, new)
    checkov = f"{tf_env.get('INFRA_VENV', REPO_ROOT / '.venv-infra')}/bin/checkov"
    res = subprocess.run([checkov, "--config-file", str(REPO_ROOT / "infra" / ".checkov.yaml"), "-d", str(mod)],
                         capture_output=True, text=True, env=tf_env)
    assert res.returncode != 0, res.stdout
    assert check_id in res.stdout, res.stdout
