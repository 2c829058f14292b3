"""Secrets never leak. A real cluster (`dbintel coordinator` + `dbintel agent` processes at DEBUG, the
store in Redis) polls real PostgreSQL, MariaDB and Redis with passwords given as ${env:...}, some of
them wrong so the error paths run, and an operator token is set. Then no password and not the token
may appear in any Redis key or value, any operator RPC reply, either process's log, either /metrics,
either readiness body, or `dbintel status --json`. A config that fails validation does not echo a
value that came from the environment either."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import yaml
from google.protobuf.json_format import MessageToJson

from dbintel.common.config import ConfigError, parse_config
from dbintel.common.grpc_security import open_channel
from dbintel.v1 import operator_service_pb2 as opb
from dbintel.v1 import operator_service_pb2_grpc
from tests.security.support import dbintel
from tests.servers import free_port


def http_get(port: int, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as response:
            return response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return ""


def redis_dump(client) -> list[str]:
    """Every key and every value in the Redis server, whatever its type."""
    out: list[str] = []
    for key in client.scan_iter(count=500):
        out.append(repr(key))
        kind = client.type(key).decode()
        if kind == "string":
            out.append(repr(client.get(key)))
        elif kind == "hash":
            out.append(repr(client.hgetall(key)))
        elif kind == "list":
            out.append(repr(client.lrange(key, 0, -1)))
        elif kind == "set":
            out.append(repr(client.smembers(key)))
        elif kind == "zset":
            out.append(repr(client.zrange(key, 0, -1, withscores=True)))
        elif kind == "stream":
            out.append(repr(client.xrange(key)))
        else:
            raise AssertionError(f"unexpected Redis type {kind} for {key!r}")
    return out


def spawn(role: str, config_path, env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dbintel.cli", "--log-level", "debug", role, "--config", str(config_path), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def stop(process: subprocess.Popen) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    return process.stdout.read().decode(errors="replace")


def leaks(secrets_by_name: dict[str, str], text: str) -> list[str]:
    return [name for name, value in secrets_by_name.items() if value in text]


@pytest.fixture
def cluster(tmp_path, fresh_redis, redis_server, postgres_server, mariadb_server):
    wrong = {kind: f"wrong{kind}" + secrets.token_hex(12) for kind in ("pg", "my", "redis")}
    env_secrets = {
        "STORE_REDIS_PW": fresh_redis.password,
        "MON_REDIS_PW": redis_server.password,
        "MON_PG_PW": postgres_server.monitor_password,
        "MON_MY_PW": mariadb_server.monitor_password,
        "WRONG_PG_PW": wrong["pg"],
        "WRONG_MY_PW": wrong["my"],
        "WRONG_REDIS_PW": wrong["redis"],
        "OPERATOR_TOKEN": "tok" + secrets.token_urlsafe(24),
    }
    pg, my = postgres_server, mariadb_server
    databases = [
        {"name": "good-redis", "type": "redis", "endpoint": redis_server.address, "password": "${env:MON_REDIS_PW}"},
        {
            "name": "good-pg",
            "type": "postgresql",
            "endpoint": pg.address,
            "username": pg.monitor_user,
            "password": "${env:MON_PG_PW}",
            "database": pg.app_database,
        },
        {
            "name": "good-my",
            "type": "mysql",
            "endpoint": my.address,
            "username": my.monitor_user,
            "password": "${env:MON_MY_PW}",
        },
        {"name": "wrong-redis", "type": "redis", "endpoint": redis_server.address, "password": "${env:WRONG_REDIS_PW}"},
        {
            "name": "wrong-pg",
            "type": "postgresql",
            "endpoint": pg.address,
            "username": pg.monitor_user,
            "password": "${env:WRONG_PG_PW}",
            "database": pg.app_database,
        },
        {
            "name": "wrong-my",
            "type": "mysql",
            "endpoint": my.address,
            "username": my.monitor_user,
            "password": "${env:WRONG_MY_PW}",
        },
        {
            "name": "unset-secret",
            "type": "postgresql",
            "endpoint": pg.address,
            "username": pg.monitor_user,
            "password": "${env:DBINTEL_TEST_NOT_SET_ANYWHERE}",
        },
    ]
    for db in databases:
        db["interval"] = "1s"
    ports = {name: free_port() for name in ("grpc", "c_metrics", "c_health", "a_metrics", "a_health")}
    doc = {
        "scaling": {
            "mode": "redis",
            "redis": {
                "address": fresh_redis.address,
                "password": "${env:STORE_REDIS_PW}",
                "key_prefix": "leak:",
                "leader_ttl": "2s",
            },
            "coordinator": {"heartbeat_interval": "500ms", "node_timeout": "3s", "min_rebalance_interval": "1s"},
        },
        "coordinator": {
            "grpc_listen": f"127.0.0.1:{ports['grpc']}",
            "metrics_listen": f"127.0.0.1:{ports['c_metrics']}",
            "health_listen": f"127.0.0.1:{ports['c_health']}",
            "operator_token": "${env:OPERATOR_TOKEN}",
        },
        "agent": {
            "coordinator": f"127.0.0.1:{ports['grpc']}",
            "metrics_listen": f"127.0.0.1:{ports['a_metrics']}",
            "health_listen": f"127.0.0.1:{ports['a_health']}",
            "shutdown_grace": "5s",
        },
        "databases": databases,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DBINTEL_")}, **env_secrets}
    coordinator = spawn("coordinator", path, env)
    agent = spawn("agent", path, env, "--agent-id", "leak-agent")
    processes = {"coordinator": coordinator, "agent": agent}
    try:
        yield {
            "ports": ports,
            "env": env_secrets,
            "processes": processes,
            "store": fresh_redis,
            "resources": {f"db:{d['type']}/{d['name']}" for d in databases},
        }
    finally:
        for process in processes.values():
            stop(process)


def polled_enough(metrics: str, resources: set[str]) -> bool:
    """Every database polled at least twice (so error paths ran more than once)."""
    counts = {
        m[1]: float(m[2])
        for m in re.finditer(r'^dbintel_agent_polls_total\{dbintel_resource="([^"]+)"\} (\S+)', metrics, re.M)
        for m in [m]
    }
    return set(counts) == resources and all(c >= 2 for c in counts.values())


async def test_no_secret_anywhere(cluster):
    ports, env, processes = cluster["ports"], cluster["env"], cluster["processes"]
    secret_values = dict(env)  # every password (right and wrong) and the operator token
    deadline = time.monotonic() + 45
    while not polled_enough(http_get(ports["a_metrics"], "/metrics"), cluster["resources"]):
        for name, process in processes.items():
            assert process.poll() is None, f"{name} exited: {stop(process)[-3000:]}"
        assert time.monotonic() < deadline, (
            "databases not polled twice within 45s:\n" + http_get(ports["a_metrics"], "/metrics")[-3000:]
        )
        await asyncio.sleep(0.3)
    agent_metrics = http_get(ports["a_metrics"], "/metrics")
    # The error paths really ran: right passwords up, wrong ones down with an error counted.
    for name in ("good-redis", "good-pg", "good-my"):
        assert re.search(
            rf'dbintel_database_up\{{dbintel_resource="db:[a-z]+/{name}",type="[a-z]+"\}} 1\.0', agent_metrics
        ), name
    for name in ("wrong-redis", "wrong-pg", "wrong-my", "unset-secret"):
        assert re.search(
            rf'dbintel_agent_poll_errors_total\{{dbintel_resource="db:[a-z]+/{name}",reason="[a-z_]+"\}} [1-9]',
            agent_metrics,
        ), name

    surfaces: dict[str, str] = {
        "agent /metrics": agent_metrics,
        "coordinator /metrics": http_get(ports["c_metrics"], "/metrics"),
        "agent /ready": http_get(ports["a_health"], "/ready"),
        "coordinator /ready": http_get(ports["c_health"], "/ready"),
        "redis": "\n".join(redis_dump(cluster["store"].client())),
    }
    assert "{leak:}agents" in surfaces["redis"]  # the store really is this Redis

    token = env["OPERATOR_TOKEN"]
    address = f"127.0.0.1:{ports['grpc']}"
    async with open_channel(address) as channel:
        stub = operator_service_pb2_grpc.OperatorServiceStub(channel)
        call = {"metadata": (("authorization", f"Bearer {token}"),), "timeout": 10}
        replies = [
            await stub.GetClusterStatus(opb.GetClusterStatusRequest(), **call),
            await stub.ListAgents(opb.ListAgentsRequest(), **call),
            await stub.ListAssignments(opb.ListAssignmentsRequest(), **call),
            await stub.ListResources(opb.ListResourcesRequest(), **call),
            await stub.Rebalance(opb.RebalanceRequest(), **call),
            await stub.DrainAgent(opb.DrainAgentRequest(agent_id="leak-agent"), **call),
        ]
    assert len(replies[3].resources) == len(cluster["resources"])
    surfaces["operator replies"] = "\n".join(MessageToJson(r) + str(r) for r in replies)

    status = await dbintel("status", "--json", "--coordinator", address, env={"DBINTEL_OPERATOR_TOKEN": token})
    assert status.returncode == 0, status.stderr
    surfaces["dbintel status --json"] = status.stdout + status.stderr
    assert json.loads(status.stdout)["cluster"]["resources_total"] == len(cluster["resources"])

    logs = {name: stop(process) for name, process in processes.items()}
    for name, text in logs.items():
        assert " DEBUG " in text, f"{name} did not log at DEBUG"
        surfaces[f"{name} log"] = text
    assert "wrong-pg is down" in logs["agent"] or "db:postgresql/wrong-pg is down" in logs["agent"], logs["agent"][
        -3000:
    ]

    found = {surface: leaks(secret_values, text) for surface, text in surfaces.items()}
    assert not any(found.values()), f"secrets leaked: { {s: n for s, n in found.items() if n} }"


def test_a_failing_config_shows_env_values_as_their_reference(tmp_path):
    secret = "hunter2-" + secrets.token_hex(8)
    environ = {"DB_SECRET": secret}
    doc = {
        "databases": [
            {
                "name": "a",
                "type": "postgresql",
                "endpoint": "${env:DB_SECRET}",
                "interval": "${env:DB_SECRET}",
                "username": "${env:DB_SECRET}",
                "password": secret,
            }
        ],
        "scaling": {"coordinator": {"heartbeat_interval": "${env:DB_SECRET}"}},
    }
    with pytest.raises(ConfigError) as failed:
        parse_config(yaml.safe_dump(doc), environ=environ)
    message = str(failed.value)
    assert secret not in message
    for field in (
        "databases[0] (a).endpoint",
        "databases[0] (a).interval",
        "databases[0] (a).password",
        "scaling.coordinator.heartbeat_interval",
    ):
        assert field in message, message
    assert "${env:DB_SECRET}" in message  # the bad value is shown as what the file says


async def test_dbintel_validate_does_not_echo_an_env_secret(tmp_path):
    secret = "s3cret-" + secrets.token_hex(8)
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump({"agent": {"coordinator": "${env:LEAKY}"}, "coordinator": {"operator_token": secret}})
    )
    result = await dbintel("validate", str(path), env={"LEAKY": secret})
    assert result.returncode == 1
    assert "agent.coordinator" in result.stderr and "coordinator.operator_token" in result.stderr
    assert secret not in result.stdout + result.stderr
