"""Real agent processes (`dbintel agent`) and a real coordinator on a real Redis, polling real Redis
and PostgreSQL servers: nothing polled before an assignment, every database exported by exactly one
agent, SIGTERM moves an agent's databases within a second, revoked series vanish and their
connections close."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import yaml

from dbintel.common.config import load_config
from dbintel.v1 import operator_service_pb2 as opb
from dbintel.v1 import types_pb2
from tests.coordinator_harness import operator_stub, start_coordinator, wait_for
from tests.servers import free_port

SERIES = re.compile(r'^(?P<name>[a-z_]+)\{[^}]*dbintel_resource="(?P<rid>[^"]+)"', re.M)


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as response:
            return response.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return ""


def ready(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=3) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError):
        return 0


def database_resources(text: str) -> set[str]:
    """Resources with database series (not the agent's own dbintel_* bookkeeping)."""
    return {m["rid"] for m in SERIES.finditer(text) if not m["name"].startswith("dbintel_")}


@pytest.fixture
def cluster_files(tmp_path, fresh_redis, redis_server, postgres_server, monkeypatch):
    env = {
        "STORE_PW": fresh_redis.password,
        "MON_REDIS_PW": redis_server.password,
        "MON_PG_PW": postgres_server.monitor_password,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    databases = [
        {
            "name": f"cache{i}",
            "type": "redis",
            "endpoint": redis_server.address,
            "password": "${env:MON_REDIS_PW}",
            "database": str(i),
            "interval": "1s",
        }
        for i in range(4)
    ]
    databases.append(
        {
            "name": "app",
            "type": "postgresql",
            "endpoint": postgres_server.address,
            "username": postgres_server.monitor_user,
            "password": "${env:MON_PG_PW}",
            "database": postgres_server.app_database,
            "interval": "1s",
        }
    )
    doc = {
        "scaling": {
            "mode": "redis",
            "redis": {
                "address": fresh_redis.address,
                "password": "${env:STORE_PW}",
                "key_prefix": "e2e:",
                "leader_ttl": "2s",
            },
            "coordinator": {"heartbeat_interval": "500ms", "node_timeout": "3s", "min_rebalance_interval": "1s"},
        },
        "coordinator": {"grpc_listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0", "health_listen": "127.0.0.1:0"},
        "agent": {"shutdown_grace": "5s"},
        "databases": databases,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path, env


def start_agent(path, env, name, coordinator_port):
    ports = {"metrics": free_port(), "health": free_port()}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dbintel.cli",
            "agent",
            "--config",
            str(path),
            "--agent-id",
            name,
            "--coordinator",
            f"127.0.0.1:{coordinator_port}",
            "--metrics-listen",
            f"127.0.0.1:{ports['metrics']}",
            "--health-listen",
            f"127.0.0.1:{ports['health']}",
        ],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return process, ports


def stop(process):
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.stdout.read().decode() if process.stdout else ""


def dbintel_redis_connections(redis_server) -> int:
    return sum(1 for c in redis_server.client().client_list() if c.get("name") == "dbintel-agent")


async def test_agents_poll_only_assigned_databases_and_hand_off_on_sigterm(cluster_files, redis_server):
    path, env = cluster_files
    config = load_config(path)
    everything = set(config.resources())
    coordinator_port = free_port()
    # The agents start first: with no coordinator they must poll nothing and not be ready.
    a, a_ports = start_agent(path, env, "agent-a", coordinator_port)
    b, b_ports = start_agent(path, env, "agent-b", coordinator_port)
    coordinator = None
    try:
        await wait_for(
            lambda: ready(a_ports["health"]) == 503 and ready(b_ports["health"]) == 503,
            timeout=20,
            message="agents up but not ready",
        )
        await asyncio.sleep(1.5)
        assert database_resources(scrape(a_ports["metrics"])) == set()
        assert database_resources(scrape(b_ports["metrics"])) == set()
        assert dbintel_redis_connections(redis_server) == 0

        coordinator = await start_coordinator(config, "coord", grpc_listen=f"127.0.0.1:{coordinator_port}")
        await wait_for(
            lambda: ready(a_ports["health"]) == 200 and ready(b_ports["health"]) == 200,
            timeout=20,
            message="both agents ready",
        )

        def exported():
            return database_resources(scrape(a_ports["metrics"])), database_resources(scrape(b_ports["metrics"]))

        await wait_for(
            lambda: (lambda x, y: x | y == everything and not x & y)(*exported()),
            timeout=20,
            message="every database exported by exactly one agent",
        )
        on_a, on_b = exported()
        assert on_a and on_b  # balanced across both

        # Graceful shutdown of agent-a: its databases are granted to agent-b within a second.
        channel, stub = operator_stub(f"127.0.0.1:{coordinator_port}")
        started = time.monotonic()
        a.send_signal(signal.SIGTERM)

        async def all_on_b():
            listed = await stub.ListAssignments(opb.ListAssignmentsRequest())
            return all(
                e.agent_id == "agent-b" and e.state == types_pb2.ASSIGNMENT_STATE_ASSIGNED for e in listed.assignments
            )

        await wait_for(all_on_b, timeout=10, interval=0.02, message="hand-off to agent-b")
        elapsed = time.monotonic() - started
        await channel.close()
        assert elapsed < 1.0, f"SIGTERM hand-off took {elapsed:.2f}s"
        assert a.wait(10) == 0
        await wait_for(
            lambda: database_resources(scrape(b_ports["metrics"])) == everything,
            timeout=10,
            message="agent-b exports everything",
        )
        # Redis connections: one per monitored Redis database, none left behind by agent-a.
        await wait_for(
            lambda: dbintel_redis_connections(redis_server) == 4,
            timeout=10,
            message="one connection per Redis database",
        )
    finally:
        if coordinator is not None:
            await coordinator.shutdown()
        logs = stop(a) + stop(b)
        print(logs)  # shown by pytest when the test fails
        for secret in env.values():
            assert secret not in logs


async def test_drain_revokes_series_and_closes_connections(cluster_files, redis_server):
    path, env = cluster_files
    config = load_config(path)
    coordinator = await start_coordinator(config, "coord")
    port = coordinator.grpc_port
    a, a_ports = start_agent(path, env, "agent-a", port)
    b, b_ports = start_agent(path, env, "agent-b", port)
    try:
        everything = set(config.resources())
        await wait_for(
            lambda: (
                database_resources(scrape(a_ports["metrics"])) | database_resources(scrape(b_ports["metrics"]))
                == everything
            ),
            timeout=20,
            message="placement",
        )
        channel, stub = operator_stub(f"127.0.0.1:{port}")
        drained = database_resources(scrape(a_ports["metrics"]))
        await stub.DrainAgent(opb.DrainAgentRequest(agent_id="agent-a", apply=True))
        await wait_for(
            lambda: database_resources(scrape(a_ports["metrics"])) == set(),
            timeout=10,
            message="agent-a's series vanish",
        )
        await wait_for(
            lambda: database_resources(scrape(b_ports["metrics"])) == everything,
            timeout=10,
            message="agent-b took them",
        )
        await channel.close()
        assert drained
        assert dbintel_redis_connections(redis_server) == 4
        text = scrape(a_ports["metrics"])
        assert "dbintel_agent_assigned_databases 0.0" in text
    finally:
        await coordinator.shutdown()
        stop(a)
        stop(b)
