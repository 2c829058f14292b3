"""The built base manifests, run on loopback (tests/deploy/local_cluster.py says what is rewritten for one
host, and why): the coordinator and agent pods as real `dbintel` processes at the manifests' replica
counts, with a local Redis and real databases, form one cluster; a real Prometheus configured from the
PodMonitors gets every database exactly once; every query of the Grafana dashboard returns data."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from dbintel.v1 import operator_service_pb2 as opb
from dbintel.v1 import operator_service_pb2_grpc, types_pb2
from tests.deploy import manifests as m
from tests.deploy.local_cluster import (
    NAMESPACE,
    DatabaseAccounts,
    LocalCluster,
    Pod,
    PrometheusServer,
    http_get,
    inventory,
    make_test_secret,
    prometheus_config,
    wait_until,
)
from tests.servers import LOOPBACK, RedisServer

DASHBOARD = m.REPO / "deploy" / "grafana" / "dbintel-overview.json"
RESOURCE = "dbintel_resource"
SETTLE_TIMEOUT = 90.0  # generous: 2 cores shared with other test runs (load average 20+ seen)


# -- reading the running cluster ---------------------------------------------------------------------------
@dataclass
class OperatorView:
    cluster: opb.GetClusterStatusResponse
    agents: list[types_pb2.AgentInfo]
    assignments: list[types_pb2.AssignmentEntry]


def operator_view(pod: Pod) -> OperatorView:
    """The operator RPCs (dbintel.v1.OperatorService), asked of one coordinator pod on its `grpc` port."""
    with grpc.insecure_channel(f"{LOOPBACK}:{pod.port('grpc')}") as channel:
        stub = operator_service_pb2_grpc.OperatorServiceStub(channel)
        return OperatorView(
            stub.GetClusterStatus(opb.GetClusterStatusRequest(), timeout=5),
            list(stub.ListAgents(opb.ListAgentsRequest(), timeout=5).agents),
            list(stub.ListAssignments(opb.ListAssignmentsRequest(), timeout=5).assignments),
        )


def scrape(pod: Pod, port: str, path: str) -> dict[str, list]:
    """The pod's metrics by sample name, each a list of (labels, value)."""
    status, body = http_get(f"http://{LOOPBACK}:{pod.port(port)}{path}")
    assert status == 200, f"{pod.name} {path}: HTTP {status}"
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def podmonitor_endpoint(objects, role_pod: Pod) -> dict:
    """The podMetricsEndpoint of the PodMonitor that selects this pod."""
    for monitor in (o for o in objects if o["kind"] == "PodMonitor"):
        labels = monitor["spec"]["selector"]["matchLabels"]
        if all(role_pod.labels.get(k) == v for k, v in labels.items()):
            return monitor["spec"]["podMetricsEndpoints"][0]
    raise AssertionError(f"no PodMonitor selects {role_pod.name}")


def exported_resources(objects, pod: Pod) -> set[str]:
    endpoint = podmonitor_endpoint(objects, pod)
    return {
        labels[RESOURCE]
        for series in scrape(pod, endpoint["port"], endpoint.get("path", "/metrics")).values()
        for labels, _ in series
        if RESOURCE in labels
    }


@dataclass
class Deployed:
    objects: list
    cluster: LocalCluster
    prometheus: PrometheusServer
    resources: set[str]  # the inventory's resource ids

    @property
    def coordinators(self) -> list[Pod]:
        return self.cluster.role_pods("coordinator")

    @property
    def agents(self) -> list[Pod]:
        return self.cluster.role_pods("agent")

    def describe(self) -> str:
        return "rewrites:\n  " + "\n  ".join(self.cluster.rewrites) + "\n" + self.cluster.logs()


def _settled(deployed: Deployed) -> bool:
    """Quiet: a placement of every database that every agent has applied, and has polled at least once."""
    view = operator_view(deployed.coordinators[0])
    if not (
        view.cluster.leader_id
        and view.cluster.resources_pending == 0
        and len([a for a in view.agents if a.state == types_pb2.AGENT_STATE_ACTIVE]) == len(deployed.agents)
        and all(a.applied_assignment_epoch == a.assignment_epoch for a in view.agents)
        and {a.resource_id for a in view.assignments if a.agent_id} == deployed.resources
    ):
        return False
    targets = {pod.name: {a.resource_id for a in view.assignments if a.agent_id == pod.name} for pod in deployed.agents}
    return all(exported_resources(deployed.objects, pod) >= targets[pod.name] for pod in deployed.agents)


def _scraped(deployed: Deployed) -> bool:
    """Every target up, every database's series in, and a few scrapes of each (rate() needs two)."""
    targets = deployed.prometheus.api("targets", state="active")["activeTargets"]
    if len(targets) != len(deployed.cluster.pods) or any(t["health"] != "up" for t in targets):
        return False
    per_database = deployed.prometheus.query(f"count by ({RESOURCE}) (dbintel_database_up)")
    scrapes = deployed.prometheus.query("count_over_time(up[1m])")
    return (
        len(per_database) == len(deployed.resources)
        and len(scrapes) == len(targets)
        and all(float(s["value"][1]) >= 4 for s in scrapes)
    )


@pytest.fixture(scope="module")
def deployed(postgres_server, mariadb_server, redis_server, secantus_server):
    objects = m.build("base")
    servers = {
        "postgresql": postgres_server,
        "mysql": mariadb_server,
        "mongodb": secantus_server,
        "redis": redis_server,
    }
    secret = make_test_secret(objects, servers)
    state_redis = RedisServer(password=secret["redis-password"])  # stands in for StatefulSet/redis
    accounts = DatabaseAccounts(objects, secret, servers)
    cluster = LocalCluster(objects, secret, state_redis, servers)
    prometheus = None
    leftovers: list[str] = []
    try:
        state_redis.start()
        accounts.create()
        cluster.plan()
        cluster.start()
        resources = set(inventory(objects).resources())
        result = Deployed(objects, cluster, None, resources)  # type: ignore[arg-type]
        wait_until(lambda: _settled(result), SETTLE_TIMEOUT, "the cluster to settle", result.describe)
        # Started once the placement is quiet, so no database series of a move is in its TSDB.
        prometheus = PrometheusServer(prometheus_config(objects, cluster.pods))
        prometheus.start()
        result.prometheus = prometheus
        wait_until(
            lambda: _scraped(result),
            SETTLE_TIMEOUT,
            "Prometheus to scrape every pod",
            lambda: prometheus.log_tail() + "\n" + result.describe(),
        )
        yield result
    finally:
        if prometheus is not None:
            prometheus.close()
        try:
            leftovers = cluster.stop()
        finally:
            state_redis.close()
            accounts.remove()
    assert not leftovers, f"processes outlived their pods: {leftovers}"


# -- the runner itself --------------------------------------------------------------------------------------
def _flatten(node, path: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        return {
            k: v for key, value in node.items() for k, v in _flatten(value, f"{path}.{key}" if path else key).items()
        }
    if isinstance(node, list):
        return {k: v for i, value in enumerate(node) for k, v in _flatten(value, f"{path}[{i}]").items()}
    return {path: node}


# The config paths local_cluster.py may rewrite (its rewrites 4-7); anything else must stay as written.
REWRITABLE = re.compile(
    r"^(scaling\.redis\.address|agent\.coordinator|databases\[\d+\]\.(endpoint|interval|timeout)"
    r"|databases\[\d+\]\.password|scaling\.coordinator\.(heartbeat_interval|node_timeout)"
    r"|scaling\.receiver_scaling\.check_interval)$"
)


def test_runner_changes_only_what_one_host_needs(deployed):
    written = _flatten(yaml.safe_load(m.find(deployed.objects, "ConfigMap", "dbintel-config")["data"]["config.yaml"]))
    for pod in deployed.cluster.pods:
        running = _flatten(yaml.safe_load(pod.config_path.read_text()))
        changed = {k for k in written.keys() | running.keys() if written.get(k) != running.get(k)}
        assert changed and all(REWRITABLE.match(k) for k in changed), (pod.name, sorted(changed))
        for key in (k for k in changed if k.endswith(".password")):  # only a mounted file's path
            assert running[key] == "${file:" + str(pod.process.root / "volumes") + written[key][len("${file:") :]
        # The args as written, with mounted paths under the pod's dir, then the listen overrides.
        args = pod.container["args"]
        argv = pod.process.argv
        assert Path(argv[0]).name == "dbintel" and argv[1 : 1 + len(args)] == [
            str(pod.process.root / "volumes") + a if a.startswith("/etc/") else a for a in args
        ]
        assert all(re.fullmatch(r"--(grpc|metrics|health)-listen=127\.0\.0\.1:\d+", a) for a in argv[1 + len(args) :])
        # The env: the manifest's names and the image's ENV, nothing from the test process.
        manifest_env = {e["name"] for e in pod.container["env"]}
        assert set(pod.process.env) == manifest_env | set(deployed.cluster.image_env) | {"HOSTNAME"}


# -- the cluster --------------------------------------------------------------------------------------------
def test_pods_form_one_cluster_with_one_leader(deployed):
    coordinator_names = {p.name for p in deployed.coordinators}
    views = {pod.name: operator_view(pod) for pod in deployed.coordinators}
    assert len(views) == m.find(deployed.objects, "Deployment", "dbintel-coordinator")["spec"]["replicas"] == 2
    leaders = [name for name, view in views.items() if view.cluster.is_leader]
    assert len(leaders) == 1, {n: (v.cluster.is_leader, v.cluster.leader_id) for n, v in views.items()}
    # Every replica names the same leader, by its pod name (POD_NAME from the downward API).
    assert {view.cluster.leader_id for view in views.values()} == set(leaders) <= coordinator_names
    assert {view.cluster.coordinator_id for view in views.values()} == coordinator_names
    for view in views.values():
        assert view.cluster.store_mode == "redis" and view.cluster.store_healthy
        assert view.cluster.resources_total == len(deployed.resources)
        # The agent id is NODE_ID and the pod name POD_NAME: both metadata.name.
        agents = {(a.agent_id, a.pod_name, a.state) for a in view.agents}
        assert agents == {(p.name, p.name, types_pb2.AGENT_STATE_ACTIVE) for p in deployed.agents}
        assert len(deployed.agents) == m.find(deployed.objects, "Deployment", "dbintel-agent")["spec"]["replicas"] == 3
    leader_metric = {
        pod.name: scrape(pod, "metrics", "/metrics")["dbintel_scaling_leader"][0][1] for pod in deployed.coordinators
    }
    assert leader_metric == {name: 1.0 if name in leaders else 0.0 for name in coordinator_names}


def test_every_database_is_assigned_once_and_exported_only_by_its_agent(deployed):
    view = operator_view(deployed.coordinators[1])  # a follower or the leader: the store is shared
    counts = Counter(a.resource_id for a in view.assignments)
    assert set(counts) == deployed.resources and set(counts.values()) == {1}, counts
    assert {a.state for a in view.assignments} == {types_pb2.ASSIGNMENT_STATE_ASSIGNED}
    owners = {a.resource_id: a.agent_id for a in view.assignments}
    exported = {pod.name: exported_resources(deployed.objects, pod) for pod in deployed.agents}
    for pod in deployed.agents:
        assert exported[pod.name] == {r for r, owner in owners.items() if owner == pod.name}, (pod.name, exported)
    assert sum(len(r) for r in exported.values()) == len(set().union(*exported.values())) == len(deployed.resources)
    for pod in deployed.coordinators:  # coordinators export no database series
        assert exported_resources(deployed.objects, pod) == set()
    # Every database is reached with the password the Secret gave its reference (env or mounted file).
    up = {
        labels[RESOURCE]: value
        for pod in deployed.agents
        for labels, value in scrape(pod, "metrics", "/metrics")["dbintel_database_up"]
    }
    assert up == dict.fromkeys(deployed.resources, 1.0)


def _run_probe(pod: Pod, probe: dict) -> tuple[bool, str]:
    if "httpGet" in probe:
        get = probe["httpGet"]
        status, body = http_get(
            f"http://{LOOPBACK}:{pod.port(get['port'])}{get.get('path', '/')}", timeout=probe.get("timeoutSeconds", 1)
        )
        return 200 <= status < 400, f"HTTP {status} {body[:200]}"
    if "grpc" in probe:
        with grpc.insecure_channel(f"{LOOPBACK}:{pod.port(probe['grpc']['port'])}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", "")),
                timeout=probe.get("timeoutSeconds", 1),
            )
        return reply.status == health_pb2.HealthCheckResponse.SERVING, str(reply)
    raise AssertionError(f"{pod.name}: probe kind {sorted(probe)} is not run here")


def test_probes_answer_on_the_declared_ports(deployed):
    ran = []
    for pod in deployed.cluster.pods:
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            if kind in pod.container:
                ok, detail = _run_probe(pod, pod.container[kind])
                assert ok, f"{pod.name} {kind}: {detail}"
                ran.append((pod.role, kind))
    assert Counter(ran) == {
        ("coordinator", "livenessProbe"): 2,
        ("coordinator", "readinessProbe"): 2,
        ("agent", "livenessProbe"): 3,
        ("agent", "readinessProbe"): 3,
    }


# -- Prometheus --------------------------------------------------------------------------------------------
def test_prometheus_scrapes_every_pod_through_its_podmonitor(deployed):
    targets = deployed.prometheus.api("targets", state="active")["activeTargets"]
    seen = {
        (
            t["scrapePool"],
            t["labels"]["job"],
            t["labels"]["pod"],
            t["labels"]["namespace"],
            t["labels"]["endpoint"],
            t["health"],
        )
        for t in targets
    }
    expected = {
        (
            f"podMonitor/{NAMESPACE}/dbintel-{p.role}/0",
            f"{NAMESPACE}/dbintel-{p.role}",
            p.name,
            NAMESPACE,
            "metrics",
            "up",
        )
        for p in deployed.cluster.pods
    }
    assert seen == expected
    for target in targets:  # the scrape went to the loopback port standing for the pod's `metrics` port
        pod = next(p for p in deployed.cluster.pods if p.name == target["labels"]["pod"])
        assert target["scrapeUrl"] == f"http://{LOOPBACK}:{pod.port('metrics')}/metrics"
    up = {(r["metric"]["job"], r["metric"]["pod"]): r["value"][1] for r in deployed.prometheus.query("up")}
    assert up == {(job, pod): "1" for _, job, pod, *_ in expected}


def test_prometheus_gets_every_database_exactly_once(deployed):
    prometheus = deployed.prometheus
    per_database = {
        r["metric"][RESOURCE]: float(r["value"][1])
        for r in prometheus.query(f"count by ({RESOURCE}) (dbintel_database_up)")
    }
    assert per_database == dict.fromkeys(deployed.resources, 1.0)
    # Not one series of any metric about a database comes from a second pod.
    pods_per_database = {
        r["metric"][RESOURCE]: float(r["value"][1])
        for r in prometheus.query(f'count by ({RESOURCE}) (count by ({RESOURCE}, pod) ({{{RESOURCE}!=""}}))')
    }
    assert pods_per_database == dict.fromkeys(deployed.resources, 1.0)
    owners = {a.resource_id: a.agent_id for a in operator_view(deployed.coordinators[0]).assignments}
    exporters = {r["metric"][RESOURCE]: r["metric"]["pod"] for r in prometheus.query("dbintel_database_up")}
    assert exporters == owners
    leader = prometheus.query("dbintel_scaling_leader == 1")
    assert [r["metric"]["pod"] for r in leader] == [operator_view(deployed.coordinators[0]).cluster.leader_id]


def test_prometheus_serves_the_agent_hpa_metric_per_pod(deployed):
    """The prometheus-adapter rule's series query finds one dbintel_agent_utilization series per agent pod."""
    rule_map = yaml.safe_load((m.KUBERNETES / "base" / "prometheus-adapter-rule.yaml").read_text())
    rule = yaml.safe_load(rule_map["data"]["config.yaml"])["rules"][0]
    series = deployed.prometheus.api("series", **{"match[]": rule["seriesQuery"]})
    assert {(s["namespace"], s["pod"]) for s in series} == {(NAMESPACE, p.name) for p in deployed.agents}


# -- the Grafana dashboard ----------------------------------------------------------------------------------
BUILTIN_VARIABLES = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def dashboard_panels(dashboard: dict) -> list[dict]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels += panel.get("panels") or []  # collapsed rows hold their panels
    return panels


def substitute(expr: str, variables: set[str]) -> str:
    """Grafana's interpolation, for a test: built-ins to durations, every dashboard variable to `.*`."""

    def value(match: re.Match) -> str:
        name = next(g for g in match.groups() if g)
        if name in BUILTIN_VARIABLES:
            return BUILTIN_VARIABLES[name]
        assert name in variables, f"{expr}: ${name} is not a dashboard variable"
        return ".*"

    return VARIABLE.sub(value, expr)


def test_dashboard_is_well_formed():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name, variable in variables.items():
        if variable["type"] == "query":
            assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, name
            # A query variable matches with =~ in every expression, so `.*` (All) stands for it in the test.
            for panel in dashboard_panels(dashboard):
                for target in panel.get("targets") or []:
                    for use in re.finditer(rf"(\S\S)\"\${name}\"", target["expr"]):
                        assert use.group(1) == "=~", (panel["title"], target["expr"])
    panels = dashboard_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), Counter(ids)
    for panel in panels:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target.get("datasource", panel["datasource"]) == panel["datasource"]


def test_dashboard_covers_scaling_and_each_database_type():
    panels = dashboard_panels(json.loads(DASHBOARD.read_text()))
    exprs = " ".join(t["expr"] for p in panels for t in p.get("targets", []))
    for metric in (
        "dbintel_scaling_leader",
        "dbintel_scaling_nodes_total",
        "dbintel_scaling_assignments_total",
        "dbintel_scaling_rebalance_total",
        "dbintel_scaling_moves_total",
        "dbintel_scaling_unassigned_resources",
        "dbintel_scaling_heartbeats_total",
        "dbintel_agent_utilization",
        "dbintel_agent_assigned_databases",
        "dbintel_agent_poll_errors_total",
        "dbintel_agent_poll_duration_seconds_bucket",
        "dbintel_database_up",
        "postgresql_backends",
        "postgresql_commits_total",
        "mysql_threads",
        "mongodb_connection_count",
        "mongodb_operation_count_total",
        "redis_clients_connected",
        "redis_memory_used_bytes",
        "redis_commands_processed_total",
    ):
        assert re.search(rf"\b{metric}\b", exprs), f"no panel queries {metric}"


def test_every_dashboard_query_returns_data(deployed):
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    empty = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            metric, label = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"]).groups()
            values = deployed.prometheus.query(f"count by ({label}) ({substitute(metric, variables)})")
            if not values:
                empty.append(f"variable {variable['name']}: {variable['query']['query']}")
    for panel in dashboard_panels(dashboard):
        for target in panel.get("targets") or []:
            expr = substitute(target["expr"], variables)
            result = deployed.prometheus.query(expr)
            if not result:
                empty.append(f"{panel['title']} [{target['refId']}]: {expr}")
            # A legend names only labels the series keep (else every line is labelled alike, or blank).
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")):
                missing = [r["metric"] for r in result if label not in r["metric"]]
                if missing:
                    empty.append(f"{panel['title']} [{target['refId']}]: legend {{{{{label}}}}} not in {missing[0]}")
    assert not empty, "queries with no data, or legends naming labels the series lack:\n" + "\n".join(empty)
