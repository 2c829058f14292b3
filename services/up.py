"""`dbintel up`: the whole stack on one machine, for trying it out.

A coordinator (the config's scaling mode; `memory` by default, no Redis needed) and N agents in one
process. With a config, they monitor its databases; with none, throwaway local PostgreSQL and Redis
servers are started (loopback only, data in a temp dir) so real metrics show within seconds.
The banner that says where to look comes once every database has had its first poll.
Ctrl-C stops everything.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import yaml

from dbintel.common.config import CONFIG_ENV_VAR, Config, ConfigError, load_config, parse_config
from dbintel.local_servers import LocalPostgres, LocalRedis, LocalServerError

if TYPE_CHECKING:  # imported when run: they pull in every collector and the gRPC services
    from dbintel.agent.runtime import Agent
    from dbintel.coordinator.server import Coordinator

# How long the banner waits for first polls: with no previous owner, a database's first poll falls
# anywhere in its first interval, so with long intervals the banner comes first and names the rest.
FIRST_POLL_PATIENCE = 60.0


def agent_id(index: int) -> str:
    """The name of the index-th agent (from 0): up-agent-1, up-agent-2, …"""
    return f"up-agent-{index + 1}"


def _demo_config(pg_port: int, redis_port: int, base_port: int) -> Config:
    demo = {"interval": "5s", "labels": {"env": "demo"}}
    doc = {
        "scaling": {
            "mode": "memory",
            "coordinator": {"heartbeat_interval": "5s", "node_timeout": "15s", "min_rebalance_interval": "10s"},
        },
        "coordinator": {"grpc_listen": f"127.0.0.1:{base_port}"},
        "agent": {
            "coordinator": f"127.0.0.1:{base_port}",
            # Query intelligence on, so `dbintel top` has something to show from the first minute.
            "top_query_collection": {"enabled": True, "collection_interval": "10s"},
            "query_sample_collection": {"enabled": True, "collection_interval": "5s"},
        },
        "databases": [
            {
                "name": "postgres",
                "type": "postgresql",
                "endpoint": f"127.0.0.1:{pg_port}",
                "username": "postgres",
                "database": "postgres",
                **demo,
            },
            {"name": "cache", "type": "redis", "endpoint": f"127.0.0.1:{redis_port}", "database": 0, **demo},
            {"name": "sessions", "type": "redis", "endpoint": f"127.0.0.1:{redis_port}", "database": 1, **demo},
        ],
    }
    return parse_config(yaml.safe_dump(doc), source="dbintel up (demo)")


async def wait_first_polls(
    fleet: Sequence[Agent], resources: set[str], stop: asyncio.Event, patience: float
) -> set[str]:
    """Wait until each of `resources` has had its first poll on whichever agent holds it, `stop` is
    set, or `patience` seconds have passed; return the resources not polled yet."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while True:
        polled = {rid for agent in fleet for rid, s in agent.scheduler.snapshots().items() if s.polled}
        pending = resources - polled
        remaining = deadline - loop.time()
        if not pending or remaining <= 0 or stop.is_set():
            return pending
        waits = [asyncio.ensure_future(agent.scheduler.changed()) for agent in fleet]
        waits.append(asyncio.ensure_future(_stopped(stop)))
        try:
            await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()


async def _stopped(stop: asyncio.Event) -> None:
    await stop.wait()


def banner(config: Config, coordinator: Coordinator, fleet: Sequence[Agent], address: str, pending: set[str]) -> str:
    rows = [
        ("coordinator gRPC", address),
        ("coordinator metrics", f"http://127.0.0.1:{coordinator.metrics_port}/metrics"),
        *[
            (
                agent.agent_id,
                f"http://127.0.0.1:{agent.metrics_port}/metrics   ready: http://127.0.0.1:{agent.health_port}/ready",
            )
            for agent in fleet
        ],
        ("status", f"dbintel status --coordinator {address}"),
        *[("top queries", f"dbintel top {rid} --coordinator {address}") for rid in list(config.resources())[:1]],
        ("grpcurl", f"grpcurl -plaintext {address} list"),
    ]
    width = max(len(label) for label, _ in rows)
    polled = len(config.databases) - len(pending)
    lines = [
        "",
        f"dbintel is up: 1 coordinator ({config.scaling.mode} mode) and {len(fleet)} agent(s); "
        f"{polled} of {len(config.databases)} database(s) polled.",
        *[f"  {label.ljust(width)}  {value}" for label, value in rows],
    ]
    if fleet:
        first = fleet[0]
        lines.append(
            f"  {'try'.ljust(width)}  curl -s http://127.0.0.1:{first.metrics_port}/metrics | grep dbintel_database_up"
        )
    if pending:
        lines.append(f"Not polled yet (their first poll is due within their interval): {', '.join(sorted(pending))}")
    lines += ["Ctrl-C stops everything.", ""]
    return "\n".join(lines)


async def _run(
    config: Config, config_path: str | None, agents: int, base_port: int, metrics_port: int, health_port: int
) -> None:
    from dbintel.agent.runtime import Agent
    from dbintel.coordinator.server import Coordinator

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    coordinator = Coordinator(
        config,
        config_path=config_path,
        coordinator_id="up-coordinator",
        grpc_listen=f"127.0.0.1:{base_port}",
        metrics_listen=f"127.0.0.1:{metrics_port}",
        health_listen=f"127.0.0.1:{health_port}",
    )
    fleet: list[Agent] = []
    try:
        await coordinator.start()
        address = f"127.0.0.1:{coordinator.grpc_port}"
        fleet = [
            Agent(
                config,
                agent_id=agent_id(i),
                coordinator=address,
                config_path=config_path,
                metrics_listen=f"127.0.0.1:{metrics_port + 1 + i}",
                health_listen=f"127.0.0.1:{health_port + 1 + i}",
            )
            for i in range(agents)
        ]
        for agent in fleet:
            await agent.start()
        resources = set(config.resources())
        if resources:
            print(f"dbintel up: waiting for the first poll of {len(resources)} database(s)…", flush=True)
        pending = await wait_first_polls(fleet, resources, stop, FIRST_POLL_PATIENCE)
        if not stop.is_set():
            print(banner(config, coordinator, fleet, address, pending), flush=True)
            await stop.wait()
    finally:
        print("dbintel up: stopping…", flush=True)
        await asyncio.gather(*(agent.shutdown("dbintel up stopping") for agent in fleet), return_exceptions=True)
        await coordinator.shutdown()


def run_up(args) -> int:
    config_path = args.config or os.environ.get(CONFIG_ENV_VAR)
    servers: list[LocalPostgres | LocalRedis] = []
    try:
        if config_path:
            try:
                config = load_config(config_path, check_files=("coordinator", "agent"))
            except ConfigError as exc:
                print(f"dbintel up: refusing to start, {exc}", file=sys.stderr)
                return 2
        else:
            print("dbintel up: no config given; starting throwaway PostgreSQL and Redis on loopback…", flush=True)
            try:
                postgres = LocalPostgres()
                servers.append(postgres)
                redis = LocalRedis()
                servers.append(redis)
            except LocalServerError as exc:
                print(f"dbintel up: {exc}", file=sys.stderr)
                return 1
            print(
                f"dbintel up: throwaway PostgreSQL on 127.0.0.1:{postgres.port}, Redis on "
                f"127.0.0.1:{redis.port} (deleted on exit)",
                flush=True,
            )
            config = _demo_config(postgres.port, redis.port, args.base_port)
        asyncio.run(_run(config, config_path, args.agents, args.base_port, args.metrics_port, args.health_port))
        return 0
    finally:
        for server in reversed(servers):
            server.stop()
