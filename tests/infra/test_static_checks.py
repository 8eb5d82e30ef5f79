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


ENVS = ("test", "prod")
UNITS = ("network", "ecr", "certificate", "eks", "aurora", "elasticache", "k8s-addons")


def test_real_tree_units_are_thin_and_envcommon_is_not_a_unit():
    checker = tg_check.Checker(INFRA / "live")
    assert checker.run() == []
    live = (INFRA / "live").resolve()
    assert sorted(checker.units) == sorted(live / e / u for e in ENVS for u in UNITS)
    for unit_dir, unit in checker.units.items():
        assert unit["included"] == [live / "_envcommon" / f"{unit_dir.name}.hcl"], unit_dir
        assert unit["config"]["terraform"]["source"], unit_dir


def errors_for(errors, env_unit, message):
    return [e for e in errors if f"live/{env_unit}/terragrunt.hcl" in e and message in e]


# Mistakes planted in the shared _envcommon/<unit>.hcl must be reported for the
# unit of every environment that includes it.
TG_PLANTS = [
    pytest.param("_envcommon/aurora.hcl", "dependency.eks.outputs.node_security_group_id",
                 "dependency.eks.outputs.node_sg", "not covered by mock_outputs", id="missing-dependency-output"),
    pytest.param("_envcommon/eks.hcl", "  name                = local.env.name\n",
                 "  name                = local.env.name\n  colour = \"blue\"\n",
                 "input 'colour' is not a variable of module eks", id="unknown-input"),
    pytest.param("_envcommon/eks.hcl", "  name                = local.env.name\n", "",
                 "required variable 'name' of module eks is not set", id="missing-required-input"),
    pytest.param("_envcommon/eks.hcl", 'config_path = "${get_terragrunt_dir()}/../network"',
                 'config_path = "${get_terragrunt_dir()}/../netwrk"', "is not a unit", id="bad-config-path"),
    pytest.param("_envcommon/eks.hcl", '/../modules//eks"', '/../modules//eksctl"',
                 "is not a module dir", id="bad-source"),
    pytest.param("_envcommon/eks.hcl", '    private_subnet_ids = ["subnet-00000000000000001", "subnet-00000000000000002"]\n',
                 "", "dependency.network.outputs.private_subnet_ids is not covered by mock_outputs", id="mock-missing"),
    pytest.param("_envcommon/eks.hcl", '["init", "validate", "plan"]', '["init", "validate", "plan", "apply"]',
                 "mock_outputs_allowed_terraform_commands", id="mocks-allowed-on-apply"),
    pytest.param("_envcommon/eks.hcl", "local.env.system_node_group", "local.env.system_nodes",
                 "local.env.system_nodes is not defined", id="unknown-env-value"),
    # k8s-addons takes Karpenter's queue and role from the eks unit: a mock must cover them.
    pytest.param("_envcommon/k8s-addons.hcl", "    karpenter_interruption_queue_name = local.env.name\n", "",
                 "dependency.eks.outputs.karpenter_interruption_queue_name is not covered by mock_outputs",
                 id="karpenter-queue-mock-missing"),
    pytest.param("root.hcl", "use_lockfile = true", "use_lockfile = false", "use_lockfile = true", id="no-lockfile"),
]


@pytest.mark.parametrize("rel,old,new,message", TG_PLANTS)
def test_tg_check_catches_planted_mistake(tmp_path, rel, old, new, message):
    infra = copy_infra(tmp_path)
    replace_once(infra / "live" / rel, old, new)
    errors = tg_errors(infra)
    assert any(message in e for e in errors), errors
    if rel.startswith("_envcommon/"):
        unit = rel.removeprefix("_envcommon/").removesuffix(".hcl")
        for env in ENVS:
            assert errors_for(errors, f"{env}/{unit}", message), (env, errors)


def test_tg_check_envcommon_mistake_caught_in_both_envs(tmp_path):
    infra = copy_infra(tmp_path)
    replace_once(infra / "live" / "_envcommon" / "elasticache.hcl", "local.env.redis_node_type", "local.env.redis_type")
    errors = tg_errors(infra)
    message = "local.env.redis_type is not defined"
    hits = [e for e in errors if message in e]
    assert len(hits) == 2, errors
    for env in ENVS:
        [hit] = errors_for(errors, f"{env}/elasticache", message)
        assert "_envcommon/elasticache.hcl" in hit and f"{env}/env.hcl" in hit, hit


def test_tg_check_checks_unit_overrides_per_env(tmp_path):
    """A unit's own blocks are deep-merged over _envcommon: a mistake there hits only that env."""
    infra = copy_infra(tmp_path)
    unit = infra / "live" / "prod" / "eks" / "terragrunt.hcl"
    unit.write_text(unit.read_text() + '\ninputs = {\n  colour = "blue"\n}\n')
    errors = tg_errors(infra)
    message = "input 'colour' is not a variable of module eks"
    assert errors_for(errors, "prod/eks", message), errors
    assert not errors_for(errors, "test/eks", message), errors


@pytest.mark.parametrize("old,new,message", [
    pytest.param("/_envcommon/eks.hcl", "/_envcommon/eksx.hcl", "does not exist", id="missing-envcommon-file"),
    pytest.param('path = find_in_parent_folders("root.hcl")', 'path = "${get_terragrunt_dir()}/../env.hcl"',
                 "does not include root.hcl", id="no-root-include"),
])
def test_tg_check_catches_bad_include(tmp_path, old, new, message):
    infra = copy_infra(tmp_path)
    replace_once(infra / "live" / "test" / "eks" / "terragrunt.hcl", old, new)
    errors = tg_errors(infra)
    assert errors_for(errors, "test/eks", message), errors
    assert not errors_for(errors, "prod/eks", message), errors


def test_tg_check_envcommon_is_not_a_unit_and_must_be_used(tmp_path):
    infra = copy_infra(tmp_path)
    common = infra / "live" / "_envcommon"
    (common / "terragrunt.hcl").write_text((infra / "live" / "test" / "eks" / "terragrunt.hcl").read_text())
    (common / "unused.hcl").write_text((common / "ecr.hcl").read_text())
    checker = tg_check.Checker(infra / "live")
    errors = checker.run()
    assert len(checker.units) == 14, sorted(checker.units)
    assert any("_envcommon/unused.hcl" in e and "is not included by any unit" in e for e in errors), errors


def test_tg_check_mock_for_nonexistent_module_output(tmp_path):
    infra = copy_infra(tmp_path)
    common = infra / "live" / "_envcommon" / "aurora.hcl"
    replace_once(common, 'node_security_group_id = "sg-00000000000000000"',
                 'node_security_group_id = "sg-00000000000000000"\n    node_sg                = "sg-1"')
    replace_once(common, "dependency.eks.outputs.node_security_group_id", "dependency.eks.outputs.node_sg")
    errors = tg_errors(infra)
    for env in ENVS:
        assert errors_for(errors, f"{env}/aurora", "module eks has no output 'node_sg'"), errors


@pytest.mark.parametrize("rel,config_path,envs", [
    pytest.param("test/network/terragrunt.hcl", "../k8s-addons", ("test",), id="in-unit"),
    pytest.param("_envcommon/network.hcl", "${get_terragrunt_dir()}/../k8s-addons", ENVS, id="in-envcommon"),
])
def test_tg_check_catches_cycle(tmp_path, rel, config_path, envs):
    infra = copy_infra(tmp_path)
    f = infra / "live" / rel
    f.write_text(f.read_text() + f'''
dependency "k8s" {{
  config_path = "{config_path}"

  mock_outputs = {{
    app_credentials_secret = "qa/app-credentials"
  }}
  mock_outputs_allowed_terraform_commands = ["init", "validate", "plan"]
}}
''')
    errors = tg_errors(infra)
    for env in ENVS:
        cycles = [e for e in errors if f"live/{env}/" in e and "dependency cycle" in e]
        assert bool(cycles) == (env in envs), (env, errors)


@pytest.mark.parametrize("old,new,message", [
    pytest.param('  description = "EKS cluster name."\n', "", "variable 'cluster_name' has no description", id="no-description"),
    pytest.param("cluster_name  = var.cluster_name", "cluster_name  = var.eks_cluster",
                 "var.eks_cluster is referenced but not declared", id="undeclared-variable"),
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


def test_module_check_catches_undeclared_provider(tmp_path):
    mod = copy_module("eks", tmp_path)
    replace_once(mod / "versions.tf", '    aws = {\n      source  = "hashicorp/aws"\n      version = ">= 5.100, < 6.0"\n    }\n', "")
    assert any("provider 'aws' is used but not declared" in e for e in module_check.check_module(mod))


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
    replace_once(infra / "live" / "_envcommon" / "eks.hcl", "  config_path = ", "  config_path     =   ")
    replace_once(infra / "live" / "test" / "eks" / "terragrunt.hcl", "  expose         = true", "  expose = true")
    bad = fmt_check.fmt_check(infra)
    assert any(b.endswith("ecr/main.tf") for b in bad), bad
    assert any(b.endswith("_envcommon/eks.hcl") for b in bad), bad
    assert any(b.endswith("test/eks/terragrunt.hcl") for b in bad), bad
