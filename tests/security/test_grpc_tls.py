"""TLS and mutual TLS on the coordinator's gRPC port: a real agent over TLS, refused clients, grpcurl
with -cacert (health and reflection on the same port), and a clear error for a plaintext agent."""

from __future__ import annotations

import json
import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dbintel.agent.runtime import Agent
from dbintel.common.config import TLSSettings
from dbintel.common.grpc_security import describe_rpc_error, open_channel
from tests.coordinator_harness import start_coordinator, wait_for
from tests.security.support import build_config, client_tls, dbintel, grpcurl, run, server_tls


async def health_check(address: str, tls: TLSSettings | None) -> int:
    async with open_channel(address, tls) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return reply.status


@pytest.fixture
async def mtls_coordinator(pki):
    config = build_config(
        coordinator={"tls": server_tls(pki, mutual=True), "client_tls": client_tls(pki, with_cert=True)}
    )
    coordinator = await start_coordinator(config, "mtls")
    yield coordinator, f"127.0.0.1:{coordinator.grpc_port}", config
    await coordinator.shutdown()


async def test_agent_gets_its_assignment_over_mutual_tls(pki, mtls_coordinator):
    _coordinator, address, config = mtls_coordinator
    agent_config = build_config(
        agent={"coordinator": address, "tls": client_tls(pki, with_cert=True)}, check_files=("agent",)
    )
    agent = Agent(agent_config, agent_id="tls-agent")
    await agent.start()
    try:
        await wait_for(
            lambda: agent.assigned == frozenset(config.resources()),
            timeout=15,
            message="the assignment over mutual TLS",
        )
        assert agent._link.last_error is None
    finally:
        await agent.shutdown()


async def test_grpcurl_reaches_health_and_reflection_with_cacert_and_client_cert(pki, mtls_coordinator):
    _, address, _ = mtls_coordinator
    tls_args = ["-cacert", pki.ca_file, "-cert", pki.client_cert, "-key", pki.client_key]
    listed = await run(grpcurl(), *tls_args, address, "list")
    assert listed.returncode == 0, listed.stderr
    assert {"dbintel.v1.AgentService", "dbintel.v1.OperatorService", "grpc.health.v1.Health"} <= set(
        listed.stdout.split()
    )
    health = await run(grpcurl(), *tls_args, address, "grpc.health.v1.Health/Check")
    assert json.loads(health.stdout)["status"] == "SERVING"
    # The same port refuses plaintext and a client without a certificate.
    plaintext = await run(grpcurl(), "-connect-timeout", "2", "-plaintext", address, "list")
    assert plaintext.returncode != 0 and "Failed to dial" in plaintext.stderr
    no_cert = await run(grpcurl(), "-connect-timeout", "2", "-cacert", pki.ca_file, address, "list")
    assert no_cert.returncode != 0 and "Failed to dial" in no_cert.stderr


async def test_mutual_tls_refuses_a_client_without_a_certificate(pki, mtls_coordinator):
    _, address, _ = mtls_coordinator
    assert (
        await health_check(address, TLSSettings(**client_tls(pki, with_cert=True)))
        == health_pb2.HealthCheckResponse.SERVING
    )
    without_cert = TLSSettings(**client_tls(pki, with_cert=False))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await health_check(address, without_cert)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "needs a client certificate" in describe_rpc_error(refused.value, address, without_cert)


async def test_mutual_tls_refuses_a_certificate_from_another_ca(pki, mtls_coordinator):
    _, address, _ = mtls_coordinator
    foreign = TLSSettings(
        enabled=True, ca_file=pki.ca_file, cert_file=pki.other_client_cert, key_file=pki.other_client_key
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await health_check(address, foreign)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_server_tls_without_client_certs_and_a_client_trusting_another_ca(pki):
    config = build_config(
        coordinator={"tls": server_tls(pki, mutual=False), "client_tls": client_tls(pki, with_cert=False)}
    )
    coordinator = await start_coordinator(config, "tls")
    address = f"127.0.0.1:{coordinator.grpc_port}"
    try:
        assert (
            await health_check(address, TLSSettings(**client_tls(pki, with_cert=False)))
            == health_pb2.HealthCheckResponse.SERVING
        )
        with pytest.raises(grpc.aio.AioRpcError):  # the server's certificate does not verify
            await health_check(address, TLSSettings(enabled=True, ca_file=pki.other_ca_file))
        # server_name: the certificate names localhost and 127.0.0.1, not this name.
        with pytest.raises(grpc.aio.AioRpcError):
            await health_check(address, TLSSettings(enabled=True, ca_file=pki.ca_file, server_name="elsewhere"))
        assert (
            await health_check(address, TLSSettings(enabled=True, ca_file=pki.ca_file, server_name="localhost"))
            == health_pb2.HealthCheckResponse.SERVING
        )
    finally:
        await coordinator.shutdown()


async def test_plaintext_agent_against_a_tls_coordinator_says_why_in_log_and_readiness(pki, mtls_coordinator, caplog):
    caplog.set_level(logging.INFO, logger="dbintel.agent")
    _, address, _ = mtls_coordinator
    agent = Agent(build_config(agent={"coordinator": address}), agent_id="plaintext-agent")
    await agent.start()
    try:
        await wait_for(
            lambda: agent._link.last_error is not None and agent._link.streams_opened >= 2,
            timeout=15,
            message="failed stream attempts",
        )
        ready, reason = agent._readiness()
        assert not ready
        assert "is " + address + " serving TLS?" in reason, reason
        logged = [r.getMessage() for r in caplog.records if "Heartbeat stream" in r.getMessage()]
        assert any("serving TLS?" in line for line in logged), logged
        assert agent.assigned == frozenset() and agent._link._task is not None and not agent._link._task.done()
    finally:
        await agent.shutdown()


async def test_tls_agent_trusting_the_wrong_ca_says_the_handshake_failed(pki, mtls_coordinator):
    _, address, _ = mtls_coordinator
    tls = {"enabled": True, "ca_file": pki.other_ca_file, "cert_file": pki.client_cert, "key_file": pki.client_key}
    agent = Agent(build_config(agent={"coordinator": address, "tls": tls}), agent_id="wrong-ca-agent")
    await agent.start()
    try:
        await wait_for(lambda: agent._link.last_error is not None, timeout=15, message="a failed attempt")
        assert "TLS handshake with " + address + " failed" in agent._readiness()[1]
    finally:
        await agent.shutdown()


async def test_dbintel_status_over_mutual_tls(pki, mtls_coordinator):
    _, address, config = mtls_coordinator
    secured = await dbintel(
        "status",
        "--json",
        "--coordinator",
        address,
        "--ca-file",
        pki.ca_file,
        "--cert-file",
        pki.client_cert,
        "--key-file",
        pki.client_key,
    )
    assert secured.returncode == 0, secured.stderr
    assert json.loads(secured.stdout)["cluster"]["resources_total"] == len(config.resources())
    plaintext = await dbintel("status", "--coordinator", address, "--timeout", "2")
    assert plaintext.returncode == 1
    assert "UNAVAILABLE" in plaintext.stderr and "serving TLS?" in plaintext.stderr, plaintext.stderr


async def test_default_config_stays_plaintext_for_grpcurl():
    coordinator = await start_coordinator(build_config(), "plain")
    try:
        listed = await run(grpcurl(), "-plaintext", f"127.0.0.1:{coordinator.grpc_port}", "list")
        assert listed.returncode == 0 and "dbintel.v1.OperatorService" in listed.stdout, listed.stderr
    finally:
        await coordinator.shutdown()
