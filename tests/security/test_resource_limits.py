"""Hostile input costs little (issue 12): silent Heartbeat streams are closed after a first-message
deadline, one replica holds a bounded number of them, oversized messages are refused before they are
decoded, and the HTTP ports (metrics, health) bound what trickling connections can hold.

Before the fix: silent streams stayed open for ever (2,476 of 3,000 held), 32 MiB messages were
accepted, and every trickling HTTP connection survived (a thread each on :8889).
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from dbintel.common.message_limits import CLIENT_MAX_RECEIVE_BYTES, SERVER_MAX_RECEIVE_BYTES, MiB
from dbintel.coordinator.request_guard import FIRST_MESSAGE_MIN_S, first_message_timeout
from dbintel.coordinator.validation import MAX_RESOURCES_PER_REPORT
from dbintel.v1 import agent_service_pb2 as apb
from dbintel.v1 import types_pb2
from tests.coordinator_harness import ScriptedAgent, start_coordinator, wait_for
from tests.security.support import build_config

HEARTBEAT = "/dbintel.v1.AgentService/Heartbeat"


def _sample(coordinator, name: str, labels: dict[str, str] | None = None) -> float:
    value = coordinator.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def test_first_message_deadline_is_the_heartbeat_interval_within_2_to_5_seconds():
    assert [first_message_timeout(s) for s in (0.3, 2.0, 3.5, 5.0, 30.0)] == [2.0, 2.0, 3.5, 5.0, 5.0]


def test_a_full_heartbeat_report_of_typical_ids_fits_the_server_limit():
    """MAX_RESOURCES_PER_REPORT entries, every field set, with 40-byte ids, fit in 8 MiB (message_limits)."""
    stamp, took = Timestamp(seconds=1_796_000_000, nanos=123_456_789), Duration(seconds=1, nanos=234_567_890)
    entries = [
        types_pb2.ResourceStatus(
            resource_id=f"db:postgresql/orders-{i:019d}",
            last_poll_time=stamp,
            last_poll_duration=took,
            polls_total=123_456_789,
            errors_total=12_345,
            up=True,
        )
        for i in range(MAX_RESOURCES_PER_REPORT)
    ]
    assert len(entries[0].resource_id) == 40
    report = apb.HeartbeatRequest(agent_id="a" * 63, applied_assignment_epoch=2**40, current=entries)
    assert report.ByteSize() <= SERVER_MAX_RECEIVE_BYTES < CLIENT_MAX_RECEIVE_BYTES


@pytest.fixture
async def bounded():
    coordinator = await start_coordinator(build_config(coordinator={"max_heartbeat_streams": 3}), "bounded")
    yield coordinator
    await coordinator.shutdown()


async def test_silent_heartbeat_streams_are_closed_at_the_deadline_and_bounded(bounded):
    coordinator = bounded
    address = f"127.0.0.1:{coordinator.grpc_port}"
    async with grpc.aio.insecure_channel(address) as channel:
        heartbeat = channel.stream_stream(HEARTBEAT)
        silent = [heartbeat(timeout=60) for _ in range(3)]  # open, never written to
        await wait_for(lambda: coordinator.request_guard.heartbeat_streams == 3, message="3 streams held")
        assert _sample(coordinator, "dbintel_grpc_server_heartbeat_streams") == 3

        refused = heartbeat(timeout=60)
        assert await refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = await refused.details()
        assert "holds 3 Heartbeat streams" in details and "coordinator.max_heartbeat_streams = 3" in details
        assert _sample(coordinator, "dbintel_grpc_server_rejected_total", {"reason": "too_many_streams"}) == 1

        for call in silent:  # closed by the server, well before their own 60 s deadline
            assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            details = await call.details()
            assert f"no first message within {FIRST_MESSAGE_MIN_S:g} s" in details, details
        await wait_for(lambda: coordinator.request_guard.heartbeat_streams == 0, message="streams released")
        assert _sample(coordinator, "dbintel_grpc_server_heartbeat_streams") == 0
        assert _sample(coordinator, "dbintel_grpc_server_rejected_total", {"reason": "first_message_timeout"}) == 3

    # The slots are free again: a real agent registers and stays.
    agent = ScriptedAgent("after-the-flood", address).start()
    try:
        await wait_for(lambda: agent.responses >= 3 and agent.error is None, message="a working agent")
        assert coordinator.request_guard.heartbeat_streams == 1
    finally:
        await agent.stop()


@pytest.mark.parametrize("size", [SERVER_MAX_RECEIVE_BYTES + 1, 32 * MiB])
async def test_messages_over_the_server_limit_are_refused(bounded, size):
    address = f"127.0.0.1:{bounded.grpc_port}"
    payload = apb.GetAssignmentsRequest(agent_id="x" * size).SerializeToString()
    async with grpc.aio.insecure_channel(address, options=[("grpc.max_send_message_length", -1)]) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await channel.unary_unary("/dbintel.v1.AgentService/GetAssignments")(payload, timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value.details()
        assert str(SERVER_MAX_RECEIVE_BYTES) in (refused.value.details() or "")
        # Just under the limit it is decoded and answered on its merits (the id is too long).
        under = apb.GetAssignmentsRequest(agent_id="x" * (SERVER_MAX_RECEIVE_BYTES - 16)).SerializeToString()
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await channel.unary_unary("/dbintel.v1.AgentService/GetAssignments")(under, timeout=30)
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT, invalid.value.details()
