"""The MySQL/MariaDB client: one aiomysql connection, reused across collections, and every query sent.

One method per query, each returning plain Python data. Several tables that need the same grant
are read in ONE statement (UNION ALL of per-table parts, padded to a common width and split back
apart here), so a collection stays within five statements whatever is enabled. SQL is chosen by
the server version and flavour read from the connection handshake (no statement spent on it).

Connecting sends no statement: autocommit is requested in the handshake (aiomysql only sends SET
AUTOCOMMIT when the server's default differs, and both servers default to 1), no sql_mode, no
init_command. `statements` counts every statement sent. A reused connection that turns out dead at
its first statement of a collection (server restart, wait_timeout, a proxy's idle cut) is replaced
and the statement retried once, so a restart does not cost a down sample.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiomysql
import pymysql
from pydantic import SecretStr
from pymysql.constants import CLIENT

from dbintel.common.config import DatabaseConfig, TLSSettings
from dbintel.common.endpoints import parse_host_port

from ..errors import error_message, first_line
from ..metric_table import Reason
from ..tls import client_ssl_context
from .activity import (
    CPU_TIME_COLUMN,
    DIGEST_CONSUMERS,
    DIGEST_COUNT_COLUMNS,
    DIGEST_TIME_COLUMNS,
    SAMPLE_CONSUMERS,
    SAMPLE_INSTRUMENTS,
)
from .mapping import STATUS_VARIABLES
from .metrics import INNODB, PERF, REPLICA

# Query names (the client methods) of the query-intelligence reads, for errors and held refusals.
DIGESTS = "fetch_statement_digests"
DIGEST_TEXTS = "fetch_digest_texts"
SAMPLES = "fetch_query_samples"

PROGRAM_NAME = "dbintel"  # performance_schema.session_connect_attrs program_name: tells our sessions apart
EXCLUDED_SCHEMAS = ("mysql", "performance_schema", "information_schema", "sys")
DIGEST_TEXT_LIMIT = 120  # characters of DIGEST_TEXT kept as a label (the receiver's default)
DIGEST_LIMIT = 250  # digests per collection, the most time-consuming first (the receiver's default)
DIGEST_WINDOW_SECONDS = 86400  # only digests seen in the last day (the receiver's default)

_EXCLUDED = ", ".join(f"'{schema}'" for schema in EXCLUDED_SCHEMAS)


# --- server version ------------------------------------------------------------------------------

_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")
_MYSQL_COMPAT_PREFIX = "5.5.5-"  # MariaDB 10.x prepends this in the handshake for old MySQL clients


@dataclass(frozen=True)
class ServerVersion:
    flavour: Literal["mysql", "mariadb"]
    number: tuple[int, int, int]

    @property
    def is_mariadb(self) -> bool:
        return self.flavour == "mariadb"

    def at_least(self, *number: int) -> bool:
        return self.number >= number

    def __str__(self) -> str:
        name = "MariaDB" if self.is_mariadb else "MySQL"
        return f"{name} {'.'.join(map(str, self.number))}"


def parse_server_version(text: str) -> ServerVersion:
    """The handshake's server_version (or VERSION()): '8.0.36-0ubuntu0.22.04.1', '5.5.5-10.11.6-MariaDB-log'."""
    flavour: Literal["mysql", "mariadb"] = "mariadb" if "mariadb" in text.lower() else "mysql"
    if flavour == "mariadb":
        text = text.removeprefix(_MYSQL_COMPAT_PREFIX)
    match = _VERSION.match(text.strip())
    if match is None:
        raise ValueError(f"unrecognised server version {text!r}")
    major, minor, patch = (int(part) for part in match.groups())
    return ServerVersion(flavour, (major, minor, patch))


# --- one statement from several tables -----------------------------------------------------------


def _text(expression: str) -> str:
    # One explicit collation for every text column: performance_schema, information_schema and
    # CURRENT_USER() differ in charset/collation, which UNION would otherwise refuse to mix on MySQL 8.
    return f"CONVERT({expression} USING utf8mb4) COLLATE utf8mb4_bin"


@dataclass(frozen=True)
class UnionPart:
    """One SELECT of a UNION ALL: text key columns and numeric value columns, as (name, SQL) pairs."""

    source: str
    keys: tuple[tuple[str, str], ...]
    values: tuple[tuple[str, str], ...]
    body: str = ""  # FROM … WHERE … ORDER BY … LIMIT …


def union_sql(parts: Sequence[UnionPart]) -> str:
    """SELECT source, k1..kN, v1..vM per part, NULL-padded to the widest part, joined by UNION ALL."""
    key_width = max(len(p.keys) for p in parts)
    value_width = max(len(p.values) for p in parts)
    selects = []
    for part in parts:
        keys = [_text(sql) for _, sql in part.keys] + ["NULL"] * (key_width - len(part.keys))
        values = [sql for _, sql in part.values] + ["NULL"] * (value_width - len(part.values))
        columns = [f"'{part.source}' AS source"]
        columns += [f"{sql} AS k{i}" for i, sql in enumerate(keys)]
        columns += [f"{sql} AS v{i}" for i, sql in enumerate(values)]
        select = f"SELECT {', '.join(columns)}"
        if part.body:
            select += f"\n{part.body}"
        selects.append(select)
    if len(selects) == 1:
        return selects[0]
    return "\nUNION ALL\n".join(f"({select})" for select in selects)


def split_union(parts: Sequence[UnionPart], rows: Sequence[Sequence[Any]]) -> dict[str, list[dict[str, Any]]]:
    """union_sql's rows back into {source: [ {key/value name: value} ]}."""
    by_source = {part.source: part for part in parts}
    key_width = max(len(p.keys) for p in parts)
    split: dict[str, list[dict[str, Any]]] = {part.source: [] for part in parts}
    for row in rows:
        part = by_source.get(row[0])
        if part is None:
            raise ValueError(f"unexpected source {row[0]!r} in a union reply")
        keys = row[1 : 1 + len(part.keys)]
        values = row[1 + key_width : 1 + key_width + len(part.values)]
        record = dict(zip((name for name, _ in part.keys), keys, strict=False))
        record.update(zip((name for name, _ in part.values), values, strict=False))
        split[part.source].append(record)
    return split


def _columns(*names: str) -> tuple[tuple[str, str], ...]:
    return tuple((name.lower(), name) for name in names)


# --- SQL -------------------------------------------------------------------------------------------

_IO_VALUES = _columns(
    *(f"COUNT_{op}" for op in ("DELETE", "FETCH", "INSERT", "UPDATE")),
    *(f"SUM_TIMER_{op}" for op in ("DELETE", "FETCH", "INSERT", "UPDATE")),
)
_READ_LOCKS = ("NORMAL", "WITH_SHARED_LOCKS", "HIGH_PRIORITY", "NO_INSERT", "EXTERNAL")
_WRITE_LOCKS = ("ALLOW_WRITE", "CONCURRENT_INSERT", "LOW_PRIORITY", "NORMAL", "EXTERNAL")
_LOCK_VALUES = _columns(
    *(f"{agg}_READ_{kind}" for agg in ("COUNT", "SUM_TIMER") for kind in _READ_LOCKS),
    *(f"{agg}_WRITE_{kind}" for agg in ("COUNT", "SUM_TIMER") for kind in _WRITE_LOCKS),
)
_DIGEST_VALUES = _columns(
    "SUM_TIMER_WAIT",
    "SUM_ERRORS",
    "SUM_WARNINGS",
    "SUM_ROWS_AFFECTED",
    "SUM_ROWS_SENT",
    "SUM_ROWS_EXAMINED",
    "SUM_CREATED_TMP_DISK_TABLES",
    "SUM_CREATED_TMP_TABLES",
    "SUM_SORT_MERGE_PASSES",
    "SUM_SORT_ROWS",
    "SUM_NO_INDEX_USED",
)
# Only the ~130 variables the mapping reads, not all ~560: a quarter of the client-side parsing and bytes.
GLOBAL_STATUS_SQL = (
    "SHOW GLOBAL STATUS WHERE Variable_name IN (" + ", ".join(f"'{name}'" for name in sorted(STATUS_VARIABLES)) + ")"
)

_OBJECT_KEYS = (("schema", "OBJECT_SCHEMA"), ("table", "OBJECT_NAME"))
_OBJECT_FILTER = f"WHERE OBJECT_TYPE = 'TABLE' AND OBJECT_SCHEMA NOT IN ({_EXCLUDED})"

PERFORMANCE_SCHEMA_PARTS = {
    "table_io": UnionPart(
        "table_io",
        _OBJECT_KEYS,
        _IO_VALUES,
        f"FROM performance_schema.table_io_waits_summary_by_table {_OBJECT_FILTER}",
    ),
    "index_io": UnionPart(
        "index_io",
        _OBJECT_KEYS + (("index", "INDEX_NAME"),),
        _IO_VALUES,
        f"FROM performance_schema.table_io_waits_summary_by_index_usage {_OBJECT_FILTER}",
    ),
    "table_lock": UnionPart(
        "table_lock",
        _OBJECT_KEYS,
        _LOCK_VALUES,
        f"FROM performance_schema.table_lock_waits_summary_by_table {_OBJECT_FILTER}",
    ),
    # NOT IN also drops statements run without a default schema (SCHEMA_NAME NULL), ours included.
    "digest": UnionPart(
        "digest",
        (("schema", "SCHEMA_NAME"), ("digest", "DIGEST"), ("digest_text", f"LEFT(DIGEST_TEXT, {DIGEST_TEXT_LIMIT})")),
        _DIGEST_VALUES,
        f"FROM performance_schema.events_statements_summary_by_digest\n"
        f"WHERE SCHEMA_NAME NOT IN ({_EXCLUDED})"
        f" AND LAST_SEEN > NOW() - INTERVAL {DIGEST_WINDOW_SECONDS} SECOND\n"
        f"ORDER BY SUM_TIMER_WAIT DESC LIMIT {DIGEST_LIMIT}",
    ),
}


def replica_status_statement(version: ServerVersion) -> str:
    """SHOW REPLICA STATUS replaced SHOW SLAVE STATUS in MySQL 8.0.22; MariaDB lists every named
    connection (multi-source) only with SHOW ALL SLAVES STATUS."""
    if version.is_mariadb:
        return "SHOW ALL SLAVES STATUS"
    return "SHOW REPLICA STATUS" if version.at_least(8, 0, 22) else "SHOW SLAVE STATUS"


def innodb_metrics_enabled_predicate(version: ServerVersion) -> str:
    """MariaDB 10.5 renamed INNODB_METRICS.STATUS ('enabled'/'disabled') to ENABLED (1/0)."""
    return "ENABLED = 1" if version.is_mariadb and version.at_least(10, 5, 0) else "STATUS = 'enabled'"


def redo_log_capacity_expression(version: ServerVersion) -> str:
    """SQL for the redo log capacity in bytes from @@global variables that exist on this version."""
    if not version.is_mariadb and version.at_least(8, 0, 30):
        return "@@global.innodb_redo_log_capacity"
    if version.is_mariadb and version.at_least(10, 5, 0):  # one ib_logfile0 since 10.5
        return "@@global.innodb_log_file_size"
    return "@@global.innodb_log_file_size * @@global.innodb_log_files_in_group"


def catalog_parts(version: ServerVersion, *, tables: bool) -> tuple[UnionPart, ...]:
    """The slow-schedule statement: @@global variables and the account (one row), table sizes if wanted."""
    variables = UnionPart(
        "variables",
        (("account", "CURRENT_USER()"),),
        (
            ("max_connections", "@@global.max_connections"),
            ("innodb_buffer_pool_size", "@@global.innodb_buffer_pool_size"),
            ("redo_log_capacity", redo_log_capacity_expression(version)),
            ("performance_schema", "@@global.performance_schema"),
        ),
    )
    if not tables:
        return (variables,)
    table_part = UnionPart(
        "tables",
        (("schema", "TABLE_SCHEMA"), ("table", "TABLE_NAME")),
        _columns("TABLE_ROWS", "AVG_ROW_LENGTH", "DATA_LENGTH", "INDEX_LENGTH"),
        f"FROM information_schema.TABLES WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA NOT IN ({_EXCLUDED})",
    )
    return variables, table_part


def innodb_parts(version: ServerVersion, counters: Sequence[str], *, transactions: bool) -> tuple[UnionPart, ...]:
    """INNODB_METRICS counters (enabled ones only) and INNODB_TRX aggregates; both need PROCESS."""
    parts = []
    if counters:
        names = ", ".join(f"'{name}'" for name in counters)
        parts.append(
            UnionPart(
                "metrics",
                (("name", "NAME"),),
                (("count", "COUNT"),),
                f"FROM information_schema.INNODB_METRICS WHERE "
                f"{innodb_metrics_enabled_predicate(version)} AND NAME IN ({names})",
            )
        )
    if transactions:
        parts.append(
            UnionPart(
                "trx",
                (),
                (
                    ("active", "COUNT(*)"),
                    ("longest_seconds", "COALESCE(MAX(TIMESTAMPDIFF(SECOND, trx_started, NOW())), 0)"),
                ),
                "FROM information_schema.INNODB_TRX",
            )
        )
    return tuple(parts)


# --- query intelligence ----------------------------------------------------------------------------
# Each read is ONE statement: its rows UNION ALL a one-row 'setup' part saying whether performance_schema
# is on and which of the consumers the read needs are enabled (an empty table alone cannot tell "no
# statements" from "consumer off").


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)


def setup_part(consumers: Sequence[str], instruments: Sequence[str] = ()) -> UnionPart:
    """One row: performance_schema on (1/0), and which of `consumers` and `instruments` are enabled."""
    enabled = [
        "(SELECT GROUP_CONCAT(NAME) FROM performance_schema.setup_consumers"
        f" WHERE ENABLED = 'YES' AND NAME IN ({_quoted(consumers)}))"
    ]
    if instruments:
        enabled.append(
            "(SELECT GROUP_CONCAT(NAME) FROM performance_schema.setup_instruments"
            f" WHERE ENABLED = 'YES' AND NAME IN ({_quoted(instruments)}))"
        )
    return UnionPart(
        "setup",
        (("enabled", f"CONCAT_WS(',', {', '.join(enabled)})"),),
        (("performance_schema", "@@global.performance_schema"),),
    )


def has_cpu_time(version: ServerVersion) -> bool:
    """events_statements_summary_by_digest.SUM_CPU_TIME: MySQL 8.0.28+, not MariaDB."""
    return not version.is_mariadb and version.at_least(8, 0, 28)


def statement_digest_parts(version: ServerVersion, limit: int) -> tuple[UnionPart, ...]:
    """The top `limit` digests by SUM_TIMER_WAIT, numbers only (DIGEST_TEXT is fetched once per digest)."""
    columns = ["COUNT_STAR", "SUM_TIMER_WAIT", *DIGEST_TIME_COLUMNS, *DIGEST_COUNT_COLUMNS]
    if has_cpu_time(version):
        columns.append(CPU_TIME_COLUMN)
    digests = UnionPart(
        "digest",
        (("schema", "SCHEMA_NAME"), ("digest", "DIGEST")),
        # `+ 0e0`: DOUBLE, not the DECIMAL a UNION of BIGINT UNSIGNED and NULL makes (a quarter of the
        # client's CPU went to parsing decimals); a double's 16 digits are ample for these totals.
        (*((name, f"{sql} + 0e0") for name, sql in _columns(*columns)), ("first_seen", "UNIX_TIMESTAMP(FIRST_SEEN)")),
        "FROM performance_schema.events_statements_summary_by_digest\n"
        f"WHERE DIGEST IS NOT NULL AND (SCHEMA_NAME IS NULL OR SCHEMA_NAME NOT IN ({_EXCLUDED}))\n"
        f"ORDER BY SUM_TIMER_WAIT DESC LIMIT {int(limit)}",
    )
    return setup_part(DIGEST_CONSUMERS), digests


def digest_text_sql(digests: Sequence[str]) -> str:
    """DIGEST_TEXT of the given digests (hex, checked by the caller), every schema's row."""
    listed = ", ".join(f"'{digest}'" for digest in digests)
    return (
        "SELECT SCHEMA_NAME, DIGEST, DIGEST_TEXT FROM performance_schema.events_statements_summary_by_digest "
        f"WHERE DIGEST IN ({listed})"
    )


def row_lock_blockers(version: ServerVersion) -> str:
    """The processlist ids holding the InnoDB row locks a session waits for, comma-separated.
    MySQL 8 moved lock waits to performance_schema.data_lock_waits (by thread); MariaDB and MySQL 5.7
    keep information_schema.INNODB_LOCK_WAITS (by transaction)."""
    if not version.is_mariadb and version.at_least(8, 0, 1):
        return (
            "(SELECT GROUP_CONCAT(DISTINCT bt.PROCESSLIST_ID) FROM performance_schema.data_lock_waits lw"
            " JOIN performance_schema.threads bt ON bt.THREAD_ID = lw.BLOCKING_THREAD_ID"
            " WHERE lw.REQUESTING_THREAD_ID = t.THREAD_ID)"
        )
    return (
        "(SELECT GROUP_CONCAT(DISTINCT b.trx_mysql_thread_id) FROM information_schema.INNODB_LOCK_WAITS lw"
        " JOIN information_schema.INNODB_TRX b ON b.trx_id = lw.blocking_trx_id"
        " WHERE lw.requesting_trx_id = trx.trx_id)"
    )


# As sys.schema_table_lock_waits: the other sessions holding a granted metadata lock on the table this
# session has a pending one for (both servers; needs the wait/lock/metadata/sql/mdl instrument).
METADATA_LOCK_BLOCKERS = (
    "(SELECT GROUP_CONCAT(DISTINCT ot.PROCESSLIST_ID) FROM performance_schema.metadata_locks pending"
    " JOIN performance_schema.metadata_locks granted ON granted.OBJECT_TYPE = pending.OBJECT_TYPE"
    " AND granted.OBJECT_SCHEMA = pending.OBJECT_SCHEMA AND granted.OBJECT_NAME = pending.OBJECT_NAME"
    " AND granted.LOCK_STATUS = 'GRANTED' AND granted.OWNER_THREAD_ID <> pending.OWNER_THREAD_ID"
    " JOIN performance_schema.threads ot ON ot.THREAD_ID = granted.OWNER_THREAD_ID"
    " WHERE pending.OWNER_THREAD_ID = t.THREAD_ID AND pending.LOCK_STATUS = 'PENDING'"
    " AND pending.OBJECT_TYPE = 'TABLE')"
)


def blocked_by_expression(version: ServerVersion) -> str:
    """Row-lock and metadata-lock blockers, comma-separated (the mapping drops duplicates)."""
    return f"CONCAT_WS(',', {row_lock_blockers(version)}, {METADATA_LOCK_BLOCKERS})"


_STATEMENT_RUNNING = "(s.EVENT_ID IS NOT NULL AND s.END_EVENT_ID IS NULL)"
_SESSION_DURATION = f"IF({_STATEMENT_RUNNING}, s.TIMER_WAIT / 1e12, t.PROCESSLIST_TIME)"


def query_sample_parts(version: ServerVersion, limit: int) -> tuple[UnionPart, ...]:
    """Foreground sessions other than ours with a statement in progress or a transaction open, the
    longest-running first: the top-level current statement, the newest wait in progress, the InnoDB
    transaction and who blocks it."""
    sessions = UnionPart(
        "session",
        (
            ("user", "t.PROCESSLIST_USER"),
            ("host", "t.PROCESSLIST_HOST"),
            ("db", "t.PROCESSLIST_DB"),
            ("command", "t.PROCESSLIST_COMMAND"),
            ("processlist_state", "t.PROCESSLIST_STATE"),
            ("sql_text", "COALESCE(s.SQL_TEXT, t.PROCESSLIST_INFO)"),
            ("digest", "s.DIGEST"),
            ("current_schema", "s.CURRENT_SCHEMA"),
            ("wait_event", "w.EVENT_NAME"),
            ("trx_state", "trx.trx_state"),
            ("blocked_by", blocked_by_expression(version)),
        ),
        (
            ("processlist_id", "t.PROCESSLIST_ID"),
            ("thread_id", "t.THREAD_ID"),
            ("statement_running", f"IF({_STATEMENT_RUNNING}, 1, 0)"),
            ("statement_timer_wait", f"IF({_STATEMENT_RUNNING}, s.TIMER_WAIT, NULL)"),
            ("processlist_time", "t.PROCESSLIST_TIME"),
            ("wait_timer_wait", "w.TIMER_WAIT"),
            ("duration", _SESSION_DURATION),
        ),
        "FROM performance_schema.threads t\n"
        "LEFT JOIN performance_schema.events_statements_current s"
        " ON s.THREAD_ID = t.THREAD_ID AND s.NESTING_EVENT_LEVEL = 0\n"
        "LEFT JOIN performance_schema.events_waits_current w ON w.THREAD_ID = t.THREAD_ID AND w.EVENT_ID = ("
        "SELECT MAX(x.EVENT_ID) FROM performance_schema.events_waits_current x"
        " WHERE x.THREAD_ID = t.THREAD_ID AND x.END_EVENT_ID IS NULL)\n"
        "LEFT JOIN information_schema.INNODB_TRX trx ON trx.trx_mysql_thread_id = t.PROCESSLIST_ID\n"
        "WHERE t.TYPE = 'FOREGROUND' AND t.PROCESSLIST_ID IS NOT NULL AND t.PROCESSLIST_ID <> CONNECTION_ID()"
        f" AND ({_STATEMENT_RUNNING} OR trx.trx_id IS NOT NULL)\n"
        f"ORDER BY {_SESSION_DURATION} DESC LIMIT {int(limit)}",
    )
    return setup_part(SAMPLE_CONSUMERS, SAMPLE_INSTRUMENTS), sessions


# --- errors ----------------------------------------------------------------------------------------

_PERMISSION_CODES = {1044, 1142, 1143, 1227, 1370}  # db/table/column/specific-privilege access denied
_UNSUPPORTED_CODES = {1054, 1064, 1109, 1146, 1193, 1235, 1289}  # unknown column/table/variable, syntax
_TIMEOUT_CODES = {1205, 1317, 1969, 3024}  # lock wait, interrupted, max_statement_time, max_execution_time
# too many connections, bad password/host/db, shutdown, killed, network, inactivity, offline mode
_CONNECTION_CODES = {
    1040,
    1045,
    1049,
    1053,
    1077,
    1129,
    1130,
    1152,
    1158,
    1159,
    1160,
    1161,
    1184,
    1251,
    1927,
    3032,
    4031,
}


def replica_status_privilege(version: ServerVersion) -> str:
    """The global privilege SHOW (ALL) SLAVE/REPLICA STATUS needs. MariaDB 10.5 split REPLICATION CLIENT
    (now an alias of BINLOG MONITOR) from the right to see replica status."""
    if version.is_mariadb and version.at_least(10, 5, 9):
        return "SLAVE MONITOR"
    if version.is_mariadb and version.at_least(10, 5, 2):
        return "REPLICATION SLAVE ADMIN"
    return "REPLICATION CLIENT"


def quote_account(current_user: str | None, username: str | None) -> str:
    """CURRENT_USER()'s 'name@host' as a GRANT target 'name'@'host' ('%' for the host until it is known)."""
    if current_user and "@" in current_user:
        name, _, host = current_user.rpartition("@")
    else:
        name, host = username or "<user>", "%"
    return f"'{name}'@'{host}'"


def required_grant(query: str, version: ServerVersion | None, account: str) -> str | None:
    """The GRANT statement that lets `query` through, for a permission error's message."""
    if query == INNODB:
        privilege = "PROCESS ON *.*"  # INNODB_METRICS and INNODB_TRX
    elif query in (PERF, DIGESTS, DIGEST_TEXTS):
        privilege = "SELECT ON performance_schema.*"
    elif query == SAMPLES:  # threads and current events; INNODB_TRX and INNODB_LOCK_WAITS need PROCESS
        return f"GRANT SELECT ON performance_schema.* TO {account}; GRANT PROCESS ON *.* TO {account}"
    elif query == REPLICA:
        privilege = f"{replica_status_privilege(version) if version else 'REPLICATION CLIENT'} ON *.*"
    else:
        return None
    return f"GRANT {privilege} TO {account}"


def error_code(exc: BaseException) -> int | None:
    if isinstance(exc, pymysql.err.MySQLError) and exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return None


def classify_error(exc: BaseException) -> Reason:
    """A QueryError reason for an exception raised while connecting, querying or mapping."""
    code = error_code(exc)
    if isinstance(exc, TimeoutError) or code in _TIMEOUT_CODES:  # before OSError: TimeoutError is one
        return "timeout"
    if code in _PERMISSION_CODES:
        return "permission"
    if (
        isinstance(exc, (pymysql.err.InterfaceError, ConnectionError, OSError))
        or code in _CONNECTION_CODES
        or (code is not None and 2000 <= code < 3000)
    ):
        return "connection"
    if code in _UNSUPPORTED_CODES:
        return "unsupported"
    if isinstance(exc, pymysql.err.MySQLError):
        return "server_error"
    return "bad_reply"


def describe_error(exc: BaseException, *, secrets: tuple[str, ...] = ()) -> tuple[Reason, str]:
    """(reason, message). The message is one line and never contains a secret."""
    reason = classify_error(exc)
    code = error_code(exc)
    if code is not None:
        text = str(exc.args[1]) if len(exc.args) > 1 else ""
        text = f"{code} {text}".strip()
    else:
        text = str(exc)
    return reason, error_message(exc, first_line(text), reason=reason, secrets=secrets)


def is_connection_lost(exc: BaseException) -> bool:
    """True when the connection cannot be used again and must be replaced."""
    return classify_error(exc) == "connection"


# --- TLS -------------------------------------------------------------------------------------------


def ssl_context(tls: TLSSettings) -> ssl.SSLContext | None:
    """The aiomysql `ssl` argument for the database's TLS settings (None = plaintext)."""
    return client_ssl_context(tls)


class TLSUnavailable(pymysql.err.OperationalError):
    """TLS is required for the database but its server does not offer it."""


class _Connection(aiomysql.Connection):
    """aiomysql's connection, refusing to authenticate in plaintext when TLS was asked for (aiomysql itself
    would silently carry on without TLS if the server does not offer it)."""

    async def _request_authentication(self) -> None:
        if self._ssl_context and not self.server_capabilities & CLIENT.SSL:
            raise TLSUnavailable(2026, "TLS is enabled for this database but the server does not offer TLS")
        await super()._request_authentication()


# --- client ----------------------------------------------------------------------------------------


class MysqlClient:
    """Holds the one connection and sends every query. Not safe for concurrent use (one collection at a time)."""

    def __init__(self, database: DatabaseConfig, password: SecretStr | None):
        self._config = database
        self._password = password
        self._conn: aiomysql.Connection | None = None
        self._untested = False  # reused connection, no statement answered yet this collection
        self.statements = 0  # statements sent over this client's lifetime
        self.version: ServerVersion | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    @property
    def _connection(self) -> aiomysql.Connection:
        """The open connection; ConnectionError (a "connection" failure) when there is none."""
        conn = self._conn
        if conn is None or conn.closed:
            raise ConnectionError("not connected")
        return conn

    @property
    def connection_id(self) -> int | None:
        """CONNECTION_ID() of our session, from the handshake (None when not connected)."""
        return self._connection.thread_id() if self.connected else None

    async def connect(self) -> None:
        """Open the connection unless one is open. Raises pymysql/OS errors; none carries the password."""
        if self.connected:
            self._untested = True
            return
        self._conn = None
        host, port = parse_host_port(self._config.endpoint)
        conn = _Connection(
            host=host,
            port=port,
            user=self._config.username or "",
            db=self._config.database or None,
            password=self._password.get_secret_value() if self._password is not None else "",
            ssl=ssl_context(self._config.tls),
            connect_timeout=self._config.poll_timeout.total_seconds(),
            autocommit=True,
            program_name=PROGRAM_NAME,
            local_infile=False,
        )
        try:
            await conn._connect()  # what aiomysql.connect() does, with our connection class
            version = parse_server_version(conn.get_server_info())
        except BaseException:  # cancelled or refused half-way: do not leave the socket open
            conn.close()
            raise
        self._conn = conn
        self._untested = False
        self.version = version

    async def _fetch(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """One statement: (column names, rows)."""
        retry, self._untested = self._untested, False
        try:
            return await self._round_trip(sql)
        except Exception as exc:
            if not (retry and is_connection_lost(exc)):
                raise
        await self.connect()  # the reused connection had died while idle: once more on a fresh one
        return await self._round_trip(sql)

    async def _round_trip(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        conn = self._connection
        self.statements += 1
        try:
            async with conn.cursor() as cursor:
                await cursor.execute(sql)
                rows = await cursor.fetchall()
                names = [column[0] for column in cursor.description or ()]
        except asyncio.CancelledError:
            # Cancelled mid-protocol (the scheduler's timeout): aiomysql closed it; start clean next time.
            self._discard()
            raise
        except Exception as exc:
            if is_connection_lost(exc):
                self._discard()
            raise
        return names, list(rows)

    async def _fetch_union(self, parts: Sequence[UnionPart]) -> dict[str, list[dict[str, Any]]]:
        _, rows = await self._fetch(union_sql(parts))
        return split_union(parts, rows)

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            conn.close()

    def _require_version(self) -> ServerVersion:
        if self.version is None:
            raise ConnectionError("not connected")
        return self.version

    # --- queries, one method each ---------------------------------------------------------------

    async def fetch_global_status(self) -> dict[str, str]:
        """SHOW GLOBAL STATUS (the variables the mapping reads) -> {Variable_name: Value}."""
        _, rows = await self._fetch(GLOBAL_STATUS_SQL)
        if rows and len(rows[0]) != 2:
            raise ValueError(f"SHOW GLOBAL STATUS returned {len(rows[0])} columns, expected 2")
        return {str(name): value for name, value in rows}

    async def fetch_catalog(self, *, tables: bool) -> dict[str, Any]:
        """{"account": 'user@host', "variables": {...}, "tables": [...]} — the slow-schedule statement."""
        split = await self._fetch_union(catalog_parts(self._require_version(), tables=tables))
        if len(split["variables"]) != 1:
            raise ValueError(f"variables part returned {len(split['variables'])} rows, expected 1")
        variables = dict(split["variables"][0])
        return {"account": variables.pop("account"), "variables": variables, "tables": split.get("tables", [])}

    async def fetch_innodb(self, counters: Sequence[str], *, transactions: bool) -> dict[str, Any]:
        """{"metrics": {INNODB_METRICS name: count}, "trx": {"active", "longest_seconds"}} (PROCESS grant)."""
        parts = innodb_parts(self._require_version(), counters, transactions=transactions)
        if not parts:
            return {}
        split = await self._fetch_union(parts)
        result: dict[str, Any] = {"metrics": {row["name"]: row["count"] for row in split.get("metrics", [])}}
        if split.get("trx"):
            result["trx"] = split["trx"][0]
        return result

    async def fetch_performance_schema(self, sources: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        """The wanted parts of PERFORMANCE_SCHEMA_PARTS in one statement (SELECT on performance_schema)."""
        return await self._fetch_union([PERFORMANCE_SCHEMA_PARTS[source] for source in sources])

    async def fetch_replica_status(self) -> list[dict[str, Any]]:
        """One row per replication channel, keyed by the server's column names (empty when not a replica)."""
        names, rows = await self._fetch(replica_status_statement(self._require_version()))
        return [dict(zip(names, row, strict=False)) for row in rows]

    async def fetch_statement_digests(self, limit: int) -> dict[str, list[dict[str, Any]]]:
        """{"setup": [one row], "digest": [top `limit` digests, numbers only]} (SELECT on performance_schema)."""
        return await self._fetch_union(statement_digest_parts(self._require_version(), limit))

    async def fetch_digest_texts(self, digests: Sequence[str]) -> list[dict[str, Any]]:
        """[{"schema", "digest", "digest_text"}] of the given hex digests, in one statement."""
        _, rows = await self._fetch(digest_text_sql(digests))
        return [{"schema": schema, "digest": digest, "digest_text": text} for schema, digest, text in rows]

    async def fetch_query_samples(self, limit: int) -> dict[str, list[dict[str, Any]]]:
        """{"setup": [one row], "session": [...]} (SELECT on performance_schema, PROCESS for INNODB_TRX)."""
        return await self._fetch_union(query_sample_parts(self._require_version(), limit))

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None or conn.closed:
            return
        try:
            await asyncio.wait_for(conn.ensure_closed(), timeout=self._config.poll_timeout.total_seconds())
        except Exception:
            conn.close()
        except asyncio.CancelledError:
            conn.close()
            raise
