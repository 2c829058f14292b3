"""OTLP push from the agent to a real OTLP/gRPC receiver (a grpc.aio MetricsService in this test),
with the metrics of a real Redis: periodic export, attributes, headers, the flush on shutdown, and a
database's resource: its own, the same whichever agent polls it (a real coordinator moves it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest
import yaml
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as otlp_pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as otlp_grpc

from dbintel.agent.runtime import Agent
from dbintel.common.config import parse_config
from tests.coordinator_harness import start_coordinator, wait_for
from tests.servers import RedisServer, free_port

pytestmark = pytest.mark.integration


class Receiver(otlp_grpc.MetricsServiceServicer):
    def __init__(self) -> None:
        self.exports: list[otlp_pb.ExportMetricsServiceRequest] = []
        self.metadata: list[dict[str, str]] = []

    async def Export(self, request, context):
        self.exports.append(request)
        self.metadata.append(dict(context.invocation_metadata()))
        return otlp_pb.ExportMetricsServiceResponse()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    state = Receiver()
    server = grpc.aio.server()
    otlp_grpc.add_MetricsServiceServicer_to_server(state, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield state, port
    await server.stop(grace=None)


def _value(any_value) -> object:
    return getattr(any_value, any_value.WhichOneof("value"))


def points(exports: list[otlp_pb.ExportMetricsServiceRequest]) -> list[dict]:
    """Every data point as {name, kind, monotonic, value, attributes, resource}."""
    found = []
    for request in exports:
        for resource_metrics in request.resource_metrics:
            resource = {a.key: _value(a.value) for a in resource_metrics.resource.attributes}
            for scope in resource_metrics.scope_metrics:
                for metric in scope.metrics:
                    kind = metric.WhichOneof("data")
                    data = getattr(metric, kind)
                    for point in data.data_points:
                        found.append(
                            {
                                "name": metric.name,
                                "kind": kind,
                                "unit": metric.unit,
                                "monotonic": getattr(data, "is_monotonic", None),
                                "value": getattr(point, point.WhichOneof("value")),
                                "attributes": {a.key: _value(a.value) for a in point.attributes},
                                "resource": resource,
                            }
                        )
    return found


def database_resource_of(redis: RedisServer) -> dict:
    return {
        "service.name": "dbintel-agent",
        "service.instance.id": "db:redis/cache",
        "dbintel_resource": "db:redis/cache",
        "db.system": "redis",
        "server.address": redis.host,
        "server.port": redis.port,
    }


def agent_config(redis: RedisServer, otlp_port: int, interval: str) -> str:
    return f"""
scaling: {{receiver_scaling: {{ignore_assignments: true}}}}
agent:
  shutdown_grace: 5s
  otlp: {{enabled: true, endpoint: "127.0.0.1:{otlp_port}", insecure: true, interval: {interval},
          headers: {{x-dbintel-tenant: tenant-7}}}}
databases:
  - {{name: cache, type: redis, endpoint: "{redis.address}", password: "${{env:OTLP_REDIS_PW}}",
     interval: 1s, labels: {{team: payments}}}}
"""


async def eventually(condition, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met within {timeout}s"
        await asyncio.sleep(0.05)


async def test_database_metrics_arrive_over_otlp_with_their_resource_attribute(receiver, redis_server, monkeypatch):
    state, port = receiver
    monkeypatch.setenv("OTLP_REDIS_PW", redis_server.password)
    agent = Agent(
        parse_config(agent_config(redis_server, port, "300ms")),
        agent_id="otlp-agent",
        metrics_listen="127.0.0.1:0",
        health_listen="127.0.0.1:0",
    )
    await agent.start()
    try:

        def memory_points() -> list[dict]:
            return [p for p in points(state.exports) if p["name"] == "redis.memory.used"]

        await eventually(lambda: memory_points(), what="redis.memory.used exported")
        point = memory_points()[-1]
        assert point["attributes"] == {"dbintel_resource": "db:redis/cache", "team": "payments"}
        assert point["kind"] == "gauge" and point["unit"] == "By" and point["value"] > 0
        assert point["resource"] == database_resource_of(redis_server)  # the database's, not the agent's

        await eventually(lambda: any(p["name"] == "redis.cpu.time" for p in points(state.exports)), what="cpu time")
        cpu = [p for p in points(state.exports) if p["name"] == "redis.cpu.time"]
        assert all(p["kind"] == "sum" and p["monotonic"] for p in cpu)
        assert {"user", "sys"} <= {p["attributes"]["state"] for p in cpu}  # OTel attribute names, not labels
        up = [p for p in points(state.exports) if p["name"] == "dbintel.database.up"]
        assert up and up[-1]["attributes"] == {"dbintel_resource": "db:redis/cache", "type": "redis"}
        assert up[-1]["value"] == 1
        assert state.metadata[-1].get("x-dbintel-tenant") == "tenant-7"
        await eventually(lambda: len(state.exports) >= 2, what="a second periodic export")
    finally:
        await agent.shutdown()


async def test_shutdown_flushes_the_last_snapshots(receiver, redis_server, monkeypatch):
    state, port = receiver
    monkeypatch.setenv("OTLP_REDIS_PW", redis_server.password)
    agent = Agent(
        parse_config(agent_config(redis_server, port, "1h")),
        agent_id="otlp-agent",
        metrics_listen="127.0.0.1:0",
        health_listen="127.0.0.1:0",
    )
    await agent.start()
    await eventually(lambda: any(s.polled for s in agent.scheduler.snapshots().values()), what="first poll")
    assert state.exports == []  # the interval is an hour: nothing is due yet
    await agent.shutdown()
    exported = {p["name"] for p in points(state.exports)}
    assert "redis.memory.used" in exported and "dbintel.database.up" in exported


async def test_a_database_moved_to_another_agent_keeps_its_resource(receiver, redis_server, monkeypatch):
    """A real coordinator (memory mode) hands the database from agent-a to agent-b when agent-a leaves:
    the points both agents push for it carry one and the same resource, with nothing of either agent."""
    state, port = receiver
    monkeypatch.setenv("OTLP_REDIS_PW", redis_server.password)
    grpc_port = free_port()
    doc = yaml.safe_load(agent_config(redis_server, port, "200ms"))
    doc["scaling"] = {
        "mode": "memory",
        "coordinator": {"heartbeat_interval": "300ms", "node_timeout": "2s", "min_rebalance_interval": "1s"},
        "receiver_scaling": {"check_interval": "300ms"},
    }
    doc["coordinator"] = {
        "grpc_listen": f"127.0.0.1:{grpc_port}",
        "metrics_listen": "127.0.0.1:0",
        "health_listen": "127.0.0.1:0",
    }
    doc["agent"]["coordinator"] = f"127.0.0.1:{grpc_port}"

    def config_of(agent: str):
        doc["agent"]["otlp"]["headers"] = {"x-agent": agent}  # tells the receiver who pushed
        return parse_config(yaml.safe_dump(doc))

    def resources_from(agent: str) -> list[dict]:
        return [
            {a.key: _value(a.value) for a in rm.resource.attributes}
            for request, metadata in zip(state.exports, state.metadata, strict=True)
            if metadata.get("x-agent") == agent
            for rm in request.resource_metrics
            if any(m.name == "redis.memory.used" for sm in rm.scope_metrics for m in sm.metrics)
        ]

    coordinator = await start_coordinator(config_of("coordinator"), "coord")
    agents = {}
    try:
        for name in ("agent-a", "agent-b"):
            agents[name] = Agent(
                config_of(name), agent_id=name, metrics_listen="127.0.0.1:0", health_listen="127.0.0.1:0"
            )
            await agents[name].start()
            await wait_for(lambda: any(a.assigned for a in agents.values()), timeout=10, message="an assignment")
        first = next(name for name, agent in agents.items() if agent.assigned)
        second = next(name for name in agents if name != first)
        await eventually(lambda: resources_from(first), what=f"{first} pushing the database")
        await agents[first].shutdown()  # Leave: the database moves at once
        await wait_for(lambda: agents[second].assigned, timeout=10, message="the move")
        await eventually(lambda: resources_from(second), what=f"{second} pushing the database")
        resources = resources_from(first) + resources_from(second)
        assert all(r == database_resource_of(redis_server) for r in resources), resources
    finally:
        for agent in agents.values():
            await agent.shutdown()
        await coordinator.shutdown()
