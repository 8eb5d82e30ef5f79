"""Offline checks of the kuberay/ manifests (used by check.sh and tests/kuberay).

* render: the real kustomize (Go library kustomize/api v0.21.3 through the
  `pykustomize` wheel) - no kustomize/kubectl binary needed;
* built-in kinds: kubernetes-validate --strict against the newest bundled Kubernetes;
* custom resources: the upstream CRDs in ../shared/crds only (KubeRay, Gateway API,
  AWS Load Balancer Controller, Karpenter), as the API server does it: schema
  defaults applied, then jsonschema against the openAPIV3Schema (made strict:
  additionalProperties false wherever the CRD lists properties and does not
  preserve unknown fields), then every `x-kubernetes-validations` CEL rule
  evaluated (cel-python, plus the Kubernetes CEL library functions the CRDs use);
  a rule that cannot be evaluated is an error, transition rules (oldSelf) are
  reported as update-only; a deprecated CRD version is an error. A kind without a
  CRD fails unless kuberay/crd-allowlist.yaml names it with a reason;
* policy: what this service requires (pinned rayVersion, GPU group scheduling,
  routes only to Serve's 8000, TLS policy, probes left to KubeRay, ...);
* serveConfigV2 drift against serve_config.yaml (devtools.kuberay_gen);
* checkov on the rendered manifests plus the Ray pod templates extracted as Pods,
  with skips (one reason each) from kuberay/checkov-skips.yaml;
* Dockerfiles: pinned base, non-root USER, no `latest`.

CLI: python kuberay/scripts/kuberay_checks.py  (exit 1 on any failure)
"""

from __future__ import annotations

import asyncio
import copy
import fnmatch
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
for _p in (REPO_ROOT, Path(__file__).resolve().parent):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

KUBERAY = REPO_ROOT / "kuberay"
ALLOWLIST = KUBERAY / "crd-allowlist.yaml"
CHECKOV_SKIPS = KUBERAY / "checkov-skips.yaml"
RAY_VERSION = "2.60.0"
RAYSERVICE = "qa"
SERVE_SVC = f"{RAYSERVICE}-serve-svc"
FORBIDDEN_PORTS = {8265: "dashboard", 10001: "Ray client", 6379: "GCS", 52365: "dashboard agent"}
TLS_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"
ALB_CONTROLLER = "gateway.k8s.aws/alb"  # the LB controller's ALB gateway controller name (v3.5.0)
# Where vLLM on CUDA writes under a read-only root filesystem: each needs a writable
# mount in the GPU pods (Triton kernels, torch/vLLM/HF caches, the CUDA JIT cache).
GPU_WRITABLE_DIRS = ("/tmp", "/home/ray/.cache", "/home/ray/.triton", "/home/ray/.nv", "/home/ray/.config")
ENV_HCL = REPO_ROOT / "infra" / "live" / "{env}" / "env.hcl"


def env_vpc_cidr(env: str) -> str | None:
    """`vpc_cidr` of infra/live/<env>/env.hcl (a plain string attribute there)."""
    import re

    path = Path(str(ENV_HCL).format(env=env))
    m = re.search(r'^\s*vpc_cidr\s*=\s*"([^"]+)"', path.read_text(), flags=re.M) if path.is_file() else None
    return m.group(1) if m else None

EKS_MAIN_TF = REPO_ROOT / "infra" / "modules" / "eks" / "main.tf"
KARPENTER_TF = REPO_ROOT / "infra" / "modules" / "eks" / "karpenter.tf"
ADDONS = REPO_ROOT / "infra" / "modules" / "k8s-addons"
CSI_DRIVER = "secrets-store.csi.k8s.io"
TF_EFFECTS = {"NO_SCHEDULE": "NoSchedule", "NO_EXECUTE": "NoExecute", "PREFER_NO_SCHEDULE": "PreferNoSchedule"}


def _hcl_map(text: str) -> dict[str, str]:
    import re

    return dict(re.findall(r'"?([\w./-]+)"?\s*=\s*"([^"]*)"', text))


def system_node_placement(main_tf: Path = EKS_MAIN_TF) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Labels and taints of the managed system node group, as infra/modules/eks sets them
    (its locals system_node_labels / system_node_taints)."""
    import re

    text = main_tf.read_text()
    labels = re.search(r"^\s*system_node_labels\s*=\s*\{([^}]*)\}", text, flags=re.M)
    taints = re.search(r"^\s*system_node_taints\s*=\s*\[(.*)\]\s*$", text, flags=re.M)
    out_taints = [{**m, "effect": TF_EFFECTS.get(m.get("effect", ""), m.get("effect", ""))}
                  for m in (_hcl_map(t) for t in re.findall(r"\{([^}]*)\}", taints.group(1) if taints else ""))]
    return (_hcl_map(labels.group(1)) if labels else {}), out_taints


def karpenter_node_role(env_name: str, karpenter_tf: Path = KARPENTER_TF) -> str | None:
    """The node role infra/modules/eks/karpenter.tf creates for cluster `env_name`."""
    import re

    m = re.search(r'^\s*karpenter_node_role\s*=\s*"([^"]+)"', karpenter_tf.read_text(), flags=re.M)
    return m.group(1).replace("${var.name}", env_name) if m else None


def db_password_source() -> tuple[str | None, str | None]:
    """(SecretProviderClass name, file name) that infra/ k8s-addons creates: the class is
    var.db_password_provider_class, the file its objectAlias."""
    import re

    var = re.search(r'variable "db_password_provider_class" \{.*?default\s*=\s*"([^"]+)"',
                    (ADDONS / "variables.tf").read_text(), flags=re.S)
    manifest = (ADDONS / "manifests" / "secretproviderclass.yaml.tftpl").read_text()
    alias = re.search(r'objectAlias:\s*"([^"]+)"', manifest)
    return (var.group(1) if var else None), (alias.group(1) if alias else None)


def env_name(env: str) -> str | None:
    import re

    path = Path(str(ENV_HCL).format(env=env))
    m = re.search(r'^\s*name\s*=\s*"([^"]+)"', path.read_text(), flags=re.M) if path.is_file() else None
    return m.group(1) if m else None


# name -> (kustomization dir or None, extra components). The namespaced monitoring
# component is rendered on top of prod; the cluster-scoped Karpenter NodePool alone.
VARIANTS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "test": ("overlays/test", ()),
    "prod": ("overlays/prod", ()),
    "prod+monitoring": ("overlays/prod", ("components/monitoring",)),
    "karpenter": (None, ("components/karpenter",)),
    # Applied by infra/ (k8s-addons' addons.sh), validated here against the same CRDs.
    "infra-manifests": (None, ()),
}
INFRA_MANIFESTS = REPO_ROOT / "infra" / "modules" / "k8s-addons" / "manifests"


def crds_dir() -> Path:
    """shared/crds next to the repo (CI: ../shared/crds), overridable by KUBERAY_CRDS_DIR."""
    env = os.environ.get("KUBERAY_CRDS_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "crds"


def k8s_version() -> str:
    import kubernetes_validate

    return os.environ.get("KUBERAY_K8S_VERSION") or kubernetes_validate.latest_version()


# --------------------------------------------------------------------------- render
def kustomize_build(path: Path) -> list[dict[str, Any]]:
    import pykustomize

    result = asyncio.run(pykustomize.build(str(path)))
    return [d for d in yaml.safe_load_all(result.yaml) if d]


def render(variant: str) -> list[dict[str, Any]]:
    if variant == "infra-manifests":
        return [d for f in sorted(INFRA_MANIFESTS.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    base, components = VARIANTS[variant]
    if base and not components:
        return kustomize_build(KUBERAY / base)
    with tempfile.TemporaryDirectory() as tmp:
        # A throw-away kustomization adding the optional components to an overlay.
        kustomization: dict[str, Any] = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "components": [os.path.relpath(KUBERAY / c, tmp) for c in components],
        }
        if base:
            # No namespace here: as in the overlays, it would land on the cluster-scoped
            # Karpenter kinds; base and the components name theirs.
            kustomization["resources"] = [os.path.relpath(KUBERAY / base, tmp)]
        (Path(tmp) / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        return kustomize_build(Path(tmp))


def kind_id(doc: dict[str, Any]) -> str:
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind')}/{meta.get('namespace', '-')}/{meta.get('name')}"


def find(docs: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"].get("name") == name)]


# --------------------------------------------------------------------------- pods
def pod_templates(rayservice: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rc = rayservice["spec"]["rayClusterConfig"]
    out = [("head", rc["headGroupSpec"]["template"])]
    out += [(g["groupName"], g["template"]) for g in rc.get("workerGroupSpecs", [])]
    return out


def extract_pods(docs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The head and every worker pod template of each RayService, as `kind: Pod`."""
    pods = []
    for rs in find(docs, "RayService"):
        meta = rs["metadata"]
        for group, template in pod_templates(rs):
            tmeta = template.get("metadata") or {}
            pods.append({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"{meta['name']}-{group}",
                    "namespace": meta.get("namespace", "default"),
                    "labels": dict(tmeta.get("labels") or {}),
                },
                "spec": copy.deepcopy(template["spec"]),
            })
    return pods


# --------------------------------------------------------------------------- schemas
def strictify(schema: Any) -> Any:
    """additionalProperties: false wherever an object lists properties and neither
    preserves unknown fields nor defines additionalProperties itself."""
    if isinstance(schema, list):
        return [strictify(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strictify(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@dataclass(frozen=True)
class CrdVersion:
    schema: dict[str, Any]  # raw openAPIV3Schema: defaults and CEL rules
    strict: dict[str, Any]  # the same made strict, for jsonschema
    deprecated: bool
    source: str


@lru_cache(maxsize=None)
def crd_versions(directory: str | None = None) -> dict[tuple[str, str], CrdVersion]:
    """(apiVersion, kind) -> the served version of every CRD under `directory`."""
    root = Path(directory) if directory else crds_dir()
    out: dict[tuple[str, str], CrdVersion] = {}
    if not root.is_dir():
        return out
    for path in sorted(root.rglob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
            for version in doc["spec"]["versions"]:
                schema = (version.get("schema") or {}).get("openAPIV3Schema")
                if schema and version.get("served", True):
                    out[(f"{group}/{version['name']}", kind)] = CrdVersion(
                        schema, strictify(schema), bool(version.get("deprecated")),
                        f"{path.parent.name}/{path.name}")
    return out


def crd_schemas(directory: str | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict openAPIV3Schema."""
    return {k: v.strict for k, v in crd_versions(directory).items()}


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting as the API server does it before validation: a missing
    property with a `default` gets it (and defaults inside it), recursively."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for name, sub in props.items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for k in value:
                if k not in props:
                    value[k] = apply_defaults(extra, value[k])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], v) for v in value]
    return value


@lru_cache(maxsize=None)
def allowlist() -> dict[tuple[str, str], str]:
    entries = yaml.safe_load(ALLOWLIST.read_text()) or []
    return {(e["apiVersion"], e["kind"]): e["reason"] for e in entries}


def _schema_errors(schema: dict[str, Any], doc: dict[str, Any]) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(schema) if "$schema" not in schema else \
        jsonschema.validators.validator_for(schema)(schema)
    return [
        f"{kind_id(doc)}: {'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message[:300]}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


def validate_doc(doc: dict[str, Any], notes: list[str] | None = None) -> list[str]:
    """Schema and CEL errors of one document ([] = valid)."""
    import kubernetes_validate

    import cel_rules

    key = (doc.get("apiVersion", ""), doc.get("kind", ""))
    crd = crd_versions().get(key)
    if crd is not None:
        errs = []
        if crd.deprecated:
            errs.append(f"{kind_id(doc)}: {key[0]} is deprecated in {crd.source}: use the storage version")
        defaulted = apply_defaults(crd.schema, copy.deepcopy(doc))
        errs += _schema_errors(crd.strict, defaulted)
        if not errs:  # CEL rules assume a schema-valid object (the API server checks in this order)
            result = cel_rules.evaluate(crd.schema, defaulted)
            errs += [f"{kind_id(doc)}: {e}" for e in result.errors]
            if notes is not None:
                notes += [f"{kind_id(doc)}: {n}" for n in result.notes]
        return errs
    if key in allowlist():
        if notes is not None:
            notes.append(f"{kind_id(doc)}: not schema-validated: {allowlist()[key]}")
        return []
    try:
        kubernetes_validate.validate(doc, k8s_version(), strict=True)
        return []
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{kind_id(doc)}: no CRD in {crds_dir()} and not in kuberay/crd-allowlist.yaml"]
    except kubernetes_validate.ValidationError as e:
        path = "/".join(str(p) for p in e.path) or "<root>"
        return [f"{kind_id(doc)}: {path}: {e.message[:300]}"]


def validate_docs(docs: Iterable[dict[str, Any]], notes: list[str] | None = None) -> list[str]:
    errors: list[str] = []
    for doc in docs:
        errors += validate_doc(doc, notes)
    return errors


# --------------------------------------------------------------------------- policy
def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def _gpu_limit(container: dict[str, Any]) -> bool:
    return bool(((container.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu"))


def policy_errors(docs: list[dict[str, Any]], overlay: str | None = None) -> list[str]:
    errs: list[str] = []
    services = find(docs, "RayService")
    if len(services) != 1:
        return [f"expected exactly one RayService, found {len(services)}"]
    rs = services[0]
    spec, rc = rs["spec"], rs["spec"]["rayClusterConfig"]
    rid = kind_id(rs)
    if rc.get("rayVersion") != RAY_VERSION:
        errs.append(f"{rid}: rayVersion {rc.get('rayVersion')!r} != {RAY_VERSION!r}")
    if (spec.get("upgradeStrategy") or {}).get("type") != "NewCluster":
        errs.append(f"{rid}: upgradeStrategy.type must be NewCluster")
    if not rc.get("enableInTreeAutoscaling"):
        errs.append(f"{rid}: enableInTreeAutoscaling must be true")
    auto = rc.get("autoscalerOptions") or {}
    if "idleTimeoutSeconds" not in auto or "upscalingMode" not in auto:
        errs.append(f"{rid}: autoscalerOptions needs idleTimeoutSeconds and upscalingMode")
    if (rc.get("authOptions") or {}).get("mode") != "token":
        errs.append(f"{rid}: authOptions.mode must be token")
    ft = rc.get("gcsFaultToleranceOptions") or {}
    pw = ((ft.get("redisPassword") or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
    if not ft.get("redisAddress") or pw.get("name") != "app-credentials":
        errs.append(f"{rid}: gcsFaultToleranceOptions needs redisAddress and redisPassword from app-credentials")
    head = rc["headGroupSpec"]
    if str(head.get("rayStartParams", {}).get("num-cpus")) != "0":
        errs.append(f"{rid}: head rayStartParams num-cpus must be \"0\" (no Serve/LLM work on the head)")
    if head.get("rayStartParams", {}).get("dashboard-host") != "0.0.0.0":
        errs.append(f"{rid}: head dashboard-host must be 0.0.0.0")
    errs += head_placement_errors(rs)

    gpu_groups = 0
    for group, template in pod_templates(rs):
        pspec = template["spec"]
        where = f"{rid} group {group}"
        for c in _containers(pspec):
            cw = f"{where} container {c.get('name')}"
            image = c.get("image", "")
            tag = image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else ""
            if "@" not in image and not (tag == RAY_VERSION or tag.startswith(RAY_VERSION + "-")):
                errs.append(f"{cw}: image tag {tag!r} does not match rayVersion {RAY_VERSION}")
            res = c.get("resources") or {}
            for kind in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (res.get(kind) or {}):
                        errs.append(f"{cw}: resources.{kind}.{r} missing")
            sc = c.get("securityContext") or {}
            if sc.get("privileged") or sc.get("allowPrivilegeEscalation", True):
                errs.append(f"{cw}: must not be privileged / allow privilege escalation")
            if not (sc.get("runAsNonRoot") or (pspec.get("securityContext") or {}).get("runAsNonRoot")):
                errs.append(f"{cw}: runAsNonRoot required")
            if sc.get("runAsUser", (pspec.get("securityContext") or {}).get("runAsUser")) in (None, 0):
                errs.append(f"{cw}: runAsUser must be set to the ray uid (1000)")
            for probe in ("livenessProbe", "readinessProbe"):
                if probe in c:
                    errs.append(f"{cw}: {probe} set: KubeRay injects its own probes, don't fight them")
            if not any((e.get("secretRef") or {}).get("name") == "app-credentials" for e in c.get("envFrom") or []):
                errs.append(f"{cw}: envFrom secretRef app-credentials missing")
        errs += db_password_errors(pspec, where)
        if any(_gpu_limit(c) for c in _containers(pspec)):
            gpu_groups += 1
            for c in _containers(pspec):
                if (c.get("securityContext") or {}).get("readOnlyRootFilesystem"):
                    mounted = {m.get("mountPath") for m in c.get("volumeMounts") or [] if not m.get("readOnly")}
                    missing = [d for d in GPU_WRITABLE_DIRS if d not in mounted]
                    if missing:
                        errs.append(f"{where} container {c.get('name')}: read-only root filesystem without "
                                    f"writable mounts for {missing} (vLLM/Triton/CUDA write there)")
            g = next(x for x in rc.get("workerGroupSpecs", []) if x["groupName"] == group)
            if g.get("minReplicas") != 0:
                errs.append(f"{where}: GPU group minReplicas must be 0")
            if (pspec.get("nodeSelector") or {}).get("workload-type") != "gpu-inference":
                errs.append(f"{where}: GPU group needs nodeSelector workload-type: gpu-inference")
            if not any(
                t.get("key") == "nvidia.com/gpu" and t.get("effect") in ("NoSchedule", None)
                and (t.get("operator") == "Exists" or t.get("value") is not None)
                for t in pspec.get("tolerations") or []
            ):
                errs.append(f"{where}: GPU group lacks a toleration for the nvidia.com/gpu NoSchedule taint")
        elif group != "head" and overlay == "prod":
            zones = [t for t in pspec.get("topologySpreadConstraints") or []
                     if t.get("topologyKey") == "topology.kubernetes.io/zone"]
            if not zones:
                errs.append(f"{where}: prod workers need a zone topologySpreadConstraint")
    if overlay == "prod" and not gpu_groups:
        errs.append(f"{rid}: prod needs the GPU worker group")
    if overlay == "test" and gpu_groups:
        errs.append(f"{rid}: test must have CPU workers only")

    # Serve config: drift against serve_config.yaml, and prod's replica floor.
    if overlay:
        from devtools import kuberay_gen

        rendered = yaml.safe_load(spec.get("serveConfigV2") or "{}")
        if rendered != kuberay_gen.build_serve_config(overlay):
            errs.append(f"{rid}: serveConfigV2 drifted from serve_config.yaml + overrides "
                        f"(python -m devtools kuberay-config --overlay {overlay} --write)")
        if overlay == "prod":
            for app in rendered.get("applications", []):
                ingress = (app.get("args") or {}).get("ingress") or {}
                if (ingress.get("num_replicas") or 0) < 2:
                    errs.append(f"{rid}: prod app {app.get('name')} needs ingress num_replicas >= 2")
                if (app.get("args") or {}).get("docs_enabled", True):
                    errs.append(f"{rid}: prod app {app.get('name')} must set docs_enabled: false")

    # Routing: only Serve's port 8000 on the serve service, never Ray's internal ports.
    for route in find(docs, "HTTPRoute"):
        for rule in route["spec"].get("rules", []):
            for ref in rule.get("backendRefs") or []:
                port = ref.get("port")
                if port in FORBIDDEN_PORTS:
                    errs.append(f"{kind_id(route)}: routes to the {FORBIDDEN_PORTS[port]} port {port}")
                elif (ref.get("name"), port) != (SERVE_SVC, 8000):
                    errs.append(f"{kind_id(route)}: backend {ref.get('name')}:{port} is not {SERVE_SVC}:8000")
    for svc in find(docs, "Service"):
        for p in svc["spec"].get("ports", []):
            if p.get("port") in FORBIDDEN_PORTS or p.get("targetPort") in FORBIDDEN_PORTS:
                errs.append(f"{kind_id(svc)}: exposes Ray-internal port {p.get('port')}")
    errs += gateway_errors(docs)
    errs += network_policy_errors(docs, overlay)
    if overlay in ("test", "prod"):
        # The overlay that is applied carries the Karpenter capacity for its workers.
        if not find(docs, "NodePool") or not find(docs, "EC2NodeClass"):
            errs.append(f"{overlay}: the render has no Karpenter NodePools/EC2NodeClasses (components/karpenter)")
        errs += karpenter_errors(docs, docs, overlay)
    return errs


def head_placement_errors(rs: dict[str, Any]) -> list[str]:
    """The Ray head lands on the managed system node group: it selects the group's labels
    and tolerates its taints (infra/modules/eks main.tf), and nothing else."""
    labels, taints = system_node_placement()
    spec = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    where = f"{kind_id(rs)} head"
    errs = []
    selector = spec.get("nodeSelector") or {}
    if not selector or any(labels.get(k) != v for k, v in selector.items()):
        errs.append(f"{where}: nodeSelector {selector} does not select the system node group ({labels})")
    for t in taints:
        if not any(tol.get("key") == t["key"] and tol.get("effect") in (None, t["effect"])
                   and (tol.get("operator") == "Exists" or tol.get("value") == t.get("value"))
                   for tol in spec.get("tolerations") or []):
            errs.append(f"{where}: does not tolerate the system group's taint {t['key']}:{t['effect']}")
    return errs


def db_password_errors(pspec: dict[str, Any], where: str) -> list[str]:
    """Every container reads the Aurora password from DATABASE_PASSWORD_FILE, which is the
    file infra's SecretProviderClass mounts through the Secrets Store CSI driver."""
    spc, alias = db_password_source()
    volumes = {v["name"]: v for v in pspec.get("volumes") or []}
    errs = []
    for c in _containers(pspec):
        cw = f"{where} container {c.get('name')}"
        env = {e["name"]: e.get("value") for e in c.get("env") or []}
        path = env.get("DATABASE_PASSWORD_FILE")
        if not path:
            errs.append(f"{cw}: DATABASE_PASSWORD_FILE not set (the rotated Aurora password is read from it)")
            continue
        mounts = [m for m in c.get("volumeMounts") or []
                  if ((volumes.get(m["name"]) or {}).get("csi") or {}).get("driver") == CSI_DRIVER
                  and (volumes[m["name"]]["csi"].get("volumeAttributes") or {}).get("secretProviderClass") == spc]
        if not any(path == f"{m['mountPath'].rstrip('/')}/{alias}" for m in mounts):
            errs.append(f"{cw}: DATABASE_PASSWORD_FILE {path} is not the file {alias!r} of a {CSI_DRIVER} volume "
                        f"with secretProviderClass {spc!r} ({[m['mountPath'] for m in mounts]})")
        if any(not m.get("readOnly") for m in mounts):
            errs.append(f"{cw}: the password volume must be mounted readOnly")
    return errs


def _quantity(v: Any) -> float:
    """A Kubernetes quantity as a number (cores, bytes, GPUs)."""
    s = str(v)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    for u, f in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if s.endswith(u):
            return float(s[: -len(u)]) * f
    return float(s)


def karpenter_errors(pools: list[dict[str, Any]], workload: list[dict[str, Any]], env: str = "prod") -> list[str]:
    """Karpenter capacity against the RayService it serves: every NodePool's EC2NodeClass is
    rendered, each worker group has a NodePool whose labels it selects and whose taints it
    tolerates (the GPU pool must be tainted), its limits hold 2 x maxReplicas of the group's
    pods (a NewCluster upgrade runs two clusters), and the EC2NodeClasses name this env's
    cluster (discovery tag) and node role."""
    errs: list[str] = []
    classes = {d["metadata"]["name"]: d for d in find(pools, "EC2NodeClass")}
    nodepools = find(pools, "NodePool")
    for np in nodepools:
        ref = np["spec"]["template"]["spec"]["nodeClassRef"]["name"]
        if ref not in classes:
            errs.append(f"{kind_id(np)}: EC2NodeClass {ref!r} is not rendered (nothing creates it)")
    name = env_name(env)
    role = karpenter_node_role(name) if name else None
    for c in classes.values():
        spec = c["spec"]
        tags = [t.get("tags", {}).get("karpenter.sh/discovery") for t in
                spec.get("subnetSelectorTerms", []) + spec.get("securityGroupSelectorTerms", [])]
        # infra tags the private subnets, the node SG and the cluster SG with
        # karpenter.sh/discovery=<cluster> and names the node role in eks/karpenter.tf.
        if name and set(tags) != {name}:
            errs.append(f"{kind_id(c)}: discovery tags {tags} are not {env}'s cluster ({name})")
        if name and spec.get("role") != role:
            errs.append(f"{kind_id(c)}: role {spec.get('role')!r} is not the node role infra creates for {env} "
                        f"({role!r}, infra/modules/eks/karpenter.tf)")
    rs = find(workload, "RayService")
    for g in (rs[0]["spec"]["rayClusterConfig"].get("workerGroupSpecs", []) if rs else []):
        pspec = g["template"]["spec"]
        selector = pspec.get("nodeSelector") or {}
        gpu = any(_gpu_limit(c) for c in _containers(pspec))
        matching = [np for np in nodepools if selector and all(
            (np["spec"]["template"].get("metadata", {}).get("labels") or {}).get(k) == v for k, v in selector.items())]
        where = f"worker group {g['groupName']}"
        if not matching:
            errs.append(f"{where}: no NodePool carries its nodeSelector {selector}")
            continue
        np = matching[0]
        taints = np["spec"]["template"]["spec"].get("taints") or []
        if gpu and not any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in taints):
            errs.append(f"{kind_id(np)}: the GPU pool has no nvidia.com/gpu NoSchedule taint: CPU pods would land "
                        f"on GPU nodes")
        for t in taints:
            if not any(tol.get("key") == t["key"] and (tol.get("operator") == "Exists" or tol.get("value") == t.get("value"))
                       for tol in pspec.get("tolerations") or []):
                errs.append(f"{where}: does not tolerate {kind_id(np)}'s taint {t['key']}")
        requests: dict[str, float] = {}
        for c in _containers(pspec):
            for r, v in ((c.get("resources") or {}).get("requests") or {}).items():
                requests[r] = requests.get(r, 0) + _quantity(v)
        limits = np["spec"].get("limits") or {}
        for r in (("nvidia.com/gpu",) if gpu else ("cpu", "memory")):
            need = 2 * g["maxReplicas"] * requests.get(r, 0)
            if r not in limits or _quantity(limits[r]) < need:
                errs.append(f"{kind_id(np)}: limits.{r} {limits.get(r)} < 2 x maxReplicas {g['maxReplicas']} x "
                            f"{requests.get(r, 0):g} = {need:g} ({where}; NewCluster upgrades need both clusters)")
    return errs


def network_policy_errors(docs: list[dict[str, Any]], overlay: str | None) -> list[str]:
    """The ALB rule admits exactly the environment's VPC CIDR (infra/live/<env>/env.hcl)."""
    if overlay not in ("test", "prod"):
        return []
    want = env_vpc_cidr(overlay)
    nps = find(docs, "NetworkPolicy", "allow-serve-from-alb")
    if not nps:
        return ["NetworkPolicy allow-serve-from-alb missing"]
    cidrs = [peer["ipBlock"]["cidr"] for rule in nps[0]["spec"].get("ingress", [])
             for peer in rule.get("from", []) if "ipBlock" in peer]
    if cidrs != [want]:
        return [f"{kind_id(nps[0])}: ipBlock {cidrs} != [{want!r}] (vpc_cidr of infra/live/{overlay}/env.hcl)"]
    return []


def applied_errors(docs: list[dict[str, Any]], env: str, values: dict[str, Any], tag: str) -> list[str]:
    """The overlay release.py writes (kuberay/deploy/<env>) carries exactly what infra
    hands out (the k8s-addons unit's deploy_values) and the pushed images: no
    placeholder, no image that the build did not push."""
    errs = policy_errors(docs, env)
    urls = values["repository_urls"]
    for pod in extract_pods(docs):
        for c in _containers(pod["spec"]):
            name = c["image"].rsplit(":", 1)[0].rsplit("/", 1)[-1]
            if c["image"] != f"{urls.get(name)}:{tag}":
                errs.append(f"{kind_id(pod)} container {c.get('name')}: image {c['image']} is not "
                            f"{urls.get(name)}:{tag} (the repository from the ecr unit, the pushed tag)")
    lbc = find(docs, "LoadBalancerConfiguration", "qa-alb")
    https = [lc for lc in (lbc[0]["spec"].get("listenerConfigurations") or []) if lc.get("protocolPort") == "HTTPS:443"] \
        if lbc else []
    if not https or https[0].get("defaultCertificate") != values["certificate_arn"]:
        errs.append(f"LoadBalancerConfiguration qa-alb: HTTPS:443 defaultCertificate is not {values['certificate_arn']}")
    gw = find(docs, "Gateway", "qa")
    hosts = [ls.get("hostname") for ls in (gw[0]["spec"]["listeners"] if gw else []) if ls.get("protocol") == "HTTPS"]
    if hosts != [values["domain_name"]]:
        errs.append(f"Gateway qa: HTTPS listener hostname {hosts} != [{values['domain_name']!r}]")
    nps = find(docs, "NetworkPolicy", "allow-serve-from-alb")
    cidrs = [p["ipBlock"]["cidr"] for r in (nps[0]["spec"].get("ingress") or []) for p in r.get("from", [])
             if "ipBlock" in p] if nps else []
    if cidrs != [values["vpc_cidr"]]:
        errs.append(f"NetworkPolicy allow-serve-from-alb: {cidrs} != [{values['vpc_cidr']!r}] (the network unit's vpc_cidr)")
    return errs


def gateway_errors(docs: list[dict[str, Any]]) -> list[str]:
    errs: list[str] = []
    gateways = find(docs, "Gateway")
    if len(gateways) != 1:
        return [f"expected one Gateway, found {len(gateways)}"]
    gw = gateways[0]
    classes = {d["metadata"]["name"]: d["spec"].get("controllerName") for d in render("infra-manifests")
               if d.get("kind") == "GatewayClass"}
    if classes.get(gw["spec"].get("gatewayClassName")) != ALB_CONTROLLER:
        errs.append(f"{kind_id(gw)}: GatewayClass {gw['spec'].get('gatewayClassName')!r} with controllerName "
                    f"{ALB_CONTROLLER} is created by nothing we apply ({INFRA_MANIFESTS}: {classes})")
    ref = ((gw["spec"].get("infrastructure") or {}).get("parametersRef")) or {}
    if (ref.get("group"), ref.get("kind")) != ("gateway.k8s.aws", "LoadBalancerConfiguration"):
        return [*errs, f"{kind_id(gw)}: infrastructure.parametersRef must name a LoadBalancerConfiguration"]
    lbcs = find(docs, "LoadBalancerConfiguration", ref.get("name"))
    if not lbcs:
        return [*errs, f"{kind_id(gw)}: LoadBalancerConfiguration {ref.get('name')} not rendered"]
    lspec = lbcs[0]["spec"]
    https = [lc for lc in lspec.get("listenerConfigurations", []) if lc.get("protocolPort") == "HTTPS:443"]
    if not https or https[0].get("sslPolicy") != TLS_POLICY:
        errs.append(f"{kind_id(lbcs[0])}: HTTPS:443 sslPolicy must be {TLS_POLICY}")
    attrs = {a["key"]: a["value"] for a in lspec.get("loadBalancerAttributes", [])}
    if attrs.get("routing.http.drop_invalid_header_fields.enabled") != "true":
        errs.append(f"{kind_id(lbcs[0])}: routing.http.drop_invalid_header_fields.enabled must be true")
    if int(attrs.get("idle_timeout.timeout_seconds", "60")) < 150:
        errs.append(f"{kind_id(lbcs[0])}: idle_timeout.timeout_seconds too short for streamed answers")
    listeners = {(ls["protocol"], ls["port"]) for ls in gw["spec"]["listeners"]}
    if ("HTTPS", 443) not in listeners:
        errs.append(f"{kind_id(gw)}: needs an HTTPS:443 listener")
    redirects = [
        r for r in find(docs, "HTTPRoute")
        for rule in r["spec"].get("rules", [])
        for f in rule.get("filters") or []
        if f.get("type") == "RequestRedirect" and (f.get("requestRedirect") or {}).get("scheme") == "https"
    ]
    if ("HTTP", 80) in listeners and not redirects:
        errs.append(f"{kind_id(gw)}: HTTP listener without an HTTPS redirect route")
    return errs


# --------------------------------------------------------------------------- checkov
def load_skips() -> list[dict[str, Any]]:
    return yaml.safe_load(CHECKOV_SKIPS.read_text()) or []


def run_checkov(directory: Path) -> dict[str, Any]:
    """checkov over `directory`; failures matched by checkov-skips.yaml become skips."""
    checkov = Path(sys.executable).parent / "checkov"
    proc = subprocess.run(
        [str(checkov), "-d", str(directory), "--framework", "kubernetes", "--skip-download",
         "--quiet", "--compact", "-o", "json"],
        capture_output=True, text=True, env={**os.environ, "LOG_LEVEL": "WARNING"},
    )
    out = proc.stdout.strip()
    try:
        data = json.loads(out) if out else {}
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"checkov output not JSON (rc={proc.returncode}): {proc.stderr[-2000:]}") from exc
    reports = data if isinstance(data, list) else [data]
    passed, failed = 0, []
    for rep in reports:
        # --quiet leaves passed checks out of "results": count them from the summary.
        passed += (rep.get("summary") or {}).get("passed") or 0
        failed += (rep.get("results") or {}).get("failed_checks", [])
    skips = load_skips()
    used: set[int] = set()
    unexplained, explained = [], []
    for f in failed:
        resource = f.get("resource", "")
        match = next((i for i, s in enumerate(skips) if s["id"] == f["check_id"] and any(
            fnmatch.fnmatch(resource, pat) for pat in s.get("resources", ["*"]))), None)
        if match is None:
            unexplained.append(f"{f['check_id']} {resource} ({f.get('file_path')}): {f.get('check_name')}")
        else:
            used.add(match)
            explained.append((f["check_id"], resource, skips[match]["reason"]))
    return {
        "passed": passed,
        "failed": len(unexplained),
        "skipped": len(explained),
        "unexplained": unexplained,
        "explained": explained,
        "unused_skips": [s["id"] for i, s in enumerate(skips) if i not in used],
        "returncode": proc.returncode,
        "resources": sum(((rep.get("summary") or {}).get("resource_count") or 0) for rep in reports),
    }


# --------------------------------------------------------------------------- Dockerfiles
def dockerfile_errors(path: Path) -> list[str]:
    from dockerfile_parse import DockerfileParser

    import io

    parser = DockerfileParser(fileobj=io.BytesIO(path.read_bytes()))
    errs: list[str] = []
    insts = parser.structure
    froms = [i["value"].split()[0] for i in insts if i["instruction"] == "FROM"]
    if not froms:
        return [f"{path.name}: no FROM"]
    args = {}
    for i in insts:
        if i["instruction"] == "ARG" and "=" in i["value"]:
            k, v = i["value"].split("=", 1)
            args[k.strip()] = v.strip().strip('"')
    for ref in froms:
        for k, v in args.items():
            ref = ref.replace(f"${{{k}}}", v).replace(f"${k}", v)
        if "@sha256:" in ref:
            continue
        tag = ref.rsplit(":", 1)[-1] if ":" in ref.rsplit("/", 1)[-1] else ""
        if not tag or tag == "latest":
            errs.append(f"{path.name}: base image {ref!r} is not pinned (no tag/digest or `latest`)")
        elif not tag.startswith(RAY_VERSION):
            errs.append(f"{path.name}: base image {ref!r} is not Ray {RAY_VERSION}")
    if "latest" in parser.content.replace("--no-cache", "").split():
        errs.append(f"{path.name}: mentions `latest`")
    users = [i["value"].strip() for i in insts if i["instruction"] == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        errs.append(f"{path.name}: final USER must be non-root (1000 / ray)")
    return errs


# --------------------------------------------------------------------------- main
def main() -> int:
    # Not under a dot-directory: checkov silently skips those (0 resources scanned).
    out_dir = Path(os.environ.get("KUBERAY_OUT") or Path(tempfile.gettempdir()) / "kuberay-rendered")
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.yaml"):
        old.unlink()
    failures: list[str] = []
    print(f"kubernetes-validate schemas: Kubernetes {k8s_version()} (strict)")
    print(f"CRDs: {crds_dir()} ({len(crd_schemas())} kind/versions)")
    if not crd_schemas():
        failures.append(f"no CRDs found under {crds_dir()} (set KUBERAY_CRDS_DIR)")
    for variant in VARIANTS:
        docs = render(variant)
        pods = extract_pods(docs)
        notes: list[str] = []
        errs = validate_docs(docs + pods, notes)
        overlay = variant.split("+")[0]
        if overlay in ("test", "prod"):
            errs += policy_errors(docs, overlay)
        if variant == "karpenter":
            errs += karpenter_errors(docs, render("prod"))
        print(f"[{variant}] rendered {len(docs)} objects + {len(pods)} extracted pods: "
              f"{'OK' if not errs else f'{len(errs)} error(s)'}")
        for n in sorted(set(notes)):
            print(f"  note: {n}")
        failures += [f"[{variant}] {e}" for e in errs]
        fname = variant.replace("+", "_")
        (out_dir / f"{fname}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
        (out_dir / f"{fname}-pods.yaml").write_text(yaml.safe_dump_all(pods, sort_keys=False))

    from devtools import kuberay_gen

    for overlay in kuberay_gen.OVERLAYS:
        diff = kuberay_gen.drift(overlay)
        print(f"[serve-config {overlay}] {'in sync' if not diff else 'DRIFT'}")
        if diff:
            failures.append(f"serveConfigV2 drift in {overlay}:\n{diff}")

    for dockerfile in sorted((KUBERAY / "images").glob("Dockerfile.*")):
        if dockerfile.name.endswith(".dockerignore"):
            continue
        errs = dockerfile_errors(dockerfile)
        print(f"[{dockerfile.name}] {'OK' if not errs else errs}")
        failures += errs

    result = run_checkov(out_dir)
    print(f"[checkov] passed={result['passed']} failed(unexplained)={result['failed']} "
          f"skipped(with reason)={result['skipped']}")
    for check_id, reason in sorted({(c, r) for c, _, r in result["explained"]}):
        n = sum(1 for c, _, _ in result["explained"] if c == check_id)
        print(f"  skip {check_id} x{n}: {reason}")
    failures += [f"checkov: {u}" for u in result["unexplained"]]
    if not result["passed"]:
        failures.append(f"checkov scanned nothing in {out_dir} (resources={result['resources']})")
    if result["unused_skips"]:
        failures.append(f"checkov-skips.yaml has stale entries: {result['unused_skips']}")

    if failures:
        print("\nFAILED:", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        return 1
    print("all kuberay checks passed")
    return 0


def main_applied(argv: list[str]) -> int:
    """`kuberay_checks.py applied --env E --dir D --values V --tag T`: render the overlay
    release.py wrote and check it as the API server and the policy would (dry run)."""
    import argparse

    ap = argparse.ArgumentParser(prog="kuberay_checks.py applied")
    ap.add_argument("--env", required=True)
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--values", type=Path, required=True)
    ap.add_argument("--tag", required=True)
    ns = ap.parse_args(argv)
    values = json.loads(ns.values.read_text())
    docs = kustomize_build(ns.dir)
    notes: list[str] = []
    errs = validate_docs(docs + extract_pods(docs), notes) + applied_errors(docs, ns.env, values, ns.tag)
    kinds = sorted({d["kind"] for d in docs})
    print(f"[applied {ns.env}] {ns.dir}: {len(docs)} objects ({', '.join(kinds)}): "
          f"{'OK' if not errs else f'{len(errs)} error(s)'}")
    for e in errs:
        print(f"  - {e}", file=sys.stderr)
    return 1 if errs else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["applied"]:
        raise SystemExit(main_applied(sys.argv[2:]))
    raise SystemExit(main())
