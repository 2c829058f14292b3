"""Agent RPCs are bound to the registration's session (issue 12): a Leave or GetAssignments without
the session secret is refused and changes nothing; the same instance id under another secret is
an impostor; an agent whose registration really ended registers anew instead of idling.

A real coordinator (memory mode) and a real in-process agent polling a real Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from dbintel.agent.runtime import Agent
from dbintel.common.config import parse_config
from dbintel.coordinator.server import Coordinator
from dbintel.v1 import agent_service_pb2 as apb
from dbintel.v1 import agent_service_pb2_grpc, types_pb2
from dbintel.v1 import operator_service_pb2 as opb
from tests.coordinator_harness import operator_stub, start_coordinator, wait_for

pytestmark = pytest.mark.integration

VICTIM = "victim"


def config_text(redis_server) -> str:
    databases = "\n".join(
        f"  - {{name: r{i}, type: redis, endpoint: '{redis_server.address}', password: '${{env:BIND_REDIS_PW}}', "
        f"database: '{i}', interval: 1s}}"
        for i in range(3)
    )
    return f"""
scaling:
  coordinator: {{heartbeat_interval: 300ms, node_timeout: 3s, min_rebalance_interval: 1s}}
  receiver_scaling: {{check_interval: 200ms}}
coordinator: {{grpc_listen: 127.0.0.1:0, metrics_listen: 127.0.0.1:0, health_listen: 127.0.0.1:0}}
agent: {{metrics_listen: 127.0.0.1:0, health_listen: 127.0.0.1:0, shutdown_grace: 5s}}
databases:
{databases}
"""


@pytest.fixture
async def bound(redis_server, monkeypatch) -> AsyncIterator[tuple[Coordinator, Agent, str]]:
    monkeypatch.setenv("BIND_REDIS_PW", redis_server.password)
    config = parse_config(config_text(redis_server))
    coordinator = await start_coordinator(config, "c1")
    address = f"127.0.0.1:{coordinator.grpc_port}"
    agent = Agent(config, agent_id=VICTIM, coordinator=address)
    await agent.start()
    try:
        await wait_for(lambda: len(agent.polling) == 3, message="the victim polls all three databases")
        yield coordinator, agent, address
    finally:
        await agent.shutdown("test teardown")
        await coordinator.shutdown()


async def victim_info(address: str) -> types_pb2.AgentInfo:
    channel, stub = operator_stub(address)
    async with channel:
        reply = await stub.ListAgents(opb.ListAgentsRequest(), timeout=3)
    return next(a for a in reply.agents if a.agent_id == VICTIM)


async def test_a_spoofed_leave_or_get_assignments_is_refused_and_the_victim_keeps_its_databases(bound):
    _, agent, address = bound
    async with grpc.aio.insecure_channel(address) as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        for secret in ("", "a-guess"):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Leave(apb.LeaveRequest(agent_id=VICTIM, reason="spoofed", session_secret=secret), timeout=3)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert secret not in refused.value.details() or not secret
            with pytest.raises(grpc.aio.AioRpcError) as peek:
                await stub.GetAssignments(apb.GetAssignmentsRequest(agent_id=VICTIM, session_secret=secret), timeout=3)
            assert peek.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.Leave(apb.LeaveRequest(agent_id="nobody", reason="spoofed"), timeout=3)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    # Several heartbeats later the victim is still a member polling everything it had.
    epoch = agent.assignment_epoch
    await asyncio.sleep(1.0)  # three heartbeats: a refused Leave must not have a delayed effect
    info = await victim_info(address)
    assert info.state == types_pb2.AGENT_STATE_ACTIVE and info.current_resources == 3
    assert len(agent.polling) == 3 and agent.assignment_epoch == epoch


async def test_the_same_instance_under_another_secret_is_refused(bound):
    _, agent, address = bound
    impostor = apb.HeartbeatRequest(
        agent_id=VICTIM,
        sequence=1,
        registration=apb.AgentRegistration(
            pod_name="impostor", instance_id=agent.instance_id, session_secret="not-the-secret"
        ),
    )
    async with grpc.aio.insecure_channel(address) as channel:
        call = agent_service_pb2_grpc.AgentServiceStub(channel).Heartbeat(iter([impostor]), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in call:
                pass
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = await victim_info(address)
    assert info.state == types_pb2.AGENT_STATE_ACTIVE and info.pod_name != "impostor"
    assert len(agent.polling) == 3


async def test_an_agent_whose_registration_ended_stops_and_registers_anew(bound):
    _, agent, address = bound
    first_instance = agent.instance_id
    # The session ends for real (here: a Leave with the right secret, as a stale replica might
    # replay): the next heartbeat is refused, and the agent must not idle as a zombie.
    secret = agent._link._registration.session_secret
    async with grpc.aio.insecure_channel(address) as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        await stub.Leave(apb.LeaveRequest(agent_id=VICTIM, reason="ended", session_secret=secret), timeout=3)
    await wait_for(lambda: agent.instance_id != first_instance, message="a new registration")
    await wait_for(lambda: len(agent.polling) == 3, message="its databases back under the new registration")
    info = await victim_info(address)
    assert info.state == types_pb2.AGENT_STATE_ACTIVE and not info.unproven
    assert uuid.UUID(hex=agent.instance_id)
