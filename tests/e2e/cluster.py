"""A real dbintel cluster on loopback for the end-to-end scenarios.

`dbintel coordinator` and `dbintel agent` run as real subprocesses (each in its own process group,
its output in a log file under the cluster's directory), on a real Redis for the coordinators'
shared state, polling real PostgreSQL, MariaDB, Redis and SecantusDB servers through an inventory of
logical databases: N PostgreSQL databases, N MariaDB schemas, the 16 Redis db numbers and N MongoDB
entries (for MongoDB `database:` is only the authSource, so those entries are distinct inventory
items on one server). Timings are scaled down (`Timing`: heartbeat 1 s, node_timeout 6 s, leader_ttl
4 s, every database polled every 2 s) so that every fault plays out in seconds.

Agents get every coordinator replica in one gRPC target (`ipv4:a,b,c`): an agent dials one at random
and another when its stream fails (agent/replicas.py) — the loopback stand-in for a headless Service
resolving to the replicas.

Fault injection: one coordinator reaches Redis through a FaultProxy, and so does one monitored
database; the proxies live on an event loop in a thread of the test process (the tests themselves
are synchronous), so they work whatever event loop pytest gives a test.

Everything is synchronous and safe to drive from a test; `close()` stops it all.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml

from dbintel.v1 import operator_service_pb2 as opb
from dbintel.v1 import operator_service_pb2_grpc, types_pb2
from tests.e2e.ownership import parse_poll_counters
from tests.faultproxy import Proxy, ProxyLoop
from tests.processes import stop_process_group
from tests.servers import MariaDBServer, PostgresServer, RedisServer, SecantusServer, free_port

RESOURCE_PREFIX = "db:"


@dataclass(frozen=True)
class Timing:
    """Scaled down from the defaults (30 s / 90 s / 30 s / 30 s) so faults play out in seconds, yet
    with room for a 2-core machine that other work keeps busy: an agent's event loop or a store call
    can stall for a second there, and node_timeout must not be within reach of such a stall."""

    heartbeat: float = 1.0
    node_timeout: float = 6.0
    leader_ttl: float = 4.0
    interval: float = 2.0  # every database's poll interval
    check_interval: float = 1.0
    config_reload: float = 1.0
    # A crashed agent's stream end expires it after this (the default is 6 s at heartbeat 30 s): half
    # node_timeout, so the faster path is what a SIGKILL measures, with the agent's keepalive (a
    # sixth of it) still well above what a loaded 2-core machine delays a ping by.
    disconnect_grace: float = 3.0


def wait_until(predicate: Callable[[], Any], timeout: float, message: str, period: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy; fail with `message` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except (grpc.RpcError, OSError) as exc:  # a process coming or going: ask again
            last_error = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {message}{detail}")
        time.sleep(period)


# -- processes ------------------------------------------------------------------------------------------


class Process:
    """One `dbintel` subprocess in its own process group, output appended to `log_path`."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name, self.argv, self.env, self.log_path = name, argv, env, log_path
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')} ---\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive:
            assert self.popen is not None
            os.killpg(self.popen.pid, signum)

    def wait(self, timeout: float) -> int | None:
        if self.popen is None:
            return None
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not ended within `timeout`."""
        if self.popen is not None:
            stop_process_group(self.popen, timeout)

    def kill(self) -> None:
        if self.alive:
            self.signal(signal.SIGKILL)
            self.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


@dataclass
class Coordinator:
    process: Process
    grpc_port: int
    metrics_port: int
    health_port: int
    config_path: Path

    @property
    def name(self) -> str:
        return self.process.name

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


@dataclass
class AgentProcess:
    process: Process
    metrics_port: int
    health_port: int

    @property
    def name(self) -> str:
        return self.process.name

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0, ""


# -- the inventory ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Targets:
    """The monitored servers."""

    postgres: PostgresServer
    mariadb: MariaDBServer
    redis: RedisServer
    mongo: SecantusServer


PASSWORD_ENV = {"postgresql": "E2E_PG_PASSWORD", "mysql": "E2E_MYSQL_PASSWORD", "redis": "E2E_REDIS_PASSWORD"}


def provision_logical_databases(targets: Targets, count: int) -> None:
    """`count` PostgreSQL databases and `count` MariaDB schemas beside the fixtures' own (idempotent)."""
    existing = {row[0] for row in targets.postgres.execute("SELECT datname FROM pg_database")}
    statements = "".join(
        f"CREATE DATABASE e2e_pg_{i:02d};\n" for i in range(count) if f"e2e_pg_{i:02d}" not in existing
    )
    if statements:
        targets.postgres.execute(statements)
    targets.mariadb.execute("".join(f"CREATE DATABASE IF NOT EXISTS e2e_my_{i:02d};\n" for i in range(count)))


def inventory(
    targets: Targets, *, per_type: int, interval: float, proxied_postgres: str | None = None
) -> list[dict[str, Any]]:
    """The database entries: per_type PostgreSQL, MariaDB and MongoDB entries plus Redis db 0-15.
    `proxied_postgres` (host:port of a FaultProxy) serves one extra PostgreSQL entry, `pg-faulty`."""
    every = f"{interval:g}s"
    # Under the interval (the default timeout equals it): a poll that times out then ends before its
    # next slot instead of skipping it, so a slow server under a loaded CPU does not look like a gap.
    timeout = f"{int(interval * 700)}ms"
    pg, my, rd, mg = targets.postgres, targets.mariadb, targets.redis, targets.mongo
    entries: list[dict[str, Any]] = []
    for i in range(per_type):
        entries.append(
            {
                "name": f"pg-{i:02d}",
                "type": "postgresql",
                "endpoint": pg.address,
                "username": pg.monitor_user,
                "password": f"${{env:{PASSWORD_ENV['postgresql']}}}",
                "database": f"e2e_pg_{i:02d}",
                "interval": every,
                "timeout": timeout,
            }
        )
        entries.append(
            {
                "name": f"my-{i:02d}",
                "type": "mysql",
                "endpoint": my.address,
                "username": my.monitor_user,
                "password": f"${{env:{PASSWORD_ENV['mysql']}}}",
                "database": f"e2e_my_{i:02d}",
                "interval": every,
                "timeout": timeout,
            }
        )
        entries.append(
            {"name": f"mongo-{i:02d}", "type": "mongodb", "endpoint": mg.address, "interval": every, "timeout": timeout}
        )
    for number in range(16):
        entries.append(
            {
                "name": f"redis-{number:02d}",
                "type": "redis",
                "endpoint": rd.address,
                "password": f"${{env:{PASSWORD_ENV['redis']}}}",
                "database": str(number),
                "interval": every,
                "timeout": timeout,
            }
        )
    if proxied_postgres is not None:
        entries.append(
            {
                "name": "pg-faulty",
                "type": "postgresql",
                "endpoint": proxied_postgres,
                "username": pg.monitor_user,
                "password": f"${{env:{PASSWORD_ENV['postgresql']}}}",
                "database": pg.app_database,
                "interval": every,
                "timeout": timeout,
            }
        )
    return entries


def resource_id(entry: dict[str, Any]) -> str:
    return f"{RESOURCE_PREFIX}{entry['type']}/{entry['name']}"


# -- the cluster ------------------------------------------------------------------------------------------


class Cluster:
    """State Redis + coordinators + agents; see the module docstring."""

    def __init__(
        self,
        root: Path,
        targets: Targets,
        *,
        coordinators: int = 3,
        agents: int = 3,
        per_type: int = 12,
        timing: Timing = Timing(),
    ) -> None:
        self.root = root
        self.targets = targets
        self.timing = timing
        self.per_type = per_type
        self.proxies = ProxyLoop()
        self.state_redis = RedisServer()
        self.coordinators: list[Coordinator] = []
        self.agents: dict[str, AgentProcess] = {}
        self._agent_serial = 0
        self._coordinator_count = coordinators
        self._initial_agents = agents
        self.env = {
            **os.environ,
            "E2E_STATE_REDIS_PASSWORD": self.state_redis.password,
            PASSWORD_ENV["postgresql"]: targets.postgres.monitor_password,
            PASSWORD_ENV["mysql"]: targets.mariadb.monitor_password,
            PASSWORD_ENV["redis"]: targets.redis.password,
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("DBINTEL_CONFIG", None)
        self.redis_proxy: Proxy | None = None  # between the last coordinator and the state Redis
        self.database_proxy: Proxy | None = None  # in front of `pg-faulty`
        self.databases: list[dict[str, Any]] = []
        self.original_databases: list[dict[str, Any]] = []
        self._channels: dict[str, grpc.Channel] = {}

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> Cluster:
        self.root.mkdir(parents=True, exist_ok=True)
        self.state_redis.start()
        provision_logical_databases(self.targets, self.per_type)
        self.redis_proxy = self.proxies.proxy(self.state_redis.host, self.state_redis.port)
        pg = self.targets.postgres
        self.database_proxy = self.proxies.proxy(pg.host, pg.port)
        self.databases = inventory(
            self.targets,
            per_type=self.per_type,
            interval=self.timing.interval,
            proxied_postgres=self.database_proxy.address,
        )
        self.original_databases = list(self.databases)
        for index in range(self._coordinator_count):
            # The last replica reaches Redis through the proxy, so it alone can be cut off.
            via_proxy = index == self._coordinator_count - 1
            self.coordinators.append(
                Coordinator(
                    Process(f"coord-{index}", [], self.env, self.root / f"coord-{index}.log"),
                    free_port(),
                    free_port(),
                    free_port(),
                    self.root / (f"config-coord-{index}.yaml" if via_proxy else "config.yaml"),
                )
            )
        self.write_config()
        for coordinator in self.coordinators:
            self.start_coordinator(coordinator)
        wait_until(self.leader, 30, "a leader coordinator")
        for _ in range(self._initial_agents):
            self.add_agent()
        return self

    @contextlib.contextmanager
    def running(self, what: str = "e2e cluster") -> Iterator[Cluster]:
        """Started and converged for a module's scenarios; closed after, saying where its logs are."""
        try:
            self.start()
            self.wait_converged(timeout=60)
            yield self
        finally:
            self.close()
            print(f"{what} logs were in {self.root}")

    def close(self) -> None:
        for agent in self.agents.values():
            agent.process.kill()
        for coordinator in self.coordinators:
            coordinator.process.kill()
        for channel in self._channels.values():
            channel.close()
        self.proxies.close()
        self.state_redis.close()

    # -- config ----------------------------------------------------------------------------------------
    def config_document(self, redis_address: str) -> dict[str, Any]:
        t = self.timing
        return {
            "scaling": {
                "mode": "redis",
                "redis": {
                    "address": redis_address,
                    "password": "${env:E2E_STATE_REDIS_PASSWORD}",
                    "key_prefix": "e2e:",
                    "leader_ttl": f"{t.leader_ttl:g}s",
                },
                "coordinator": {
                    "heartbeat_interval": f"{t.heartbeat:g}s",
                    "node_timeout": f"{t.node_timeout:g}s",
                    # Only membership changes rebalance during a scenario: the periodic cost
                    # rebalance would make the move counts depend on when a test ran.
                    "rebalance_interval": "1h",
                    "min_rebalance_interval": "1s",
                    "disconnect_grace": f"{t.disconnect_grace:g}s",
                },
                "receiver_scaling": {"check_interval": f"{t.check_interval:g}s"},
            },
            "coordinator": {"config_reload_interval": f"{t.config_reload:g}s"},
            "agent": {"shutdown_grace": "5s"},
            "databases": self.databases,
        }

    def write_config(self) -> None:
        """(Re)write every coordinator's config file from `self.databases`; replaced atomically, so a
        reloading coordinator never reads half a file."""
        for coordinator in self.coordinators:
            via_proxy = coordinator.config_path.name != "config.yaml"
            address = self.redis_proxy.address if via_proxy and self.redis_proxy else self.state_redis.address
            temporary = coordinator.config_path.with_suffix(".tmp")
            temporary.write_text(yaml.safe_dump(self.config_document(address), sort_keys=False))
            temporary.replace(coordinator.config_path)

    def restore_inventory(self) -> bool:
        """Back to the inventory the cluster started with; True if it had changed (rewrite the config)."""
        if self.databases == self.original_databases:
            return False
        self.databases = list(self.original_databases)
        return True

    @property
    def agent_config_path(self) -> Path:
        return self.root / "config.yaml"

    def resource_ids(self) -> set[str]:
        return {resource_id(entry) for entry in self.databases}

    def intervals(self) -> dict[str, float]:
        return {resource_id(entry): self.timing.interval for entry in self.databases}

    # -- coordinators -----------------------------------------------------------------------------------
    def start_coordinator(self, coordinator: Coordinator) -> None:
        coordinator.process.argv = [
            sys.executable,
            "-m",
            "dbintel.cli",
            "coordinator",
            "--config",
            str(coordinator.config_path),
            "--grpc-listen",
            coordinator.address,
            "--metrics-listen",
            f"127.0.0.1:{coordinator.metrics_port}",
            "--health-listen",
            f"127.0.0.1:{coordinator.health_port}",
        ]
        coordinator.process.env = {**self.env, "POD_NAME": coordinator.name}  # its coordinator id
        coordinator.process.start()
        wait_until(
            lambda: http_get(f"http://127.0.0.1:{coordinator.health_port}/")[0] == 200,
            30,
            f"{coordinator.name} alive\n{coordinator.process.log_tail()}",
        )

    def coordinator(self, name: str) -> Coordinator:
        return next(c for c in self.coordinators if c.name == name)

    def live_coordinators(self) -> list[Coordinator]:
        return [c for c in self.coordinators if c.process.alive]

    def agent_target(self) -> str:
        return "ipv4:" + ",".join(c.address for c in self.coordinators)

    def operator(self, coordinator: Coordinator | None = None) -> operator_service_pb2_grpc.OperatorServiceStub:
        """An operator stub on `coordinator`, else on the first live replica."""
        coordinator = coordinator or self.live_coordinators()[0]
        channel = self._channels.get(coordinator.address)
        if channel is None:
            channel = self._channels[coordinator.address] = grpc.insecure_channel(coordinator.address)
        return operator_service_pb2_grpc.OperatorServiceStub(channel)

    def status(self, coordinator: Coordinator | None = None) -> opb.GetClusterStatusResponse:
        return self.operator(coordinator).GetClusterStatus(opb.GetClusterStatusRequest(), timeout=3)

    def leader(self) -> str | None:
        """The leader's id, if every live replica agrees on one that is alive and says it leads."""
        names = {c.name for c in self.live_coordinators()}
        views = {self.status(c).leader_id for c in self.live_coordinators()}
        if len(views) != 1:
            return None
        (leader,) = views
        if leader not in names or not self.status(self.coordinator(leader)).is_leader:
            return None
        return leader

    def assignments(self, coordinator: Coordinator | None = None) -> dict[str, tuple[str, int]]:
        """resource id -> (agent id, AssignmentState) as the operator API lists it."""
        reply = self.operator(coordinator).ListAssignments(opb.ListAssignmentsRequest(), timeout=3)
        return {e.resource_id: (e.agent_id, e.state) for e in reply.assignments}

    def owners(self) -> dict[str, str]:
        """resource id -> agent, for databases in the ASSIGNED state only."""
        return {
            rid: agent
            for rid, (agent, state) in self.assignments().items()
            if state == types_pb2.ASSIGNMENT_STATE_ASSIGNED
        }

    def agent_infos(self, coordinator: Coordinator | None = None) -> dict[str, types_pb2.AgentInfo]:
        """agent id -> AgentInfo as the operator API lists it (on `coordinator`, else any live replica)."""
        reply = self.operator(coordinator).ListAgents(opb.ListAgentsRequest(), timeout=3)
        return {a.agent_id: a for a in reply.agents}

    def agent_states(self) -> dict[str, str]:
        return {agent: types_pb2.AgentState.Name(a.state) for agent, a in self.agent_infos().items()}

    # -- agents -----------------------------------------------------------------------------------------
    def write_agent_config(self, name: str, **receiver_scaling: Any) -> Path:
        """A config file for one agent: the shared one with `receiver_scaling` settings changed."""
        document = self.config_document(self.state_redis.address)
        document["scaling"]["receiver_scaling"].update(receiver_scaling)
        path = self.root / f"config-{name}.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    def add_agent(
        self, name: str | None = None, *, wait: bool = True, config: Path | None = None, target: str | None = None
    ) -> AgentProcess:
        """Start an agent on the shared config and every replica, unless `config` / `target` say otherwise."""
        if name is None:
            name = f"agent-{self._agent_serial:02d}"
            self._agent_serial += 1
        metrics_port, health_port = free_port(), free_port()
        process = Process(
            name,
            [
                sys.executable,
                "-m",
                "dbintel.cli",
                "agent",
                "--config",
                str(config or self.agent_config_path),
                "--coordinator",
                target or self.agent_target(),
                "--metrics-listen",
                f"127.0.0.1:{metrics_port}",
                "--health-listen",
                f"127.0.0.1:{health_port}",
            ],
            {**self.env, "NODE_ID": name},
            self.root / f"{name}.log",
        )
        agent = AgentProcess(process, metrics_port, health_port)
        self.agents[name] = agent
        process.start()
        if wait:
            self.wait_agent_up(agent)
        return agent

    def wait_agent_up(self, agent: AgentProcess) -> None:
        wait_until(
            lambda: http_get(f"http://127.0.0.1:{agent.health_port}/")[0] == 200,
            30,
            f"{agent.name} alive\n{agent.process.log_tail()}",
        )

    def live_agents(self) -> dict[str, AgentProcess]:
        return {name: a for name, a in self.agents.items() if a.process.alive}

    def forget_dead_agents(self) -> None:
        self.agents = self.live_agents()

    def exported(self) -> dict[str, set[str]]:
        """agent -> the databases its /metrics shows a poll count for (what it actually polls)."""
        out = {}
        for name, agent in self.live_agents().items():
            status, text = http_get(agent.metrics_url)
            if status != 200:
                raise OSError(f"{name} /metrics answered {status}")
            out[name] = set(parse_poll_counters(text))
        return out

    def settled(self, polls: int = 2) -> bool:
        """Every live agent has polled each database it exports at least `polls` times (a new agent's
        first polls, connections included, are behind it)."""
        for agent in self.live_agents().values():
            status, text = http_get(agent.metrics_url)
            if status != 200 or any(count < polls for count, _ in parse_poll_counters(text).values()):
                return False
        return True

    def converged(self, *, every_agent_holds: bool = False) -> bool:
        """Quiet cluster, property 1: every database ASSIGNED to one live agent, each agent exporting
        exactly what the operator API says it holds, no database exported twice or by nobody.
        `every_agent_holds`: also no live agent idle (a join's balancing step has run)."""
        everything = self.resource_ids()
        live = set(self.live_agents())
        states = self.agent_states()
        if {a for a, s in states.items() if s == "AGENT_STATE_ACTIVE"} != live:
            return False
        assignments = self.assignments()
        if set(assignments) != everything:
            return False
        if any(
            state != types_pb2.ASSIGNMENT_STATE_ASSIGNED or agent not in live for agent, state in assignments.values()
        ):
            return False
        if every_agent_holds and {owner for owner, _ in assignments.values()} != live:
            return False
        exported = self.exported()
        for agent in live:
            held = {rid for rid, (owner, _) in assignments.items() if owner == agent}
            if exported.get(agent, set()) != held:
                return False
        return True

    def wait_converged(self, timeout: float = 30.0, *, every_agent_holds: bool = False) -> None:
        wait_until(
            lambda: self.converged(every_agent_holds=every_agent_holds),
            timeout,
            "the cluster to converge (every database on exactly one live agent)",
            period=0.2,
        )
