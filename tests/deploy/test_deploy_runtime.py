"""The built base manifests, run on loopback (tests/deploy/local_cluster.py says what is rewritten for one
host, and why): the coordinator and agent pods as real `dbintel` processes at the manifests' replica
counts, with a local Redis and real databases, form one cluster; a real Prometheus configured from the
PodMonitors gets every database exactly once; every query of the Grafana dashboard returns data; and
a database moved by a drain or a SIGTERM stays one series without a hole (last: it changes the cluster)."""

from __future__ import annotations

import copy
import json
import os
import re
import time
import urllib.parse
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
    Obj,
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
DATABASE_SERIES = f'{{{RESOURCE}!="", __name__!~"dbintel_agent_.+"}}'  # a database's, not an agent's about it
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
    # Scrapes the same pods with the agent PodMonitor as shipped before issue 13 (see podmonitors_before)
    prometheus_before: PrometheusServer | None = None

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


def _scraped(deployed: Deployed, prometheus: PrometheusServer) -> bool:
    """Every target up, every database's series in, and a few scrapes of each (rate() needs two)."""
    targets = prometheus.api("targets", state="active")["activeTargets"]
    if len(targets) != len(deployed.cluster.pods) or any(t["health"] != "up" for t in targets):
        return False
    per_database = prometheus.query(f"count by ({RESOURCE}) (dbintel_database_up)")
    scrapes = prometheus.query("count_over_time(up[1m])")
    return (
        len(per_database) == len(deployed.resources)
        and len(scrapes) == len(targets)
        and all(float(s["value"][1]) >= 4 for s in scrapes)
    )


# What issue 13 added to the agent's podMetricsEndpoint (one series per database across a hand-off).
SERIES_IDENTITY_KEYS = ("params", "honorTimestamps", "metricRelabelings")


def podmonitors_before(objects: list) -> list:
    """The objects with the PodMonitors as shipped before issue 13: no poll timestamps, no relabeling,
    so every database series carries its agent's pod and instance. Run beside the shipped ones, for the
    before/after figures of test_a_moved_database_keeps_one_series_without_a_hole."""
    objects = copy.deepcopy(objects)
    for monitor in (o for o in objects if o["kind"] == "PodMonitor"):
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            for key in SERIES_IDENTITY_KEYS:
                endpoint.pop(key, None)
    return objects


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
    prometheuses: list[PrometheusServer] = []
    leftovers: list[str] = []
    try:
        state_redis.start()
        accounts.create()
        cluster.plan()
        cluster.start()
        resources = set(inventory(objects).resources())
        result = Deployed(objects, cluster, None, resources)  # type: ignore[arg-type]
        wait_until(lambda: _settled(result), SETTLE_TIMEOUT, "the cluster to settle", result.describe)
        # Started once the placement is quiet, so no database series of a move is in their TSDBs.
        for podmonitors in (objects, podmonitors_before(objects)):
            prometheuses.append(PrometheusServer(prometheus_config(podmonitors, cluster.pods)))
            prometheuses[-1].start()
        result.prometheus, result.prometheus_before = prometheuses
        for prometheus in prometheuses:
            wait_until(
                lambda p=prometheus: _scraped(result, p),
                SETTLE_TIMEOUT,
                "Prometheus to scrape every pod",
                lambda p=prometheus: p.log_tail() + "\n" + result.describe(),
            )
        yield result
    finally:
        for prometheus in prometheuses:
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
        params = podmonitor_endpoint(deployed.objects, pod).get("params")
        query = f"?{urllib.parse.urlencode(params, doseq=True)}" if params else ""
        assert target["scrapeUrl"] == f"http://{LOOPBACK}:{pod.port('metrics')}/metrics{query}"
    up = {(r["metric"]["job"], r["metric"]["pod"]): r["value"][1] for r in deployed.prometheus.query("up")}
    assert up == {(job, pod): "1" for _, job, pod, *_ in expected}


def test_prometheus_gets_every_database_exactly_once(deployed):
    prometheus = deployed.prometheus
    per_database = {
        r["metric"][RESOURCE]: float(r["value"][1])
        for r in prometheus.query(f"count by ({RESOURCE}) (dbintel_database_up)")
    }
    assert per_database == dict.fromkeys(deployed.resources, 1.0)
    # A database's series name no agent (the PodMonitor drops the target's pod and instance), keep the
    # labels every agent shares, and carry nothing a relabeling step used on the way.
    series = prometheus.api("series", **{"match[]": DATABASE_SERIES})
    assert {s[RESOURCE] for s in series} == deployed.resources
    assert [s for s in series if "pod" in s or "instance" in s or any(k.startswith("__tmp") for k in s)] == []
    assert {(s["namespace"], s["job"], s["container"], s["endpoint"]) for s in series} == {
        (NAMESPACE, f"{NAMESPACE}/dbintel-agent", deployed.agents[0].container["name"], "metrics")
    }
    # The agent's own series about a database keep the agent: one pod per database, its owner.
    owners = {a.resource_id: a.agent_id for a in operator_view(deployed.coordinators[0]).assignments}
    exporters = [(r["metric"][RESOURCE], r["metric"]["pod"]) for r in prometheus.query("dbintel_agent_polls_total")]
    assert sorted(exporters) == sorted(owners.items())
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


def substitute(expr: str, variables: set[str], values: dict[str, str] | None = None) -> str:
    """Grafana's interpolation, for a test: built-ins to durations, every dashboard variable to `.*`
    (All) unless `values` gives it a regex."""

    def value(match: re.Match) -> str:
        name = next(g for g in match.groups() if g)
        if name in BUILTIN_VARIABLES:
            return BUILTIN_VARIABLES[name]
        assert name in variables, f"{expr}: ${name} is not a dashboard variable"
        return (values or {}).get(name, ".*")

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


# -- one series per database across a hand-off (issue 13), as a dashboard sees it -------------------------
# Runs last: it drains one agent and SIGTERMs another.
RATE_WINDOW = "15s"  # 5 polls at the test's 3 s interval: a poll that a busy CPU delays leaves it 4
COUNTERS = {  # per database type, a counter the dashboard plots as a rate
    "postgresql": "postgresql_commits_total",
    "mysql": "mysql_handlers_total",
    "mongodb": "mongodb_operation_count_total",
    "redis": "redis_commands_processed_total",
}
# Prometheus' own counters of samples it refused: a database series written by two agents out of turn.
REFUSED = (
    "prometheus_target_scrapes_sample_out_of_order_total",
    "prometheus_target_scrapes_sample_duplicate_timestamp_total",
    "prometheus_target_scrapes_sample_out_of_bounds_total",
)
FIGURES = Path(os.environ.get("DBINTEL_SERIES_FIGURES", m.REPO / ".ci" / "work" / "series-identity.json"))


def _owners(deployed: Deployed) -> dict[str, str]:
    return {a.resource_id: a.agent_id for a in operator_view(deployed.coordinators[0]).assignments}


def _polls_by(pod: Pod) -> dict[str, float]:
    """resource -> dbintel_agent_polls_total on the pod's /metrics now."""
    return {
        labels[RESOURCE]: value
        for labels, value in scrape(pod, "metrics", "/metrics").get("dbintel_agent_polls_total", [])
    }


def _handed_over(deployed: Deployed, moved: set[str], gone: set[str]) -> dict[str, str] | None:
    """Each moved database's new owner, once it has polled it twice and both Prometheus have scraped that."""
    owners = _owners(deployed)
    new = {resource: owners.get(resource, "") for resource in moved}
    if any(not owner or owner in gone for owner in new.values()):
        return None
    pods = {pod.name: pod for pod in deployed.agents}
    for resource, owner in new.items():
        if _polls_by(pods[owner]).get(resource, 0) < 2:
            return None
        for prometheus in (deployed.prometheus, deployed.prometheus_before):
            if not prometheus.query(f'dbintel_agent_polls_total{{{RESOURCE}="{resource}", pod="{owner}"}} >= 2'):
                return None
    return new


def _steps(start: float, end: float) -> int:
    return int(end - start) + 1  # a range query at step 1 s evaluates start, start + 1, ... <= end


def _missing_steps(series: Obj | None, start: float, end: float) -> int:
    return _steps(start, end) - (len(series["values"]) if series else 0)


def _per_database(prometheus: PrometheusServer, expr: str, when: float) -> dict[str, float]:
    """An instant query at `when`, by dbintel_resource."""
    result = prometheus.api("query", query=expr, time=f"{when:.3f}")["result"]
    return {r["metric"].get(RESOURCE, ""): float(r["value"][1]) for r in result}


def _counters(template: str, databases: list[str]) -> str:
    """`template` for each type's counter (COUNTERS) over those `databases` of the type, `or`ed: one
    expression, one result per database."""
    types = {resource: resource.split(":", 1)[1].split("/", 1)[0] for resource in databases}
    return " or ".join(
        template.format(counter=f'{COUNTERS[t]}{{{RESOURCE}=~"{"|".join(r for r in databases if types[r] == t)}"}}')
        for t in sorted(set(types.values()))
    )


def _measure_series(prometheus: PrometheusServer, events: list[dict], start: float, end: float) -> list[Obj]:
    """The series of the moved databases (not the agents' own about them) with samples in [start, end]."""
    moved = "|".join(sorted(set().union(*(e["databases"] for e in events))))
    match = f'{{{RESOURCE}=~"{moved}", __name__!~"dbintel_agent_.+"}}'
    return prometheus.api("series", **{"match[]": match, "start": f"{start:.3f}", "end": f"{end:.3f}"})


def _identity(series: Obj) -> frozenset:
    """A series' labels without the agent's (what the shipped PodMonitor keeps)."""
    return frozenset((k, v) for k, v in series.items() if k not in ("pod", "instance"))


def _measure(prometheus: PrometheusServer, deployed: Deployed, events: list[dict], start: float, end: float) -> Obj:
    """What a dashboard on `prometheus` shows of the hand-offs in [start, end]."""
    moved = sorted(set().union(*(e["databases"] for e in events)))
    selected = f'{RESOURCE}=~"{"|".join(moved)}"'
    window = f"{int(end - start) + 1}s"
    series = _measure_series(prometheus, events, start, end)
    per_database = _per_database(
        prometheus, f"count by ({RESOURCE}) (count_over_time(dbintel_database_up[{window}]))", end
    )
    # Instant queries at every step: every database's up sample, and each moved database's rate().
    up = prometheus.query_range("sum(dbintel_database_up)", start, end)
    holes: dict[str, int] = {}
    for t, value in up[0]["values"] if up else []:
        if float(value) < len(deployed.resources):
            event = next((e["event"] for e in reversed(events) if float(t) >= e["at"]), "before the first")
            holes[event] = holes.get(event, 0) + 1
    if _missing_steps(up[0] if up else None, start, end):
        holes["no value at all"] = _missing_steps(up[0] if up else None, start, end)
    rates = {
        r["metric"][RESOURCE]: r
        for r in prometheus.query_range(
            _counters(f"sum by ({RESOURCE}) (rate({{counter}}[{RATE_WINDOW}]))", moved), start, end
        )
    }
    names = sorted({s["__name__"] for s in series if s["__name__"].endswith("_total")})
    resets = sum(
        sum(_per_database(prometheus, f"resets({name}{{{selected}}}[{window}])", end).values()) for name in names
    )
    # Every dashboard query of a database's series (not the agent's own), for the moved databases.
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    gaps = []
    for panel in dashboard_panels(dashboard):
        for target in panel.get("targets") or []:
            if '$resource"' not in target["expr"] or "dbintel_agent_" in target["expr"]:
                continue
            expr = substitute(target["expr"], variables, {"resource": "|".join(moved)})
            for line in prometheus.query_range(expr, start, end):
                if _missing_steps(line, start, end):
                    gaps.append((panel["title"], target["refId"], line["metric"], _missing_steps(line, start, end)))
    return {
        "series": series,
        "identities": {_identity(s) for s in series},
        "series_per_database": {r: int(n) for r, n in per_database.items()},
        "up_below_all_steps": holes,
        "rate_missing_steps": {resource: _missing_steps(rates.get(resource), start, end) for resource in moved},
        # increase() over the window of each moved database's counter (summed over its series)
        "increase": _per_database(
            prometheus, _counters(f"sum by ({RESOURCE}) (increase({{counter}}[{window}]))", moved), end
        ),
        "counter_resets": resets,
        "dashboard_gaps": gaps,
        "steps": _steps(start, end),
    }


def _record(figures: Obj) -> None:
    try:
        FIGURES.parent.mkdir(parents=True, exist_ok=True)
        FIGURES.write_text(json.dumps(figures, indent=2, sort_keys=True, default=str) + "\n")
    except OSError as exc:  # the figures are a by-product, never the verdict
        print(f"could not record the figures in {FIGURES}: {exc}")


def test_a_moved_database_keeps_one_series_without_a_hole(deployed):
    """Drain one agent (DrainAgent, apply), then SIGTERM another: real agents, the real Prometheus of these
    tests scraping through the shipped PodMonitors. Over the window every database is one series (no pod,
    no instance), every instant query at every 1 s step sees every database, rate() of every moved
    database has a value at every step, no counter resets, Prometheus refused no sample, and no dashboard
    panel of the moved databases has a missing step. A second Prometheus scrapes the same pods with the
    PodMonitors as shipped before (podmonitors_before), for the figures docs/reliability.md gives."""
    shipped, before = deployed.prometheus, deployed.prometheus_before
    assert before is not None
    assert all(re.fullmatch(r"[\w:/.-]+", r) for r in deployed.resources)  # used in regexes as they are
    prometheuses = {"now": shipped, "before": before}
    refused_at_start = {key: prometheus.own_counters() for key, prometheus in prometheuses.items()}
    wait_until(  # history for rate() at the first step: 3 polls of each database (one sample a poll)
        lambda: (
            len(shipped.query(f"count_over_time(dbintel_database_up[{RATE_WINDOW}]) >= 3")) == len(deployed.resources)
        ),
        30,
        "three polls of every database in Prometheus",
    )
    start = time.time()
    time.sleep(3)  # steps before the first hand-off
    events: list[dict] = []
    leader_id = operator_view(deployed.coordinators[0]).cluster.leader_id
    leader = next(p for p in deployed.coordinators if p.name == leader_id)
    gone: set[str] = set()
    for event in ("drain", "SIGTERM"):
        owners = _owners(deployed)
        victim = Counter(owner for owner in owners.values() if owner not in gone).most_common(1)[0][0]
        moving = {resource for resource, owner in owners.items() if owner == victim}
        at = time.time()
        if event == "drain":
            with grpc.insecure_channel(f"{LOOPBACK}:{leader.port('grpc')}") as channel:
                reply = operator_service_pb2_grpc.OperatorServiceStub(channel).DrainAgent(
                    opb.DrainAgentRequest(agent_id=victim, apply=True), timeout=10
                )
            assert reply.applied and {mv.resource_id for mv in reply.moves} == moving, reply
        else:
            next(p for p in deployed.agents if p.name == victim).process.terminate()
        gone.add(victim)
        owners_after = wait_until(
            lambda m=moving: _handed_over(deployed, m, gone),
            SETTLE_TIMEOUT,
            f"the databases of the {event} to be polled elsewhere",
            deployed.describe,
        )
        events.append(
            {
                "event": event,
                "at": at,
                "databases": sorted(moving),
                "from": victim,
                "to": owners_after,
                "settled_s": round(time.time() - at, 1),
            }
        )
    time.sleep(1)
    end = time.time()
    results = {key: _measure(prometheus, deployed, events, start, end) for key, prometheus in prometheuses.items()}
    now, old = results["now"], results["before"]
    for key, prometheus in prometheuses.items():
        counters = prometheus.own_counters()
        results[key]["refused_samples"] = {
            name: counters.get(name, 0.0) - refused_at_start[key].get(name, 0.0) for name in REFUSED
        }
    # What the counters really did over the window: their poll-stamped values at its two ends.
    moved = sorted(set().union(*(e["databases"] for e in events)))
    at_end, at_start = (
        _per_database(shipped, _counters(f"sum by ({RESOURCE}) ({{counter}})", moved), t) for t in (end, start)
    )
    for result in results.values():
        result["increase_share"] = {
            r: round(v / (at_end[r] - at_start[r]), 2)
            for r, v in sorted(result.pop("increase").items())
            if at_end[r] > at_start[r]
        }
    summary = {key: value for key, value in now.items() if key not in ("series", "identities")}
    _record(
        {
            "measured_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "window_s": round(end - start, 1),
            "events": events,
            **{
                f"{name}": {
                    **{k: v for k, v in result.items() if k not in ("series", "identities")},
                    "series_of_moved_databases": len(result["series"]),
                    "identities_of_moved_databases": len(result["identities"]),
                }
                for name, result in results.items()
            },
        }
    )
    assert [s for s in now["series"] if "pod" in s or "instance" in s] == [], summary
    assert len(now["series"]) == len(now["identities"]), summary  # no database identity twice
    # ... and each identity the old manifests split over agents is there. A stamped sample sits at its
    # poll's start, up to an interval before it was first scraped: look from 10 s before the window.
    since = _measure_series(shipped, events, start - 10, end)
    assert old["identities"] <= {_identity(s) for s in since}, old["identities"] - {_identity(s) for s in since}
    assert now["series_per_database"] == dict.fromkeys(deployed.resources, 1), summary
    moves = Counter(r for e in events for r in e["databases"])
    assert old["series_per_database"] == {r: 1 + moves[r] for r in deployed.resources}  # what it measures
    assert now["up_below_all_steps"] == {}, summary
    assert now["rate_missing_steps"] == dict.fromkeys(moved, 0), summary
    assert now["counter_resets"] == 0, summary
    assert now["dashboard_gaps"] == [], summary
    assert now["refused_samples"] == dict.fromkeys(REFUSED, 0.0), summary
