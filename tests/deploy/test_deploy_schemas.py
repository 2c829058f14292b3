"""deploy/kubernetes builds with kustomize and every object validates against its schema: built-in kinds
strictly (unknown fields rejected) for Kubernetes 1.30.0 and the newest version kubernetes-validate
ships, PodMonitors against the Prometheus Operator's schema."""

from __future__ import annotations

import json
import subprocess

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from tests.deploy.manifests import KUSTOMIZATIONS, NPM_MODULES, REPO, build, find

KUBERNETES_VERSIONS = sorted({"1.30.0", latest_version()})
PODMONITOR_SCRIPT = REPO / "tests" / "deploy" / "validate_podmonitors.mjs"


def schema_errors(objects, version: str) -> list[str]:
    errors = []
    for obj in objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # not a built-in kind; validated by podmonitor_errors
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")
    return errors


def podmonitor_errors(objects) -> tuple[int, str]:
    package = NPM_MODULES / "@kubernetes-models" / "prometheus-operator"
    if not package.is_dir():
        pytest.fail(f"{package} is missing: run scripts/install-deps.sh (npm @kubernetes-models/prometheus-operator)")
    monitors = [o for o in objects if o["kind"] == "PodMonitor"]
    result = subprocess.run(
        ["node", str(PODMONITOR_SCRIPT), str(NPM_MODULES)],
        input=json.dumps(monitors),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_kustomization_builds_the_expected_objects(name):
    kinds = {(o["kind"], o["metadata"]["name"]) for o in build(name)}
    for expected in [
        ("Namespace", "database-intelligence"),
        ("StatefulSet", "redis"),
        ("Service", "redis"),
        ("ConfigMap", "dbintel-config"),
        ("Deployment", "dbintel-coordinator"),
        ("Service", "dbintel-coordinator"),
        ("Deployment", "dbintel-agent"),
        ("HorizontalPodAutoscaler", "dbintel-coordinator"),
        ("HorizontalPodAutoscaler", "dbintel-agent"),
        ("PodMonitor", "dbintel-coordinator"),
        ("PodMonitor", "dbintel-agent"),
        ("ServiceAccount", "dbintel-coordinator"),
        ("ServiceAccount", "dbintel-agent"),
        ("PodDisruptionBudget", "dbintel-coordinator"),
        ("PodDisruptionBudget", "dbintel-agent"),
        ("Secret", "dbintel-secrets"),
    ]:
        assert expected in kinds, f"{name}: {expected} missing from the build"
    # No RBAC: the code calls no Kubernetes API.
    assert not [k for k in kinds if k[0] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")]
    # The adapter rule belongs to prometheus-adapter's namespace and is applied separately.
    assert ("ConfigMap", "adapter-config") not in kinds
    namespaced = [o for o in build(name) if o["kind"] != "Namespace"]
    assert {o["metadata"].get("namespace") for o in namespaced} == {"database-intelligence"}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_builtin_kinds_validate_strictly(name, version):
    assert schema_errors(build(name), version) == []


def test_strict_validation_rejects_an_unknown_field():
    objects = build("base")
    find(objects, "Deployment", "dbintel-agent")["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    errors = schema_errors(objects, KUBERNETES_VERSIONS[0])
    assert len(errors) == 1 and errors[0].startswith("Deployment/dbintel-agent")


def test_prometheus_adapter_rule_validates():
    rule = yaml.safe_load((REPO / "deploy/kubernetes/base/prometheus-adapter-rule.yaml").read_text())
    for version in KUBERNETES_VERSIONS:
        assert schema_errors([rule], version) == []
    config = yaml.safe_load(rule["data"]["config.yaml"])
    assert [r["name"]["as"] for r in config["rules"]] == ["dbintel_agent_utilization"]


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_podmonitors_validate_against_the_prometheus_operator_schema(name):
    code, output = podmonitor_errors(build(name))
    assert code == 0, output
    assert sorted(output.split()) == sorted(["ok", "dbintel-coordinator", "ok", "dbintel-agent"])


def test_podmonitor_validation_rejects_a_numeric_port_name():
    objects = build("base")
    find(objects, "PodMonitor", "dbintel-agent")["spec"]["podMetricsEndpoints"][0]["port"] = 8889
    code, output = podmonitor_errors(objects)
    assert code == 1 and "invalid dbintel-agent" in output, output
