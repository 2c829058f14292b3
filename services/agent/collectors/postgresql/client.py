"""The PostgreSQL client: one asyncpg connection, reused across collections, and every query sent.

One method per query, each returning plain dicts keyed by catalog column names. SQL is chosen by
the server's version number, taken once per connection from the `server_version` the server
reports at startup (no statement spent on it). `statements` counts every statement sent.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import asyncpg
from pydantic import SecretStr

from dbintel.common.config import DatabaseConfig, TLSSettings

from .mapping import ACTIVITY_STATES

APPLICATION_NAME = "dbintel"
DEFAULT_DATABASE = "postgres"
STATEMENT_CACHE_SIZE = 16  # at most 8 distinct statements (5 queries, 3 with a slow-round variant)
PG17 = 170000  # pg_stat_checkpointer appears; checkpoint columns leave pg_stat_bgwriter


def server_version_num(version: Any) -> int:
    """asyncpg's ServerVersion -> server_version_num. asyncpg files 15.4 as major=15, micro=4."""
    if version.major >= 10:
        return version.major * 10000 + version.micro
    return version.major * 10000 + version.minor * 100 + version.micro


# --- SQL ---------------------------------------------------------------------------------------

# Relations someone holds or awaits an ACCESS EXCLUSIVE lock on: pg_relation_size() would queue behind
# that lock, so their sizes are skipped this round. Evaluated once per statement (uncorrelated).
_LOCKED_RELATIONS = """CROSS JOIN (
    SELECT coalesce(array_agg(relation), '{}') AS relids FROM pg_locks
    WHERE locktype = 'relation' AND mode = 'AccessExclusiveLock'
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())) AS locked"""


def database_stats_sql(*, sizes: bool, conflicts: bool) -> str:
    """Per non-template database: pg_stat_database counters, backends, XID age; sizes on slow rounds."""
    size = ""
    if sizes:  # pg_database_size() raises without CONNECT unless the user has pg_read_all_stats: ask first
        size = (",\n       CASE WHEN pg_has_role('pg_read_all_stats', 'USAGE')"
                " OR has_database_privilege(d.oid, 'CONNECT') THEN pg_database_size(d.oid) END AS size")
    conflict_columns = conflict_join = ""
    if conflicts:
        conflict_columns = (",\n       c.confl_tablespace, c.confl_lock, c.confl_snapshot, c.confl_bufferpin,"
                            " c.confl_deadlock")
        conflict_join = "\nLEFT JOIN pg_stat_database_conflicts c ON c.datid = d.oid"
    return f"""SELECT d.datname, s.xact_commit, s.xact_rollback, s.blks_read, s.blks_hit, s.tup_returned,
       s.tup_fetched, s.tup_inserted, s.tup_updated, s.tup_deleted, s.temp_files, s.temp_bytes, s.deadlocks,
       coalesce(a.backends, 0) AS backends, age(d.datfrozenxid) AS frozen_xid_age{size}{conflict_columns}
FROM pg_database d
JOIN pg_stat_database s ON s.datid = d.oid
LEFT JOIN (SELECT datid, count(*) AS backends FROM pg_stat_activity WHERE datid IS NOT NULL GROUP BY datid) a
       ON a.datid = d.oid{conflict_join}
WHERE NOT d.datistemplate
ORDER BY d.datname"""


def server_stats_sql(version_num: int) -> str:
    """One row: background writer/checkpointer, archiver, max_connections, recovery, activity by state."""
    if version_num >= PG17:
        writer_columns = ("cp.num_timed, cp.num_requested, cp.write_time, cp.sync_time, cp.buffers_written,\n"
                          "       bg.buffers_clean, bg.maxwritten_clean, bg.buffers_alloc")
        writer_from = "pg_stat_bgwriter bg CROSS JOIN pg_stat_checkpointer cp"
    else:
        writer_columns = ("bg.checkpoints_timed, bg.checkpoints_req, bg.checkpoint_write_time,"
                          " bg.checkpoint_sync_time,\n       bg.buffers_checkpoint, bg.buffers_clean,"
                          " bg.maxwritten_clean, bg.buffers_backend, bg.buffers_backend_fsync, bg.buffers_alloc")
        writer_from = "pg_stat_bgwriter bg"
    state_counts = ",\n            ".join(f"count(*) FILTER (WHERE state = '{state}') AS \"{state}\""
                                         for state in ACTIVITY_STATES)
    return f"""SELECT {writer_columns},
       ar.last_archived_time, now() AS server_now,
       current_setting('max_connections')::integer AS max_connections,
       pg_is_in_recovery() AS in_recovery, act.*
FROM {writer_from}
CROSS JOIN pg_stat_archiver ar
CROSS JOIN (SELECT {state_counts},
            extract(epoch FROM now() - min(xact_start))::float8 AS oldest_xact_age
            FROM pg_stat_activity) act"""


def table_stats_sql(*, sizes: bool) -> str:
    """Per user table of the connected database: activity, I/O, vacuum counts; sizes on slow rounds."""
    size_column = size_join = ""
    if sizes:
        size_column = (",\n       CASE WHEN s.relid <> ALL (locked.relids)"
                       " THEN pg_relation_size(s.relid) END AS table_size")
        size_join = "\n" + _LOCKED_RELATIONS
    return f"""SELECT s.schemaname, s.relname, s.n_live_tup, s.n_dead_tup, s.n_tup_ins, s.n_tup_upd, s.n_tup_del,
       s.n_tup_hot_upd, s.seq_scan, s.vacuum_count,
       io.heap_blks_read, io.heap_blks_hit, io.idx_blks_read, io.idx_blks_hit,
       io.toast_blks_read, io.toast_blks_hit, io.tidx_blks_read, io.tidx_blks_hit{size_column}
FROM pg_stat_user_tables s
JOIN pg_statio_user_tables io ON io.relid = s.relid{size_join}"""


def index_stats_sql(*, sizes: bool) -> str:
    """Per user index of the connected database: scans; sizes on slow rounds."""
    size_column = size_join = ""
    if sizes:
        size_column = (",\n       CASE WHEN s.indexrelid <> ALL (locked.relids) AND s.relid <> ALL (locked.relids)"
                       " THEN pg_relation_size(s.indexrelid) END AS index_size")
        size_join = "\n" + _LOCKED_RELATIONS
    return f"""SELECT s.schemaname, s.relname, s.indexrelname, s.idx_scan{size_column}
FROM pg_stat_user_indexes s{size_join}"""


# On a standby pg_current_wal_lsn() raises; a cascading standby measures against what it received.
REPLICATION_SQL = """SELECT client_addr::varchar AS client_addr,
       pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()
                            ELSE pg_current_wal_lsn() END, replay_lsn)::float8 AS replay_bytes,
       write_lag, flush_lag, replay_lag
FROM pg_stat_replication"""


# --- errors --------------------------------------------------------------------------------------

_UNSUPPORTED = (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError, asyncpg.UndefinedFunctionError,
                asyncpg.UndefinedObjectError, asyncpg.FeatureNotSupportedError)
_CONNECTION = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.InvalidAuthorizationSpecificationError,
               asyncpg.InvalidCatalogNameError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError,
               asyncpg.AdminShutdownError, asyncpg.CrashShutdownError, OSError)


def classify_error(exc: BaseException) -> str:
    """A QueryError reason for an exception raised while connecting, querying or mapping."""
    if isinstance(exc, (TimeoutError, asyncpg.QueryCanceledError)):  # before OSError: TimeoutError is one
        return "timeout"
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return "permission"
    if isinstance(exc, _CONNECTION):
        return "connection"
    if isinstance(exc, _UNSUPPORTED):
        return "unsupported"
    if isinstance(exc, asyncpg.PostgresError):
        return "server_error"
    return "bad_reply"


def describe_error(exc: BaseException, *, user: str | None, secrets: tuple[str, ...] = ()) -> tuple[str, str]:
    """(reason, message) for a QueryError. The message is one line and never contains a secret."""
    reason = classify_error(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if reason == "timeout" and not text:
        text = "no reply within the poll timeout"
    if reason == "permission":
        text = f"{text} (grant pg_monitor to {user or '<user>'})"
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return reason, message


def is_connection_lost(exc: BaseException) -> bool:
    """True when the connection cannot be used again and must be replaced."""
    return classify_error(exc) == "connection"


# --- TLS -----------------------------------------------------------------------------------------

class _ServerNameContext(ssl.SSLContext):
    """An SSL context that presents `server_name` (SNI and certificate check) instead of the dialled host."""

    server_name: str | None = None

    def wrap_bio(self, incoming, outgoing, server_side=False, server_hostname=None, session=None):
        return super().wrap_bio(incoming, outgoing, server_side, self.server_name or server_hostname, session)


def ssl_context(tls: TLSSettings) -> ssl.SSLContext | bool:
    """The asyncpg `ssl` argument for the database's TLS settings (False = plaintext)."""
    if not tls.enabled:
        return False
    context = _ServerNameContext(ssl.PROTOCOL_TLS_CLIENT)
    context.server_name = tls.server_name
    if tls.ca_file:
        context.load_verify_locations(cafile=tls.ca_file)
    else:
        context.load_default_certs()
    if tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _host_port(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


# --- client --------------------------------------------------------------------------------------

class PostgresqlClient:
    """Holds the one connection and sends every query. Not safe for concurrent use (one collection at a time)."""

    def __init__(self, database: DatabaseConfig, password: SecretStr | None):
        self._config = database
        self._password = password
        self._conn: asyncpg.Connection | None = None
        self.database_name = database.database or DEFAULT_DATABASE
        self.statements = 0  # statements sent over this client's lifetime
        self.version_num: int | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    @property
    def backend_pid(self) -> int | None:
        """The server process serving our connection (None when not connected)."""
        return self._conn.get_server_pid() if self.connected else None

    async def connect(self) -> None:
        """Open the connection unless one is open. Raises asyncpg/OS errors; none carries the password."""
        if self.connected:
            return
        self._conn = None
        host, port = _host_port(self._config.endpoint)
        timeout = self._config.poll_timeout.total_seconds()
        conn = await asyncpg.connect(
            host=host, port=port, user=self._config.username, database=self.database_name,
            password=self._password.get_secret_value() if self._password is not None else None,
            ssl=ssl_context(self._config.tls), timeout=timeout, command_timeout=timeout,
            statement_cache_size=STATEMENT_CACHE_SIZE, max_cached_statement_lifetime=0,
            server_settings={"application_name": APPLICATION_NAME})
        self._conn = conn
        self.version_num = server_version_num(conn.get_server_version())

    async def _fetch(self, sql: str) -> list[dict[str, Any]]:
        conn = self._conn
        if conn is None or conn.is_closed():
            raise ConnectionError("not connected")
        self.statements += 1
        try:
            records = await conn.fetch(sql)
        except asyncio.CancelledError:
            # Cancelled mid-protocol (the scheduler's timeout): start from a clean connection next time.
            self._discard()
            raise
        except Exception as exc:
            if is_connection_lost(exc):
                self._discard()
            raise
        return [dict(record) for record in records]

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def fetch_database_stats(self, *, sizes: bool = False, conflicts: bool = False) -> list[dict[str, Any]]:
        return await self._fetch(database_stats_sql(sizes=sizes, conflicts=conflicts))

    async def fetch_server_stats(self) -> dict[str, Any]:
        rows = await self._fetch(server_stats_sql(self.version_num or 0))
        if len(rows) != 1:
            raise ValueError(f"server stats returned {len(rows)} rows, expected 1")
        return rows[0]

    async def fetch_table_stats(self, *, sizes: bool = False) -> list[dict[str, Any]]:
        return await self._fetch(table_stats_sql(sizes=sizes))

    async def fetch_index_stats(self, *, sizes: bool = False) -> list[dict[str, Any]]:
        return await self._fetch(index_stats_sql(sizes=sizes))

    async def fetch_replication_stats(self) -> list[dict[str, Any]]:
        return await self._fetch(REPLICATION_SQL)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        try:
            await asyncio.wait_for(conn.close(), timeout=self._config.poll_timeout.total_seconds())
        except Exception:
            conn.terminate()
        except asyncio.CancelledError:
            conn.terminate()
            raise
