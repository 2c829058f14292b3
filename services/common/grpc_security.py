"""gRPC transport security for both roles: server credentials (TLS, optionally mutual), client
channels (plaintext or TLS, optionally with a client certificate) and the operator bearer token.

Plaintext stays the default, so `grpcurl -plaintext` works on an unsecured coordinator. With TLS,
health and reflection are served on the same port and need the same credentials
(`grpcurl -cacert ca.crt [-cert c.crt -key c.key] HOST:50051 list`).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from pathlib import Path

import grpc
from pydantic import SecretStr

from .config import ServerTLSSettings, TLSSettings
from .message_limits import client_options

OPERATOR_SERVICE_PREFIX = "/dbintel.v1.OperatorService/"
AUTHORIZATION = "authorization"


class TLSFileError(Exception):
    """A certificate or key file could not be read. The message names the setting and the path."""


def _read(path: str, setting: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TLSFileError(f"{setting}: cannot read {path} ({exc.strerror})") from None


def server_credentials(tls: ServerTLSSettings, section: str = "coordinator.tls") -> grpc.ServerCredentials | None:
    """The credentials for the listening port; None = plaintext."""
    if not tls.enabled:
        return None
    assert tls.cert_file and tls.key_file  # the config model requires both when enabled
    pair = (_read(tls.key_file, f"{section}.key_file"), _read(tls.cert_file, f"{section}.cert_file"))
    client_ca = _read(tls.client_ca_file, f"{section}.client_ca_file") if tls.client_ca_file else None
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=tls.require_client_cert)


def channel_credentials(tls: TLSSettings, section: str = "tls") -> grpc.ChannelCredentials | None:
    """Client credentials; None = plaintext. Without ca_file the system's trusted roots apply."""
    if not tls.enabled:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_file, f"{section}.ca_file") if tls.ca_file else None,
        private_key=_read(tls.key_file, f"{section}.key_file") if tls.key_file else None,
        certificate_chain=_read(tls.cert_file, f"{section}.cert_file") if tls.cert_file else None,
    )


def open_channel(
    target: str, tls: TLSSettings | None = None, *, section: str = "tls", options: Sequence[tuple[str, object]] = ()
) -> grpc.aio.Channel:
    """An asyncio channel to `target`, over TLS when `tls.enabled`. `server_name` overrides the name
    the server's certificate must carry (e.g. a Service name when dialing a pod IP). The channel
    accepts replies up to message_limits.CLIENT_MAX_RECEIVE_BYTES unless `options` says otherwise."""
    credentials = channel_credentials(tls, section) if tls is not None else None
    if tls is None or credentials is None:
        return grpc.aio.insecure_channel(target, options=client_options(options))
    secure_options = client_options(options)
    if tls.server_name:
        secure_options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.aio.secure_channel(target, credentials, options=secure_options)


_HANDSHAKE_WORDS = ("ssl", "handshake", "tls", "wrong_version", "certificate")


def describe_rpc_error(exc: grpc.aio.AioRpcError, target: str, tls: TLSSettings | None) -> str:
    """A one-line reason for a failed call, with a hint for the likely cause. The TLS-mismatch hint is
    given only when a TLS handshake is what failed: the error names TLS, or the connection was closed
    while it was being set up (what a TLS server does to a plaintext client). A refused connection is
    a coordinator that is not running (or a wrong port), not a TLS problem."""
    text = f"{exc.code().name}: {exc.details()}"
    if exc.code() != grpc.StatusCode.UNAVAILABLE:
        return text
    details = (exc.details() or "").lower() + " " + (exc.debug_error_string() or "").lower()
    secured = tls is not None and tls.enabled
    # Set-up failures: "failed to connect to all addresses" (pick_first) or "connections to all
    # backends failing" (round_robin), each with the "last error" of the attempt.
    connecting = any(words in details for words in ("failed to connect", "backends failing", "last error:"))
    if "connection refused" in details:
        return text + f" (nothing accepts connections at {target}: is the coordinator running, on this port?)"
    names_tls = any(word in details for word in _HANDSHAKE_WORDS)
    closed_while_connecting = connecting and "socket closed" in details
    if not secured and (names_tls or closed_while_connecting):
        return text + f" (is {target} serving TLS? this client speaks plaintext: set tls.enabled and ca_file)"
    if secured and names_tls:
        return text + f" (TLS handshake with {target} failed: check ca_file and server_name)"
    if secured and closed_while_connecting:
        return (
            text + f" ({target} closed the TLS connection: under mutual TLS it needs a client certificate "
            "(cert_file/key_file) signed by the CA it trusts)"
        )
    return text


# -- operator bearer token --------------------------------------------------------------------------
def bearer_metadata(token: SecretStr | None) -> tuple[tuple[str, str], ...]:
    """Call metadata that carries the operator token (empty without one)."""
    return ((AUTHORIZATION, f"Bearer {token.get_secret_value()}"),) if token is not None else ()


def bearer_matches(metadata: Sequence[tuple[str, object]] | None, token: SecretStr) -> bool:
    """True if the metadata carries `Bearer <token>` (the scheme in any case); compared in constant time."""
    expected = token.get_secret_value().encode()
    for key, value in metadata or ():
        if key == AUTHORIZATION:
            if isinstance(value, str):
                presented = value.encode()
            elif isinstance(value, bytes):
                presented = value
            else:
                return False  # metadata values are text or bytes (binary "-bin" keys)
            scheme, _, credentials = presented.partition(b" ")
            return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), expected)
    return False


def _refuse(message: str) -> grpc.RpcMethodHandler:
    async def refuse(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return grpc.unary_unary_rpc_method_handler(refuse)


class OperatorTokenInterceptor(grpc.aio.ServerInterceptor):
    """Every OperatorService RPC needs `authorization: Bearer <token>`; other services pass through.
    The refusal never echoes what was presented."""

    def __init__(self, token: SecretStr):
        self._token = token

    async def intercept_service(self, continuation, handler_call_details):
        if not handler_call_details.method.startswith(OPERATOR_SERVICE_PREFIX):
            return await continuation(handler_call_details)
        metadata = handler_call_details.invocation_metadata
        if bearer_matches(metadata, self._token):
            return await continuation(handler_call_details)
        presented = any(key == AUTHORIZATION for key, _ in metadata or ())
        return _refuse(
            "operator RPCs need 'authorization: Bearer <token>' metadata: the token presented does not match"
            if presented
            else "operator RPCs need 'authorization: Bearer <token>' metadata (coordinator.operator_token "
            "is set); none was presented"
        )
