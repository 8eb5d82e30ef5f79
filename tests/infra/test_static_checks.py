"""The python checks (terragrunt consistency, module config, parse, fmt) pass on
the real tree and fail on planted mistakes."""
from __future__ import annotations

import pytest

import fmt_check
import module_check
import parse_check
import tg_check
from infra_helpers import INFRA, copy_infra, copy_module, replace_once


def tg_errors(infra_dir):
    return tg_check.Checker(infra_dir / "live").run()


def test_real_tree_is_consistent():
    assert tg_errors(INFRA) == []
    for mod in sorted((INFRA / "modules").iterdir()):
        assert module_check.check_module(mod) == [], mod
    n, errors = parse_check.parse_all(INFRA)
    assert n > 20 and errors == []


TG_PLANTS = [
    pytest.param("test/aurora/terragrunt.hcl", "dependency.eks.outputs.node_security_group_id",
                 "dependency.eks.outputs.node_sg", "not covered by mock_outputs", id="missing-dependency-output"),
    pytest.param("test/eks/terragrunt.hcl", "  name                = local.env.name\n",
                 "  name                = local.env.name\n  colour = \"blue\"\n",
                 "input 'colour' is not a variable of module eks", id="unknown-input"),
    pytest.param("test/eks/terragrunt.hcl", "  name                = local.env.name\n", "",
                 "required variable 'name' of module eks is not set", id="missing-required-input"),
    pytest.param("test/eks/terragrunt.hcl", 'config_path = "../network"', 'config_path = "../netwrk"',
                 "is not a unit", id="bad-config-path"),
    pytest.param("test/eks/terragrunt.hcl", '"../../../modules//eks"', '"../../../modules//eksctl"',
                 "is not a module dir", id="bad-source"),
    pytest.param("test/eks/terragrunt.hcl", '    private_subnet_ids = ["subnet-00000000000000001", "subnet-00000000000000002"]\n',
                 "", "dependency.network.outputs.private_subnet_ids is not covered by mock_outputs", id="mock-missing"),
    pytest.param("test/eks/terragrunt.hcl", '["init", "validate", "plan"]', '["init", "validate", "plan", "apply"]',
                 "mock_outputs_allowed_terraform_commands", id="mocks-allowed-on-apply"),
    pytest.param("test/eks/terragrunt.hcl", "local.env.gpu_node_group", "local.env.gpu_nodes",
                 "local.env.gpu_nodes is not defined", id="unknown-env-value"),
    pytest.param("root.hcl", "use_lockfile = true", "use_lockfile = false", "use_lockfile = true", id="no-lockfile"),
]


@pytest.mark.parametrize("rel,old,new,message", TG_PLANTS)
def test_tg_check_catches_planted_mistake(tmp_path, rel, old, new, message):
    infra = copy_infra(tmp_path)
    replace_once(infra / "live" / rel, old, new)
    errors = tg_errors(infra)
    assert any(message in e for e in errors), errors


def test_tg_check_mock_for_nonexistent_module_output(tmp_path):
    infra = copy_infra(tmp_path)
    unit = infra / "live" / "test" / "aurora" / "terragrunt.hcl"
    replace_once(unit, 'node_security_group_id = "sg-00000000000000000"',
                 'node_security_group_id = "sg-00000000000000000"\n    node_sg                = "sg-1"')
    replace_once(unit, "dependency.eks.outputs.node_security_group_id", "dependency.eks.outputs.node_sg")
    errors = tg_errors(infra)
    assert any("module eks has no output 'node_sg'" in e for e in errors), errors


def test_tg_check_catches_cycle(tmp_path):
    infra = copy_infra(tmp_path)
    unit = infra / "live" / "test" / "network" / "terragrunt.hcl"
    unit.write_text(unit.read_text() + '''
dependency "k8s" {
  config_path = "../k8s-addons"

  mock_outputs = {
    app_credentials_secret = "qa/app-credentials"
  }
  mock_outputs_allowed_terraform_commands = ["init", "validate", "plan"]
}
''')
    errors = tg_errors(infra)
    assert any("dependency cycle" in e for e in errors), errors


@pytest.mark.parametrize("old,new,message", [
    pytest.param('  description = "EKS cluster name."\n', "", "variable 'cluster_name' has no description", id="no-description"),
    pytest.param('    helm = {\n      source  = "hashicorp/helm"\n      version = "~> 2.17"\n    }\n', "",
                 "provider 'helm' is used but not declared", id="undeclared-provider"),
    pytest.param("clusterName  = var.cluster_name", "clusterName  = var.eks_cluster", "var.eks_cluster is referenced but not declared",
                 id="undeclared-variable"),
])
def test_module_check_catches_planted_mistake_in_k8s_addons(tmp_path, old, new, message):
    mod = copy_module("k8s-addons", tmp_path)
    for f in mod.glob("*.tf"):
        if old in f.read_text():
            replace_once(f, old, new)
            break
    else:
        pytest.fail(f"planting failed: {old!r}")
    errors = module_check.check_module(mod)
    assert any(message in e for e in errors), errors


def test_parse_check_catches_syntax_error(tmp_path):
    infra = copy_infra(tmp_path)
    replace_once(infra / "live" / "test" / "env.hcl", "locals {", "locals {{")
    _, errors = parse_check.parse_all(infra)
    assert any("env.hcl" in e and "does not parse" in e for e in errors), errors


def test_fmt_check_catches_bad_formatting(tmp_path, tf_env, monkeypatch):
    for k in ("TF_CLI_CONFIG_FILE", "INFRA_TERRAFORM"):
        monkeypatch.setenv(k, tf_env[k])
    infra = copy_infra(tmp_path)
    assert fmt_check.fmt_check(infra) == []
    replace_once(infra / "modules" / "ecr" / "main.tf", "  force_delete         = var.force_delete",
                 "  force_delete = var.force_delete")
    replace_once(infra / "live" / "test" / "eks" / "terragrunt.hcl", "  config_path = ", "  config_path     =   ")
    bad = fmt_check.fmt_check(infra)
    assert any(b.endswith("ecr/main.tf") for b in bad), bad
    assert any(b.endswith("test/eks/terragrunt.hcl") for b in bad), bad
