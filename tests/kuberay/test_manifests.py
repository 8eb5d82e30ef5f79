"""The rendered overlays are valid, and each check fails on a planted mistake."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kuberay_testlib import REPO_ROOT, rendered

import kuberay_checks as kc
from devtools import kuberay_gen
from serve_app.config import AppArgs


def one(docs, kind, name=None):
    found = kc.find(docs, kind, name)
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def gpu_group(docs):
    rs = one(docs, "RayService")
    return next(g for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] == "gpu")


# ----------------------------------------------------------------- all good
@pytest.mark.parametrize("variant", list(kc.VARIANTS))
def test_variant_is_schema_valid(variant):
    docs = rendered(variant)
    assert docs
    assert kc.validate_docs(docs + kc.extract_pods(docs)) == []


@pytest.mark.parametrize("overlay", ["test", "prod"])
def test_overlay_policy(overlay):
    assert kc.policy_errors(rendered(overlay), overlay) == []


def test_uses_newest_bundled_kubernetes():
    assert kc.k8s_version() == kubernetes_validate.latest_version()
    assert kc.k8s_version().startswith("1.3")


def test_crds_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("KUBERAY_CRDS_DIR", raising=False)
    assert kc.crds_dir() == REPO_ROOT.parent / "shared" / "crds"
    monkeypatch.setenv("KUBERAY_CRDS_DIR", str(tmp_path))
    assert kc.crds_dir() == tmp_path
    assert ("ray.io/v1", "RayService") in kc.crd_schemas(str(REPO_ROOT.parent / "shared" / "crds"))


def test_prod_shape(prod_docs):
    rs = one(prod_docs, "RayService")
    rc = rs["spec"]["rayClusterConfig"]
    assert rc["rayVersion"] == "2.60.0"
    assert rs["spec"]["upgradeStrategy"] == {"type": "NewCluster"}
    cpu = rc["workerGroupSpecs"][0]
    assert cpu["minReplicas"] >= 2
    zones = {t["topologyKey"]: t for t in cpu["template"]["spec"]["topologySpreadConstraints"]}
    assert zones["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "DoNotSchedule"
    gpu = gpu_group(prod_docs)
    spec = gpu["template"]["spec"]
    assert gpu["minReplicas"] == 0
    assert spec["nodeSelector"] == {"workload-type": "gpu-inference"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    serve = yaml.safe_load(rs["spec"]["serveConfigV2"])
    args = AppArgs.model_validate(serve["applications"][0]["args"])
    assert args.ingress.num_replicas >= 2 and args.docs_enabled is False
    pools = {p.name: p for p in args.llm.models[0].pools}
    assert str(pools["gpu"].enabled).lower() == "true"


def test_test_overlay_is_cpu_only(test_docs):
    rs = one(test_docs, "RayService")
    assert [g["groupName"] for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]] == ["cpu"]
    cfg = kuberay_gen.extract_serve_config("test")
    args = AppArgs.model_validate(cfg["applications"][0]["args"])
    model = args.llm.models[0]
    assert model.source == "/home/ray/models/SmolLM2-135M-Instruct"
    assert {p.name: str(p.enabled).lower() for p in model.pools}["gpu"] == "false"


def test_head_runs_no_work_and_dashboard_internal(test_docs):
    head = one(test_docs, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    # No Service/route exposes 8265/10001/6379; only the NetworkPolicies mention 8265.
    for route in kc.find(test_docs, "HTTPRoute"):
        for rule in route["spec"]["rules"]:
            for ref in rule.get("backendRefs", []):
                assert ref["port"] == 8000 and ref["name"] == "qa-serve-svc"
    serve_np = one(test_docs, "NetworkPolicy", "allow-serve-from-alb")
    assert serve_np["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 8000}]


def test_gateway_tls_and_alb_settings(test_docs):
    gw = one(test_docs, "Gateway")
    ref = gw["spec"]["infrastructure"]["parametersRef"]
    assert ref == {"group": "gateway.k8s.aws", "kind": "LoadBalancerConfiguration", "name": "qa-alb"}
    lbc = one(test_docs, "LoadBalancerConfiguration", "qa-alb")
    https = [c for c in lbc["spec"]["listenerConfigurations"] if c["protocolPort"] == "HTTPS:443"]
    assert https[0]["sslPolicy"] == "ELBSecurityPolicy-TLS13-1-2-2021-06"
    attrs = {a["key"]: a["value"] for a in lbc["spec"]["loadBalancerAttributes"]}
    assert attrs["routing.http.drop_invalid_header_fields.enabled"] == "true"
    assert int(attrs["idle_timeout.timeout_seconds"]) >= 150
    route = one(test_docs, "HTTPRoute", "qa")
    assert route["spec"]["rules"][0]["timeouts"]["request"] == "170s"
    redirect = one(test_docs, "HTTPRoute", "qa-http-redirect")
    assert redirect["spec"]["rules"][0]["filters"][0]["requestRedirect"]["scheme"] == "https"
    # serve keep-alive outlives the ALB idle timeout (else sporadic 502s)
    cfg = kuberay_gen.extract_serve_config("test")
    assert cfg["http_options"]["keep_alive_timeout_s"] > int(attrs["idle_timeout.timeout_seconds"])


def test_all_ray_containers_hardened(prod_docs):
    for pod in kc.extract_pods(prod_docs):
        for c in pod["spec"]["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] and sc["runAsNonRoot"] and not sc["allowPrivilegeEscalation"]
            assert sc["runAsUser"] == 1000
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and {"cpu", "memory"} <= set(c["resources"]["limits"])
            assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]


# ----------------------------------------------------------------- planted mistakes
def test_planted_unknown_field_in_rayservice_spec(test_docs):
    rs = one(test_docs, "RayService")
    rs["spec"]["serveConfigV3"] = "typo"
    errs = kc.validate_doc(rs)
    assert any("serveConfigV3" in e for e in errs), errs


def test_planted_unknown_field_deep_in_pod_template(test_docs):
    rs = one(test_docs, "RayService")
    rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resourcez"] = {}
    assert any("resourcez" in e for e in kc.validate_doc(rs))


def test_planted_unknown_field_in_builtin_kind(test_docs):
    np = one(test_docs, "NetworkPolicy", "allow-serve-from-alb")
    np["spec"]["ingres"] = []
    assert kc.validate_doc(np)


def test_planted_kind_without_crd_fails():
    doc = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}}
    errs = kc.validate_doc(doc)
    assert errs and "no CRD" in errs[0]


def test_planted_lbc_unknown_field(test_docs):
    lbc = one(test_docs, "LoadBalancerConfiguration")
    lbc["spec"]["sslPolicy"] = "ELBSecurityPolicy-TLS13-1-2-2021-06"  # belongs in a listener
    assert kc.validate_doc(lbc)


def test_planted_gpu_group_missing_toleration(prod_docs):
    gpu_group(prod_docs)["template"]["spec"].pop("tolerations")
    errs = kc.policy_errors(prod_docs, "prod")
    assert any("toleration" in e for e in errs), errs


def test_planted_gpu_group_min_replicas(prod_docs):
    gpu_group(prod_docs)["minReplicas"] = 1
    assert any("minReplicas" in e for e in kc.policy_errors(prod_docs, "prod"))


def test_planted_drifted_serve_config_in_manifest(test_docs):
    rs = one(test_docs, "RayService")
    cfg = yaml.safe_load(rs["spec"]["serveConfigV2"])
    cfg["applications"][0]["args"]["cache"]["answer_ttl_s"] = 1
    rs["spec"]["serveConfigV2"] = yaml.safe_dump(cfg)
    assert any("drifted" in e for e in kc.policy_errors(test_docs, "test"))


def test_planted_drift_serve_config_yaml_changed(tmp_path, capsys):
    changed = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    changed["http_options"]["request_timeout_s"] = 99
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(changed))
    assert kuberay_gen.drift("test", path)
    rc = kuberay_gen.run(argparse.Namespace(overlay=["test"], check=True, write=False, serve_config=path))
    assert rc == 1
    assert "DRIFT" in capsys.readouterr().err
    rc = kuberay_gen.run(argparse.Namespace(overlay=None, check=True, write=False, serve_config=None))
    assert rc == 0


def test_planted_invalid_override_fails_validation(tmp_path):
    bad = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    bad["applications"][0]["args"]["ingress"]["num_replicaz"] = 2
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(Exception, match="num_replicaz"):
        kuberay_gen.build_serve_config("test", path)


def test_override_identity_must_exist():
    base = {"pools": [{"name": "cpu", "x": 1}]}
    assert kuberay_gen.merge_overrides(base, {"pools": [{"name": "cpu", "x": 2}]}) == {"pools": [{"name": "cpu", "x": 2}]}
    with pytest.raises(kuberay_gen.OverrideError):
        kuberay_gen.merge_overrides(base, {"pools": [{"name": "gpu", "enabled": True}]})


def test_planted_httproute_to_dashboard_port(test_docs):
    route = one(test_docs, "HTTPRoute", "qa")
    route["spec"]["rules"][0]["backendRefs"][0]["port"] = 8265
    errs = kc.policy_errors(test_docs, "test")
    assert any("dashboard" in e for e in errs), errs


def test_planted_default_tls_policy(test_docs):
    lbc = one(test_docs, "LoadBalancerConfiguration")
    lbc["spec"]["listenerConfigurations"][0]["sslPolicy"] = "ELBSecurityPolicy-2016-08"
    lbc["spec"]["loadBalancerAttributes"] = []
    errs = kc.gateway_errors(test_docs)
    assert any("sslPolicy" in e for e in errs) and any("drop_invalid_header_fields" in e for e in errs)


def test_planted_probe_fights_kuberay(test_docs):
    rs = one(test_docs, "RayService")
    rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["livenessProbe"] = {
        "exec": {"command": ["true"]}}
    assert any("livenessProbe" in e for e in kc.policy_errors(test_docs, "test"))


def test_planted_privileged_container(test_docs, tmp_path):
    rs = one(test_docs, "RayService")
    container = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    container["securityContext"]["privileged"] = True
    container["securityContext"]["allowPrivilegeEscalation"] = True
    assert any("privileged" in e for e in kc.policy_errors(test_docs, "test"))
    # checkov (on the extracted Pod: it does not look inside a RayService) catches it too.
    pods = [p for p in kc.extract_pods(test_docs) if p["metadata"]["name"] == "qa-cpu"]
    (tmp_path / "pods.yaml").write_text(yaml.safe_dump_all(pods))
    result = kc.run_checkov(tmp_path)
    failed = {u.split()[0] for u in result["unexplained"]}
    assert "CKV_K8S_16" in failed, result["unexplained"]  # privileged
    assert "CKV_K8S_20" in failed  # allowPrivilegeEscalation


def test_rayversion_matches_image_tags(prod_docs):
    rs = one(prod_docs, "RayService")
    rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"] = "x/ray-cpu:2.59.0"
    assert any("does not match rayVersion" in e for e in kc.policy_errors(prod_docs, "prod"))


# ----------------------------------------------------------------- Dockerfiles
@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfiles_ok(name):
    path = REPO_ROOT / "kuberay" / "images" / name
    assert kc.dockerfile_errors(path) == []
    text = path.read_text()
    assert "provision-model" in text
    assert (path.parent / f"{name}.dockerignore").exists()


def test_cpu_dockerfile_drops_vision_audio():
    text = (REPO_ROOT / "kuberay" / "images" / "Dockerfile.cpu").read_text()
    assert "pip uninstall -y torchvision torchaudio torchcodec" in text
    assert "rayproject/ray:2.60.0-py311-cpu" in text
    assert "rayproject/ray-llm:2.60.0-py311-cu128" in (REPO_ROOT / "kuberay/images/Dockerfile.gpu").read_text()


@pytest.mark.parametrize("content,needle", [
    ("FROM rayproject/ray:latest\nUSER 1000\n", "not pinned"),
    ("FROM rayproject/ray\nUSER 1000\n", "not pinned"),
    ("FROM rayproject/ray:2.60.0-py311-cpu\nUSER root\n", "non-root"),
    ("FROM rayproject/ray:2.60.0-py311-cpu\n", "non-root"),
])
def test_planted_dockerfile_mistakes(tmp_path, content, needle):
    path = tmp_path / "Dockerfile.bad"
    path.write_text(content)
    errs = kc.dockerfile_errors(path)
    assert any(needle in e for e in errs), errs
