"""Hostile input costs little (issue 12): silent Heartbeat streams are closed after a first-message
deadline, one replica holds a bounded number of them, oversized messages are refused before they are
decoded, and the HTTP ports (metrics, health) bound what trickling connections can hold.

Before the fix: silent streams stayed open for ever (2,476 of 3,000 held), 32 MiB messages were
accepted, and every trickling HTTP connection survived (a thread each on :8889).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from dbintel.common.http_endpoints import HTTP_LIMITS
from dbintel.common.message_limits import (
    CLIENT_MAX_RECEIVE_BYTES,
    MAX_QUERY_BASELINE_BYTES,
    MAX_RELEASED_BASELINE_BYTES,
    SERVER_MAX_RECEIVE_BYTES,
    MiB,
)
from dbintel.coordinator.request_guard import FIRST_MESSAGE_MIN_S, first_message_timeout
from dbintel.coordinator.validation import MAX_RESOURCES_PER_REPORT
from dbintel.v1 import agent_service_pb2 as apb
from dbintel.v1 import types_pb2
from tests.coordinator_harness import ScriptedAgent, start_coordinator, wait_for
from tests.processes import stop_process_group, wait_http_ok
from tests.security.support import build_config

HEARTBEAT = "/dbintel.v1.AgentService/Heartbeat"


def _sample(coordinator, name: str, labels: dict[str, str] | None = None) -> float:
    value = coordinator.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def test_first_message_deadline_is_the_heartbeat_interval_within_2_to_5_seconds():
    assert [first_message_timeout(s) for s in (0.3, 2.0, 3.5, 5.0, 30.0)] == [2.0, 2.0, 3.5, 5.0, 5.0]


def test_a_full_heartbeat_report_of_typical_ids_fits_the_server_limit():
    """MAX_RESOURCES_PER_REPORT entries, every field set, with 40-byte ids, plus the most top-query
    baselines a request may carry, fit in the server limit (message_limits)."""
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
    baselines = [
        types_pb2.ResourceStatus(
            resource_id=f"db:postgresql/moved-{i:020d}",
            last_poll_time=stamp,
            query_baseline=bytes(MAX_QUERY_BASELINE_BYTES),
        )
        for i in range(MAX_RELEASED_BASELINE_BYTES // MAX_QUERY_BASELINE_BYTES)
    ]
    report = apb.HeartbeatRequest(
        agent_id="a" * 63, applied_assignment_epoch=2**40, current=entries, released=baselines
    )
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


# -- the agent's HTTP ports, on a real `dbintel agent` process ----------------------------------------
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def agent_process(tmp_path_factory):
    """A `dbintel agent` with no coordinator to reach (its HTTP ports serve regardless)."""
    config = tmp_path_factory.mktemp("agent") / "config.yaml"
    config.write_text(
        yaml.safe_dump({"scaling": {"mode": "memory"}, "agent": {"coordinator": "127.0.0.1:1"}, "databases": []})
    )
    ports = {"metrics": _free_port(), "health": _free_port()}
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DBINTEL_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "dbintel.cli", "agent", "--config", str(config), "--agent-id", "slowloris-target"]
        + ["--metrics-listen", f"127.0.0.1:{ports['metrics']}", "--health-listen", f"127.0.0.1:{ports['health']}"],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_http_ok(f"http://127.0.0.1:{ports['health']}/", process)
        wait_http_ok(f"http://127.0.0.1:{ports['metrics']}/metrics", process)
        yield process, ports
    finally:
        stop_process_group(process)


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def _until_closed(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    connection.settimeout(30)
    received = b""
    try:
        while chunk := connection.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    return received


PATHS = {"metrics": "/metrics", "health": "/ready"}


@pytest.mark.parametrize("port", ["metrics", "health"])
def test_unfinished_request_heads_are_bounded_and_timed_out(agent_process, port):
    process, ports = agent_process
    limits = HTTP_LIMITS
    threads_before = _threads(process.pid)
    flood = [socket.create_connection(("127.0.0.1", ports[port])) for _ in range(limits.max_connections + 8)]
    try:
        for connection in flood:  # a head that never ends
            connection.sendall(f"GET {PATHS[port]} HTTP/1.1\r\nHost: x\r\n".encode())
        answers = [_until_closed(connection) for connection in flood]
    finally:
        threads_held = _threads(process.pid)
        for connection in flood:
            connection.close()
    busy = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
    timed_out = [a for a in answers if a.startswith(b"HTTP/1.1 408")]
    # Each refused connection either read its 503 or was reset before it could: never served.
    assert len(timed_out) == limits.max_connections, [a[:40] for a in answers]
    assert len(busy) <= 8 and all(a.startswith((b"HTTP/1.1 503", b"HTTP/1.1 408")) or a == b"" for a in answers)
    assert threads_held <= threads_before + limits.max_connections
    served = "/" if port == "health" else PATHS[port]  # /ready is 503 here: the agent has no coordinator
    with urllib.request.urlopen(f"http://127.0.0.1:{ports[port]}{served}", timeout=10) as reply:
        assert reply.status == 200


@pytest.mark.parametrize("port", ["metrics", "health"])
def test_a_trickled_head_gets_408_within_the_head_timeout_not_per_byte(agent_process, port):
    _, ports = agent_process
    head = f"GET {PATHS[port]} HTTP/1.1\r\nHost: x\r\nX-Pad: {'a' * 16}\r\n\r\n".encode()
    done = threading.Event()
    with socket.create_connection(("127.0.0.1", ports[port])) as connection:

        def trickle() -> None:  # the attack's shape: a byte each 0.25 s, so no single read ever waits long
            for byte in head:
                if done.wait(0.25):
                    return
                try:
                    connection.send(bytes([byte]))
                except OSError:
                    return

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        try:
            answer = _until_closed(connection)
        finally:
            done.set()
            sender.join()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:60]


@pytest.mark.parametrize("port", ["metrics", "health"])
def test_an_oversized_head_gets_431(agent_process, port):
    _, ports = agent_process
    with socket.create_connection(("127.0.0.1", ports[port])) as connection:
        try:
            connection.sendall(
                f"GET {PATHS[port]} HTTP/1.1\r\n".encode()
                + b"X-Pad: "
                + b"a" * HTTP_LIMITS.max_head_bytes
                + b"\r\n\r\n"
            )
        except OSError:
            pass  # the server may close before taking it all
        answer = _until_closed(connection)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:60]
