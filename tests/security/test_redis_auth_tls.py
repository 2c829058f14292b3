"""The coordinator's Redis connection with AUTH (password, ACL user) and TLS (with a client
certificate), against real redis-server processes; wrong credentials give a clear error that names
the Redis address and never the password."""

from __future__ import annotations

import logging
import secrets

import grpc
import pytest

from dbintel.v1 import operator_service_pb2 as opb
from tests.coordinator_harness import ScriptedAgent, exactly_once, operator_stub, start_coordinator, wait_for
from tests.security.support import build_config
from tests.servers import RedisServer

PASSWORD_ENV = "DBINTEL_TEST_SEC_REDIS_PASSWORD"


@pytest.fixture
def tls_redis(pki):
    """TLS only (no plaintext port), client certificates required, plus an ACL user for dbintel."""
    server = RedisServer(
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        tls_ca_file=pki.ca_file,
        tls_auth_clients="yes",
        tls_client_cert=(pki.client_cert, pki.client_key),
    )
    server.start()
    server.acl_password = secrets.token_hex(16)
    server.client().execute_command(
        "ACL",
        "SETUSER",
        "dbintel",
        "on",
        f">{server.acl_password}",
        "resetkeys",
        "~{sec:*",  # the state keys, {<key_prefix>}name
        "~sec:*",  # the names before the hash tag, which the store checks once for migration
        "resetchannels",
        "&{sec:*",
        "+@all",
        "-@dangerous",
    )
    yield server
    server.close()


def redis_tls(pki, *, with_cert: bool = True) -> dict:
    tls = {"enabled": True, "ca_file": pki.ca_file}
    if with_cert:
        tls |= {"cert_file": pki.client_cert, "key_file": pki.client_key}
    return tls


async def assert_places(config) -> None:
    coordinator = await start_coordinator(config, "redis-secure")
    agents = [ScriptedAgent(f"agent-{i}", f"127.0.0.1:{coordinator.grpc_port}").start() for i in range(2)]
    try:
        await wait_for(lambda: coordinator.leadership.is_leader, message="leadership over the secured Redis")
        await wait_for(lambda: exactly_once(agents, set(config.resources())), message="placement")
        assert coordinator._readiness() == (True, "leader")
    finally:
        for agent in agents:
            await agent.stop()
        await coordinator.shutdown()


async def test_acl_user_over_mutual_tls_elects_a_leader_and_assigns(pki, tls_redis, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, tls_redis.acl_password)
    config = build_config(
        redis=tls_redis,
        check_files=("coordinator",),
        redis_extra={"username": "dbintel", "password": f"${{env:{PASSWORD_ENV}}}", "tls": redis_tls(pki)},
    )
    await assert_places(config)
    # The ACL user really was the one used: its keys are all under the prefix it is allowed.
    assert any(key.startswith(b"{sec:") for key in tls_redis.client().keys("*"))


async def test_password_auth_with_the_default_user(redis_server, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, redis_server.password)
    await assert_places(build_config(redis=redis_server, redis_extra={"password": f"${{env:{PASSWORD_ENV}}}"}))


async def failing_store_reason(config, caplog) -> tuple[str, str]:
    """Start a coordinator whose store cannot be used; -> (readiness reason, operator RPC error)."""
    coordinator = await start_coordinator(config, "redis-refused")
    try:
        await wait_for(
            lambda: not coordinator._readiness()[0] and ":" in coordinator._readiness()[1],
            message="the store failure in readiness",
        )
        channel, stub = operator_stub(f"127.0.0.1:{coordinator.grpc_port}")
        async with channel:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.ListAgents(opb.ListAgentsRequest(), timeout=5)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        return coordinator._readiness()[1], failed.value.details()
    finally:
        await coordinator.shutdown()


@pytest.mark.parametrize("username", [None, "dbintel"])
async def test_a_wrong_password_names_the_address_never_the_password(pki, tls_redis, monkeypatch, caplog, username):
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-" + secrets.token_hex(8)
    monkeypatch.setenv(PASSWORD_ENV, wrong)
    extra = {"password": f"${{env:{PASSWORD_ENV}}}", "tls": redis_tls(pki)} | (
        {"username": username} if username else {}
    )
    readiness, rpc_error = await failing_store_reason(build_config(redis=tls_redis, redis_extra=extra), caplog)
    expected = f"redis {tls_redis.address}: authentication failed"
    assert expected in readiness and expected in rpc_error
    assert any(expected in record.getMessage() for record in caplog.records)
    for text in (readiness, rpc_error, caplog.text):
        assert wrong not in text and tls_redis.password not in text and tls_redis.acl_password not in text


async def test_tls_redis_without_a_client_certificate_says_unreachable_with_the_reason(
    pki, tls_redis, monkeypatch, caplog
):
    monkeypatch.setenv(PASSWORD_ENV, tls_redis.password)
    config = build_config(
        redis=tls_redis, redis_extra={"password": f"${{env:{PASSWORD_ENV}}}", "tls": redis_tls(pki, with_cert=False)}
    )
    readiness, rpc_error = await failing_store_reason(config, caplog)
    # The server's "certificate required" alert and its reset race each other: either may be the reason.
    for text in (readiness, rpc_error):
        assert f"redis {tls_redis.address} unreachable: ConnectionError (" in text, text
        assert "CERTIFICATE_REQUIRED" in text.upper() or "reset by peer" in text, text


async def test_plaintext_client_to_a_tls_only_redis_is_refused_clearly(tls_redis, monkeypatch, caplog):
    monkeypatch.setenv(PASSWORD_ENV, tls_redis.password)
    config = build_config(redis=tls_redis, redis_extra={"password": f"${{env:{PASSWORD_ENV}}}"})
    readiness, rpc_error = await failing_store_reason(config, caplog)
    assert f"redis {tls_redis.address}" in readiness and tls_redis.password not in readiness + rpc_error
