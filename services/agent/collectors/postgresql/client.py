"""The PostgreSQL client: one asyncpg connection, reused across collections, and every query sent.

One method per query, each returning plain dicts keyed by catalog column names. SQL is chosen by
the server's version number, taken once per connection from the `server_version` the server
reports at startup (no statement spent on it). `statements` counts every statement sent.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from typing import Any

import asyncpg
from pydantic import SecretStr

from dbintel.common.config import DatabaseConfig, TLSSettings
from dbintel.common.endpoints import parse_host_port

from ..errors import error_message, first_line
from ..metric_table import Reason
from ..tls import client_ssl_context
from .mapping import ACTIVITY_STATES

APPLICATION_NAME = "dbintel"
DEFAULT_DATABASE = "postgres"
STATEMENT_CACHE_SIZE = 24  # at most 17 distinct statements (12 queries, 3 with a slow-round variant, conflicts)
PG13 = 130000  # pg_stat_statements 1.8: total_time becomes total_exec_time, plan times appear
PG14 = 140000  # pg_stat_statements_info (stats_reset); pg_stat_activity.query_id
PG17 = 170000  # pg_stat_checkpointer appears; checkpoint columns leave pg_stat_bgwriter

_NEEDS_PG_STAT_STATEMENTS = (
    "needs the pg_stat_statements extension: shared_preload_libraries = pg_stat_statements "
    "and CREATE EXTENSION pg_stat_statements in the configured database"
)
ENABLE_PG_STAT_STATEMENTS = (
    "top queries need pg_stat_statements: set shared_preload_libraries = 'pg_stat_statements' "
    "(restart), then run CREATE EXTENSION pg_stat_statements in the configured database"
)
# What an optional query needs beyond pg_monitor, added to its error when the server says unsupported.
REQUIREMENTS = {
    "fetch_execution_time": _NEEDS_PG_STAT_STATEMENTS,
    "fetch_vector_stats": _NEEDS_PG_STAT_STATEMENTS,
    # the query-intelligence reads (the collector's method names)
    "read_statement_stats": ENABLE_PG_STAT_STATEMENTS,
    "fetch_statement_texts": ENABLE_PG_STAT_STATEMENTS,
}
QUERY_INTELLIGENCE_READS = frozenset({"read_statement_stats", "fetch_statement_texts", "read_query_samples"})


def server_version_num(version: Any) -> int:
    """asyncpg's ServerVersion -> server_version_num. asyncpg files 15.4 as major=15, micro=4."""
    if version.major >= 10:
        return version.major * 10000 + version.micro
    return version.major * 10000 + version.minor * 100 + version.micro


# --- SQL ---------------------------------------------------------------------------------------

# The WAL position others are measured against. pg_current_wal_lsn() raises on a standby, which
# measures against what it has received instead (CASE evaluates only the branch taken).
_CURRENT_LSN = "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END"

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
        size = (
            ",\n       CASE WHEN pg_has_role('pg_read_all_stats', 'USAGE')"
            " OR has_database_privilege(d.oid, 'CONNECT') THEN pg_database_size(d.oid) END AS size"
        )
    conflict_columns = conflict_join = ""
    if conflicts:
        conflict_columns = (
            ",\n       c.confl_tablespace, c.confl_lock, c.confl_snapshot, c.confl_bufferpin, c.confl_deadlock"
        )
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


# On a standby: seconds since the last replayed transaction committed on the primary (0 while all
# that was received is replayed, so a quiet primary does not read as lag), and bytes received but
# not yet replayed. NULL on a primary; replay_lag NULL until a transaction has been replayed.
# The WAL receiver (the standby's end of the replication link): its status, 'stopped' when none runs
# (the link is down) and 'hidden' when the user may not see it (no pg_read_all_stats: the view then
# shows only the pid), and the age of the last message it got from the primary.
_STANDBY_REPLAY_COLUMNS = """CASE WHEN NOT pg_is_in_recovery() THEN NULL
            WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
            ELSE greatest(0, extract(epoch FROM now() - pg_last_xact_replay_timestamp())) END::float8 AS replay_lag,
       CASE WHEN pg_is_in_recovery()
            THEN pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::float8 END AS unreplayed_bytes,
       CASE WHEN pg_is_in_recovery()
            THEN coalesce((SELECT coalesce(status, 'hidden') FROM pg_stat_wal_receiver), 'stopped') END
            AS wal_receiver_status,
       (SELECT extract(epoch FROM now() - last_msg_receipt_time)::float8 FROM pg_stat_wal_receiver)
            AS wal_receiver_receipt_age"""

# Every replication slot in one JSON array (decoded by the client), so slots cost no statement of
# their own. retained_bytes is NULL for a slot that has not reserved WAL yet.
_REPLICATION_SLOTS_COLUMN = f"""(SELECT coalesce(json_agg(json_build_object(
                'slot_name', sl.slot_name, 'slot_type', sl.slot_type, 'active', sl.active,
                'retained_bytes', pg_wal_lsn_diff({_CURRENT_LSN}, sl.restart_lsn)::float8)
            ORDER BY sl.slot_name), '[]'::json)
        FROM pg_replication_slots sl) AS replication_slots"""


def server_stats_sql(version_num: int) -> str:
    """One row: background writer/checkpointer, archiver, max_connections, recovery and standby replay,
    replication slots, activity by state."""
    if version_num >= PG17:
        writer_columns = (
            "cp.num_timed, cp.num_requested, cp.write_time, cp.sync_time, cp.buffers_written,\n"
            "       bg.buffers_clean, bg.maxwritten_clean, bg.buffers_alloc"
        )
        writer_from = "pg_stat_bgwriter bg CROSS JOIN pg_stat_checkpointer cp"
    else:
        writer_columns = (
            "bg.checkpoints_timed, bg.checkpoints_req, bg.checkpoint_write_time,"
            " bg.checkpoint_sync_time,\n       bg.buffers_checkpoint, bg.buffers_clean,"
            " bg.maxwritten_clean, bg.buffers_backend, bg.buffers_backend_fsync, bg.buffers_alloc"
        )
        writer_from = "pg_stat_bgwriter bg"
    state_counts = ",\n            ".join(
        f"count(*) FILTER (WHERE state = '{state}') AS \"{state}\"" for state in ACTIVITY_STATES
    )
    return f"""SELECT {writer_columns},
       ar.last_archived_time, now() AS server_now,
       current_setting('max_connections')::integer AS max_connections,
       pg_is_in_recovery() AS in_recovery,
       {_STANDBY_REPLAY_COLUMNS},
       {_REPLICATION_SLOTS_COLUMN}, act.*
FROM {writer_from}
CROSS JOIN pg_stat_archiver ar
CROSS JOIN (SELECT {state_counts},
            extract(epoch FROM now() - min(xact_start))::float8 AS oldest_xact_age
            FROM pg_stat_activity) act"""


def table_stats_sql(*, sizes: bool) -> str:
    """Per user table of the connected database: activity, I/O, (auto)vacuum and autoanalyze; sizes on slow rounds."""
    size_column = size_join = ""
    if sizes:
        size_column = (
            ",\n       CASE WHEN s.relid <> ALL (locked.relids) THEN pg_relation_size(s.relid) END AS table_size"
        )
        size_join = "\n" + _LOCKED_RELATIONS
    return f"""SELECT s.schemaname, s.relname, s.n_live_tup, s.n_dead_tup, s.n_tup_ins, s.n_tup_upd, s.n_tup_del,
       s.n_tup_hot_upd, s.seq_scan, s.vacuum_count, s.autovacuum_count, s.autoanalyze_count,
       extract(epoch FROM now() - s.last_autovacuum)::float8 AS last_autovacuum_age,
       extract(epoch FROM now() - s.last_autoanalyze)::float8 AS last_autoanalyze_age,
       io.heap_blks_read, io.heap_blks_hit, io.idx_blks_read, io.idx_blks_hit,
       io.toast_blks_read, io.toast_blks_hit, io.tidx_blks_read, io.tidx_blks_hit{size_column}
FROM pg_stat_user_tables s
JOIN pg_statio_user_tables io ON io.relid = s.relid{size_join}"""


def index_stats_sql(*, sizes: bool) -> str:
    """Per user index of the connected database: scans; sizes on slow rounds."""
    size_column = size_join = ""
    if sizes:
        size_column = (
            ",\n       CASE WHEN s.indexrelid <> ALL (locked.relids) AND s.relid <> ALL (locked.relids)"
            " THEN pg_relation_size(s.indexrelid) END AS index_size"
        )
        size_join = "\n" + _LOCKED_RELATIONS
    return f"""SELECT s.schemaname, s.relname, s.indexrelname, s.idx_scan{size_column}
FROM pg_stat_user_indexes s{size_join}"""


# A cascading standby measures its own standbys against what it received (see _CURRENT_LSN).
REPLICATION_SQL = f"""SELECT client_addr::varchar AS client_addr,
       pg_wal_lsn_diff({_CURRENT_LSN}, replay_lsn)::float8 AS replay_bytes,
       write_lag, flush_lag, replay_lag
FROM pg_stat_replication"""


# --- optional statements: each sent only while one of its metrics is enabled ---------------------

# Locks of the connected database plus those of no single database (shared catalogs, transaction
# ids), counted as the receiver counts them. Relations of other databases cannot be named from this
# connection, so their locks are left out, like their tables.
LOCKS_SQL = """SELECT coalesce(c.relname, '') AS relation, l.mode, l.locktype,
       (l.database IS NOT NULL AND l.database <> 0) AS in_database, count(*) AS locks
FROM pg_locks l
LEFT JOIN pg_class c ON c.oid = l.relation
WHERE l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   OR l.database IS NULL
   OR (l.database = 0 AND (l.relation IS NULL OR c.relisshared))
GROUP BY 1, 2, 3, 4"""

# Calls per user function of the connected database (rows only while track_functions is pl or all).
FUNCTION_STATS_SQL = """SELECT s.schemaname, s.funcname, s.calls, p.proargnames,
       count(*) OVER (PARTITION BY s.schemaname, s.funcname) > 1 AS overloaded
FROM pg_stat_user_functions s
JOIN pg_proc p ON p.oid = s.funcid"""


def _exec_time_column(version_num: int) -> str:
    return "total_exec_time" if version_num >= PG13 else "total_time"


def execution_time_sql(version_num: int) -> str:
    """Seconds spent executing the statements pg_stat_statements tracks, per database. Called as the
    function with showtext = false: a sum needs no query texts (a file read on the server)."""
    return f"""SELECT d.datname, sum(s.{_exec_time_column(version_num)}) / 1000.0 AS exec_seconds
FROM pg_stat_statements(false) s
JOIN pg_database d ON d.oid = s.dbid
GROUP BY d.datname"""


# --- query intelligence: statement statistics, texts of new statements, live sessions -------------

# pg_stat_statements columns summed per queryid and kept as StatementCounters.extra, under the OTel
# receiver's top-query attribute names (postgresql.<column>); local_* follow the same pattern. Units
# as the server counts them: blocks, and milliseconds for total_plan_time (as the receiver's attribute).
STATEMENT_EXTRA_COLUMNS = (
    "shared_blks_hit",
    "shared_blks_read",
    "shared_blks_dirtied",
    "shared_blks_written",
    "local_blks_hit",
    "local_blks_read",
    "local_blks_dirtied",
    "local_blks_written",
    "temp_blks_read",
    "temp_blks_written",
)
PLAN_TIME_COLUMN = "total_plan_time"  # PG 13+


def statement_stats_sql(version_num: int) -> str:
    """The `$1` statements with the most execution time, numbers only (showtext = false: the server
    does not read its query-text file), one row per queryid: pg_stat_statements keeps one entry per
    (user, database, queryid, toplevel), and those are summed here, so `queryid` identifies a row (the
    database and user are named when the entry has only one; NULL when several share the queryid).
    Bytes: sums are float8 (8 bytes; a bigint sum would be numeric), and the extra counters are NULL when zero
    (4 bytes on the wire instead of 12; most statements never touch temp or local blocks). PG 14+: the
    statistics' last reset (pg_stat_statements_info) on the first row only, on one all-NULL row when
    the view is empty. Entries of other users, without pg_read_all_stats (queryid NULL), are left out.
    Server cost: one pass over the shared hash table (no text file read), a hash aggregate and a
    top-N sort of its entries, two small hash joins on the rows returned."""
    exec_time = _exec_time_column(version_num)
    extras = [*STATEMENT_EXTRA_COLUMNS, *([PLAN_TIME_COLUMN] if version_num >= PG13 else [])]
    # float8 before summing: a sum of bigint accumulates in numeric, several times slower.
    sums = [f"sum(calls::float8) AS calls, sum({exec_time}) AS total_exec_time, sum(rows::float8) AS rows"]
    sums += [f"nullif(sum({c}::float8), 0) AS {c}" for c in extras]
    output = ", ".join(f"t.{c}" for c in ["queryid", "calls", "total_exec_time", "rows", *extras])
    sum_columns = ",\n           ".join(sums)
    top = f"""SELECT queryid,
           {sum_columns},
           CASE WHEN min(dbid) = max(dbid) THEN min(dbid) END AS dbid,
           CASE WHEN min(userid) = max(userid) THEN min(userid) END AS userid
    FROM pg_stat_statements(false)
    WHERE queryid IS NOT NULL
    GROUP BY queryid
    ORDER BY total_exec_time DESC, queryid
    LIMIT $1"""
    order = "t.total_exec_time DESC NULLS LAST, t.queryid"
    names = f"""LEFT JOIN pg_database d ON d.oid = t.dbid
LEFT JOIN pg_roles r ON r.oid = t.userid
ORDER BY {order}"""
    if version_num < PG14:
        return f"""WITH top AS (
    {top}
)
SELECT NULL::timestamptz AS stats_reset, {output}, d.datname, r.rolname
FROM top t
{names}"""
    return f"""WITH top AS (
    {top}
)
SELECT CASE WHEN row_number() OVER (ORDER BY {order}) = 1 THEN i.stats_reset END AS stats_reset,
       {output}, d.datname, r.rolname
FROM pg_stat_statements_info i
LEFT JOIN top t ON true
{names}"""


# The normalised texts of the queryids in $1. pg_stat_statements(true) reads the server's whole
# query-text file whatever the filter (there is no cheaper path to a subset), so it is sent once per
# batch of statements new to the agent, never per interval. One row per queryid (DISTINCT ON), even
# when several users or databases share it. The ids travel as one array literal in a text parameter:
# a bigint[] parameter would cost an extra type-introspection statement from asyncpg per connection.
# IN (SELECT unnest(..)): a hashed semi-join, not a scan of the id list per entry.
STATEMENT_TEXTS_SQL = """SELECT DISTINCT ON (queryid) queryid, query
FROM pg_stat_statements(true)
WHERE queryid IN (SELECT unnest($1::text::bigint[]))"""


def query_samples_sql(version_num: int) -> str:
    """Sessions other than ours that are not idle ('idle in transaction' kept: it holds locks and a
    snapshot), the longest-running first, at most `$1`. Duration: since the transaction started for
    a session idle in one, else since its current (or last) statement started. pg_blocking_pids()
    takes every lock-manager partition lock while it looks, so it is called only for sessions that
    wait on a heavyweight lock (wait_event_type 'Lock'), NULL for the others; its pids come as one
    space-separated text (an int[] column would cost asyncpg a type-introspection statement). Other users' sessions
    show state and query only with pg_read_all_stats (pg_monitor); without it they have state NULL
    and are left out."""
    query_id = "a.query_id" if version_num >= PG14 else "NULL::bigint AS query_id"
    return f"""SELECT a.pid, a.state, a.wait_event_type, a.wait_event,
       greatest(0, extract(epoch FROM now() - CASE WHEN a.state LIKE 'idle in transaction%'
                                                   THEN a.xact_start ELSE a.query_start END))::float8 AS duration,
       CASE WHEN a.wait_event_type = 'Lock' THEN array_to_string(pg_blocking_pids(a.pid), ' ') END AS blocked_by,
       {query_id}, a.datname, a.usename, host(a.client_addr) AS client_addr, a.client_port,
       a.application_name, a.backend_type, a.query
FROM pg_stat_activity a
WHERE a.pid <> pg_backend_pid() AND a.state <> 'idle'
ORDER BY duration DESC NULLS LAST, a.pid
LIMIT $1"""


# pgvector similarity searches are recognised by operator or function name in the normalised
# statement text (constants are $n there, so this statement never matches itself); inserts by an
# INSERT INTO / COPY FROM whose target table has a vector, halfvec or sparsevec column.
# distance function (mapping.DISTANCE_FUNCTION_NAMES) -> (operator regex, function name)
DISTANCE_MATCHERS = {
    "cosine": ("<=>", "cosine_distance"),
    "l2": ("<->", "l2_distance"),
    "inner_product": ("<#>", "inner_product"),
    "l1": ("<\\+>", "l1_distance"),
    "hamming": ("<~>", "hamming_distance"),
    "jaccard": ("<%>", "jaccard_distance"),
}
_TABLE_NAME = '("[^"]+"|[^\\s(.]+)(?:\\.("[^"]+"|[^\\s(.]+))?'
_INSERT_TARGET = f"'^\\s*INSERT\\s+INTO\\s+{_TABLE_NAME}'"
_COPY_TARGET = f"'^\\s*COPY\\s+{_TABLE_NAME}(?:\\s*\\([^)]*\\))?\\s+FROM\\M'"


def vector_stats_sql(version_num: int) -> str:
    """pgvector search totals per distance function (kind 'search') and insert totals (kind 'insert'),
    from pg_stat_statements, for the connected database; exec time in seconds."""
    classify = "\n".join(
        f"        WHEN query ~ '{operator}' OR query ~* '{function}' THEN '{name}'"
        for name, (operator, function) in DISTANCE_MATCHERS.items()
    )
    operators = "|".join(operator for operator, _ in DISTANCE_MATCHERS.values())
    functions = "|".join(function for _, function in DISTANCE_MATCHERS.values())
    part = "lower(replace(t.parts[{}], '\"', ''))"
    return f"""WITH statements AS (
    SELECT s.query, s.calls, s.{_exec_time_column(version_num)} AS exec_ms, s.rows
    FROM pg_stat_statements s
    JOIN pg_database d ON d.oid = s.dbid
    WHERE d.datname = current_database() AND s.query <> '<insufficient privilege>'
), searches AS (
    SELECT CASE
{classify}
    END AS distance_function, calls, exec_ms, rows
    FROM statements
    WHERE query ~ '{operators}' OR query ~* '{functions}'
), vector_tables AS (
    SELECT DISTINCT lower(n.nspname) AS schema_name, lower(c.relname) AS table_name
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    JOIN pg_type ty ON ty.oid = a.atttypid
    WHERE ty.typname IN ('vector', 'halfvec', 'sparsevec') AND c.relkind IN ('r', 'p')
), inserts AS (
    SELECT st.calls, st.exec_ms, st.rows
    FROM statements st
    CROSS JOIN LATERAL (SELECT coalesce(regexp_match(st.query, {_INSERT_TARGET}, 'i'),
                                        regexp_match(st.query, {_COPY_TARGET}, 'i')) AS parts) t
    WHERE EXISTS (SELECT 1 FROM vector_tables v
                  WHERE (t.parts[2] IS NOT NULL AND v.schema_name = {part.format(1)}
                         AND v.table_name = {part.format(2)})
                     OR (t.parts[2] IS NULL AND v.table_name = {part.format(1)}))
)
SELECT 'search' AS kind, distance_function, sum(calls) AS calls, sum(exec_ms) / 1000.0 AS exec_seconds,
       sum(rows) AS rows
FROM searches GROUP BY distance_function
UNION ALL
SELECT 'insert', NULL, sum(calls), sum(exec_ms) / 1000.0, sum(rows) FROM inserts HAVING count(*) > 0"""


# --- errors --------------------------------------------------------------------------------------

_UNSUPPORTED = (
    asyncpg.UndefinedTableError,
    asyncpg.UndefinedColumnError,
    asyncpg.UndefinedFunctionError,
    asyncpg.UndefinedObjectError,
    asyncpg.FeatureNotSupportedError,
)
_CONNECTION = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    OSError,
)


def classify_error(exc: BaseException) -> Reason:
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


_SIMPLE_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_$]*")
# "permission denied for view pg_statio_user_tables" (PG 11+), "… for relation x" (PG 10 and older)
_DENIED_OBJECT = re.compile(r"permission denied for (table|view|materialized view|relation|function|schema) (\S+)")
_GRANT_FOR_OBJECT = {
    "table": "SELECT ON",
    "view": "SELECT ON",
    "materialized view": "SELECT ON",
    "relation": "SELECT ON",
    "function": "EXECUTE ON FUNCTION",
    "schema": "USAGE ON SCHEMA",
}


def quote_identifier(name: str) -> str:
    """`name` as SQL would need it in a GRANT: bare when it is a plain lower-case identifier, else double-quoted."""
    if _SIMPLE_IDENTIFIER.fullmatch(name):
        return name
    return '"' + name.replace('"', '""') + '"'


def required_grant(denial: str, user: str | None) -> str:
    """The GRANT that lets a refused statement through, from the server's "permission denied for …" text:
    SELECT on the view or table it names, EXECUTE on a function, USAGE on a schema; otherwise pg_monitor."""
    grantee = quote_identifier(user) if user else "<user>"
    match = _DENIED_OBJECT.search(denial)
    if match is None:
        return f"GRANT pg_monitor TO {grantee}"
    kind, name = match.groups()
    return f"GRANT {_GRANT_FOR_OBJECT[kind]} {quote_identifier(name)} TO {grantee}"


def describe_error(exc: BaseException, *, user: str | None, secrets: tuple[str, ...] = ()) -> tuple[Reason, str]:
    """(reason, message) for a QueryError. The message is one line and never contains a secret; on a
    permission error it ends with the GRANT to run."""
    reason = classify_error(exc)
    text = first_line(str(exc))
    if reason == "permission":
        text = f"{text} — run: {required_grant(text, user)}"
    return reason, error_message(exc, text, reason=reason, secrets=secrets)


def is_connection_lost(exc: BaseException) -> bool:
    """True when the connection cannot be used again and must be replaced."""
    return classify_error(exc) == "connection"


# --- TLS -----------------------------------------------------------------------------------------


def ssl_context(tls: TLSSettings) -> ssl.SSLContext | bool:
    """The asyncpg `ssl` argument for the database's TLS settings (False = plaintext)."""
    return client_ssl_context(tls) or False


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
    def _connection(self) -> asyncpg.Connection:
        """The open connection; ConnectionError (a "connection" failure) when there is none."""
        conn = self._conn
        if conn is None or conn.is_closed():
            raise ConnectionError("not connected")
        return conn

    @property
    def backend_pid(self) -> int | None:
        """The server process serving our connection (None when not connected)."""
        return self._connection.get_server_pid() if self.connected else None

    async def connect(self) -> None:
        """Open the connection unless one is open. Raises asyncpg/OS errors; none carries the password."""
        if self.connected:
            return
        self._conn = None
        host, port = parse_host_port(self._config.endpoint)
        timeout = self._config.poll_timeout.total_seconds()
        conn = await asyncpg.connect(
            host=host,
            port=port,
            user=self._config.username,
            database=self.database_name,
            password=self._password.get_secret_value() if self._password is not None else None,
            ssl=ssl_context(self._config.tls),
            timeout=timeout,
            command_timeout=timeout,
            statement_cache_size=STATEMENT_CACHE_SIZE,
            max_cached_statement_lifetime=0,
            server_settings={"application_name": APPLICATION_NAME},
        )
        self._conn = conn
        self.version_num = server_version_num(conn.get_server_version())

    async def _fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        conn = self._connection
        self.statements += 1
        try:
            records = await conn.fetch(sql, *args)
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
        row = rows[0]
        row["replication_slots"] = json.loads(row["replication_slots"])  # json arrives as text
        return row

    async def fetch_table_stats(self, *, sizes: bool = False) -> list[dict[str, Any]]:
        return await self._fetch(table_stats_sql(sizes=sizes))

    async def fetch_index_stats(self, *, sizes: bool = False) -> list[dict[str, Any]]:
        return await self._fetch(index_stats_sql(sizes=sizes))

    async def fetch_replication_stats(self) -> list[dict[str, Any]]:
        return await self._fetch(REPLICATION_SQL)

    async def fetch_locks(self) -> list[dict[str, Any]]:
        return await self._fetch(LOCKS_SQL)

    async def fetch_function_stats(self) -> list[dict[str, Any]]:
        return await self._fetch(FUNCTION_STATS_SQL)

    async def fetch_execution_time(self) -> list[dict[str, Any]]:
        return await self._fetch(execution_time_sql(self.version_num or 0))

    async def fetch_vector_stats(self) -> list[dict[str, Any]]:
        return await self._fetch(vector_stats_sql(self.version_num or 0))

    async def fetch_statement_stats(self, limit: int) -> list[dict[str, Any]]:
        return await self._fetch(statement_stats_sql(self.version_num or 0), limit)

    async def fetch_statement_texts(self, query_ids: list[int]) -> list[dict[str, Any]]:
        return await self._fetch(STATEMENT_TEXTS_SQL, "{" + ",".join(str(int(q)) for q in query_ids) + "}")

    async def fetch_query_samples(self, limit: int) -> list[dict[str, Any]]:
        return await self._fetch(query_samples_sql(self.version_num or 0), limit)

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
