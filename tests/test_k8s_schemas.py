"""deploy/kubernetes against real schemas, not only as YAML.

- Core kinds (ConfigMap, Deployment, Service, Secret): `kubernetes-validate --strict`, with
  the oldest and the newest Kubernetes versions the pinned package ships. Strict schemas
  reject properties they do not know, so a misspelled field fails.
- ServiceMonitor, Probe, PrometheusRule: the prometheus-operator CRDs as typed pydantic
  models (`cloudcoil-models-prometheus-operator`, pinned). The models ignore unknown keys,
  so each manifest must also survive a round trip unchanged: a key the CRD does not have is
  dropped by the model and the comparison fails.
- `kubectl kustomize deploy/kubernetes` (kustomize inside kubectl) renders the
  kustomization, and every document it renders goes through the same checks.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import deploy_helpers as dh

K8S = dh.DEPLOY / "kubernetes"
MANIFESTS = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
OPERATOR_KINDS = {"ServiceMonitor", "Probe", "PrometheusRule", "PodMonitor", "ScrapeConfig"}


def kv() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        dh.unavailable("kubernetes-validate is not installed (pip install -e '.[test]')")
    return kubernetes_validate


def operator_models(api_version: str = "monitoring.coreos.com/v1") -> Any:
    """The typed models of one prometheus-operator API version (v1, v1alpha1)."""
    try:
        from cloudcoil.models.prometheus_operator import v1, v1alpha1
    except ImportError:
        dh.unavailable("cloudcoil-models-prometheus-operator is not installed "
                       "(pip install -e '.[test]')")
    return {"monitoring.coreos.com/v1": v1,
            "monitoring.coreos.com/v1alpha1": v1alpha1}[api_version]


def versions() -> list[str]:
    all_versions = kv().utils.all_versions()
    return [all_versions[0], all_versions[-1]]


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def validate_core(doc: dict[str, Any], version: str) -> None:
    """Raises kubernetes_validate.ValidationError on a schema violation."""
    kv().validate(doc, version, strict=True)


def validate_operator(doc: dict[str, Any]) -> None:
    """Validates against the CRD model; raises AssertionError on keys the CRD lacks."""
    model = getattr(operator_models(doc["apiVersion"]), doc["kind"])
    obj = model.model_validate(doc)
    dumped = obj.model_dump(mode="json", by_alias=True, exclude_unset=True)
    if dumped != doc:
        raise AssertionError(f"{doc['kind']}: fields the CRD does not know: "
                             f"{sorted(_diff(doc, dumped))}")


def _diff(given: Any, kept: Any, path: str = "") -> set[str]:
    if isinstance(given, dict) and isinstance(kept, dict):
        out: set[str] = set()
        for k, v in given.items():
            out |= {f"{path}.{k}"} if k not in kept else _diff(v, kept[k], f"{path}.{k}")
        return out
    if isinstance(given, list) and isinstance(kept, list) and len(given) == len(kept):
        return set().union(*(_diff(a, b, f"{path}[{i}]") for i, (a, b)
                             in enumerate(zip(given, kept, strict=True))))
    return set() if given == kept else {path}


def validate(doc: dict[str, Any], version: str) -> None:
    if doc["kind"] in OPERATOR_KINDS:
        validate_operator(doc)
    else:
        validate_core(doc, version)


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_valid_for_oldest_and_newest_kubernetes(name: str) -> None:
    docs = documents(K8S / name)
    assert docs, name
    for version in versions():
        for doc in docs:
            validate(doc, version)


def test_the_versions_are_far_apart() -> None:
    oldest, newest = versions()
    assert oldest != newest
    assert tuple(map(int, newest.split(".")[:2])) >= (1, 30), newest


def test_every_kind_is_checked_by_a_schema() -> None:
    kinds = {d["kind"] for name in MANIFESTS for d in documents(K8S / name)}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "ServiceMonitor", "Probe",
            "PrometheusRule", "ScrapeConfig"} <= kinds, kinds


# --- a misspelled field fails -----------------------------------------------------------


@pytest.mark.parametrize("version", ["oldest", "newest"])
def test_a_misspelled_core_field_fails(version: str) -> None:
    errors = kv().ValidationError
    v = versions()[0 if version == "oldest" else 1]
    (deployment,) = documents(K8S / "deployment.yaml")
    validate_core(deployment, v)
    broken = copy.deepcopy(deployment)
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["imagePullPolicyy"] = container.pop("imagePullPolicy", "IfNotPresent")
    with pytest.raises(errors, match="imagePullPolicyy"):
        validate_core(broken, v)
    # a wrong type fails too, not only an unknown key
    broken = copy.deepcopy(deployment)
    broken["spec"]["replicas"] = "one"
    with pytest.raises(errors):
        validate_core(broken, v)


@pytest.mark.parametrize("name,path", [
    ("servicemonitor.yaml", ["spec", "endpoints", 0]),
    ("probe.yaml", ["spec", "prober"]),
    ("prometheusrule.yaml", ["spec", "groups", 0, "rules", 0]),
    ("scrapeconfig.yaml", ["spec", "httpSDConfigs", 0]),
])
def test_a_misspelled_operator_field_fails(name: str, path: list[str | int]) -> None:
    (doc,) = documents(K8S / name)
    validate_operator(doc)
    broken = copy.deepcopy(doc)
    node: Any = broken
    for step in path:
        node = node[step]
    first = next(iter(node))
    node[first + "x"] = node.pop(first)  # e.g. port -> portx, url -> urlx, alert -> alertx
    with pytest.raises((AssertionError, ValueError)):
        validate_operator(broken)


def test_a_wrong_type_in_an_operator_field_fails() -> None:
    (doc,) = documents(K8S / "servicemonitor.yaml")
    broken = copy.deepcopy(doc)
    broken["spec"]["endpoints"] = {"port": "http"}  # a map where the CRD has a list
    with pytest.raises(ValueError):
        validate_operator(broken)


# --- kustomize ----------------------------------------------------------------------------


def kustomize_build() -> list[dict[str, Any]]:
    kubectl = dh.binary("kubectl")
    proc = dh.run([kubectl, "kustomize", str(K8S)], timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def test_kustomize_build_renders_valid_resources() -> None:
    rendered = kustomize_build()
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    expected = {(d["kind"], d["metadata"]["name"]) for name in listed
                for d in documents(K8S / name)}
    assert {(d["kind"], d["metadata"]["name"]) for d in rendered} == expected
    for version in versions():
        for doc in rendered:
            validate(doc, version)


def test_kustomize_build_fails_on_a_missing_resource(tmp_path: Path) -> None:
    for src in K8S.glob("*.yaml"):
        (tmp_path / src.name).write_text(src.read_text())
    kust = yaml.safe_load((tmp_path / "kustomization.yaml").read_text())
    kust["resources"].append("does-not-exist.yaml")
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kust))
    proc = dh.run([dh.binary("kubectl"), "kustomize", str(tmp_path)], timeout=120)
    assert proc.returncode != 0
