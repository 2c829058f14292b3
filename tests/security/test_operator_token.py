"""The optional operator bearer token: every OperatorService RPC needs it, nothing else does; refusals
never echo a token; `dbintel status` and follower -> leader forwarding (here over mutual TLS) carry it."""

from __future__ import annotations

import json
import secrets

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from dbintel.common.config import ConfigError, TLSSettings, parse_config
from dbintel.common.grpc_security import bearer_matches, open_channel
from dbintel.v1 import agent_service_pb2 as apb
from dbintel.v1 import agent_service_pb2_grpc, operator_service_pb2_grpc
from dbintel.v1 import operator_service_pb2 as opb
from tests.coordinator_harness import start_coordinator, wait_for
from tests.security.support import build_config, client_tls, dbintel, grpcurl, run, server_tls

TOKEN_ENV = "DBINTEL_TEST_OPERATOR_TOKEN"

OPERATOR_CALLS = {  # every OperatorService RPC, with a request that passes validation
    "GetClusterStatus": opb.GetClusterStatusRequest(),
    "ListAgents": opb.ListAgentsRequest(),
    "ListAssignments": opb.ListAssignmentsRequest(),
    "ListResources": opb.ListResourcesRequest(),
    "Rebalance": opb.RebalanceRequest(),
    "DrainAgent": opb.DrainAgentRequest(agent_id="nobody"),
}


def test_operator_rpc_names_cover_the_service():
    service = opb.DESCRIPTOR.services_by_name["OperatorService"]
    assert set(OPERATOR_CALLS) == {method.name for method in service.methods}


@pytest.fixture
async def token_coordinator(monkeypatch):
    token = secrets.token_urlsafe(24)
    monkeypatch.setenv(TOKEN_ENV, token)
    coordinator = await start_coordinator(
        build_config(coordinator={"operator_token": f"${{env:{TOKEN_ENV}}}"}), "token"
    )
    yield coordinator, f"127.0.0.1:{coordinator.grpc_port}", token
    await coordinator.shutdown()


async def test_every_operator_rpc_needs_the_token_and_refusals_echo_nothing(token_coordinator):
    _, address, token = token_coordinator
    presented = "Bearer " + secrets.token_hex(12)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = operator_service_pb2_grpc.OperatorServiceStub(channel)
        for name, request in OPERATOR_CALLS.items():
            method = getattr(stub, name)
            for metadata in ((), (("authorization", presented),), (("authorization", token),)):  # last: no "Bearer"
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await method(request, metadata=metadata, timeout=5)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, (name, metadata)
                details = refused.value.details()
                assert "authorization: Bearer <token>" in details
                assert token not in details and presented.split()[1] not in details
            right = (("authorization", f"Bearer {token}"),)
            if name == "DrainAgent":
                with pytest.raises(grpc.aio.AioRpcError) as unknown:
                    await method(request, metadata=right, timeout=5)
                assert unknown.value.code() == grpc.StatusCode.NOT_FOUND  # authenticated, then validated
            else:
                await method(request, metadata=right, timeout=5)


async def test_agent_rpcs_health_and_reflection_need_no_token(token_coordinator):
    _, address, token = token_coordinator
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await agent_service_pb2_grpc.AgentServiceStub(channel).GetAssignments(
            apb.GetAssignmentsRequest(agent_id="tokenless-agent"), timeout=5
        )
        assert not reply.HasField("assignment") or reply.assignment.assignment_epoch == 0
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    listed = await run(grpcurl(), "-plaintext", address, "list")
    assert listed.returncode == 0 and "dbintel.v1.OperatorService" in listed.stdout, listed.stderr
    refused = await run(grpcurl(), "-plaintext", address, "dbintel.v1.OperatorService/GetClusterStatus")
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr
    allowed = await run(
        grpcurl(),
        "-plaintext",
        "-H",
        f"authorization: Bearer {token}",
        address,
        "dbintel.v1.OperatorService/GetClusterStatus",
    )
    assert allowed.returncode == 0 and json.loads(allowed.stdout)["resources_total"] == 4, allowed.stderr


async def test_dbintel_status_takes_the_token_from_the_environment_or_a_file(token_coordinator, tmp_path):
    _, address, token = token_coordinator
    without = await dbintel("status", "--coordinator", address)
    assert without.returncode == 1 and "UNAUTHENTICATED" in without.stderr
    from_env = await dbintel("status", "--json", "--coordinator", address, env={"DBINTEL_OPERATOR_TOKEN": token})
    assert from_env.returncode == 0, from_env.stderr
    assert json.loads(from_env.stdout)["cluster"]["resources_total"] == 4
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    from_file = await dbintel("status", "--coordinator", address, "--token-file", str(token_file))
    assert from_file.returncode == 0 and "databases   4 total" in from_file.stdout, from_file.stderr
    wrong_file = tmp_path / "wrong"
    wrong_file.write_text("not-the-token")
    wrong = await dbintel("status", "--coordinator", address, "--token-file", str(wrong_file))
    assert wrong.returncode == 1 and "not-the-token" not in wrong.stderr and token not in wrong.stderr


def test_the_token_must_be_a_reference_and_is_never_echoed():
    literal = "s3cr3t-operator-token-value"
    with pytest.raises(ConfigError) as bad:
        parse_config(yaml.safe_dump({"coordinator": {"operator_token": literal}}), environ={})
    assert "coordinator.operator_token: must be a reference" in str(bad.value)
    assert literal not in str(bad.value)
    # A reference stays a reference in the parsed config: the value is read only where it is used.
    config = parse_config(
        yaml.safe_dump({"coordinator": {"operator_token": "${env:SOME_TOKEN}"}}), environ={"SOME_TOKEN": literal}
    )
    assert config.coordinator.operator_token == "${env:SOME_TOKEN}"


async def test_coordinator_refuses_to_start_when_the_token_cannot_be_resolved(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "coordinator": {
                    "operator_token": "${env:DBINTEL_TEST_UNSET_TOKEN}",
                    "grpc_listen": "127.0.0.1:0",
                    "metrics_listen": "127.0.0.1:0",
                    "health_listen": "127.0.0.1:0",
                }
            }
        )
    )
    started = await dbintel("coordinator", "--config", str(path))
    assert started.returncode == 2
    assert "refusing to start" in started.stderr and "DBINTEL_TEST_UNSET_TOKEN is not set" in started.stderr


async def test_follower_forwards_to_the_leader_over_mutual_tls_with_the_token(pki, redis_server, monkeypatch):
    token = secrets.token_urlsafe(24)
    monkeypatch.setenv(TOKEN_ENV, token)
    monkeypatch.setenv("DBINTEL_TEST_SEC_REDIS_PASSWORD", redis_server.password)
    config = build_config(
        redis=redis_server,
        redis_extra={"password": "${env:DBINTEL_TEST_SEC_REDIS_PASSWORD}"},
        coordinator={
            "tls": server_tls(pki, mutual=True),
            "client_tls": client_tls(pki, with_cert=True),
            "operator_token": f"${{env:{TOKEN_ENV}}}",
        },
        check_files=("coordinator",),
    )
    first = await start_coordinator(config, "sec-a")
    second = await start_coordinator(config, "sec-b")
    try:
        await wait_for(lambda: first.leadership.is_leader or second.leadership.is_leader, message="a leader")
        follower = second if first.leadership.is_leader else first
        assert not follower.leadership.is_leader
        tls = TLSSettings(**client_tls(pki, with_cert=True))
        async with open_channel(f"127.0.0.1:{follower.grpc_port}", tls) as channel:
            stub = operator_service_pb2_grpc.OperatorServiceStub(channel)
            reply = await stub.Rebalance(
                opb.RebalanceRequest(), timeout=10, metadata=(("authorization", f"Bearer {token}"),)
            )
            assert not reply.applied
            with pytest.raises(grpc.aio.AioRpcError) as refused:  # the follower checks before forwarding
                await stub.Rebalance(opb.RebalanceRequest(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await second.shutdown()
        await first.shutdown()


@settings(max_examples=150, deadline=None)
@given(
    token=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40),
    presented=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=40),
    scheme=st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", ""]),
)
def test_bearer_matches_only_the_exact_token_after_a_bearer_scheme(token, presented, scheme):
    metadata = [("x-other", token), ("authorization", f"{scheme} {presented}")]
    expected = scheme.lower() == "bearer" and presented == token
    assert bearer_matches(metadata, SecretStr(token)) == expected
    assert bearer_matches([("authorization", f"Bearer {token}")], SecretStr(token))
