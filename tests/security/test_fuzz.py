"""Hypothesis: generated configs never raise anything but ConfigError, naming the bad field (no I/O);
generated messages to every AgentService and OperatorService RPC of a running in-process coordinator
get OK or a clear client-error status, never UNKNOWN/INTERNAL, and health stays SERVING afterwards."""

from __future__ import annotations

import copy
import re
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from dbintel.common.config import Config, ConfigError, parse_config
from dbintel.v1 import agent_service_pb2 as apb
from dbintel.v1 import agent_service_pb2_grpc, operator_service_pb2_grpc, types_pb2
from dbintel.v1 import operator_service_pb2 as opb
from tests.coordinator_harness import ScriptedAgent, exactly_once, start_coordinator, wait_for
from tests.security.support import build_config

FUZZ_SECRET = "fuzz-secret-7d1c9e"  # what ${env:FUZZ_SECRET} expands to: never in an error message

BASE: dict[str, Any] = {
    "scaling": {
        "enabled": True,
        "mode": "redis",
        "redis": {
            "address": "redis:6379",
            "db": 0,
            "key_prefix": "dbintel:scaling:",
            "leader_ttl": "30s",
            "username": "dbintel",
            "password": "${env:REDIS_PW}",
            "tls": {"enabled": True, "ca_file": "/etc/ca.crt"},
        },
        "coordinator": {
            "heartbeat_interval": "30s",
            "node_timeout": "90s",
            "rebalance_interval": "5m",
            "min_rebalance_interval": "1m",
        },
        "receiver_scaling": {"check_interval": "30s", "resource_prefix": "db:", "ignore_assignments": False},
    },
    "coordinator": {
        "grpc_listen": "0.0.0.0:50051",
        "metrics_listen": ":8889",
        "health_listen": ":13133",
        "operator_token": "${file:/etc/token}",
        "tls": {
            "enabled": True,
            "cert_file": "/etc/s.crt",
            "key_file": "/etc/s.key",
            "client_ca_file": "/etc/ca.crt",
            "require_client_cert": True,
        },
        "client_tls": {
            "enabled": True,
            "ca_file": "/etc/ca.crt",
            "cert_file": "/etc/c.crt",
            "key_file": "/etc/c.key",
            "server_name": "coordinator",
        },
    },
    "agent": {
        "coordinator": "coordinator:50051",
        "max_concurrent_polls": 32,
        "shutdown_grace": "10s",
        "tls": {"enabled": True, "ca_file": "/etc/ca.crt"},
    },
    "databases": [
        {
            "name": "orders",
            "type": "postgresql",
            "endpoint": "10.0.0.5:5432",
            "username": "monitor",
            "password": "${env:PG_PW}",
            "database": "orders",
            "interval": "30s",
            "labels": {"team": "payments"},
        },
        {
            "name": "cache",
            "type": "redis",
            "endpoint": "10.0.0.6:6379",
            "database": "1",
            "tls": {"enabled": True, "insecure_skip_verify": True},
        },
    ],
}


def test_the_base_document_is_valid():
    assert isinstance(parse_config(yaml.safe_dump(BASE), environ={}), Config)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value (dict keys and list indexes) in the document."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += _paths(value, prefix + (index,))
    return out


PATHS = _paths(BASE)


def dotted(path: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.sampled_from(
        [
            "5x",
            "-1s",
            "1.5.5s",
            "30",
            "",
            "0",
            "1h1h",
            "99999999999h",
            "ms",
            "host",
            ":0",
            "h:99999",
            "[::1]",
            "a:b:c",
            "${env:UNSET_FUZZ}",
            "${env:FUZZ_SECRET}",
            "${file:relative}",
            "${env:1BAD}",
            "${env:FUZZ_SECRET}:6379",
            "x" * 5000,
        ]
    ),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


@st.composite
def mutated_documents(draw) -> tuple[dict, tuple, str]:
    """The base document with one value replaced by junk, or one unknown key added."""
    document = copy.deepcopy(BASE)
    path = draw(st.sampled_from(PATHS))
    parent = document
    for part in path[:-1]:
        parent = parent[part]
    if isinstance(parent[path[-1]], dict) and draw(st.booleans()):
        key = draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in parent[path[-1]]))
        parent[path[-1]][key] = draw(junk)
        return document, path + (key,), "unknown"
    parent[path[-1]] = draw(junk)
    return document, path, "replaced"


@settings(max_examples=200, deadline=None)
@given(mutated_documents())
def test_generated_configs_raise_only_config_errors_naming_the_field(case):
    document, path, how = case
    try:
        parse_config(yaml.safe_dump(document), environ={"FUZZ_SECRET": FUZZ_SECRET})
    except ConfigError as exc:
        assert exc.problems and all(": " in p for p in exc.problems)
        assert FUZZ_SECRET not in str(exc)
        # Entries under databases carry their name, `databases[0] (orders).type`: compare without it.
        message = re.sub(r"(databases\[\d+\]) \([A-Za-z0-9._-]+\)", r"\1", str(exc))
        if how == "unknown" and not isinstance(path[-2], int):
            assert f"{dotted(path)}: unknown field" in message or dotted(path[:-1]) in message, message
        else:
            # The field itself, or (for a rule between fields) the section that holds it.
            section = dotted(path[:-1]) if len(path) > 1 else dotted(path)
            assert dotted(path) in message or section in message, (dotted(path), message)


@settings(max_examples=100, deadline=None)
@given(
    st.text(max_size=300)
    | st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.sampled_from(["scaling", "coordinator", "agent", "databases", "tls", "redis", "mode", "x"])
                | st.text(max_size=5),
                inner,
                max_size=4,
            )
        ),
        max_leaves=20,
    ).map(lambda d: yaml.safe_dump(d))
)
def test_arbitrary_text_and_shapes_raise_only_config_errors(text):
    try:
        parse_config(text, environ={})
    except ConfigError as exc:
        assert exc.problems and all(p.strip() for p in exc.problems)


# -- RPCs ----------------------------------------------------------------------------------------------
CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    # An agent id that a live agent of another pod holds (the harness's agents).
    grpc.StatusCode.ALREADY_EXISTS,
}

texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            "agent-0",
            "agent-1",
            "db:redis/db000",
            "db:redis/nope",
            "x" * 300,
            "y" * 70_000,
            "\x00",
            "a\nb",
            "../../etc",
        ]
    ),
)
epochs = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**63, 2**64 - 1]))
timestamps = st.fixed_dictionaries(
    {"seconds": st.integers(-62135596800, 253402300799), "nanos": st.integers(0, 999_999_999)}
)
durations = st.fixed_dictionaries(
    {"seconds": st.integers(-315576000000, 315576000000), "nanos": st.integers(-999_999_999, 999_999_999)}
).filter(lambda d: d["seconds"] == 0 or d["nanos"] == 0 or (d["seconds"] > 0) == (d["nanos"] > 0))
statuses = st.builds(
    lambda rid, polls, errors, up, last, took: types_pb2.ResourceStatus(
        resource_id=rid, polls_total=polls, errors_total=errors, up=up, last_poll_time=last, last_poll_duration=took
    ),
    texts,
    epochs,
    epochs,
    st.booleans(),
    timestamps,
    durations,
)
registrations = st.builds(
    lambda pod, zone, version, capacity, instance: apb.AgentRegistration(
        pod_name=pod, zone=zone, version=version, capacity=capacity, instance_id=instance
    ),
    texts,
    texts,
    texts,
    st.integers(0, 2**32 - 1),
    texts,
)
heartbeats = st.builds(
    lambda agent, reg, epoch, current, released: apb.HeartbeatRequest(
        agent_id=agent,
        applied_assignment_epoch=epoch,
        current=current,
        released=released,
        **({"registration": reg} if reg is not None else {}),
    ),
    texts,
    st.none() | registrations,
    epochs,
    st.lists(statuses, max_size=4),
    st.lists(statuses, max_size=2),
)


@pytest.fixture
async def fuzzed_cluster():
    config = build_config(
        databases=[{"name": f"db{i:03d}", "type": "redis", "endpoint": "127.0.0.1:1"} for i in range(6)]
    )
    coordinator = await start_coordinator(config, "fuzzed")
    address = f"127.0.0.1:{coordinator.grpc_port}"
    agents = [ScriptedAgent(f"agent-{i}", address).start() for i in range(2)]
    await wait_for(lambda: exactly_once(agents, set(config.resources())), message="placement")
    async with grpc.aio.insecure_channel(address) as channel:
        yield coordinator, channel
    for agent in agents:
        await agent.stop()
    await coordinator.shutdown()


def _check(code: grpc.StatusCode, details: str, rpc: str) -> None:
    assert code in CLIENT_ERRORS, f"{rpc}: {code.name}: {details}"
    assert details and len(details) < 2000, f"{rpc}: unclear message {details!r:.200}"


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    stream=st.lists(heartbeats, min_size=1, max_size=3),
    agent_id=texts,
    reason=texts,
    resource_type=texts,
    apply=st.booleans(),
)
async def test_generated_messages_to_every_rpc_get_clear_answers(
    fuzzed_cluster, stream, agent_id, reason, resource_type, apply
):
    coordinator, channel = fuzzed_cluster
    agents = agent_service_pb2_grpc.AgentServiceStub(channel)
    operators = operator_service_pb2_grpc.OperatorServiceStub(channel)

    # Ping-pong (the coordinator answers every heartbeat at once): a write never follows the server's end
    # of the stream, whose status would then be the client's own "write failed" instead of the server's.
    call = agents.Heartbeat(timeout=5)
    try:
        for message in stream:
            await call.write(message)
            if await call.read() is grpc.aio.EOF:
                break
        await call.done_writing()
    except grpc.aio.AioRpcError:
        pass  # the status is read below
    code = await call.code()
    if code != grpc.StatusCode.OK:
        _check(code, await call.details(), "Heartbeat")
    unary = {
        "GetAssignments": lambda: agents.GetAssignments(apb.GetAssignmentsRequest(agent_id=agent_id), timeout=5),
        "Leave": lambda: agents.Leave(apb.LeaveRequest(agent_id=agent_id, reason=reason), timeout=5),
        "GetClusterStatus": lambda: operators.GetClusterStatus(opb.GetClusterStatusRequest(), timeout=5),
        "ListAgents": lambda: operators.ListAgents(opb.ListAgentsRequest(), timeout=5),
        "ListAssignments": lambda: operators.ListAssignments(opb.ListAssignmentsRequest(agent_id=agent_id), timeout=5),
        "ListResources": lambda: operators.ListResources(opb.ListResourcesRequest(type=resource_type), timeout=5),
        "Rebalance": lambda: operators.Rebalance(opb.RebalanceRequest(apply=apply), timeout=5),
        "DrainAgent": lambda: operators.DrainAgent(opb.DrainAgentRequest(agent_id=agent_id), timeout=5),
    }
    for rpc, call in unary.items():
        try:
            await call()
        except grpc.aio.AioRpcError as exc:
            _check(exc.code(), exc.details(), rpc)
    # After every example (so after the last one too): still serving, and no RPC of any client ended badly.
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    codes = set(
        re.findall(
            r'dbintel_grpc_server_handled_total\{[^}]*grpc_code="([A-Z_]+)"',
            generate_latest(coordinator.registry).decode(),
        )
    )
    assert codes and not codes & {"UNKNOWN", "INTERNAL"}, codes
