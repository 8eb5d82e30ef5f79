"""The rendered overlays are valid, and each check fails on a planted mistake."""

from __future__ import annotations

import argparse
import io
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kuberay_testlib import REPO_ROOT, rendered

import image_files
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


def _sslrootcert_in_app_credentials() -> str:
    script = (REPO_ROOT / "infra" / "modules" / "k8s-addons" / "addons.sh").read_text()
    m = re.search(r"sslrootcert=(/[^\s\"'&]+)", script)
    assert m, "app-credentials' DSN names no sslrootcert"
    return m.group(1)


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_images_hold_the_ca_the_database_url_names(name):
    """verify-full against Aurora needs the RDS CA at the path the DSN names; an
    image without it cannot open a single database connection."""
    path = _sslrootcert_in_app_credentials()
    adds = [args for instr, args in image_files.instructions(REPO_ROOT / "kuberay" / "images" / name)
            if instr == "ADD"]
    assert any(a.split()[-1] == path and "truststore.pki.rds.amazonaws.com" in a for a in adds), (path, adds)


def test_planted_ca_path_mismatch_is_caught(tmp_path):
    planted = tmp_path / "Dockerfile.cpu"
    planted.write_text((REPO_ROOT / "kuberay/images/Dockerfile.cpu").read_text()
                       .replace("/etc/ssl/certs/rds-global-bundle.pem", "/etc/ssl/rds.pem"))
    adds = [a for i, a in image_files.instructions(planted) if i == "ADD"]
    assert not any(a.split()[-1] == _sslrootcert_in_app_credentials() for a in adds)


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


# ----------------------------------------------------------------- issue 12: upstream CRDs only, CEL evaluated
def test_no_hand_written_schemas():
    assert not (REPO_ROOT / "kuberay" / "schemas").exists()
    # Every CRD-backed kind we render is validated against ../shared/crds, none allow-listed but PodMonitor.
    assert [k for _, k in kc.allowlist()] == ["PodMonitor"]


def test_every_custom_resource_has_its_upstream_crd_and_cel_rules_ran():
    import cel_rules

    evaluated, kinds = 0, set()
    for variant in kc.VARIANTS:
        for doc in rendered(variant):
            key = (doc["apiVersion"], doc["kind"])
            crd = kc.crd_versions().get(key)
            if crd is None:  # a built-in kind (kubernetes-validate knows it) or the allow-listed PodMonitor
                assert key in kc.allowlist() or kc.validate_doc(doc) == [], key
                continue
            assert not crd.deprecated, key
            kinds.add(key[1])
            evaluated += cel_rules.evaluate(crd.schema, kc.apply_defaults(crd.schema, doc)).evaluated
    assert {"RayService", "Gateway", "HTTPRoute", "LoadBalancerConfiguration", "TargetGroupConfiguration",
            "NodePool"} <= kinds
    assert evaluated > 100  # Gateway, HTTPRoute and NodePool rules really ran


def test_planted_lowercase_health_check_protocol(test_docs):
    """Finding 3: upstream's enum is HTTP|HTTPS|TCP; the hand-written schema accepted `http`."""
    tgc = one(test_docs, "TargetGroupConfiguration")
    assert tgc["spec"]["defaultConfiguration"]["healthCheckConfig"]["healthCheckProtocol"] == "HTTP"
    tgc["spec"]["defaultConfiguration"]["healthCheckConfig"]["healthCheckProtocol"] = "http"
    errs = kc.validate_doc(tgc)
    assert any("healthCheckProtocol" in e and "'http' is not one of" in e for e in errs), errs


def test_planted_deprecated_lbc_api_version(test_docs):
    lbc = one(test_docs, "LoadBalancerConfiguration")
    lbc["apiVersion"] = "gateway.k8s.aws/v1beta1"
    assert any("deprecated" in e for e in kc.validate_doc(lbc))


def test_planted_cel_violation_redirect_with_backend(test_docs):
    route = one(test_docs, "HTTPRoute", "qa-http-redirect")
    assert kc.validate_doc(route) == []
    route["spec"]["rules"][0]["backendRefs"] = [{"name": "qa-serve-svc", "port": 8000}]
    errs = kc.validate_doc(route)
    assert any("RequestRedirect filter must not be used together with backendRefs" in e for e in errs), errs


def test_planted_cel_violation_in_gateway(test_docs):
    gw = one(test_docs, "Gateway")
    gw["spec"]["listeners"][0]["tls"] = {"mode": "Terminate"}  # tls on a plain-HTTP listener
    errs = kc.validate_doc(gw)
    assert any("tls must not be specified for protocols" in e for e in errs), errs


def test_unevaluable_rule_fails_instead_of_passing():
    import cel_rules

    schema = {"type": "object", "x-kubernetes-validations": [{"rule": "self.name.noSuchFunction()"}],
              "properties": {"name": {"type": "string"}}}
    result = cel_rules.evaluate(schema, {"name": "x"})
    assert result.errors and "cannot evaluate" in result.errors[0], result
    false_rule = {"type": "object", "x-kubernetes-validations": [{"rule": "self.n > 1", "message": "n too small"}]}
    assert cel_rules.evaluate(false_rule, {"n": 1}).errors == ["<root>: n too small (rule: self.n > 1)"]
    assert cel_rules.evaluate(false_rule, {"n": 2}).errors == []


def test_kubernetes_cel_library_functions():
    import cel_rules

    schema = {"x-kubernetes-validations": [
        {"rule": "self.split('/').size() == 2 && self.find('[0-9]+') == '42'"}]}
    assert cel_rules.evaluate(schema, "a42/b").errors == []
    assert cel_rules.evaluate(schema, "a/b/c").errors


def test_defaults_applied_before_cel():
    schema = {"type": "object", "properties": {"mode": {"type": "string", "default": "x"}}}
    assert kc.apply_defaults(schema, {}) == {"mode": "x"}


# ----------------------------------------------------------------- issue 12: per-env CIDR, GPU caches
@pytest.mark.parametrize("overlay,cidr", [("test", "10.20.0.0/16"), ("prod", "10.30.0.0/16")])
def test_alb_network_policy_uses_the_env_vpc_cidr(overlay, cidr):
    assert kc.env_vpc_cidr(overlay) == cidr
    np = one(rendered(overlay), "NetworkPolicy", "allow-serve-from-alb")
    assert np["spec"]["ingress"][0]["from"] == [{"ipBlock": {"cidr": cidr}}]


@pytest.mark.parametrize("overlay", ["test", "prod"])
def test_planted_old_vpc_cidr(overlay):
    """Finding 6: 10.0.0.0/16 while the VPCs are 10.20/16 (test) and 10.30/16 (prod)."""
    docs = rendered(overlay)
    one(docs, "NetworkPolicy", "allow-serve-from-alb")["spec"]["ingress"][0]["from"][0]["ipBlock"]["cidr"] = "10.0.0.0/16"
    errs = kc.policy_errors(docs, overlay)
    assert any("ipBlock ['10.0.0.0/16']" in e for e in errs), errs


def test_gpu_pods_have_writable_cache_dirs(prod_docs):
    [pod] = [p for p in kc.extract_pods(prod_docs) if p["metadata"]["name"] == "qa-gpu"]
    container = pod["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    for m in container["volumeMounts"]:
        if m["mountPath"] in kc.GPU_WRITABLE_DIRS:
            assert "emptyDir" in volumes[m["name"]]
    assert set(kc.GPU_WRITABLE_DIRS) <= {m["mountPath"] for m in container["volumeMounts"]}


def test_planted_gpu_pod_without_triton_cache(prod_docs):
    spec = gpu_group(prod_docs)["template"]["spec"]
    spec["containers"][0]["volumeMounts"] = [m for m in spec["containers"][0]["volumeMounts"]
                                             if m["mountPath"] != "/home/ray/.triton"]
    errs = kc.policy_errors(prod_docs, "prod")
    assert any("/home/ray/.triton" in e for e in errs), errs


def test_committed_overlays_have_no_placeholder_account_or_image_tag():
    """Finding 6: the prod overlay pinned account 111122223333 and a tag the build never pushes."""
    import re

    deploy = REPO_ROOT / "kuberay" / "deploy"  # release.py's output: git-ignored, never committed
    for path in (REPO_ROOT / "kuberay").rglob("*.yaml"):
        if deploy in path.parents:
            continue
        text = path.read_text()
        assert not re.search(r"\b\d{12}\b", text), f"{path}: an AWS account id is committed"
        assert "newTag" not in text, f"{path}: image tags are set by the applied overlay only"
    for overlay in ("test", "prod"):
        images = {c["image"] for p in kc.extract_pods(rendered(overlay)) for c in p["spec"]["containers"]}
        assert images <= {"ray-cpu:2.60.0", "ray-gpu:2.60.0"}, images  # names release.py replaces


# ----------------------------------------------------------------- issue 14: Karpenter capacity
def test_karpenter_pools_fit_the_rayservice():
    pools = rendered("karpenter")
    assert {d["metadata"]["name"] for d in kc.find(pools, "NodePool")} == {"ray-cpu", "ray-gpu"}
    assert kc.validate_docs(pools) == []
    assert kc.karpenter_errors(pools, rendered("prod")) == []
    gpu = one(pools, "NodePool", "ray-gpu")["spec"]
    reqs = {r["key"]: r["values"] for r in gpu["template"]["spec"]["requirements"]}
    assert reqs["karpenter.sh/capacity-type"] == ["spot", "on-demand"]
    assert gpu["disruption"]["consolidationPolicy"] == "WhenEmpty"
    for group in one(rendered("prod"), "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        assert group["template"]["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"] == "true"


def test_planted_karpenter_missing_node_class():
    pools = [d for d in rendered("karpenter") if d["metadata"]["name"] != "ray-gpu" or d["kind"] != "EC2NodeClass"]
    errs = kc.karpenter_errors(pools, rendered("prod"))
    assert any("EC2NodeClass 'ray-gpu' is not rendered" in e for e in errs), errs


def test_planted_karpenter_gpu_pool_without_taint():
    pools = rendered("karpenter")
    one(pools, "NodePool", "ray-gpu")["spec"]["template"]["spec"].pop("taints")
    errs = kc.karpenter_errors(pools, rendered("prod"))
    assert any("no nvidia.com/gpu NoSchedule taint" in e for e in errs), errs


@pytest.mark.parametrize("pool,resource,value", [("ray-gpu", "nvidia.com/gpu", "4"), ("ray-cpu", "cpu", "36")])
def test_planted_karpenter_limits_below_max_replicas(pool, resource, value):
    pools = rendered("karpenter")
    one(pools, "NodePool", pool)["spec"]["limits"][resource] = value
    errs = kc.karpenter_errors(pools, rendered("prod"))
    assert any(f"limits.{resource} {value} <" in e for e in errs), errs
    assert kc.validate_docs(pools) == []  # the CRD accepts it: only this check sees it


def test_prod_and_test_renders_carry_their_karpenter_capacity():
    for overlay in ("test", "prod"):
        docs = rendered(overlay)
        assert {d["metadata"]["name"] for d in kc.find(docs, "NodePool")} == {"ray-cpu", "ray-gpu"}
        assert all("namespace" not in d["metadata"] for d in kc.find(docs, "NodePool") + kc.find(docs, "EC2NodeClass")), \
            "cluster-scoped kinds must not get a namespace"
        assert {c["spec"]["role"] for c in kc.find(docs, "EC2NodeClass")} == {f"qa-{overlay}-karpenter-node"}
        assert kc.karpenter_errors(docs, docs, overlay) == []


@pytest.mark.parametrize("overlay", ["test", "prod"])
def test_planted_karpenter_role_mismatch(overlay, tmp_path):
    """The EC2NodeClass names a role infra does not create (infra's name renamed in a copy)."""
    docs = rendered(overlay)
    for c in kc.find(docs, "EC2NodeClass"):
        c["spec"]["role"] = f"KarpenterNodeRole-qa-{overlay}"
    errs = kc.karpenter_errors(docs, docs, overlay)
    assert any("is not the node role infra creates" in e for e in errs), errs
    # ...and the other way round: infra renames its role, the committed YAML no longer matches.
    tf = tmp_path / "karpenter.tf"
    tf.write_text(kc.KARPENTER_TF.read_text().replace('"${var.name}-karpenter-node"', '"${var.name}-nodes"'))
    assert kc.karpenter_node_role(f"qa-{overlay}", tf) == f"qa-{overlay}-nodes"
    assert kc.karpenter_node_role(f"qa-{overlay}") == f"qa-{overlay}-karpenter-node"


def test_planted_karpenter_discovery_tag_of_another_cluster():
    docs = rendered("test")
    kc.find(docs, "EC2NodeClass", "ray-cpu")[0]["spec"]["subnetSelectorTerms"] = [{"tags": {"karpenter.sh/discovery": "qa-prod"}}]
    assert any("discovery tags" in e for e in kc.karpenter_errors(docs, docs, "test"))


# ----------------------------------------------------------------- issue 14: the head on the system group
def test_head_lands_on_the_system_node_group():
    labels, taints = kc.system_node_placement()
    assert labels == {"workload-type": "system"} and [t["key"] for t in taints] == ["CriticalAddonsOnly"]
    for overlay in ("test", "prod"):
        assert kc.head_placement_errors(one(rendered(overlay), "RayService")) == []
        # and no worker group may land there: none tolerates the taint
        for g in one(rendered(overlay), "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
            assert not any(t.get("key") == "CriticalAddonsOnly" for t in g["template"]["spec"].get("tolerations") or [])


@pytest.mark.parametrize("mistake", ["no-selector", "cpu-selector", "no-toleration"])
def test_planted_head_not_on_system_group(mistake):
    docs = rendered("prod")
    head = one(docs, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    if mistake == "no-selector":
        head.pop("nodeSelector")
    elif mistake == "cpu-selector":
        head["nodeSelector"] = {"workload-type": "cpu"}
    else:
        head.pop("tolerations")
    errs = kc.policy_errors(docs, "prod")
    assert any("head" in e and ("system node group" in e or "CriticalAddonsOnly" in e) for e in errs), errs


# ----------------------------------------------------------------- issue 14: the rotated DB password
def test_password_file_is_the_csi_mounted_secret():
    spc, alias = kc.db_password_source()
    assert (spc, alias) == ("aurora-password", "password")
    for overlay in ("test", "prod"):
        pods = kc.extract_pods(rendered(overlay))
        assert len(pods) == (3 if overlay == "prod" else 2)
        for pod in pods:
            vols = {v["name"]: v for v in pod["spec"]["volumes"]}
            for c in pod["spec"]["containers"]:
                env = {e["name"]: e.get("value") for e in c["env"]}
                [m] = [m for m in c["volumeMounts"] if "csi" in vols[m["name"]]]
                assert env["DATABASE_PASSWORD_FILE"] == f"{m['mountPath']}/{alias}"
                assert vols[m["name"]]["csi"]["volumeAttributes"]["secretProviderClass"] == spc
            assert kc.db_password_errors(pod["spec"], pod["metadata"]["name"]) == []


@pytest.mark.parametrize("mistake", ["wrong-path", "no-env", "other-class", "writable"])
def test_planted_password_file_mismatch(mistake):
    docs = rendered("prod")
    group = gpu_group(docs)["template"]["spec"]
    c = group["containers"][0]
    if mistake == "wrong-path":
        next(e for e in c["env"] if e["name"] == "DATABASE_PASSWORD_FILE")["value"] = "/mnt/secrets/db/pass"
    elif mistake == "no-env":
        c["env"] = [e for e in c["env"] if e["name"] != "DATABASE_PASSWORD_FILE"]
    elif mistake == "other-class":
        next(v for v in group["volumes"] if v["name"] == "db-password")["csi"]["volumeAttributes"]["secretProviderClass"] = "x"
    else:
        next(m for m in c["volumeMounts"] if m["name"] == "db-password")["readOnly"] = False
    errs = kc.policy_errors(docs, "prod")
    assert any("group gpu" in e and ("DATABASE_PASSWORD_FILE" in e or "readOnly" in e) for e in errs), errs
