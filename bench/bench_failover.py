"""Failover at the default settings: from an agent's death to its databases' first poll elsewhere, and
a rolling restart of the coordinators.

Run:  python bench/bench_failover.py [--rounds 3] [--baseline-rounds 2] [--heartbeat 30s] [--node-timeout 90s]
                                     [--disconnect-grace 6s] [--interval 10s] [--no-write]

A real cluster on loopback: two `dbintel coordinator` processes (scaling.mode: redis, on a real Redis)
and three `dbintel agent` processes (given both replicas, `ipv4:a,b`) polling real servers (a
PostgreSQL and a monitored Redis from tests/servers.py: 8 PostgreSQL inventory entries and the 16
Redis db numbers, 24 databases). The scaling settings are the product's defaults unless told
otherwise. Each round kills one agent, alternating:

- SIGKILL (a crash: no Leave; its connection closes, so the replica serving its stream marks it
  suspect and the leader expires it after disconnect_grace),
- SIGTERM (graceful: the agent calls Leave and the hand-off is immediate),

then `--baseline-rounds` SIGKILL rounds with `disconnect_grace: 0s` (before issue 13: only
node_timeout expires a crashed agent), side by side in the same run; and finally every coordinator is
restarted in turn (SIGTERM, start again, wait until it serves) while the agents poll.

Measured from the moment the signal is sent (wall clock): when the operator API lists every one of
the victim's databases on another agent (reassigned), when each is first polled by another agent
(`dbintel_agent_last_poll_timestamp_seconds{dbintel_resource=...}`, the Unix time a poll started,
scraped from every agent every 0.2 s), and the largest gap in a database's series against the
collection interval (a gap of one interval is a series that missed nothing). For the rolling restart:
how many databases changed owner, the largest gap in any series, and polls of one database by two
agents within half an interval (duplicates). The victim is restarted and the cluster rebalanced
before the next round.

Writes docs/data/bench_failover.json (raw figures; top-level `series`, `unit`, `command`, for
bench/plots.py) and the "## Failover: agent death to new owner polling" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import grpc
import yaml
from report import DOC, image_link, machine_line, write_section  # bench/report.py
from servers import REPO_ROOT, metric_by_resource, scrape  # bench/servers.py (puts the repo root on sys.path)

from dbintel.v1 import operator_service_pb2 as opb
from dbintel.v1 import operator_service_pb2_grpc
from tests.processes import stop_process_group, wait_http_ok
from tests.servers import PostgresServer, RedisServer, free_port

SECTION = "## Failover: agent death to new owner polling"
DATA = REPO_ROOT / "docs" / "data" / "bench_failover.json"
LAST_POLL = "dbintel_agent_last_poll_timestamp_seconds"
AGENTS = 3
COORDINATORS = 2
POSTGRES_ENTRIES = 8
SCRAPE_EVERY_S = 0.2

# The peer: Datadog Cluster Agent. node_expiration_timeout 30 s (default), expired nodes are looked
# for every node_expiration_timeout / 2 = 15 s, and a runner fetches its checks every 10 s.
PEER = (
    "Datadog Cluster Agent (cluster checks), defaults: a dead runner's checks run elsewhere after 30–55 s "
    "(node_expiration_timeout 30 s + up to one 15 s expiry sweep + up to one 10 s poll of the Cluster "
    'Agent by the new runner). Sources: docs.datadoghq.com/agent/cluster_agent/clusterchecks/ ("The Agents '
    'connect to the Cluster Agent every ten seconds"; a silent Agent is removed and its configurations '
    "dispatched to others); DataDog/datadog-agent pkg/config/setup (`cluster_checks.node_expiration_timeout` "
    "default 30) and pkg/clusteragent/clusterchecks/dispatcher_main.go (expiry sweep every "
    "node_expiration_timeout/2)."
)


def parse_duration(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: use e.g. 500ms, 5s, 1m")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "ms" else value * 60 if unit == "m" else value


class Cluster:
    def __init__(
        self, args, workdir: Path, state_redis: RedisServer, target_redis: RedisServer, postgres: PostgresServer
    ):
        self.args, self.workdir = args, workdir
        self.env = {
            **os.environ,
            "FAILOVER_STATE_REDIS_PASSWORD": state_redis.password,
            "FAILOVER_TARGET_REDIS_PASSWORD": target_redis.password,
            "FAILOVER_PG_PASSWORD": postgres.monitor_password,
        }
        databases = [
            {
                "name": f"pg{i}",
                "type": "postgresql",
                "endpoint": f"{postgres.host}:{postgres.port}",
                "username": postgres.monitor_user,
                "password": "${env:FAILOVER_PG_PASSWORD}",
                "database": postgres.app_database if i % 2 else "postgres",
                "interval": args.interval_text,
            }
            for i in range(POSTGRES_ENTRIES)
        ]
        databases += [
            {
                "name": f"redis{i}",
                "type": "redis",
                "endpoint": target_redis.address,
                "password": "${env:FAILOVER_TARGET_REDIS_PASSWORD}",
                "database": str(i),
                "interval": args.interval_text,
            }
            for i in range(16)
        ]
        self.resources = {f"db:postgresql/pg{i}" for i in range(POSTGRES_ENTRIES)} | {
            f"db:redis/redis{i}" for i in range(16)
        }
        self.document = {
            "scaling": {
                "enabled": True,
                "mode": "redis",
                "redis": {
                    "address": state_redis.address,
                    "password": "${env:FAILOVER_STATE_REDIS_PASSWORD}",
                    "key_prefix": f"failover:{uuid.uuid4().hex[:8]}:",
                },
                "coordinator": {
                    "heartbeat_interval": args.heartbeat_text,
                    "node_timeout": args.node_timeout_text,
                    "disconnect_grace": args.disconnect_grace_text,
                    # a restarted agent gets its share back within seconds between rounds
                    "min_rebalance_interval": "5s",
                },
            },
            "coordinator": {"config_reload_interval": "1s"},
            "databases": databases,
        }
        self.config = workdir / "config.yaml"
        self.write_config(args.disconnect_grace_text)
        self.grpc_ports = [free_port() for _ in range(COORDINATORS)]
        self.coordinators: list[subprocess.Popen | None] = [None] * COORDINATORS
        self.agents: dict[str, tuple[subprocess.Popen, int]] = {}  # agent id -> (process, metrics port)
        self.timeline = Timeline(self)
        self._channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_ports[0]}")

    def write_config(self, disconnect_grace: str) -> None:
        """The coordinators reload it within a second (config_reload_interval)."""
        self.document["scaling"]["coordinator"]["disconnect_grace"] = disconnect_grace
        temporary = self.config.with_suffix(".tmp")
        temporary.write_text(yaml.safe_dump(self.document, sort_keys=False))
        temporary.replace(self.config)

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen:
        log = open(self.workdir / log_name, "ab")
        return subprocess.Popen(
            [sys.executable, "-m", "dbintel.cli", "--log-level", "info", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_coordinator(self, index: int) -> None:
        health = free_port()
        process = self._spawn(
            [
                "coordinator",
                "--config",
                str(self.config),
                "--grpc-listen",
                f"127.0.0.1:{self.grpc_ports[index]}",
                "--metrics-listen",
                f"127.0.0.1:{free_port()}",
                "--health-listen",
                f"127.0.0.1:{health}",
            ],
            f"coordinator-{index}.log",
        )
        self.coordinators[index] = process
        wait_http_ok(f"http://127.0.0.1:{health}/ready", process, timeout=60)

    def start_agent(self, agent_id: str) -> None:
        metrics = free_port()
        process = self._spawn(
            [
                "agent",
                "--config",
                str(self.config),
                "--agent-id",
                agent_id,
                "--coordinator",
                "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in self.grpc_ports),
                "--metrics-listen",
                f"127.0.0.1:{metrics}",
                "--health-listen",
                f"127.0.0.1:{free_port()}",
            ],
            f"{agent_id}.log",
        )
        wait_http_ok(f"http://127.0.0.1:{metrics}/metrics", process, timeout=60)
        self.agents[agent_id] = (process, metrics)

    def last_polls(self, agent_id: str) -> dict[str, float]:
        try:
            return metric_by_resource(scrape(f"http://127.0.0.1:{self.agents[agent_id][1]}/metrics", 2.0), LAST_POLL)
        except (OSError, KeyError):
            return {}

    def owners(self) -> dict[str, str]:
        """resource -> agent, as the operator API lists the assignments (any replica that answers)."""
        for port in self.grpc_ports:
            try:
                with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                    reply = operator_service_pb2_grpc.OperatorServiceStub(channel).ListAssignments(
                        opb.ListAssignmentsRequest(), timeout=2
                    )
                return {a.resource_id: a.agent_id for a in reply.assignments}
            except grpc.RpcError:
                continue
        return {}

    def wait_balanced(self, timeout: float = 180.0) -> dict[str, set[str]]:
        """Until every database is polled by exactly one agent and every agent polls some, steadily."""
        deadline, since, previous = time.monotonic() + timeout, None, None
        held: dict[str, set[str]] = {}
        while time.monotonic() < deadline:
            held = {a: set(self.last_polls(a)) for a in self.agents}
            owners = [r for polled in held.values() for r in polled]
            ok = sorted(owners) == sorted(self.resources) and all(held.values())
            if ok and held == previous:
                if since is not None and time.monotonic() - since >= self.args.interval + 1:
                    return held
                since = since or time.monotonic()
            else:
                since = None
            previous = held
            time.sleep(0.5)
        raise RuntimeError(f"cluster not balanced within {timeout}s: {held}")

    def stop(self) -> None:
        self.timeline.stop()
        for process, _ in self.agents.values():
            stop_process_group(process, timeout=20)
        for coordinator in self.coordinators:
            if coordinator is not None:
                stop_process_group(coordinator, timeout=20)


class Timeline:
    """Every poll start each agent reports, sampled every SCRAPE_EVERY_S: resource -> {(start, agent)}."""

    def __init__(self, cluster: Cluster):
        self._cluster = cluster
        self.polls: dict[str, set[tuple[float, str]]] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="timeline", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stopping.wait(SCRAPE_EVERY_S):
            for agent in list(self._cluster.agents):
                for rid, started in self._cluster.last_polls(agent).items():
                    self.polls.setdefault(rid, set()).add((started, agent))

    def between(self, start: float, end: float) -> dict[str, list[tuple[float, str]]]:
        return {rid: sorted(p for p in polls if start <= p[0] <= end) for rid, polls in list(self.polls.items())}

    def largest_gap(self, start: float, end: float) -> float:
        """The longest time between consecutive polls of one database that both fall in [start, end]."""
        gaps = [b[0] - a[0] for polls in self.between(start, end).values() for a, b in itertools.pairwise(polls)]
        return max(gaps, default=0.0)

    def duplicates(self, start: float, end: float, interval: float) -> int:
        """Polls of one database by two different agents closer than half an interval."""
        count = 0
        for polls in self.between(start, end).values():
            count += sum(1 for a, b in itertools.pairwise(polls) if a[1] != b[1] and b[0] - a[0] < interval / 2)
        return count


def run_round(cluster: Cluster, victim: str, how: signal.Signals, label: str) -> dict:
    held = cluster.wait_balanced()
    victim_last = cluster.last_polls(victim)
    moving = held[victim]
    survivors = [a for a in cluster.agents if a != victim]
    process, _ = cluster.agents[victim]
    died_at = time.time()
    os.killpg(process.pid, how) if how == signal.SIGKILL else process.send_signal(how)
    first_new_poll: dict[str, float] = {}
    reassigned_at: float | None = None
    deadline = (
        time.monotonic() + cluster.args.node_timeout + 4 * cluster.args.heartbeat + 3 * cluster.args.interval + 30
    )
    while len(first_new_poll) < len(moving) and time.monotonic() < deadline:
        if reassigned_at is None:
            owners = cluster.owners()
            if owners and all(owners.get(r) not in (None, victim) for r in moving):
                reassigned_at = time.time()
        for agent in survivors:
            for rid, started in cluster.last_polls(agent).items():
                if rid in moving and rid not in first_new_poll and started >= died_at - 0.001:
                    first_new_poll[rid] = started
        time.sleep(SCRAPE_EVERY_S)
    process.wait(timeout=30)
    if len(first_new_poll) < len(moving):
        raise RuntimeError(
            f"{how.name}: {len(moving) - len(first_new_poll)} of {victim}'s databases were not "
            "polled by another agent in time"
        )
    reassigned_at = reassigned_at or min(first_new_poll.values())
    delays = sorted(first_new_poll[r] - died_at for r in moving)
    gaps = sorted(first_new_poll[r] - victim_last.get(r, died_at) for r in moving)
    result = {
        "scenario": label,
        "signal": how.name,
        "victim": victim,
        "databases_moved": len(moving),
        "reassigned_s": reassigned_at - died_at,
        "all_moved_s": delays[-1],
        "first_moved_s": delays[0],
        "median_db_s": statistics.median(delays),
        "largest_gap_s": gaps[-1],
    }
    print(
        f"{label:24} {victim}: {len(moving)} databases, reassigned after {result['reassigned_s']:.1f}s, "
        f"first polled elsewhere after {delays[0]:.1f}s, all after {delays[-1]:.1f}s, largest gap in a series "
        f"{gaps[-1]:.1f}s",
        file=sys.stderr,
        flush=True,
    )
    cluster.start_agent(victim)  # the same id again, a new process (a restarted pod)
    return result


def rolling_restart(cluster: Cluster) -> dict:
    """Restart every coordinator in turn under load: (databases moved, largest gap, duplicates)."""
    before = cluster.wait_balanced()
    start = time.time()
    for index in range(COORDINATORS):
        process = cluster.coordinators[index]
        assert process is not None
        stop_process_group(process, timeout=30)
        cluster.start_coordinator(index)
    # Two intervals after the last restart: every series has shown whether it missed a poll.
    time.sleep(2 * cluster.args.interval + 1)
    end = time.time()
    after = {a: set(cluster.last_polls(a)) for a in cluster.agents}
    owner_before = {r: a for a, held in before.items() for r in held}
    owner_after = {r: a for a, held in after.items() for r in held}
    result = {
        "scenario": "coordinator rolling restart",
        "coordinators_restarted": COORDINATORS,
        "window_s": end - start,
        "databases_moved": sum(1 for r in cluster.resources if owner_before.get(r) != owner_after.get(r)),
        "largest_gap_s": cluster.timeline.largest_gap(start - cluster.args.interval, end),
        "duplicates": cluster.timeline.duplicates(start, end, cluster.args.interval),
    }
    print(
        f"rolling restart of {COORDINATORS} coordinators: {result['databases_moved']} databases moved, largest gap "
        f"{result['largest_gap_s']:.1f}s, {result['duplicates']} duplicates",
        file=sys.stderr,
        flush=True,
    )
    return result


def summary(values: list[float]) -> tuple[float, float, float]:
    return min(values), statistics.median(values), max(values)


def render(args, rounds: list[dict], restart: dict | None, command: str, wall_s: float) -> str:
    hb, nt, iv, grace = args.heartbeat, args.node_timeout, args.interval, args.disconnect_grace
    lines = [
        SECTION,
        "",
        machine_line(),
        f"Command: `{command}` ({wall_s / 60:.0f} min). {COORDINATORS} `dbintel coordinator` processes "
        f"(scaling.mode: redis, real Redis) and {AGENTS} `dbintel agent` processes (given both replicas) polling "
        f"a real PostgreSQL ({POSTGRES_ENTRIES} inventory entries) and a real Redis (its 16 db numbers): 24 "
        f"databases, each on a {iv:g} s interval. heartbeat_interval {hb:g} s, node_timeout {nt:g} s, "
        f"disconnect_grace {grace:g} s (the defaults: 30 s / 90 s / 6 s), min_rebalance_interval 5 s (so that a "
        "restarted agent gets its share back between rounds). Each round sends one signal to one agent, "
        "measures until every database it held has been polled by another agent, restarts it and waits for a "
        "balanced, steady cluster; the *baseline* rows are SIGKILL rounds in the same run with disconnect_grace "
        "0s, i.e. expiry by node_timeout alone, as before issue 13. *Reassigned*: the operator API lists all the "
        "victim's databases on other agents; *polled elsewhere*: the start of the new owner's first poll "
        f"(`{LAST_POLL}` on the agents' /metrics, scraped every {SCRAPE_EVERY_S:g} s); *largest gap*: new "
        f"owner's first poll − victim's last poll, against the {iv:g} s interval (equal to it: no poll missed). "
        "Shared 2-core machine, other jobs running: read ±1 s.",
        "",
        "| scenario | rounds | databases moved per round | reassigned, s (min / median / max) | first database "
        "polled elsewhere, s (min / median / max) | all its databases polled elsewhere, s (min / median / max) | "
        "largest gap in a series, s (max) | bound |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label, bound in (
        (
            "SIGKILL",
            f"disconnect_grace + a leader step ≈ {grace:g} s; first poll on schedule (≤ {iv:g} s after the last)",
        ),
        ("SIGTERM", f"hand-off within 1 s; the new owner continues the schedule (≤ {iv:g} s)"),
        ("SIGKILL, baseline", f"node_timeout after the last heartbeat: ≤ {nt:g} s"),
    ):
        rows = [r for r in rounds if r["scenario"] == label]
        if not rows:
            continue
        reassigned = summary([r["reassigned_s"] for r in rows])
        first, every = summary([r["first_moved_s"] for r in rows]), summary([r["all_moved_s"] for r in rows])
        moved = sorted({r["databases_moved"] for r in rows})
        moved_text = f"{moved[0]}" if moved[0] == moved[-1] else f"{moved[0]}–{moved[-1]}"
        lines.append(
            f"| {label} | {len(rows)} | {moved_text} | {reassigned[0]:.1f} / {reassigned[1]:.1f} / {reassigned[2]:.1f} | "
            f"{first[0]:.1f} / {first[1]:.1f} / {first[2]:.1f} | "
            f"{every[0]:.1f} / {every[1]:.1f} / {every[2]:.1f} | {max(r['largest_gap_s'] for r in rows):.1f} | "
            f"{bound} |"
        )
    if restart is not None:
        lines += [
            "",
            f"**Coordinator rolling restart** (each of the {COORDINATORS} replicas SIGTERMed, started again and "
            f"waited for in turn, {restart['window_s']:.0f} s): {restart['databases_moved']} databases changed "
            f"owner, the largest gap in any series was {restart['largest_gap_s']:.1f} s against the {iv:g} s "
            f"interval, {restart['duplicates']} polls of a database by two agents within half an interval.",
        ]
    kill = [r["reassigned_s"] for r in rounds if r["scenario"] == "SIGKILL"]
    base = [r["reassigned_s"] for r in rounds if r["scenario"] == "SIGKILL, baseline"]
    lines += [
        "",
        f"**Against the peer.** {PEER}",
        "",
        "A crashed process closes its TCP connection, so the coordinator replica serving its Heartbeat stream "
        "sees the stream end at once and marks the agent suspect; the leader expires it disconnect_grace later "
        "(it wakes at that deadline) and the new owners are told at once (pushed on their streams). At the "
        f"defaults a crash was reassigned after {statistics.median(kill) if kill else float('nan'):.1f} s (median), "
        f"against {statistics.median(base) if base else float('nan'):.1f} s by node_timeout alone in the same run "
        "and 30–55 s for the Cluster Agent at its defaults; the new owner then polls when the database is due, "
        "so at this interval a crash costs at most a late poll, not a missed one. node_timeout remains the bound "
        "for failures that close no connection (a partitioned or powered-off node). A graceful stop (SIGTERM: "
        "rollouts, scale-down) needs no timeout at all: the hand-off is immediate and the new owner polls at "
        "the database's next scheduled time, so the series has no gap and no double sample.",
        "",
        f"Raw figures: `docs/data/{DATA.name}`.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per signal (SIGKILL and SIGTERM)")
    parser.add_argument("--baseline-rounds", type=int, default=2, help="SIGKILL rounds with disconnect_grace 0s")
    parser.add_argument("--heartbeat", default="30s", help="scaling.coordinator.heartbeat_interval")
    parser.add_argument("--node-timeout", default="90s", help="scaling.coordinator.node_timeout")
    parser.add_argument("--disconnect-grace", default="6s", help="scaling.coordinator.disconnect_grace")
    parser.add_argument("--interval", default="10s", help="every database's collection interval")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = parser.parse_args()
    args.heartbeat_text, args.node_timeout_text = args.heartbeat, args.node_timeout
    args.interval_text, args.disconnect_grace_text = args.interval, args.disconnect_grace
    args.heartbeat, args.node_timeout, args.interval, args.disconnect_grace = (
        parse_duration(args.heartbeat),
        parse_duration(args.node_timeout),
        parse_duration(args.interval),
        parse_duration(args.disconnect_grace),
    )
    command = "python bench/bench_failover.py" + "".join(
        f" --{k} {v}"
        for k, v in (
            ("rounds", args.rounds),
            ("baseline-rounds", args.baseline_rounds),
            ("heartbeat", args.heartbeat_text),
            ("node-timeout", args.node_timeout_text),
            ("disconnect-grace", args.disconnect_grace_text),
            ("interval", args.interval_text),
        )
    )
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bench-failover-"))
    servers = [RedisServer(), RedisServer(), PostgresServer()]
    rounds: list[dict] = []
    restart = None
    cluster = None
    try:
        for server in servers:
            server.start()
        cluster = Cluster(args, workdir, *servers)
        for index in range(COORDINATORS):
            cluster.start_coordinator(index)
        for i in range(AGENTS):
            cluster.start_agent(f"failover-agent-{i}")
        cluster.timeline.start()
        restart = rolling_restart(cluster)
        for n in range(args.rounds):
            for how in (signal.SIGKILL, signal.SIGTERM):
                victim = f"failover-agent-{(2 * n + (how == signal.SIGTERM)) % AGENTS}"
                rounds.append(run_round(cluster, victim, how, how.name))
        if args.baseline_rounds:
            cluster.write_config("0s")
            time.sleep(2)  # config_reload_interval 1 s: both replicas have reloaded
            for n in range(args.baseline_rounds):
                rounds.append(run_round(cluster, f"failover-agent-{n % AGENTS}", signal.SIGKILL, "SIGKILL, baseline"))
    finally:
        if cluster is not None:
            cluster.stop()
        for server in servers:
            server.close()
    wall_s = time.monotonic() - started
    text = render(args, rounds, restart, command, wall_s)
    print(text)
    if not args.no_write:
        DATA.parent.mkdir(parents=True, exist_ok=True)
        DATA.write_text(
            json.dumps(
                {
                    "bench": "failover",
                    "command": command,
                    "unit": "seconds",
                    "settings": {
                        "heartbeat_interval_s": args.heartbeat,
                        "node_timeout_s": args.node_timeout,
                        "disconnect_grace_s": args.disconnect_grace,
                        "collection_interval_s": args.interval,
                        "agents": AGENTS,
                        "coordinators": COORDINATORS,
                        "databases": 24,
                    },
                    # one series per scenario; each point is one round: seconds from the signal until all of the
                    # victim's databases were polled by another agent (also: reassigned, the first one, the median)
                    "series": {
                        name: [
                            {
                                k: r[k]
                                for k in (
                                    "reassigned_s",
                                    "all_moved_s",
                                    "first_moved_s",
                                    "median_db_s",
                                    "largest_gap_s",
                                    "databases_moved",
                                )
                            }
                            for r in rounds
                            if r["scenario"] == name
                        ]
                        for name in ("SIGKILL", "SIGTERM", "SIGKILL, baseline")
                    },
                    "rolling_restart": restart,
                    "peer": {"name": "Datadog Cluster Agent (defaults)", "min_s": 30, "max_s": 55},
                    "machine": machine_line(),
                },
                indent=1,
            )
        )
        write_section(SECTION, text + "\n\n" + image_link("failover", "Agent death to new owner polling"))
        print(f"wrote {DATA} and the '{SECTION}' section of {DOC}", file=sys.stderr)
    print(f"logs in {workdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
