"""describe_rpc_error's hint names the likely cause, and says "TLS" only when a TLS handshake failed
(issue 12: a coordinator that was simply down got "is … serving TLS? this client speaks plaintext").
The error texts are the ones gRPC 1.85 gives for each case (captured against real servers)."""

from __future__ import annotations

import socket

import grpc
import pytest

from dbintel.common.config import TLSSettings
from dbintel.common.grpc_security import describe_rpc_error

TARGET = "coordinator:50051"
PLAINTEXT, SECURED = TLSSettings(), TLSSettings(enabled=True, ca_file="/etc/ca.crt")

REFUSED = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50051: "
    "Failed to connect to remote host: Connection refused"
)
CLOSED_WHILE_CONNECTING = (
    "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:50051: Socket closed"
)
RESET_WHILE_CONNECTING = (
    "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:50051: "
    "recvmsg:Connection reset by peer (104)"
)
HANDSHAKE = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50051: "
    "Ssl handshake failed: SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED"
)
ROUND_ROBIN_CLOSED = (  # the agent's channel (round_robin) against a TLS coordinator
    "connections to all backends failing; last error: UNAVAILABLE: ipv4:127.0.0.1:50051: Socket closed"
)
ROUND_ROBIN_REFUSED = (
    "connections to all backends failing; last error: UNKNOWN: ipv4:127.0.0.1:50051: "
    "Failed to connect to remote host: Connection refused"
)
STREAM_DROPPED = "Socket closed"  # an open stream whose coordinator went away
GOAWAY = "Cancelling all calls"


def _error(details: str, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, f"{code.name}:{details}")


PLAINTEXT_HINT = f"is {TARGET} serving TLS? this client speaks plaintext"
DOWN_HINT = f"nothing accepts connections at {TARGET}"


@pytest.mark.parametrize("tls", [PLAINTEXT, SECURED, None], ids=["plaintext", "tls", "no-settings"])
def test_a_refused_connection_says_nothing_listens_never_tls(tls):
    for details in (REFUSED, ROUND_ROBIN_REFUSED):
        reason = describe_rpc_error(_error(details), TARGET, tls)
        assert DOWN_HINT in reason and "TLS" not in reason, reason


@pytest.mark.parametrize("details", [STREAM_DROPPED, GOAWAY, RESET_WHILE_CONNECTING])
def test_a_dropped_connection_gets_no_tls_hint(details):
    for tls in (PLAINTEXT, SECURED):
        reason = describe_rpc_error(_error(details), TARGET, tls)
        assert reason == f"UNAVAILABLE: {details}", reason


def test_a_plaintext_client_closed_during_setup_or_failing_a_handshake_is_asked_about_tls():
    for details in (CLOSED_WHILE_CONNECTING, ROUND_ROBIN_CLOSED, HANDSHAKE):
        assert PLAINTEXT_HINT in describe_rpc_error(_error(details), TARGET, PLAINTEXT)


def test_a_tls_client_gets_the_handshake_or_client_certificate_hint():
    assert f"TLS handshake with {TARGET} failed" in describe_rpc_error(_error(HANDSHAKE), TARGET, SECURED)
    closed = describe_rpc_error(_error(CLOSED_WHILE_CONNECTING), TARGET, SECURED)
    assert "needs a client certificate" in closed, closed


def test_other_codes_are_reported_as_they_are():
    error = _error("agent_id: must not be empty", grpc.StatusCode.INVALID_ARGUMENT)
    assert describe_rpc_error(error, TARGET, PLAINTEXT) == "INVALID_ARGUMENT: agent_id: must not be empty"


async def test_a_real_refused_connection_gets_the_down_hint():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    target = f"127.0.0.1:{port}"
    async with grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await channel.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=5)
    reason = describe_rpc_error(refused.value, target, PLAINTEXT)
    assert f"nothing accepts connections at {target}" in reason and "TLS" not in reason, reason
