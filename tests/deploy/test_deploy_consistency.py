"""The built manifests agree with each other and with dbintel: selectors select pods, probes and scrapes hit
ports the containers name, every referenced Secret/ConfigMap key exists, HPAs target real workloads,
dbintel accepts the container args and `dbintel validate` accepts the mounted config with the pod's env.
Each check is also shown to catch a broken manifest."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import yaml

from dbintel.common.config import Config
from tests.deploy import manifests as m

BUILDS = sorted(m.KUSTOMIZATIONS)


def agent_container(objects):
    return m.find(objects, "Deployment", "dbintel-agent")["spec"]["template"]["spec"]["containers"][0]


def coordinator_container(objects):
    return m.find(objects, "Deployment", "dbintel-coordinator")["spec"]["template"]["spec"]["containers"][0]


def edit_config(objects, change: Callable[[dict], None]) -> None:
    config_map = m.find(objects, "ConfigMap", "dbintel-config")
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    change(config)
    config_map["data"]["config.yaml"] = yaml.safe_dump(config)


@pytest.mark.parametrize("name", BUILDS)
def test_built_manifests_are_consistent(name):
    assert m.all_problems(m.build(name)) == []


# Each breakage and the check that must catch it; the message fragment pins which object is blamed.
BREAKAGES: dict[str, tuple[Callable[[list], None], Callable[[list], list[str]], str]] = {
    "service selector": (
        lambda o: m.find(o, "Service", "redis")["spec"]["selector"].update({"app.kubernetes.io/name": "redis-x"}),
        m.selector_problems,
        "Service/redis",
    ),
    "pdb selector": (
        lambda o: m.find(o, "PodDisruptionBudget", "dbintel-agent")["spec"]["selector"]["matchLabels"].update(
            {"app.kubernetes.io/name": "agent"}
        ),
        m.selector_problems,
        "PodDisruptionBudget/dbintel-agent",
    ),
    "podmonitor selector": (
        lambda o: m.find(o, "PodMonitor", "dbintel-coordinator")["spec"]["selector"]["matchLabels"].update(
            {"app.kubernetes.io/component": "agent"}
        ),
        m.selector_problems,
        "PodMonitor/dbintel-coordinator",
    ),
    "networkpolicy peer": (
        lambda o: m.find(o, "NetworkPolicy", "redis")["spec"]["ingress"][0]["from"][0]["podSelector"][
            "matchLabels"
        ].update({"app.kubernetes.io/name": "coordinator"}),
        m.selector_problems,
        "NetworkPolicy/redis ingress[0]",
    ),
    "probe port name": (
        lambda o: coordinator_container(o)["livenessProbe"]["httpGet"].update({"port": "healthz"}),
        m.port_problems,
        "Deployment/dbintel-coordinator livenessProbe.httpGet",
    ),
    "grpc probe port": (
        lambda o: coordinator_container(o)["readinessProbe"]["grpc"].update({"port": 50052}),
        m.port_problems,
        "Deployment/dbintel-coordinator readinessProbe.grpc",
    ),
    "podmonitor port": (
        lambda o: m.find(o, "PodMonitor", "dbintel-agent")["spec"]["podMetricsEndpoints"][0].update(
            {"port": "http-metrics"}
        ),
        m.port_problems,
        "PodMonitor/dbintel-agent",
    ),
    "service target port": (
        lambda o: m.find(o, "Service", "dbintel-coordinator")["spec"]["ports"][0].update({"targetPort": "gprc"}),
        m.port_problems,
        "Service/dbintel-coordinator",
    ),
    "secret key": (
        lambda o: m.find(o, "Secret", "dbintel-secrets")["stringData"].pop("cache-redis-password"),
        m.reference_problems,
        "env CACHE_REDIS_PASSWORD",
    ),
    "hpa target": (
        lambda o: m.find(o, "HorizontalPodAutoscaler", "dbintel-agent")["spec"]["scaleTargetRef"].update(
            {"name": "dbintel-agents"}
        ),
        m.hpa_problems,
        "HorizontalPodAutoscaler/dbintel-agent",
    ),
    "unknown flag": (
        lambda o: agent_container(o)["args"].append("--agent-name=x"),
        m.args_problems,
        "Deployment/dbintel-agent: dbintel rejects args",
    ),
    "unknown subcommand": (
        lambda o: coordinator_container(o)["args"].__setitem__(0, "server"),
        m.args_problems,
        "Deployment/dbintel-coordinator: dbintel rejects args",
    ),
    "config not mounted": (
        lambda o: agent_container(o)["args"].__setitem__(2, "/etc/dbintel/agent.yaml"),
        m.config_problems,
        "Deployment/dbintel-agent: no ConfigMap/Secret key is mounted",
    ),
    "invalid config": (
        lambda o: edit_config(o, lambda c: c["scaling"]["coordinator"].update({"node_timeout": "1s"})),
        m.config_problems,
        "dbintel validate rejects its config",
    ),
    "password env not set": (
        lambda o: edit_config(o, lambda c: c["databases"][0].update({"password": "${env:ORDERS_PASSWORD}"})),
        m.config_problems,
        "databases[orders].password needs env ORDERS_PASSWORD",
    ),
    "password file not mounted": (
        lambda o: edit_config(
            o, lambda c: c["databases"][1].update({"password": "${file:/etc/dbintel/secrets/catalog-password}"})
        ),
        m.config_problems,
        "databases[catalog] reads /etc/dbintel/secrets/catalog-password",
    ),
    "redis password not given to coordinator": (
        lambda o: coordinator_container(o)["env"].__delitem__(2),
        m.config_problems,
        "scaling.redis.password needs env DBINTEL_REDIS_PASSWORD",
    ),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_broken_manifest_is_caught(breakage):
    breaking, check, blamed = BREAKAGES[breakage]
    objects = m.build("base")
    assert check(objects) == []
    breaking(objects)
    problems = check(objects)
    assert any(blamed in p for p in problems), problems


@pytest.mark.parametrize("name", BUILDS)
def test_pods_run_locked_down(name):
    for workload, template in m.pod_templates(m.build(name)):
        spec = template["spec"]
        where = f"{name} {workload['kind']}/{workload['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["serviceAccountName"] != "default", where
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert set(container["resources"]["requests"]) >= {"cpu", "memory"}, where
            assert set(container["resources"]["limits"]) >= {"cpu", "memory"}, where
            assert container.get("readinessProbe") and container.get("livenessProbe"), where


@pytest.mark.parametrize("name", BUILDS)
def test_agent_terminates_after_it_has_left(name):
    objects = m.build(name)
    spec = m.find(objects, "Deployment", "dbintel-agent")["spec"]["template"]["spec"]
    container = spec["containers"][0]
    config = yaml.safe_load(m.find(objects, "ConfigMap", "dbintel-config")["data"]["config.yaml"])
    grace = Config.model_validate({"agent": config.get("agent", {})}).agent.shutdown_grace.total_seconds()
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    # The kubelet's SIGKILL comes terminationGracePeriodSeconds after the preStop hook starts.
    assert spec["terminationGracePeriodSeconds"] > pre_stop + grace
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in container["env"]}
    assert env["NODE_ID"] == "metadata.name"


def test_agent_hpa_scales_on_utilization_with_bounded_steps():
    objects = m.build("base")
    hpa = m.find(objects, "HorizontalPodAutoscaler", "dbintel-agent")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 10)
    metrics = {(x["type"], (x.get("resource") or x.get("pods", {}).get("metric"))["name"]) for x in hpa["metrics"]}
    assert metrics == {("Resource", "cpu"), ("Resource", "memory"), ("Pods", "dbintel_agent_utilization")}
    up, down = hpa["behavior"]["scaleUp"], hpa["behavior"]["scaleDown"]
    assert up["selectPolicy"] == down["selectPolicy"] == "Min"
    assert {(p["type"], p["value"], p["periodSeconds"]) for p in up["policies"]} == {
        ("Percent", 50, 60),
        ("Pods", 2, 60),
    }
    assert {(p["type"], p["value"], p["periodSeconds"]) for p in down["policies"]} == {
        ("Percent", 10, 60),
        ("Pods", 1, 60),
    }
    assert down["stabilizationWindowSeconds"] == 300
    coordinator = m.find(objects, "HorizontalPodAutoscaler", "dbintel-coordinator")["spec"]
    assert (coordinator["minReplicas"], coordinator["maxReplicas"]) == (2, 5)


def test_production_uses_tls_and_ephemeral_has_no_volume_claims():
    production = m.build("production")
    config = yaml.safe_load(m.find(production, "ConfigMap", "dbintel-config")["data"]["config.yaml"])
    assert config["scaling"]["redis"]["tls"]["enabled"] is True
    assert all(db["tls"]["enabled"] for db in config["databases"])
    assert m.find(production, "Deployment", "dbintel-agent")["spec"]["replicas"] > 3
    assert m.find(production, "Deployment", "dbintel-coordinator")["spec"]["replicas"] > 2
    redis_args = m.find(production, "StatefulSet", "redis")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "tls-port 6379" in redis_args[0] and "port 0" in redis_args[0]

    ephemeral = m.find(m.build("ephemeral"), "StatefulSet", "redis")["spec"]
    assert "volumeClaimTemplates" not in ephemeral
    assert {"name": "data", "emptyDir": {"sizeLimit": "1Gi"}} in ephemeral["template"]["spec"]["volumes"]
    assert m.find(m.build("base"), "StatefulSet", "redis")["spec"]["volumeClaimTemplates"]


def test_dockerfile_matches_the_pods_that_run_it():
    dockerfile = (m.REPO / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert len(stages) >= 2 and set(stages) == {"python:3.11-slim"}, stages
    user = re.findall(r"^USER (\d+):(\d+)$", dockerfile, re.M)
    assert re.search(r'^ENTRYPOINT \["dbintel"\]$', dockerfile, re.M)
    assert user and user[-1][0] != "0"
    for name in BUILDS:
        for workload, template, _ in m.dbintel_containers(m.build(name)):
            context = template["spec"]["securityContext"]
            assert (str(context["runAsUser"]), str(context["runAsGroup"])) == user[-1], workload["metadata"]["name"]
    # What the build stage copies is in the repository and re-included by .dockerignore.
    included = {
        line[1:].rstrip("/") for line in (m.REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")
    }
    for line in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M):
        for source in line.split():
            assert (m.REPO / source).exists() and source.rstrip("/") in included, source


def test_sentinel_overlay_points_the_coordinators_at_its_sentinels():
    objects = m.build("sentinel")
    config = yaml.safe_load(m.find(objects, "ConfigMap", "dbintel-config")["data"]["config.yaml"])
    redis = config["scaling"]["redis"]
    assert "address" not in redis and redis["replica_acks"] == 1
    sentinels = m.find(objects, "StatefulSet", "redis-sentinel")["spec"]
    service = sentinels["serviceName"]
    expected = [
        f"redis-sentinel-{i}.{service}.database-intelligence.svc.cluster.local:26379"
        for i in range(sentinels["replicas"])
    ]
    assert redis["sentinel"]["addresses"] == expected and redis["sentinel"]["master_name"] == "dbintel"
    # The overlay replaces the whole config: everything but scaling.redis must stay the base's.
    base = yaml.safe_load(m.find(m.build("base"), "ConfigMap", "dbintel-config")["data"]["config.yaml"])
    assert {**config, "scaling": {**config["scaling"], "redis": None}} == {
        **base,
        "scaling": {**base["scaling"], "redis": None},
    }
    assert m.find(objects, "StatefulSet", "redis")["spec"]["replicas"] == 3  # a primary and two replicas
    assert m.find(objects, "Service", "redis")["spec"]["clusterIP"] == "None"
    egress = m.find(objects, "NetworkPolicy", "dbintel-coordinator")["spec"]["egress"]
    assert any({"protocol": "TCP", "port": 26379} in rule["ports"] for rule in egress)
    assert (
        "dbintel"
        in m.find(objects, "StatefulSet", "redis-sentinel")["spec"]["template"]["spec"]["containers"][0]["args"][0]
    )
