"""Run the built base manifests on loopback: every Deployment's dbintel container as a real `dbintel`
process (its args and env as written, at the replica count written), and a real Prometheus scraping
them with the scrape jobs the Prometheus Operator would generate from the PodMonitors.

WHAT DIFFERS FROM A CLUSTER. Everything below, and nothing else, is rewritten; `LocalCluster.rewrites`
lists each rewrite as it was made (the test prints it on failure).
 1. Image: the container has no `command`, so it runs the Dockerfile's ENTRYPOINT (`dbintel`) with the
    manifest's args; the image's ENV is applied, with `/opt/dbintel/bin` on PATH standing for this
    interpreter's bin directory (where the `dbintel` console script lives).
 2. Listen ports: all pods share 127.0.0.1, so every container port a process serves (its role's
    `*_listen` settings in the config) gets a free loopback port, given with the override flags
    design.md defines (`--grpc-listen`, `--metrics-listen`, `--health-listen`) appended to the args.
 3. Field refs: metadata.name = a pod name as a ReplicaSet makes it (`<deployment>-<template hash>-<5>`),
    status.podIP = status.hostIP = 127.0.0.1, spec.nodeName = this host's name; HOSTNAME = the pod name,
    as the kubelet sets it. Nothing of the test process's environment is passed on.
 4. Mounted volumes: each pod gets a temp dir holding its ConfigMap/Secret volumes as files (the Secret
    is the test's own, with the example Secret's keys); paths under a mountPath in the args and in the
    config (`${file:...}`) point there.
 5. Service DNS names in the config (`svc[.ns[.svc[.cluster.local]]]:port`) -> 127.0.0.1:<loopback port>
    of a pod behind the Service; agents are spread round-robin over the coordinator pods, as their
    connections are over the Service's endpoints. Service `redis` -> the local RedisServer that stands in
    for StatefulSet/redis (password from the test Secret).
 6. Inventory endpoints -> the local server of each database's type. Usernames, database names and
    password references stay as written: the servers get those accounts (and PostgreSQL the database)
    with the test Secret's passwords.
 7. Durations (FAST_DURATIONS, FAST_POLL_INTERVAL): the ConfigMap's 30 s heartbeat and 15 s-1 m poll
    intervals (a new database's first poll is jittered over one interval) would put the first
    assignment moves and the first polls of every database past this test's time budget.
 8. Prometheus: kubernetes_sd is replaced by static targets carrying the same __meta_kubernetes_pod_*
    labels (one target per container port, as the pod role discovers them); the PodMonitors' 30 s
    interval becomes SCRAPE_INTERVAL. Everything else of an endpoint (path, params, honorLabels,
    honorTimestamps, relabelings, metricRelabelings) goes into its job as the Operator writes it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dbintel.cli import build_parser
from dbintel.common.config import Config, parse_config
from tests.deploy import manifests as m
from tests.servers import LOOPBACK, ManagedServer, RedisServer, ServerError, find_binary, free_port

NAMESPACE = "database-intelligence"
FAST_DURATIONS = {  # rewrite 7: config path -> duration
    "scaling.coordinator.heartbeat_interval": "1s",
    "scaling.coordinator.node_timeout": "10s",  # many heartbeats: no agent expires on 2 busy cores
    "scaling.receiver_scaling.check_interval": "1s",
}
FAST_POLL_INTERVAL = "3s"  # every database's interval, and its timeout where one is set (timeout <= interval)
SCRAPE_INTERVAL = "1s"  # rewrite 8
IMAGE_BIN = "/opt/dbintel/bin"  # rewrite 1: the image's venv, as the Dockerfile puts it on PATH
POD_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' rand.String / SafeEncodeString alphabet
SERVICE_HOST = re.compile(
    r"^(?P<service>[a-z0-9]([-a-z0-9]*[a-z0-9])?)(?:\.(?P<namespace>[a-z0-9-]+)"
    r"(?:\.svc(?:\.cluster\.local)?)?)?:(?P<port>\d+)$"
)
FILE_REFERENCE = re.compile(r"^\$\{file:(?P<path>[^}]+)\}$")

Obj = dict[str, Any]


# -- processes ----------------------------------------------------------------------------------------
class PodProcess(ManagedServer):
    """One pod's dbintel container as a process in its own session (process group), with the env the
    kubelet would give it and its volumes under its temp dir. start() returns once it is spawned;
    wait_ready() waits until every port it declares accepts connections."""

    kind = "pod"
    startup_timeout = 60.0
    stop_timeout = 30.0  # SIGTERM: an agent leaves and exits within agent.shutdown_grace (10 s)

    def __init__(self, name: str) -> None:
        self.name = name
        self.argv: list[str] = []
        self.env: dict[str, str] = {}
        self.loopback_ports: dict[int, int] = {}  # containerPort -> loopback port
        self.secret_values: tuple[str, ...] = ()
        super().__init__()

    def _command(self) -> list[str]:
        return self.argv

    def _spawn(self, command: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as log_file:
            return subprocess.Popen(
                command,
                cwd=self.root,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_until_ready(self) -> None:
        pass  # start() only spawns, so all pods start together as on a cluster; see wait_ready()

    def wait_ready(self) -> None:
        super()._wait_until_ready()

    def _probe(self) -> bool:
        for port in self.loopback_ports.values():
            with socket.socket() as sock:
                sock.settimeout(1)
                if sock.connect_ex((LOOPBACK, port)) != 0:
                    return False
        return True

    def _secrets(self) -> tuple[str, ...]:
        return self.secret_values

    def terminate(self) -> None:
        """SIGTERM, without waiting (close() waits)."""
        if self.is_running():
            self._process.send_signal(signal.SIGTERM)

    @property
    def process_group(self) -> int | None:
        return self._process.pid if self._process is not None else None  # a session leader leads its group


class PrometheusServer(ManagedServer):
    """The Debian package's prometheus, on loopback, with the given config and its TSDB in its temp dir."""

    kind = "prometheus"
    startup_timeout = 60.0

    def __init__(self, config: Obj) -> None:
        self.binary = find_binary("prometheus")
        super().__init__()
        self.config_path = self.root / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def _command(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.root / 'data'}",
            f"--web.listen-address={self.address}",
            "--log.level=warn",
        ]

    def _probe(self) -> bool:
        return http_get(f"{self.url}/-/ready")[0] == 200

    def api(self, endpoint: str, **params: str) -> Any:
        """GET /api/v1/<endpoint>; the `data` of a success reply, else AssertionError with the error."""
        status, body = http_get(f"{self.url}/api/v1/{endpoint}?{urllib.parse.urlencode(params)}", timeout=10)
        reply = json.loads(body)
        assert status == 200 and reply.get("status") == "success", f"{endpoint} {params}: {status} {body[:500]}"
        return reply["data"]

    def query(self, expr: str) -> list[Obj]:
        """An instant query's vector result (AssertionError if Prometheus rejects the expression)."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", f"{expr}: {data['resultType']} result"
        return data["result"]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[Obj]:
        """A range query's matrix result: one {metric, values: [[t, "v"], ...]} per series."""
        data = self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step:g}")
        assert data["resultType"] == "matrix", f"{expr}: {data['resultType']} result"
        return data["result"]

    def own_counters(self) -> dict[str, float]:
        """Prometheus' own counters (its /metrics), by sample name, summed over their labels."""
        status, body = http_get(f"{self.url}/metrics", timeout=10)
        assert status == 200, f"{self.url}/metrics: HTTP {status}"
        totals: dict[str, float] = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name = re.split(r"[{ ]", line, maxsplit=1)[0]
                totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        return totals


def http_get(url: str, timeout: float = 3.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, describe: Callable[[], str] = str, interval: float = 0.25
) -> Any:
    """Poll `predicate` until it returns something truthy; AssertionError with `describe()` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = predicate()
        except (OSError, ConnectionError, AssertionError) as exc:  # not up yet
            result, last_error = None, exc
        else:
            last_error = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}"
                f"{f' (last error: {last_error})' if last_error else ''}\n{describe()}"
            )
        time.sleep(interval)


# -- the pods the manifests describe --------------------------------------------------------------------
@dataclass
class Pod:
    name: str
    workload: Obj
    template: Obj
    container: Obj
    role: str  # the dbintel subcommand: coordinator | agent
    process: PodProcess
    config_path: Path = Path()

    @property
    def labels(self) -> dict[str, str]:
        return self.template["metadata"].get("labels") or {}

    def port(self, name_or_number: str | int) -> int:
        """The loopback port standing for a container port, by name (as probes and PodMonitors name it) or number."""
        numbers = [
            p["containerPort"]
            for p in self.container.get("ports") or []
            if name_or_number in (p.get("name"), p["containerPort"])
        ]
        assert numbers, f"container {self.container['name']} of {self.name} has no port {name_or_number!r}"
        return self.process.loopback_ports[numbers[0]]


def pod_template_hash(template: Obj) -> str:
    """Like the Deployment controller's: FNV-32a of the pod template, in the safe alphabet."""
    value = 0x811C9DC5
    for byte in json.dumps(template, sort_keys=True).encode():
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    text = ""
    while value:
        value, digit = divmod(value, len(POD_NAME_ALPHABET))
        text += POD_NAME_ALPHABET[digit]
    return text[:10]


def pod_name(workload: Obj) -> str:
    suffix = "".join(secrets.choice(POD_NAME_ALPHABET) for _ in range(5))
    return f"{workload['metadata']['name']}-{pod_template_hash(workload['spec']['template'])}-{suffix}"


def image_env_and_entrypoint(dockerfile: Path) -> tuple[dict[str, str], list[str]]:
    """The final stage's ENV and ENTRYPOINT (exec form) of the Dockerfile."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    final = text.rsplit("\nFROM ", 1)[-1]
    env: dict[str, str] = {}
    entrypoint: list[str] = []
    for line in final.splitlines():
        if line.startswith("ENV "):
            for word in shlex.split(line[4:]):
                key, _, value = word.partition("=")
                env[key] = value.replace("$PATH", "/usr/local/bin:/usr/bin:/bin")
        elif line.startswith("ENTRYPOINT "):
            entrypoint = json.loads(line[len("ENTRYPOINT ") :])
    assert entrypoint, f"{dockerfile}: no exec-form ENTRYPOINT in the final stage"
    return env, entrypoint


@dataclass
class LocalCluster:
    """Plans and runs the pods of `objects` (a built kustomization) against local servers."""

    objects: list[Obj]
    secret: dict[str, str]  # the test's dbintel-secrets
    state_redis: RedisServer  # stands in for StatefulSet/redis
    database_servers: dict[str, ManagedServer]  # database type -> local server
    rewrites: list[str] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)

    def __post_init__(self) -> None:
        secret = m.find(self.objects, "Secret", "dbintel-secrets")
        example_keys = set(secret.get("stringData") or {}) | set(secret.get("data") or {})
        assert set(self.secret) == example_keys, f"test Secret keys {sorted(self.secret)} != {sorted(example_keys)}"
        secret.pop("data", None)
        secret["stringData"] = dict(self.secret)
        self.image_env, self.entrypoint = image_env_and_entrypoint(m.REPO / "Dockerfile")

    # -- planning ------------------------------------------------------------------------------------------
    def plan(self) -> None:
        for workload, template, container in m.dbintel_containers(self.objects):
            assert workload["kind"] == "Deployment", f"{workload['kind']} runs dbintel; only Deployments are run here"
            for _ in range(workload["spec"].get("replicas", 1)):
                name = pod_name(workload)
                role = build_parser().parse_args(container.get("args") or []).command
                self.pods.append(Pod(name, workload, template, container, role, PodProcess(name)))
        for pod in self.pods:
            pod.process.loopback_ports = {p["containerPort"]: free_port() for p in pod.container.get("ports") or []}
        for index, pod in enumerate(self.pods):
            self._materialize(pod, index)

    def role_pods(self, role: str) -> list[Pod]:
        return [p for p in self.pods if p.role == role]

    def _note(self, pod: Pod, what: str) -> None:
        if pod is self.role_pods(pod.role)[0]:  # the same for every pod of a role (but ports): said once
            self.rewrites.append(f"{pod.role}: {what}")

    def _mounted_path(self, pod: Pod, path: str) -> str:
        """Rewrite 4: a path under one of the container's mountPaths -> the same path under the pod's dir."""
        for mount in pod.container.get("volumeMounts") or []:
            if path == mount["mountPath"] or path.startswith(mount["mountPath"].rstrip("/") + "/"):
                return str(pod.process.root / "volumes" / path.lstrip("/"))
        return path

    def _materialize(self, pod: Pod, index: int) -> None:
        volumes = {v["name"]: v for v in pod.template["spec"].get("volumes") or []}
        for mount in pod.container.get("volumeMounts") or []:
            directory = Path(self._mounted_path(pod, mount["mountPath"]))
            directory.mkdir(parents=True, exist_ok=True)
            volume = volumes[mount["name"]]
            if "configMap" in volume:
                data = m.find(self.objects, "ConfigMap", volume["configMap"]["name"]).get("data") or {}
            elif "secret" in volume:
                data = m.find(self.objects, "Secret", volume["secret"]["secretName"])["stringData"]
            else:
                continue  # emptyDir
            for key, value in data.items():
                (directory / key).write_text(value)
        args = list(pod.container.get("args") or [])
        parsed = build_parser().parse_args(args)
        assert parsed.config, f"{pod.workload['metadata']['name']}: no --config"
        pod.config_path = Path(self._mounted_path(pod, parsed.config))
        args = [self._mounted_path(pod, a) if a.startswith("/") else a for a in args]
        pod.config_path.write_text(self._localize_config(pod, index, pod.config_path.read_text()))
        args += self._listen_overrides(pod)
        self._note(pod, f"args {pod.container.get('args')} -> {args}")
        env = self._env(pod)
        binary = Path(sys.executable).parent / self.entrypoint[0]
        assert binary.is_file(), f"{binary} is missing: install dbintel (pip install -e .)"
        pod.process.argv = [str(binary), *self.entrypoint[1:], *args]
        pod.process.env = env
        pod.process.secret_values = tuple(self.secret.values())

    def _listen_overrides(self, pod: Pod) -> list[str]:
        """Rewrite 2: each `*_listen` setting of the role -> the loopback port of the container port it is."""
        config = parse_config(pod.config_path.read_text(), environ=self._env(pod))
        settings = getattr(config, pod.role)
        served, flags = set(), []
        for key, value in settings.model_dump().items():
            if not key.endswith("_listen"):
                continue
            port = int(value.rpartition(":")[2])
            assert port in pod.process.loopback_ports, (
                f"{pod.role} listens on {value} ({pod.role}.{key}) but the container declares no port {port}"
            )
            served.add(port)
            flags.append(f"--{key.replace('_', '-')}={LOOPBACK}:{pod.process.loopback_ports[port]}")
        unserved = set(pod.process.loopback_ports) - served
        assert not unserved, f"{pod.role} container declares ports {sorted(unserved)} that no *_listen setting serves"
        return flags

    def _env(self, pod: Pod) -> dict[str, str]:
        env = {**self.image_env, "HOSTNAME": pod.name}
        env["PATH"] = env.get("PATH", "/usr/bin:/bin").replace(IMAGE_BIN, str(Path(sys.executable).parent))
        env.update(m.container_env(self.objects, pod.workload, pod.container))
        # One host is one node: pods on it share spec.nodeName and the host IP, as they would.
        field_values = {
            "metadata.name": pod.name,
            "metadata.namespace": NAMESPACE,
            "status.podIP": LOOPBACK,
            "status.hostIP": LOOPBACK,
            "spec.nodeName": socket.gethostname(),
        }
        for item in pod.container.get("env") or []:
            field_ref = (item.get("valueFrom") or {}).get("fieldRef")
            if field_ref:
                assert field_ref["fieldPath"] in field_values, f"fieldRef {field_ref['fieldPath']}: not emulated here"
                env[item["name"]] = field_values[field_ref["fieldPath"]]
        return env

    def _localize_config(self, pod: Pod, index: int, text: str) -> str:
        """Rewrites 4-7 on the mounted config file."""
        doc = yaml.safe_load(text)

        def walk(node: Any, path: str) -> Any:
            if isinstance(node, dict):
                return {k: walk(v, f"{path}.{k}" if path else k) for k, v in node.items()}
            if isinstance(node, list):
                return [walk(v, f"{path}[{i}]") for i, v in enumerate(node)]
            if isinstance(node, str):
                new = self._localize_string(pod, index, node)
                if new != node:
                    self._note(pod, f"config {path}: {node} -> {new}")
                return new
            return node

        doc = walk(doc, "")
        for i, database in enumerate(doc.get("databases") or []):
            server = self.database_servers[database["type"]]
            self._note(pod, f"config databases[{i}].endpoint: {database['endpoint']} -> {server.address}")
            database["endpoint"] = server.address
        for dotted, value in FAST_DURATIONS.items():
            section, _, key = dotted.rpartition(".")
            target = self._section(doc, section)
            self._note(pod, f"config {dotted}: {target.get(key, '(default)')} -> {value}")
            target[key] = value
        for i, database in enumerate(doc.get("databases") or []):
            for key in ("interval", "timeout") if "timeout" in database else ("interval",):
                old = database.get(key, "(default)")
                self._note(pod, f"config databases[{i}].{key}: {old} -> {FAST_POLL_INTERVAL}")
                database[key] = FAST_POLL_INTERVAL
        return yaml.safe_dump(doc, sort_keys=False)

    @staticmethod
    def _section(doc: Obj, dotted: str) -> Obj:
        for key in dotted.split("."):
            doc = doc.setdefault(key, {})
        return doc

    def _localize_string(self, pod: Pod, index: int, value: str) -> str:
        reference = FILE_REFERENCE.match(value)
        if reference:
            return "${file:" + self._mounted_path(pod, reference.group("path")) + "}"
        address = SERVICE_HOST.match(value)
        if address and (address.group("namespace") or NAMESPACE) == NAMESPACE:
            return self._service_address(address.group("service"), int(address.group("port")), index) or value
        return value

    def _service_address(self, name: str, port: int, index: int) -> str | None:
        """Rewrite 5: Service name:port -> 127.0.0.1:<loopback port> of one of its pods (None: not a Service)."""
        services = [o for o in self.objects if o["kind"] == "Service" and o["metadata"]["name"] == name]
        if not services:
            return None
        service_ports = [p for p in services[0]["spec"]["ports"] if p["port"] == port]
        assert service_ports, f"the config names {name}:{port}, but Service {name} has no port {port}"
        service_port = service_ports[0]
        selector = services[0]["spec"]["selector"]
        backends = [p for p in self.pods if all(p.labels.get(k) == v for k, v in selector.items())]
        if not backends:
            assert name == "redis", f"Service {name} selects no pod that runs here"
            return self.state_redis.address
        return f"{LOOPBACK}:{backends[index % len(backends)].port(service_port.get('targetPort', port))}"

    # -- running ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        for pod in self.pods:
            pod.process.start()
        for pod in self.pods:
            pod.process.wait_ready()

    def stop(self) -> list[str]:
        """SIGTERM every pod (agents first, as a rollout would drain them) and wait; returns the process groups
        that still have a member afterwards (should be none)."""
        groups = [p.process.process_group for p in self.pods if p.process.process_group]
        for role in ("agent", "coordinator"):
            pods = self.role_pods(role)
            for pod in pods:
                pod.process.terminate()
            for pod in pods:
                pod.process.close()  # waits for the exit, SIGKILLs the tree after stop_timeout
        leftovers = []
        for group in groups:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                continue
            leftovers.append(f"process group {group}")
            os.killpg(group, signal.SIGKILL)
        return leftovers

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ({p.role}) ---\n{p.process.log_tail(15)}" for p in self.pods)


# -- the test Secret and the database accounts it holds passwords for --------------------------------------
def inventory(objects: list[Obj]) -> Config:
    """The ConfigMap's config as written (references unresolved)."""
    return parse_config(
        m.find(objects, "ConfigMap", "dbintel-config")["data"]["config.yaml"],
        environ={"DBINTEL_REDIS_PASSWORD": "unused"},
    )


def secret_key_of(objects: list[Obj], reference: str) -> str:
    """The dbintel-secrets key a database password reference resolves to in the agent container."""
    workload, template, container = next(
        t for t in m.dbintel_containers(objects) if build_parser().parse_args(t[2].get("args") or []).command == "agent"
    )
    match = m.REFERENCE.match(reference)
    assert match, f"{reference!r} is not a reference"
    if match.group(1) == "env":
        item = next(e for e in container.get("env") or [] if e["name"] == match.group(2))
        ref = item["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "dbintel-secrets", ref
        return ref["key"]
    kind, name, key = m._file_under_mount(objects, workload, template, container, match.group(2))
    assert (kind, name) == ("Secret", "dbintel-secrets"), (kind, name)
    return key


def make_test_secret(objects: list[Obj], database_servers: dict[str, ManagedServer]) -> dict[str, str]:
    """The example Secret's keys with fresh values; a Redis database's key holds that server's password
    (a test server's password is fixed when it starts)."""
    example = m.find(objects, "Secret", "dbintel-secrets")
    keys = set(example.get("stringData") or {}) | set(example.get("data") or {})
    values = {key: secrets.token_hex(16) for key in keys}
    for database in inventory(objects).databases:
        if database.type == "redis" and database.password:
            values[secret_key_of(objects, database.password)] = database_servers["redis"].password
    return values


class DatabaseAccounts:
    """Rewrite 6: the inventory's accounts (username, PostgreSQL database) on the local servers, with the
    test Secret's passwords; remove() drops them again (the servers are shared with other tests)."""

    def __init__(self, objects: list[Obj], secret: dict[str, str], servers: dict[str, ManagedServer]) -> None:
        self._undo: list[Callable[[], None]] = []
        self._objects, self._secret, self._servers = objects, secret, servers

    def create(self) -> None:
        for db in inventory(self._objects).databases:
            password = self._secret[secret_key_of(self._objects, db.password)] if db.password else None
            server = self._servers[db.type]
            if db.type == "postgresql":
                server.execute(f"CREATE ROLE \"{db.username}\" LOGIN PASSWORD '{password}' IN ROLE pg_monitor")
                self._undo.append(lambda s=server, u=db.username: s.execute(f'DROP ROLE IF EXISTS "{u}"'))
                if db.database:
                    server.execute(f'CREATE DATABASE "{db.database}"')
                    self._undo.append(
                        lambda s=server, d=db.database: s.execute(f'DROP DATABASE IF EXISTS "{d}" WITH (FORCE)')
                    )
            elif db.type == "mysql":
                account = f"'{db.username}'@'%'"
                server.execute(
                    f"CREATE USER {account} IDENTIFIED BY '{password}';"
                    f"GRANT PROCESS, REPLICATION CLIENT, SLAVE MONITOR, SELECT ON *.* TO {account}"
                )
                self._undo.append(lambda s=server, a=account: s.execute(f"DROP USER IF EXISTS {a}"))
            elif db.type == "mongodb":
                source = db.database or "admin"
                with server.client() as client:
                    client[source].command(
                        "createUser", db.username, pwd=password, roles=[{"role": "clusterMonitor", "db": "admin"}]
                    )
                self._undo.append(lambda s=server, u=db.username, d=source: _drop_mongo_user(s, d, u))
            elif db.type == "redis":
                assert db.username in (None, "default"), "a Redis ACL user would need provisioning here"

    def remove(self) -> None:
        errors = []
        for undo in reversed(self._undo):
            try:
                undo()
            except Exception as exc:
                errors.append(repr(exc))
        self._undo.clear()
        if errors:
            raise ServerError(f"could not drop the test accounts: {errors}")


def _drop_mongo_user(server: ManagedServer, database: str, user: str) -> None:
    with server.client() as client:
        client[database].command("dropUser", user)


# -- Prometheus, configured from the PodMonitors ------------------------------------------------------------
def _label_name(key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def discovered_targets(pods: list[Pod]) -> list[Obj]:
    """What kubernetes_sd (role: pod) discovers: one target per container port, with its meta labels."""
    targets = []
    for pod in pods:
        for port in pod.container.get("ports") or []:
            labels = {
                "__meta_kubernetes_namespace": NAMESPACE,
                "__meta_kubernetes_pod_name": pod.name,
                "__meta_kubernetes_pod_ip": LOOPBACK,
                "__meta_kubernetes_pod_phase": "Running",
                "__meta_kubernetes_pod_ready": "true",
                "__meta_kubernetes_pod_controller_kind": "ReplicaSet",
                "__meta_kubernetes_pod_controller_name": pod.name.rsplit("-", 1)[0],
                "__meta_kubernetes_pod_container_name": pod.container["name"],
                "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
                "__meta_kubernetes_pod_container_port_protocol": port.get("protocol", "TCP"),
            }
            for key, value in pod.labels.items():
                labels[f"__meta_kubernetes_pod_label_{_label_name(key)}"] = value
                labels[f"__meta_kubernetes_pod_labelpresent_{_label_name(key)}"] = "true"
            targets.append({"targets": [f"{LOOPBACK}:{pod.port(port['containerPort'])}"], "labels": labels})
    return targets


_RELABEL_KEYS = {"sourceLabels": "source_labels", "targetLabel": "target_label"}


def _relabeling(rule: Obj) -> Obj:
    return {_RELABEL_KEYS.get(k, k): (v.lower() if k == "action" else v) for k, v in rule.items()}


def scrape_configs(objects: list[Obj], pods: list[Pod]) -> list[Obj]:
    """One job per PodMonitor endpoint, with the relabelings the Prometheus Operator generates for it."""
    jobs = []
    for monitor in (o for o in objects if o["kind"] == "PodMonitor"):
        spec, name = monitor["spec"], monitor["metadata"]["name"]
        namespace = monitor["metadata"].get("namespace", "default")
        namespaces = (spec.get("namespaceSelector") or {}).get("matchNames") or [namespace]
        selector = spec["selector"]
        assert not selector.get("matchExpressions"), "matchExpressions: not translated here"
        for index, endpoint in enumerate(spec["podMetricsEndpoints"]):
            relabel = [
                {"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"},
                {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)"},
            ]
            for key, value in selector.get("matchLabels", {}).items():
                relabel.append(
                    {
                        "action": "keep",
                        "regex": f"({value});true",
                        "source_labels": [
                            f"__meta_kubernetes_pod_label_{_label_name(key)}",
                            f"__meta_kubernetes_pod_labelpresent_{_label_name(key)}",
                        ],
                    }
                )
            if "port" in endpoint:
                relabel.append(
                    {
                        "action": "keep",
                        "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                        "regex": endpoint["port"],
                    }
                )
            else:
                relabel.append(
                    {
                        "action": "keep",
                        "source_labels": ["__meta_kubernetes_pod_container_port_number"],
                        "regex": str(endpoint["targetPort"]),
                    }
                )
            relabel += [
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            ]
            for label in spec.get("podTargetLabels") or []:
                relabel.append(
                    {
                        "source_labels": [f"__meta_kubernetes_pod_label_{_label_name(label)}"],
                        "target_label": _label_name(label),
                        "regex": "(.+)",
                        "replacement": "${1}",
                    }
                )
            job = f"{namespace}/{name}"
            if spec.get("jobLabel"):
                job_source = f"__meta_kubernetes_pod_label_{_label_name(spec['jobLabel'])}"
                relabel.append({"target_label": "job", "replacement": job})
                relabel.append(
                    {"source_labels": [job_source], "target_label": "job", "regex": "(.+)", "replacement": "${1}"}
                )
            else:
                relabel.append({"target_label": "job", "replacement": job})
            relabel.append(
                {"target_label": "endpoint", "replacement": endpoint.get("port", str(endpoint.get("targetPort")))}
            )
            relabel += [_relabeling(r) for r in endpoint.get("relabelings") or []]
            in_scope = [p for p in pods if NAMESPACE in namespaces]
            assert "trackTimestampsStaleness" not in endpoint, "not translated here (Prometheus >= 2.48)"
            scrape: Obj = {
                "job_name": f"podMonitor/{namespace}/{name}/{index}",
                "honor_labels": bool(endpoint.get("honorLabels", False)),
                "honor_timestamps": bool(endpoint.get("honorTimestamps", True)),
                "scrape_interval": SCRAPE_INTERVAL,
                "scrape_timeout": SCRAPE_INTERVAL,
                "metrics_path": endpoint.get("path", "/metrics"),
                "scheme": endpoint.get("scheme", "http"),
                "static_configs": discovered_targets(in_scope),
                "relabel_configs": relabel,
                "metric_relabel_configs": [_relabeling(r) for r in endpoint.get("metricRelabelings") or []],
            }
            if endpoint.get("params"):
                scrape["params"] = endpoint["params"]
            jobs.append(scrape)
    return jobs


def prometheus_config(objects: list[Obj], pods: list[Pod]) -> Obj:
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": scrape_configs(objects, pods),
    }
