"""The MongoDB client: one PyMongo AsyncMongoClient, reused across collections, and every command sent.

One method per command, each returning the decoded reply (plain dicts). The driver is configured
for a monitoring agent:

- directConnection=True and maxPoolSize=1: one application connection to the one configured
  server, whatever its role (a secondary answers too: the driver marks the reads secondaryOk).
- serverMonitoringMode="poll" with a long heartbeat: the driver's monitor keeps one more socket
  and sends a hello when the client starts, when an operation fails, and once per HEARTBEAT_SECONDS
  otherwise (no streaming hello, no RTT socket). The role is read from serverStatus.repl each
  collection, so the monitor is not needed to notice a step-down.
- retryReads/retryWrites off: a failed command is not re-sent behind our back.
- appname "dbintel", so the connection is recognisable in currentOp and the server log.

Every command the client puts on the wire is counted in `sent`: the commands it runs (the driver's
command events, which include the SCRAM saslContinue of authentication), the hello that opens each
pool connection (the driver does not publish it as a command), and the monitor's hellos.

Authentication: `username`/`password` of the database entry, SCRAM negotiated by the driver, against
the entry's `database` (authSource; default "admin"). The password arrives as a SecretStr and is
handed to the driver as a keyword (never in a URI);
error messages leaving this module are the driver's, trimmed and scrubbed of the password anyway.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from bson.timestamp import Timestamp
from pydantic import SecretStr
from pymongo import AsyncMongoClient, monitoring
from pymongo.errors import (
    AutoReconnect,
    ConfigurationError,
    ConnectionFailure,
    ExecutionTimeout,
    NetworkTimeout,
    OperationFailure,
    ServerSelectionTimeoutError,
)

from dbintel.common.config import DatabaseConfig, TLSSettings
from dbintel.common.endpoints import parse_host_port

from ..errors import error_message
from ..metric_table import Reason
from .activity import PROFILE_FIELDS
from .metrics import (
    COLLECTION_STATS,
    COLLECTIONS,
    DATABASES,
    DB_STATS,
    INDEX_STATS,
    OPLOG_OLDEST,
    OPLOG_STATS,
    REPL_STATUS,
    SERVER_STATUS,
    TOP,
)

APP_NAME = "dbintel"
HEARTBEAT_SECONDS = 3600.0
SERVER_SELECTION_SECONDS = 5.0  # at most: how long a command waits for an unreachable server
SOCKET_SHARE = 0.8  # a command gives up after this share of the poll timeout, before the scheduler cancels us
LIST_BATCH = 10_000  # listCollections names per reply: one reply holds them all, no cursor is left open

UNAUTHORIZED, AUTHENTICATION_FAILED = 13, 18
_UNSUPPORTED_CODES = {59, 115, 166, 76}  # CommandNotFound, CommandNotSupported, …OnView, NoReplicationEnabled
_TIMEOUT_CODES = {50, 262}  # MaxTimeMSExpired, ExceededTimeLimit

# The grant that lets the monitoring user run each command ({user} and {db} filled in).
_CLUSTER_MONITOR = 'db.getSiblingDB("admin").grantRolesToUser("{user}", [{{role: "clusterMonitor", db: "admin"}}])'
GRANTS = {
    SERVER_STATUS: _CLUSTER_MONITOR,
    REPL_STATUS: _CLUSTER_MONITOR,
    TOP: _CLUSTER_MONITOR,
    DATABASES: _CLUSTER_MONITOR,
    # MongoDB's clusterMonitor grants dbStats, collStats and indexStats on every database; servers whose
    # role does not (SecantusDB) need read on the database.
    DB_STATS: _CLUSTER_MONITOR + ', or read on "{db}"',
    COLLECTIONS: _CLUSTER_MONITOR + ', or read on "{db}"',
    INDEX_STATS: _CLUSTER_MONITOR + ', or read on "{db}"',
    COLLECTION_STATS: _CLUSTER_MONITOR + ', or read on "{db}"',
    OPLOG_STATS: _CLUSTER_MONITOR,
    OPLOG_OLDEST: 'db.getSiblingDB("admin").grantRolesToUser("{user}", [{{role: "read", db: "local"}}])',
}
# Query intelligence's commands (client method names; the errors kit names them in QueryErrors).
CURRENT_OP = "fetch_current_op"
PROFILING_LEVEL = "fetch_profiling_level"
PROFILE = "fetch_profile"
_DB_ADMIN = 'db.getSiblingDB("admin").grantRolesToUser("{user}", [{{role: "dbAdmin", db: "{db}"}}])'
GRANTS |= {CURRENT_OP: _CLUSTER_MONITOR, PROFILING_LEVEL: _DB_ADMIN, PROFILE: _DB_ADMIN}
# currentOp filter: active operations, not the drivers' monitoring hellos (the server filters; bytes saved)
CURRENT_OP_FILTER = {
    "active": True,
    "command.hello": {"$exists": False},
    "command.isMaster": {"$exists": False},
    "command.ismaster": {"$exists": False},
}


# --- errors --------------------------------------------------------------------------------------


def classify_error(exc: BaseException) -> Reason:
    """A QueryError reason for an exception raised while connecting, running a command or mapping a reply."""
    if isinstance(exc, ServerSelectionTimeoutError):  # before ConnectionFailure: it is one
        return "timeout" if "timed out" in str(exc) else "connection"
    if isinstance(exc, (NetworkTimeout, ExecutionTimeout, asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(exc, OperationFailure):
        if exc.code in (UNAUTHORIZED, AUTHENTICATION_FAILED):
            return "permission"
        if exc.code in _UNSUPPORTED_CODES:
            return "unsupported"
        if exc.code in _TIMEOUT_CODES:
            return "timeout"
        return "server_error"
    if isinstance(exc, (ConnectionFailure, ConfigurationError, OSError)):
        return "connection"
    return "bad_reply"


def is_unreachable(exc: BaseException) -> bool:
    """True when the server cannot be talked to at all (not a failing command): the collection stops."""
    if isinstance(exc, OperationFailure):
        return exc.code == AUTHENTICATION_FAILED
    return isinstance(exc, (ConnectionFailure, ConfigurationError, OSError, asyncio.TimeoutError))


def is_stale_connection(exc: BaseException) -> bool:
    """A pooled connection the server has since closed (restart, idle timeout): worth one fresh attempt."""
    return isinstance(exc, AutoReconnect) and not isinstance(exc, (ServerSelectionTimeoutError, NetworkTimeout))


def _first_part(text: str) -> str:
    # PyMongo appends the whole reply (", full error: {...}") or the topology (", Timeout: …, Topology
    # Description: …"): long, and nothing an operator needs in one line.
    for marker in (", full error:", ", Timeout:", ", Topology Description:"):
        text = text.split(marker, 1)[0]
    return text.strip().splitlines()[0] if text.strip() else ""


def describe_error(
    exc: BaseException, *, query: str, user: str | None, target: str | None = None, secrets: tuple[str, ...] = ()
) -> tuple[Reason, str]:
    """(reason, message) for a QueryError: one line, the grant to add on a permission error, never a secret."""
    reason = classify_error(exc)
    text = _first_part(str(exc))
    if isinstance(exc, OperationFailure) and exc.code == AUTHENTICATION_FAILED:
        text = f"{text} (check the username, password and authSource of user {user or '<none>'})"
    elif reason == "permission":
        grant = GRANTS.get(query, _CLUSTER_MONITOR).format(user=user or "<user>", db=target or "<db>")
        text = f"{text} (grant it: {grant})"
    return reason, error_message(exc, text, reason=reason, secrets=secrets, prefix=target or "")[:400]


# --- commands ----------------------------------------------------------------------------------


def server_status_command(excluded: Iterable[str]) -> dict[str, int]:
    """The serverStatus command document; a section set to 0 is left out of the reply (unknown names are
    ignored by the server)."""
    command = {"serverStatus": 1}
    for section in excluded:
        command[section] = 0
    return command


# --- TLS -----------------------------------------------------------------------------------------


def tls_options(tls: TLSSettings) -> dict[str, Any]:
    """TLSSettings -> AsyncMongoClient keyword options (empty when TLS is off).

    PyMongo takes the client certificate and its key as one PEM file; a separate key file is joined
    to the certificate by the client (see MongodbClient). It has no option for a TLS server name
    other than the host it dials, so `server_name` is refused with a clear error there."""
    if not tls.enabled:
        return {}
    options: dict[str, Any] = {"tls": True}
    if tls.ca_file:
        options["tlsCAFile"] = tls.ca_file
    if tls.cert_file and (not tls.key_file or tls.key_file == tls.cert_file):
        options["tlsCertificateKeyFile"] = tls.cert_file
    if tls.insecure_skip_verify:
        options["tlsInsecure"] = True
    return options


def _combined_pem(cert_file: str, key_file: str) -> int:
    """An in-memory file (memfd, never on disk) holding certificate then key; returns its descriptor."""
    fd = os.memfd_create("dbintel-mongodb-client-pem", os.MFD_CLOEXEC)
    with open(cert_file, "rb") as cert, open(key_file, "rb") as key:
        os.write(fd, cert.read().rstrip(b"\n") + b"\n" + key.read())
    return fd


# --- counting ------------------------------------------------------------------------------------


class _Counter(monitoring.CommandListener, monitoring.ConnectionPoolListener, monitoring.ServerHeartbeatListener):
    """Counts what the client sends: commands, the hello opening each pool connection, monitor hellos."""

    def __init__(self) -> None:
        self.sent = 0
        self.connections = 0
        self.heartbeats = 0

    # CommandListener and ServerHeartbeatListener share the method names.
    def started(self, event: Any) -> None:
        self.sent += 1
        if isinstance(event, monitoring.ServerHeartbeatStartedEvent):
            self.heartbeats += 1

    def succeeded(self, event: Any) -> None:
        pass

    def failed(self, event: Any) -> None:
        pass

    def connection_created(self, event: monitoring.ConnectionCreatedEvent) -> None:
        self.sent += 1  # its handshake hello, which is not published as a command
        self.connections += 1

    def pool_created(self, event: Any) -> None:
        pass

    def pool_ready(self, event: Any) -> None:
        pass

    def pool_cleared(self, event: Any) -> None:
        pass

    def pool_closed(self, event: Any) -> None:
        pass

    def connection_ready(self, event: Any) -> None:
        pass

    def connection_closed(self, event: Any) -> None:
        pass

    def connection_check_out_started(self, event: Any) -> None:
        pass

    def connection_check_out_failed(self, event: Any) -> None:
        pass

    def connection_checked_out(self, event: Any) -> None:
        pass

    def connection_checked_in(self, event: Any) -> None:
        pass


# --- client --------------------------------------------------------------------------------------


class MongodbClient:
    """Holds the one AsyncMongoClient and sends every command. One collection at a time."""

    def __init__(self, database: DatabaseConfig, password: SecretStr | None):
        self._config = database
        self._password = password
        self._client: AsyncMongoClient | None = None
        self._counter = _Counter()
        self._pem_fd: int | None = None
        self.config_error: str | None = None
        if database.tls.enabled and database.tls.server_name:
            self.config_error = (
                "tls.server_name is not supported for mongodb: the driver verifies the "
                "certificate against the endpoint's host name; use an endpoint with that name"
            )

    @property
    def sent(self) -> int:
        """Commands put on the wire over this client's life (see the module docstring)."""
        return self._counter.sent

    @property
    def connections_opened(self) -> int:
        return self._counter.connections

    @property
    def heartbeats(self) -> int:
        return self._counter.heartbeats

    def server_type(self) -> str:
        """The driver's view of the server from its hello replies: RSPrimary, RSSecondary, Standalone, …"""
        if self._client is None:
            return "Unknown"
        servers = list(self._client.topology_description.server_descriptions().values())
        return servers[0].server_type_name if servers else "Unknown"

    def _connection(self) -> AsyncMongoClient:
        if self._client is not None:
            return self._client
        if self.config_error:
            raise ConfigurationError(self.config_error)
        host, port = parse_host_port(self._config.endpoint)
        timeout = self._config.poll_timeout.total_seconds()
        options = tls_options(self._config.tls)
        tls = self._config.tls
        if tls.enabled and tls.cert_file and tls.key_file and tls.key_file != tls.cert_file:
            if self._pem_fd is None:
                self._pem_fd = _combined_pem(tls.cert_file, tls.key_file)
            options["tlsCertificateKeyFile"] = f"/proc/self/fd/{self._pem_fd}"
        credentials: dict[str, Any] = {}
        if self._config.username:
            credentials = {
                "username": self._config.username,
                "authSource": self._config.database or "admin",
                "password": self._password.get_secret_value() if self._password is not None else "",
            }
        self._client = AsyncMongoClient(
            host,
            port,
            directConnection=True,
            maxPoolSize=1,
            minPoolSize=0,
            appname=APP_NAME,
            serverMonitoringMode="poll",
            heartbeatFrequencyMS=int(HEARTBEAT_SECONDS * 1000),
            serverSelectionTimeoutMS=int(min(timeout * SOCKET_SHARE, SERVER_SELECTION_SECONDS) * 1000),
            connectTimeoutMS=int(timeout * SOCKET_SHARE * 1000),
            socketTimeoutMS=int(timeout * SOCKET_SHARE * 1000),
            retryReads=False,
            retryWrites=False,
            event_listeners=[self._counter],
            **credentials,
            **options,
        )
        return self._client

    async def _command(self, database: str, command: dict[str, Any]) -> dict[str, Any]:
        return await self._connection()[database].command(command)

    async def _first_batch(self, database: str, command: dict[str, Any]) -> list[dict[str, Any]]:
        reply = await self._command(database, command)
        batch = reply.get("cursor", {}).get("firstBatch")
        if not isinstance(batch, list):
            raise ValueError(f"{next(iter(command))} reply has no cursor.firstBatch")
        return batch

    # --- commands, one per method -----------------------------------------------------------------
    async def fetch_server_status(self, excluded: Iterable[str] = ()) -> dict[str, Any]:
        """serverStatus on admin, without the `excluded` sections."""
        return await self._command("admin", server_status_command(excluded))

    async def fetch_repl_status(self) -> dict[str, Any]:
        return await self._command("admin", {"replSetGetStatus": 1})

    async def fetch_top(self) -> dict[str, Any]:
        return await self._command("admin", {"top": 1})

    async def fetch_databases(self) -> list[dict[str, Any]]:
        """listDatabases with sizes (sizeOnDisk, to pick the largest databases for the bounded commands)."""
        reply = await self._command("admin", {"listDatabases": 1, "nameOnly": False})
        databases = reply.get("databases")
        if not isinstance(databases, list):
            raise ValueError("listDatabases reply has no databases list")
        return databases

    async def fetch_db_stats(self, database: str) -> dict[str, Any]:
        return await self._command(database, {"dbStats": 1, "scale": 1})

    async def fetch_collections(self, database: str) -> list[dict[str, Any]]:
        """listCollections, names and types only, of the collections the user may see."""
        return await self._first_batch(
            database,
            {
                "listCollections": 1,
                "nameOnly": True,
                "authorizedCollections": True,
                "cursor": {"batchSize": LIST_BATCH},
            },
        )

    async def fetch_index_stats(self, database: str, collection: str) -> list[dict[str, Any]]:
        return await self._first_batch(
            database, {"aggregate": collection, "pipeline": [{"$indexStats": {}}], "cursor": {"batchSize": LIST_BATCH}}
        )

    async def fetch_collection_stats(self, database: str, collection: str) -> list[dict[str, Any]]:
        return await self._first_batch(
            database,
            {
                "aggregate": collection,
                "pipeline": [{"$collStats": {"storageStats": {}}}],
                "cursor": {"batchSize": LIST_BATCH},
            },
        )

    async def fetch_oplog_stats(self) -> list[dict[str, Any]]:
        return await self.fetch_collection_stats("local", "oplog.rs")

    async def fetch_oplog_oldest(self) -> Timestamp | None:
        """The timestamp of the oldest oplog entry (natural order = insertion order in the capped oplog)."""
        batch = await self._first_batch(
            "local",
            {
                "find": "oplog.rs",
                "sort": {"$natural": 1},
                "limit": 1,
                "projection": {"ts": 1, "_id": 0},
                "singleBatch": True,
            },
        )
        ts = batch[0].get("ts") if batch else None
        return ts if isinstance(ts, Timestamp) else None

    # --- query intelligence --------------------------------------------------------------------------
    async def fetch_current_op(self) -> dict[str, Any]:
        """currentOp on admin, active operations only (CURRENT_OP_FILTER); `inprog` holds them."""
        return await self._command("admin", {"currentOp": 1, **CURRENT_OP_FILTER})

    async def fetch_profiling_level(self, database: str) -> int:
        """The profiler's level on `database` (profile: -1 reads it, changes nothing): 0 off, 1 slow ops, 2 all."""
        reply = await self._command(database, {"profile": -1})
        level = reply.get("was")
        if not isinstance(level, int | float):
            raise ValueError("profile reply has no level ('was')")
        return int(level)

    async def fetch_profile(self, database: str, after: datetime | None, limit: int) -> list[dict[str, Any]]:
        """system.profile entries logged after `after`, oldest first, at most `limit`, only the fields a read
        maps (activity.PROFILE_FIELDS); `after` None: the newest entry's ts alone (where history ends)."""
        if after is None:
            command: dict[str, Any] = {"find": "system.profile", "sort": {"ts": -1}, "projection": {"ts": 1, "_id": 0}}
            command["limit"] = 1
        else:
            command = {
                "find": "system.profile",
                "filter": {"ts": {"$gt": after}},
                "sort": {"ts": 1},
                "projection": {**dict.fromkeys(PROFILE_FIELDS, 1), "_id": 0},
                "limit": max(limit, 1),
            }
        return await self._first_batch(database, {**command, "singleBatch": True})

    # --- lifecycle --------------------------------------------------------------------------------
    async def close(self) -> None:
        """Close the driver (its connections and monitor). Idempotent; safe before any command."""
        client, self._client = self._client, None
        try:
            if client is not None:
                await client.close()
        finally:
            fd, self._pem_fd = self._pem_fd, None
            if fd is not None:
                os.close(fd)
