"""Bytes that are not a valid request get a clear INVALID_ARGUMENT, from every RPC (issue 12).

Sent over a raw channel with identity serializers, as a hostile or broken client would: truncated
messages, garbage, invalid UTF-8 in a text field, a field with the wrong wire type. Before the
request guard these got `UNKNOWN: Unexpected DecodeError`, and a wrong-wire-type `dry_run` was dropped
silently, so `Rebalance` applied a real rebalance.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dbintel.v1 import agent_service_pb2 as apb
from dbintel.v1 import operator_service_pb2 as opb
from dbintel.v1 import operator_service_pb2_grpc, types_pb2
from tests.coordinator_harness import ScriptedAgent, start_coordinator, wait_for
from tests.security.support import build_config

SERVICES = (apb.DESCRIPTOR.services_by_name["AgentService"], opb.DESCRIPTOR.services_by_name["OperatorService"])
UNARY = [(s.full_name, m) for s in SERVICES for m in s.methods if not m.client_streaming and not m.server_streaming]
HEARTBEAT = "/dbintel.v1.AgentService/Heartbeat"

TRUNCATED = b"\x0a\x05ab"  # field 1, length-delimited, says 5 bytes, carries 2
GARBAGE = b"\xff" * 11  # a varint tag longer than 10 bytes: not protobuf at all
SECRET_LOOKING = b"\x0a\x14hunter2-not-a-message"  # truncated too; its text must not come back


def _invalid_utf8(method) -> bytes | None:
    """The request's first text field, holding bytes that are not UTF-8; None if it has no text field."""
    for field in method.input_type.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            return bytes([field.number << 3 | 2, 2]) + b"\xff\xfe"
    return None


def _cases():
    for service, method in UNARY:
        path = f"/{service}/{method.name}"
        yield pytest.param(path, TRUNCATED, id=f"{method.name}-truncated")
        yield pytest.param(path, GARBAGE, id=f"{method.name}-garbage")
        yield pytest.param(path, SECRET_LOOKING, id=f"{method.name}-no-echo")
        bad_text = _invalid_utf8(method)
        if bad_text is not None:
            yield pytest.param(path, bad_text, id=f"{method.name}-invalid-utf8")


@pytest.fixture
async def coordinator():
    coordinator = await start_coordinator(build_config(), "wire")
    await wait_for(lambda: coordinator.leadership.is_leader, message="leadership")
    yield coordinator
    await coordinator.shutdown()


def _address(coordinator) -> str:
    return f"127.0.0.1:{coordinator.grpc_port}"


async def _raw_unary(address: str, path: str, payload: bytes) -> grpc.aio.AioRpcError | bytes:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            return await channel.unary_unary(path)(payload, timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc


async def _serving(address: str) -> bool:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(("path", "payload"), list(_cases()))
async def test_undecodable_unary_requests_get_invalid_argument(coordinator, path, payload):
    answer = await _raw_unary(_address(coordinator), path, payload)
    assert isinstance(answer, grpc.aio.AioRpcError), f"{path} accepted {payload!r}"
    assert answer.code() == grpc.StatusCode.INVALID_ARGUMENT, (answer.code(), answer.details())
    details = answer.details() or ""
    assert path in details and "could not be decoded" in details, details
    assert "hunter2" not in details and "not-a-message" not in details, details  # the payload is not echoed
    assert await _serving(_address(coordinator))


async def _heartbeat(address: str, messages: list[bytes]) -> tuple[grpc.StatusCode, str, int]:
    """Write `messages` (raw) on one Heartbeat stream, reading a reply after each; (code, details, replies)."""
    replies = 0
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_stream(HEARTBEAT)(timeout=10)
        try:
            for message in messages:
                await call.write(message)
                if await call.read() is grpc.aio.EOF:
                    break
                replies += 1
            await call.done_writing()
        except grpc.aio.AioRpcError:
            pass  # the status is read below
        return await call.code(), await call.details() or "", replies


def _registration(agent_id: str) -> bytes:
    return apb.HeartbeatRequest(
        agent_id=agent_id,
        registration=apb.AgentRegistration(pod_name=agent_id, version="test", instance_id="wire-1"),
    ).SerializeToString()


@pytest.mark.parametrize("payload", [TRUNCATED, GARBAGE, b"\x0a\x02\xff\xfe"], ids=["truncated", "garbage", "utf8"])
async def test_undecodable_heartbeat_messages_get_invalid_argument_first_or_later(coordinator, payload):
    address = _address(coordinator)
    code, details, replies = await _heartbeat(address, [payload])
    assert (code, replies) == (grpc.StatusCode.INVALID_ARGUMENT, 0), (code, details)
    assert HEARTBEAT in details and "could not be decoded" in details, details

    code, details, replies = await _heartbeat(address, [_registration("wire-agent"), payload])
    assert (code, replies) == (grpc.StatusCode.INVALID_ARGUMENT, 1), (code, details)
    assert HEARTBEAT in details and "could not be decoded" in details, details
    assert await _serving(address)


async def test_a_field_with_the_wrong_wire_type_is_refused_and_nothing_is_applied(coordinator):
    address = _address(coordinator)
    agents = [ScriptedAgent(f"agent-{i}", address).start() for i in range(2)]
    try:
        await wait_for(lambda: all(a.held for a in agents), message="placement")
        async with grpc.aio.insecure_channel(address) as channel:
            stub = operator_service_pb2_grpc.OperatorServiceStub(channel)
            status = await stub.GetClusterStatus(opb.GetClusterStatusRequest(), timeout=5)
            # apply (field 2, a bool) sent as bytes: protobuf would drop it; the guard names it.
            for path, payload in (
                ("/dbintel.v1.OperatorService/Rebalance", b"\x12\x01\x01"),
                ("/dbintel.v1.OperatorService/DrainAgent", b"\x0a\x07agent-0" + b"\x1a\x01\x01"),
            ):
                answer = await _raw_unary(address, path, payload)
                assert isinstance(answer, grpc.aio.AioRpcError), f"{path} accepted a bytes-typed apply"
                assert answer.code() == grpc.StatusCode.INVALID_ARGUMENT, (answer.code(), answer.details())
                assert "apply: sent as length-delimited, which a bool field cannot take" in (answer.details() or "")
            # A request that parses to defaults is a dry run: empty, or an old client's dry_run: true (field 1).
            for request in (b"", b"\x08\x01"):
                reply = opb.RebalanceResponse.FromString(
                    await channel.unary_unary("/dbintel.v1.OperatorService/Rebalance")(request, timeout=10)
                )
                assert not reply.applied
            drain = await stub.DrainAgent(opb.DrainAgentRequest(agent_id="agent-0"), timeout=10)
            assert not drain.applied and drain.moves
            after = await stub.GetClusterStatus(opb.GetClusterStatusRequest(), timeout=5)
            assert (after.rebalances_total, after.assignment_epoch) == (
                status.rebalances_total,
                status.assignment_epoch,
            )
            assert {a.agent_id: a.state for a in (await stub.ListAgents(opb.ListAgentsRequest())).agents} == {
                "agent-0": types_pb2.AGENT_STATE_ACTIVE,
                "agent-1": types_pb2.AGENT_STATE_ACTIVE,
            }
            applied = await stub.Rebalance(opb.RebalanceRequest(apply=True), timeout=10)
            assert applied.applied
    finally:
        for agent in agents:
            await agent.stop()
