"""The one connection to a monitored Redis and every command the collector sends.

One `redis.asyncio` Connection, opened lazily and reused across collections: no pool, no new
connection per collection. It is health-checked by use rather than by extra PINGs: a command on a
reused connection that finds it dead (server restarted, idle timeout, failover) reconnects and
retries once; any other failure closes it so the next collection starts clean. Every command sent
— the AUTH / CLIENT SETNAME / SELECT handshake included — is counted in `statements`.

The password arrives as a SecretStr and is only unwrapped into the driver's connection object;
errors that leave this module are redis-py's own messages (which never carry credentials); the
collector scrubs the password from them anyway.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import redis.asyncio.connection as redis_connection
import redis.exceptions as redis_errors
from pydantic import SecretStr

from dbintel.common.config import TLSSettings

CLIENT_NAME = "dbintel-agent"  # shows in CLIENT LIST, so operators can tell our connection apart

# No CLIENT SETINFO on connect: a pre-7.2 server answers it with an error, which would show up in
# the very error counters we report. redis-py 8 spells that driver_info=None; 5.x-7.x lib_name/lib_version.
_NO_CLIENT_SETINFO: dict[str, Any] = (
    {"driver_info": None}
    if "driver_info" in inspect.signature(redis_connection.AbstractConnection.__init__).parameters
    else {"lib_name": None, "lib_version": None}
)


class _CountingMixin:
    """Counts every command written to the socket (handshake and health checks included)."""

    commands_sent = 0

    async def send_command(self, *args: Any, **kwargs: Any) -> None:
        self.commands_sent += 1
        await super().send_command(*args, **kwargs)  # type: ignore[misc]


class _CountingConnection(_CountingMixin, redis_connection.Connection):
    pass


class _CountingSSLConnection(_CountingMixin, redis_connection.SSLConnection):
    def __init__(self, *, server_name: str | None = None, **kwargs: Any):
        self._server_name = server_name
        super().__init__(**kwargs)

    def _connection_arguments(self) -> Any:
        arguments = dict(super()._connection_arguments())
        if self._server_name:  # SNI and certificate check against this name instead of the host
            arguments["server_hostname"] = self._server_name
        return arguments


def tls_arguments(tls: TLSSettings) -> dict[str, Any]:
    """TLSSettings -> redis-py SSLConnection keyword arguments (empty when TLS is off)."""
    if not tls.enabled:
        return {}
    return {
        "ssl_ca_certs": tls.ca_file,
        "ssl_certfile": tls.cert_file,
        "ssl_keyfile": tls.key_file,
        "ssl_cert_reqs": "none" if tls.insecure_skip_verify else "required",
        "ssl_check_hostname": not tls.insecure_skip_verify,
        "server_name": tls.server_name,
    }


class RedisClient:
    """Holds the collector's single connection; one method per command, returning plain data."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        db: int = 0,
        username: str | None = None,
        password: SecretStr | None = None,
        tls: TLSSettings | None = None,
        timeout: float = 10.0,
    ):
        self.host, self.port, self.db = host, port, db
        self.statements = 0  # commands sent over the life of this client
        self.connections = 0  # connections opened: a new one has a new CLIENT ID
        self._password = password
        self._arguments: dict[str, Any] = {
            "host": host,
            "port": port,
            "db": db,
            "username": username,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "client_name": CLIENT_NAME,
            **_NO_CLIENT_SETINFO,
            "health_check_interval": 0,  # no PINGs: a dead connection shows on use and is retried
            # RESP2 (redis-py 8 defaults to 3): plain AUTH works on every server version, HELLO
            # needs 6.0, and INFO comes back as a plain bulk string.
            "protocol": 2,
        }
        self._tls = tls_arguments(tls or TLSSettings())
        self._conn: _CountingConnection | _CountingSSLConnection | None = None

    # --- commands -------------------------------------------------------------------------------
    async def fetch_info(self, sections: tuple[str, ...]) -> str:
        """INFO <sections>: the raw reply text."""
        return _text(await self._call("INFO", *sections))

    async def fetch_slowlog_len(self) -> int:
        """SLOWLOG LEN."""
        return int(await self._call("SLOWLOG", "LEN"))

    async def fetch_maxclients(self) -> int | None:
        """CONFIG GET maxclients (servers whose INFO lacks it); None if the reply has no value."""
        reply = await self._call("CONFIG", "GET", "maxclients")
        values = [_text(item) for item in reply or []]
        pairs = dict(zip(values[::2], values[1::2], strict=False))
        return int(pairs["maxclients"]) if "maxclients" in pairs else None

    async def fetch_latency_latest(self) -> list:
        """LATENCY LATEST: the raw reply, one [event, time, latest ms, max ms] list per event."""
        reply = await self._call("LATENCY", "LATEST")
        if not isinstance(reply, list):
            raise redis_errors.InvalidResponse("LATENCY LATEST did not reply with a list")
        return reply

    async def fetch_slowlog(self, count: int) -> list:
        """SLOWLOG GET <count>: the raw reply, newest entry first (query intelligence's top queries)."""
        reply = await self._call("SLOWLOG", "GET", count)
        if not isinstance(reply, list):
            raise redis_errors.InvalidResponse("SLOWLOG GET did not reply with a list")
        return reply

    async def fetch_client_list(self) -> str:
        """CLIENT LIST: the raw reply text, one line per client (no command arguments in it)."""
        return _text(await self._call("CLIENT", "LIST"))

    async def fetch_client_id(self) -> int:
        """CLIENT ID: this connection's id, to leave it out of CLIENT LIST."""
        return int(await self._call("CLIENT", "ID"))

    async def fetch_cluster_info(self) -> str:
        """CLUSTER INFO: the raw reply text."""
        return _text(await self._call("CLUSTER", "INFO"))

    # --- connection -----------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.is_connected

    async def close(self) -> None:
        """Close the connection. Idempotent; safe before any command."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._count(conn)
            try:
                await conn.disconnect()
            except Exception:
                pass

    async def _call(self, *args: Any) -> Any:
        reused = self.connected
        try:
            return await self._roundtrip(args)
        except redis_errors.ConnectionError as exc:
            # A reused connection the server has since closed: one fresh attempt. Not for refused
            # connections or bad credentials, which a retry would only repeat.
            if not reused or isinstance(exc, (redis_errors.AuthenticationError, redis_errors.AuthorizationError)):
                raise
            return await self._roundtrip(args)

    async def _roundtrip(self, args: tuple[Any, ...]) -> Any:
        conn = self._connection()
        try:
            if not conn.is_connected:
                await conn.connect()
                self.connections += 1
            await conn.send_command(*args)
            return await conn.read_response()
        except redis_errors.ResponseError:
            raise  # an error reply: the connection is still in step with the server
        except BaseException:
            # Timeout, broken socket, cancellation by the scheduler: the reply may still be in
            # flight, so this connection is out of step. Drop it; the next call opens a new one.
            await self._discard(conn)
            raise
        finally:
            self._count(conn)

    def _connection(self) -> _CountingConnection | _CountingSSLConnection:
        if self._conn is None:
            password = self._password.get_secret_value() if self._password is not None else None
            if self._tls:
                self._conn = _CountingSSLConnection(password=password, **self._arguments, **self._tls)
            else:
                self._conn = _CountingConnection(password=password, **self._arguments)
        return self._conn

    def _count(self, conn: _CountingConnection | _CountingSSLConnection) -> None:
        self.statements += conn.commands_sent
        conn.commands_sent = 0

    async def _discard(self, conn: _CountingConnection | _CountingSSLConnection) -> None:
        try:
            await asyncio.shield(conn.disconnect(nowait=True))
        except (Exception, asyncio.CancelledError):  # already failing; the socket is gone either way
            pass


def _text(reply: Any) -> str:
    if isinstance(reply, bytes):
        return reply.decode("utf-8", errors="replace")
    return str(reply)
