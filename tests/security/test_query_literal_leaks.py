"""No literal of a user's query leaves the agent (design property 9). A real cluster (`dbintel
coordinator` + `dbintel agent` processes at DEBUG, the store in Redis, OTLP to a real receiver) collects
top queries and query samples every second from real PostgreSQL, MariaDB, Redis and SecantusDB while a
workload runs whose literals are a fake e-mail address and a fake card number — in statements, in
utility statements that pg_stat_statements keeps verbatim, in long-running statements caught by the
samples, in Redis keys and values and in MongoDB filters. Then neither literal may appear in any
Prometheus exposition, OTLP metric or log event, Redis key or value, process log, `dbintel status
--json`, `dbintel top --json` or the agents' /queries answers — and the collection demonstrably ran."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
import yaml
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as logs_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as metrics_grpc

from tests.security.support import dbintel
from tests.security.test_secret_leaks import http_get, redis_dump
from tests.servers import free_port

pytestmark = pytest.mark.integration

EMAIL = f"leak.victim.{secrets.token_hex(4)}@example.com"
CARD = "4" + "".join(secrets.choice("0123456789") for _ in range(15))
LITERALS = {"e-mail": EMAIL, "card number": CARD, "card digits": CARD[4:12]}


class Process:
    """A `dbintel` role at DEBUG, its output in a file: a pipe nobody reads would fill and block it."""

    def __init__(self, role: str, config_path, env: dict[str, str], log_path, *args: str):
        self.log_path = log_path
        self._out = open(log_path, "wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "dbintel.cli", "--log-level", "debug", role, "--config", str(config_path), *args],
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def poll(self) -> int | None:
        return self.popen.poll()

    def stop(self) -> str:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._out.close()
        return self.log_path.read_text(errors="replace")


def stop(process: Process) -> str:
    return process.stop()


class Receiver(metrics_grpc.MetricsServiceServicer, logs_grpc.LogsServiceServicer):
    def __init__(self) -> None:
        self.metrics: list[metrics_pb.ExportMetricsServiceRequest] = []
        self.logs: list[logs_pb.ExportLogsServiceRequest] = []

    async def Export(self, request, context):  # both services' method; told apart by the request type
        if isinstance(request, logs_pb.ExportLogsServiceRequest):
            self.logs.append(request)
            return logs_pb.ExportLogsServiceResponse()
        self.metrics.append(request)
        return metrics_pb.ExportMetricsServiceResponse()

    def events(self, name: str) -> list[dict]:
        found = []
        for request in self.logs:
            for resource_logs in request.resource_logs:
                for scope in resource_logs.scope_logs:
                    for record in scope.log_records:
                        attributes = {
                            a.key: a.value.WhichOneof("value") and getattr(a.value, a.value.WhichOneof("value"))
                            for a in record.attributes
                        }
                        if record.event_name == name or attributes.get("event.name") == name:
                            found.append(attributes)
        return found


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    state = Receiver()
    server = grpc.aio.server()
    metrics_grpc.add_MetricsServiceServicer_to_server(state, server)
    logs_grpc.add_LogsServiceServicer_to_server(state, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield state, port
    await server.stop(grace=None)


def every_second(top_n: int = 20) -> dict:
    return {
        "top_query_collection": {"enabled": True, "top_n_query": top_n, "collection_interval": "1s"},
        "query_sample_collection": {"enabled": True, "collection_interval": "1s"},
    }


async def workload(pg, my, redis_server, secantus_server, stop_at: float) -> None:
    """Statements full of the literals, over and over until `stop_at`, plus long ones for the samples."""
    conn = await asyncpg.connect(pg.dsn(pg.superuser, pg.superuser_password, pg.app_database))
    redis = redis_server.client()
    mongo = secantus_server.client()
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS leak_customers (email text, card text)")
        await conn.execute(
            f"COMMENT ON TABLE leak_customers IS '{EMAIL} {CARD}'"
        )  # kept verbatim by pg_stat_statements
        await asyncio.to_thread(
            my.execute, "CREATE TABLE IF NOT EXISTS leak_customers (email text, card text)", my.app_database
        )
        redis.config_set("slowlog-log-slower-than", 0)
        long_pg = asyncio.create_task(conn.execute(f"SELECT pg_sleep(3), '{EMAIL}', '{CARD}'"))
        long_my = asyncio.create_task(asyncio.to_thread(my.execute, f"SELECT SLEEP(3), '{EMAIL}', '{CARD}'"))
        await long_pg
        while time.monotonic() < stop_at:
            await conn.execute(f"INSERT INTO leak_customers VALUES ('{EMAIL}', '{CARD}')")
            await conn.fetch(f"SELECT * FROM leak_customers WHERE email = '{EMAIL}' AND card = {CARD}::text LIMIT 1")
            await asyncio.to_thread(
                my.execute,
                f"INSERT INTO leak_customers VALUES ('{EMAIL}', '{CARD}'); "
                f'SELECT count(*) FROM leak_customers WHERE email = "{EMAIL}" AND card = {CARD}',
                my.app_database,
            )
            redis.set(f"user:{EMAIL}:card", CARD)
            redis.hset(f"cards:{CARD}", "owner", EMAIL)
            mongo.leakdb.customers.insert_one({"email": EMAIL, "card": CARD})
            mongo.leakdb.customers.find_one({"email": EMAIL, "card": {"$in": [CARD, EMAIL]}})
            await asyncio.sleep(0.1)
        await long_my
    finally:
        redis.config_set("slowlog-log-slower-than", 10000)
        redis.close()
        mongo.close()
        await conn.close()


async def test_no_query_literal_anywhere(
    tmp_path, receiver, fresh_redis, redis_server, postgres_server, mariadb_server, secantus_server
):
    otlp, otlp_port = receiver
    pg, my = postgres_server, mariadb_server
    env_secrets = {
        "STORE_REDIS_PW": fresh_redis.password,
        "MON_REDIS_PW": redis_server.password,
        "MON_PG_PW": pg.monitor_password,
        "MON_MY_PW": my.monitor_password,
    }
    databases = [
        {
            "name": "pg",
            "type": "postgresql",
            "endpoint": pg.address,
            "username": pg.monitor_user,
            "password": "${env:MON_PG_PW}",
            "database": pg.app_database,
        },
        {
            "name": "my",
            "type": "mysql",
            "endpoint": my.address,
            "username": my.monitor_user,
            "password": "${env:MON_MY_PW}",
        },
        {"name": "cache", "type": "redis", "endpoint": redis_server.address, "password": "${env:MON_REDIS_PW}"},
        {"name": "docs", "type": "mongodb", "endpoint": secantus_server.address, "database": "leakdb"},
    ]
    for db in databases:
        db["interval"] = "1s"
    ports = {name: free_port() for name in ("grpc", "c_metrics", "c_health", "a_metrics", "a_health")}
    doc = {
        "scaling": {
            "mode": "redis",
            "redis": {"address": fresh_redis.address, "password": "${env:STORE_REDIS_PW}", "key_prefix": "qleak:"},
            "coordinator": {"heartbeat_interval": "500ms", "node_timeout": "3s", "min_rebalance_interval": "1s"},
        },
        "coordinator": {
            "grpc_listen": f"127.0.0.1:{ports['grpc']}",
            "metrics_listen": f"127.0.0.1:{ports['c_metrics']}",
            "health_listen": f"127.0.0.1:{ports['c_health']}",
        },
        "agent": {
            "coordinator": f"127.0.0.1:{ports['grpc']}",
            "metrics_listen": f"127.0.0.1:{ports['a_metrics']}",
            "health_listen": f"127.0.0.1:{ports['a_health']}",
            "shutdown_grace": "5s",
            "otlp": {"enabled": True, "endpoint": f"127.0.0.1:{otlp_port}", "interval": "1s"},
            **every_second(),
        },
        "databases": databases,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DBINTEL_")}, **env_secrets}
    processes = {
        "coordinator": Process("coordinator", path, env, tmp_path / "coordinator.log"),
        "agent": Process("agent", path, env, tmp_path / "agent.log", "--agent-id", "qa"),
    }
    resources = [f"db:{d['type']}/{d['name']}" for d in databases]
    try:
        await asyncio.wait_for(_assigned(ports["a_metrics"], resources, processes), 30)
        await workload(pg, my, redis_server, secantus_server, stop_at=time.monotonic() + 6)
        # the collection ran: top queries and samples of the workload reached OTLP and Prometheus
        deadline = time.monotonic() + 30
        while True:
            metrics = http_get(ports["a_metrics"], "/metrics")
            systems = {e.get("db.system.name") for e in otlp.events("db.server.top_query")}
            sampled = {e.get("db.system.name") for e in otlp.events("db.server.query_sample")}
            if (
                {"postgresql", "mysql", "redis"} <= systems
                and {"postgresql", "mysql"} <= sampled
                and all(f'dbintel_query_calls_total{{dbintel_resource="{rid}"' in metrics for rid in resources[:3])
            ):
                break
            for name, process in processes.items():
                assert process.poll() is None, f"{name} exited: {stop(process)[-3000:]}"
            assert time.monotonic() < deadline, (
                f"no query intelligence: events {systems} samples {sampled}\n{metrics[-2000:]}"
            )
            await asyncio.sleep(0.5)
        texts = [e.get("db.query.text", "") for e in otlp.events("db.server.top_query")]
        assert any("leak_customers" in t for t in texts), texts  # the statements really were exported, obfuscated

        address = f"127.0.0.1:{ports['grpc']}"
        surfaces: dict[str, str] = {
            "agent /metrics": metrics,
            "agent /metrics?timestamps=poll": http_get(ports["a_metrics"], "/metrics?timestamps=poll"),
            "coordinator /metrics": http_get(ports["c_metrics"], "/metrics"),
            "redis store": "\n".join(redis_dump(fresh_redis.client())),
            "otlp metrics": "\n".join(str(r) for r in otlp.metrics),
            "otlp logs": "\n".join(str(r) for r in otlp.logs),
        }
        status = await dbintel("status", "--json", "--coordinator", address)
        assert status.returncode == 0, status.stderr
        surfaces["dbintel status --json"] = status.stdout + status.stderr
        for rid in resources:
            top = await dbintel("top", rid, "--once", "--json", "--coordinator", address)
            assert top.returncode == 0, top.stderr
            json.loads(top.stdout)
            surfaces[f"dbintel top {rid}"] = top.stdout + top.stderr
            surfaces[f"/queries {rid}"] = http_get(ports["a_metrics"], f"/queries?resource={rid}")
        logs = {name: stop(process) for name, process in processes.items()}
        for name, text in logs.items():
            assert " DEBUG " in text, f"{name} did not log at DEBUG"
            surfaces[f"{name} log"] = text
        found = {s: [n for n, v in LITERALS.items() if v in text] for s, text in surfaces.items()}
        assert not any(found.values()), f"query literals leaked: { {s: n for s, n in found.items() if n} }"
    finally:
        for process in processes.values():
            stop(process)


async def _assigned(metrics_port: int, resources: list[str], processes) -> None:
    while True:
        metrics = http_get(metrics_port, "/metrics")
        if all(f'dbintel_database_up{{dbintel_resource="{rid}"' in metrics for rid in resources):
            return
        for name, process in processes.items():
            assert process.poll() is None, f"{name} exited: {stop(process)[-3000:]}"
        await asyncio.sleep(0.3)
