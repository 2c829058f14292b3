"""`dbintel up`: the whole stack on one machine, for trying it out.

A coordinator (the config's scaling mode; `memory` by default, no Redis needed) and N agents in one
process. With a config, they monitor its databases; with none, throwaway local PostgreSQL and Redis
servers are started (loopback only, data in a temp dir) so real metrics show within seconds.
Ctrl-C stops everything.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import yaml

from dbintel.common.config import CONFIG_ENV_VAR, Config, ConfigError, load_config, parse_config

log = logging.getLogger("dbintel.up")


def _demo_config(pg_port: int, redis_port: int, base_port: int) -> Config:
    doc = {
        "scaling": {"mode": "memory",
                    "coordinator": {"heartbeat_interval": "5s", "node_timeout": "15s",
                                    "min_rebalance_interval": "10s"}},
        "coordinator": {"grpc_listen": f"127.0.0.1:{base_port}"},
        "agent": {"coordinator": f"127.0.0.1:{base_port}"},
        "databases": [
            {"name": "postgres", "type": "postgresql", "endpoint": f"127.0.0.1:{pg_port}", "username": "postgres",
             "database": "postgres", "interval": "10s", "labels": {"env": "demo"}},
            {"name": "cache", "type": "redis", "endpoint": f"127.0.0.1:{redis_port}", "database": "0",
             "interval": "10s", "labels": {"env": "demo"}},
            {"name": "sessions", "type": "redis", "endpoint": f"127.0.0.1:{redis_port}", "database": "1",
             "interval": "10s", "labels": {"env": "demo"}},
        ],
    }
    return parse_config(yaml.safe_dump(doc), source="dbintel up (demo)")


async def _run(config: Config, config_path: str | None, agents: int, base_port: int, metrics_port: int,
               health_port: int) -> None:
    from dbintel.agent.runtime import Agent
    from dbintel.coordinator.server import Coordinator

    coordinator = Coordinator(config, config_path=config_path, coordinator_id="up-coordinator",
                              grpc_listen=f"127.0.0.1:{base_port}", metrics_listen=f"127.0.0.1:{metrics_port}",
                              health_listen=f"127.0.0.1:{health_port}")
    await coordinator.start()
    address = f"127.0.0.1:{coordinator.grpc_port}"
    fleet = [Agent(config, agent_id=f"up-agent-{i + 1}", coordinator=address, config_path=config_path,
                   metrics_listen=f"127.0.0.1:{metrics_port + 1 + i}", health_listen=f"127.0.0.1:{health_port + 1 + i}")
             for i in range(agents)]
    for agent in fleet:
        await agent.start()
    lines = [
        "",
        f"dbintel is up: 1 coordinator ({config.scaling.mode} mode) and {agents} agents, "
        f"{len(config.databases)} database(s).",
        f"  coordinator gRPC   {address}",
        f"  coordinator metrics http://127.0.0.1:{coordinator.metrics_port}/metrics",
        *[f"  {a.agent_id} metrics http://127.0.0.1:{a.metrics_port}/metrics   health "
          f"http://127.0.0.1:{a.health_port}/ready" for a in fleet],
        f"  status             dbintel status --coordinator {address}",
        f"  grpcurl            grpcurl -plaintext {address} list",
        "Ctrl-C stops everything.",
        "",
    ]
    print("\n".join(lines), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        print("dbintel up: stopping…", flush=True)
        await asyncio.gather(*(agent.shutdown("dbintel up stopping") for agent in fleet), return_exceptions=True)
        await coordinator.shutdown()


def run_up(args) -> int:
    config_path = args.config or os.environ.get(CONFIG_ENV_VAR)
    servers = []
    try:
        if config_path:
            try:
                config = load_config(config_path)
            except ConfigError as exc:
                print(f"dbintel up: {exc}", file=sys.stderr)
                return 2
        else:
            from dbintel.local_servers import LocalPostgres, LocalRedis, LocalServerError
            try:
                print("dbintel up: no config given; starting throwaway PostgreSQL and Redis on loopback…", flush=True)
                servers.append(LocalPostgres())
                servers.append(LocalRedis())
            except LocalServerError as exc:
                print(f"dbintel up: {exc}", file=sys.stderr)
                return 1
            print(f"dbintel up: throwaway PostgreSQL on 127.0.0.1:{servers[0].port}, Redis on "
                  f"127.0.0.1:{servers[1].port} (deleted on exit)", flush=True)
            config = _demo_config(servers[0].port, servers[1].port, args.base_port)
        asyncio.run(_run(config, config_path, args.agents, args.base_port, args.metrics_port, args.health_port))
        return 0
    finally:
        for server in reversed(servers):
            server.stop()
