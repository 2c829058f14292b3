"""OTLP push from the agent to a real OTLP/gRPC receiver (a grpc.aio MetricsService in this test),
with the metrics of a real Redis: periodic export, attributes, headers, and the flush on shutdown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as otlp_pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as otlp_grpc

from dbintel.agent.runtime import Agent
from dbintel.common.config import parse_config
from tests.servers import RedisServer

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
        assert point["resource"]["service.name"] == "dbintel-agent"
        assert point["resource"]["service.instance.id"] == "otlp-agent"

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
