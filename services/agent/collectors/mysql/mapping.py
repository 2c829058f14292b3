"""Rows -> samples, as pure functions (no I/O), one per client query.

Inputs are what the client returns: SHOW GLOBAL STATUS as {Variable_name: text}, the other queries
as dicts keyed by the column names documented for MySQL 8.0 and MariaDB 10.11 (lower-cased by the
client where it unions several tables). Only enabled metrics produce samples; a missing status
variable or a NULL produces none — MariaDB lacks some MySQL 8 variables (Mysqlx_*,
Innodb_os_log_fsyncs, Locked_connects…) and MySQL lacks some of MariaDB's, which is not an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any

from ..metric_table import Sample
from ..samples import SampleEmitter, float_number
from .metrics import ADAPTIVE_METRICS, TABLE, TRX_METRICS

Row = Mapping[str, Any]

_emitter = partial(SampleEmitter, TABLE)


# --- SHOW GLOBAL STATUS --------------------------------------------------------------------------


def _series(prefix: str, *names: str) -> tuple[tuple[str, str], ...]:
    return tuple((name, f"{prefix}{name}") for name in names)


# metric -> ((attribute value, status variable), ...); an empty attribute value means no attribute.
STATUS_SERIES: dict[str, tuple[tuple[str, str], ...]] = {
    "mysql.buffer_pool.operations": _series(
        "Innodb_buffer_pool_",
        "read_ahead_rnd",
        "read_ahead",
        "read_ahead_evicted",
        "read_requests",
        "reads",
        "wait_free",
        "write_requests",
    ),
    "mysql.buffer_pool.page_flushes": (("", "Innodb_buffer_pool_pages_flushed"),),
    "mysql.buffer_pool.pages": _series("Innodb_buffer_pool_pages_", "data", "free", "misc", "total"),
    "mysql.double_writes": _series("Innodb_dblwr_", "pages_written", "writes"),
    "mysql.handlers": _series(
        "Handler_",
        "commit",
        "delete",
        "discover",
        "external_lock",
        "mrr_init",
        "prepare",
        "read_first",
        "read_key",
        "read_last",
        "read_next",
        "read_prev",
        "read_rnd",
        "read_rnd_next",
        "rollback",
        "savepoint",
        "savepoint_rollback",
        "update",
        "write",
    ),
    "mysql.locks": _series("Table_locks_", "immediate", "waited"),
    "mysql.log_operations": _series("Innodb_log_", "waits", "write_requests", "writes")
    + (("fsyncs", "Innodb_os_log_fsyncs"),),
    "mysql.mysqlx_connections": _series("Mysqlx_connections_", "accepted", "closed", "rejected"),
    "mysql.opened_resources": (
        ("file", "Opened_files"),
        ("table_definition", "Opened_table_definitions"),
        ("table", "Opened_tables"),
    ),
    "mysql.operations": _series("Innodb_data_", "fsyncs", "reads", "writes"),
    "mysql.page_operations": _series("Innodb_pages_", "created", "read", "written"),
    "mysql.prepared_statements": _series(
        "Com_stmt_", "execute", "close", "fetch", "prepare", "reset", "send_long_data"
    ),
    "mysql.row_locks": (("waits", "Innodb_row_lock_waits"), ("time", "Innodb_row_lock_time")),
    "mysql.row_operations": _series("Innodb_rows_", "deleted", "inserted", "read", "updated"),
    "mysql.sorts": _series("Sort_", "merge_passes", "range", "rows", "scan"),
    "mysql.threads": _series("Threads_", "cached", "connected", "created", "running"),
    "mysql.tmp_resources": _series("Created_tmp_", "disk_tables", "files", "tables"),
    "mysql.uptime": (("", "Uptime"),),
    "mysql.client.network.io": (("received", "Bytes_received"), ("sent", "Bytes_sent")),
    "mysql.commands": _series(
        "Com_",
        "alter_table",
        "create_index",
        "create_table",
        "delete",
        "delete_multi",
        "insert",
        "optimize",
        "select",
        "update",
        "update_multi",
    ),
    "mysql.connection.count": (("", "Connections"),),
    "mysql.connection.errors": _series(
        "Connection_errors_", "accept", "internal", "max_connections", "peer_address", "select", "tcpwrap"
    )
    + (("aborted", "Aborted_connects"), ("aborted_clients", "Aborted_clients"), ("locked", "Locked_connects")),
    "mysql.innodb.data_file.io": (("read", "Innodb_data_read"), ("write", "Innodb_data_written")),
    "mysql.innodb.operation.pending": _series("Innodb_data_pending_", "fsyncs", "reads", "writes"),
    "mysql.innodb.row_lock.wait.count": (("", "Innodb_row_lock_current_waits"),),
    "mysql.joins": (
        ("full", "Select_full_join"),
        ("full_range", "Select_full_range_join"),
        ("range", "Select_range"),
        ("range_check", "Select_range_check"),
        ("scan", "Select_scan"),
    ),
    "mysql.max_used_connections": (("", "Max_used_connections"),),
    "mysql.mysqlx_worker_threads": (("available", "Mysqlx_worker_threads"), ("active", "Mysqlx_worker_threads_active")),
    "mysql.page_size": (("", "Innodb_page_size"),),
    "mysql.query.client.count": (("", "Questions"),),
    "mysql.query.count": (("", "Queries"),),
    "mysql.query.slow.count": (("", "Slow_queries"),),
    "mysql.table_open_cache": _series("Table_open_cache_", "hits", "misses", "overflows"),
    "mysql.myisam.key_cache.block.unused": (("", "Key_blocks_unused"),),
    "mysql.myisam.key_cache.block.used.max": (("", "Key_blocks_used"),),
    "mysql.myisam.key_cache.disk.operation": (("read", "Key_reads"), ("write", "Key_writes")),
    "mysql.myisam.key_cache.request": (("read", "Key_read_requests"), ("write", "Key_write_requests")),
    "mysql.binlog.cache.use": (("transaction", "Binlog_cache_use"), ("statement", "Binlog_stmt_cache_use")),
    "mysql.binlog.cache.disk_use": (
        ("transaction", "Binlog_cache_disk_use"),
        ("statement", "Binlog_stmt_cache_disk_use"),
    ),
    "mysql.innodb.deadlocks": (("", "Innodb_deadlocks"),),
    "mysql.innodb.history_list.length": (("", "Innodb_history_list_length"),),
    "mysql.replicas.connected": (("", "Slaves_connected"),),
}
# The receiver's attribute values for the table_open_cache series differ from the variable suffixes.
_CACHE_STATUS = {"hits": "hit", "misses": "miss", "overflows": "overflow"}

# Every status variable the mapping reads (for checking captured replies against a live server).
STATUS_VARIABLES = frozenset(
    {variable for series in STATUS_SERIES.values() for _, variable in series}
    | {
        "Innodb_buffer_pool_pages_dirty",
        "Innodb_buffer_pool_bytes_data",
        "Innodb_buffer_pool_bytes_dirty",
        "Innodb_row_lock_time_avg",
        "Innodb_row_lock_time_max",
        "Replica_open_temp_tables",
        "Slave_open_temp_tables",
        "Innodb_checkpoint_age",
        "Innodb_redo_log_current_lsn",
        "Innodb_redo_log_checkpoint_lsn",
    }
)

# Adaptive metrics -> the INNODB_METRICS counter used when SHOW GLOBAL STATUS lacks them.
INNODB_METRIC_COUNTERS = {
    "mysql.innodb.deadlocks": "lock_deadlocks",
    "mysql.innodb.history_list.length": "trx_rseg_history_len",
    "mysql.innodb.checkpoint.age": "log_lsn_checkpoint_age",
}


def _checkpoint_age(status: Mapping[str, str]) -> float | None:
    age = float_number(status.get("Innodb_checkpoint_age"))  # MariaDB
    if age is not None:
        return age
    current = float_number(status.get("Innodb_redo_log_current_lsn"))  # MySQL 8.0.30+
    checkpoint = float_number(status.get("Innodb_redo_log_checkpoint_lsn"))
    if current is None or checkpoint is None:
        return None
    return current - checkpoint


def _split(emit: SampleEmitter, name: str, total: Any, dirty: Any) -> None:
    """dirty and clean (= total - dirty), as the receiver splits data pages and bytes."""
    total, dirty = float_number(total), float_number(dirty)
    if dirty is None:
        return
    emit(name, dirty, "dirty")
    if total is not None:
        emit(name, total - dirty, "clean")


def status_samples(status: Mapping[str, str], enabled: frozenset[str]) -> list[Sample]:
    """SHOW GLOBAL STATUS as {Variable_name: Value}."""
    emit = _emitter(enabled)
    for metric, series in STATUS_SERIES.items():
        if metric not in enabled:
            continue
        for attribute, variable in series:
            if metric == "mysql.table_open_cache":
                attribute = _CACHE_STATUS[attribute]
            emit(metric, status.get(variable), *((attribute,) if attribute else ()))
    if "mysql.buffer_pool.pages" in enabled:  # MySQL bug #59550: misc can wrap around to near 2^64
        misc, total = (
            float_number(status.get("Innodb_buffer_pool_pages_misc")),
            float_number(status.get("Innodb_buffer_pool_pages_total")),
        )
        if misc is not None and total is not None and misc > total:
            emit.samples = [
                s for s in emit.samples if not (s.spec.name == "mysql.buffer_pool.pages" and s.attributes == ("misc",))
            ]
    _split(
        emit,
        "mysql.buffer_pool.data_pages",
        status.get("Innodb_buffer_pool_pages_data"),
        status.get("Innodb_buffer_pool_pages_dirty"),
    )
    _split(
        emit,
        "mysql.buffer_pool.usage",
        status.get("Innodb_buffer_pool_bytes_data"),
        status.get("Innodb_buffer_pool_bytes_dirty"),
    )
    for metric, variable in (
        ("mysql.innodb.row_lock.wait.duration.avg", "Innodb_row_lock_time_avg"),
        ("mysql.innodb.row_lock.wait.duration.max", "Innodb_row_lock_time_max"),
    ):
        milliseconds = float_number(status.get(variable))
        emit(metric, None if milliseconds is None else milliseconds / 1000.0)
    emit("mysql.replica.temp_table.open", status.get("Replica_open_temp_tables", status.get("Slave_open_temp_tables")))
    emit("mysql.innodb.checkpoint.age", _checkpoint_age(status))
    return emit.samples


def innodb_metric_names(status: Mapping[str, str] | None, enabled: frozenset[str]) -> tuple[str, ...]:
    """INNODB_METRICS counters to ask for: those of enabled adaptive metrics this status lacks."""
    status = status or {}
    lacking = []
    for metric in sorted(ADAPTIVE_METRICS & enabled):
        if metric == "mysql.innodb.checkpoint.age":
            present = _checkpoint_age(status) is not None
        else:
            present = float_number(status.get(STATUS_SERIES[metric][0][1])) is not None
        if not present:
            lacking.append(INNODB_METRIC_COUNTERS[metric])
    return tuple(lacking)


def innodb_needed(status: Mapping[str, str] | None, enabled: frozenset[str]) -> bool:
    return bool(TRX_METRICS & enabled) or bool(innodb_metric_names(status, enabled))


# --- fetch_innodb --------------------------------------------------------------------------------


def innodb_samples(innodb: Mapping[str, Any], enabled: frozenset[str]) -> list[Sample]:
    """fetch_innodb: {"metrics": {INNODB_METRICS.NAME: COUNT} (enabled counters only),
    "trx": {"active": n, "longest_seconds": s} or absent}."""
    emit = _emitter(enabled)
    counters = innodb.get("metrics", {})
    for metric, counter in INNODB_METRIC_COUNTERS.items():
        emit(metric, counters.get(counter))
    trx = innodb.get("trx")
    if trx:
        emit("mysql.innodb.transaction.active.count", trx.get("active"))
        emit("mysql.innodb.transaction.active.duration.max", trx.get("longest_seconds") or 0)
    return emit.samples


# --- fetch_catalog (slow) ------------------------------------------------------------------------


def variable_samples(
    variables: Mapping[str, Any] | None, status: Mapping[str, str] | None, enabled: frozenset[str]
) -> list[Sample]:
    """The cached @@global variables ({"max_connections", "innodb_buffer_pool_size", "redo_log_capacity"}),
    plus connection utilization against this round's Threads_connected."""
    if not variables:
        return []
    emit = _emitter(enabled)
    emit("mysql.buffer_pool.limit", variables.get("innodb_buffer_pool_size"))
    emit("mysql.connection.max", variables.get("max_connections"))
    emit("mysql.innodb.redo_log.capacity", variables.get("redo_log_capacity"))
    limit = float_number(variables.get("max_connections"))
    connected = float_number((status or {}).get("Threads_connected"))
    if limit and connected is not None:
        emit("mysql.connection.utilization", connected / limit)
    return emit.samples


def table_samples(rows: Iterable[Row], enabled: frozenset[str]) -> list[Sample]:
    """information_schema.TABLES rows: schema, table, table_rows, avg_row_length, data_length, index_length."""
    emit = _emitter(enabled)
    for row in rows:
        labels = (row["table"], row["schema"])
        emit("mysql.table.rows", row["table_rows"], *labels)
        emit("mysql.table.average_row_length", row["avg_row_length"], *labels)
        emit("mysql.table.size", row["data_length"], *labels, "data")
        emit("mysql.table.size", row["index_length"], *labels, "index")
    return emit.samples


# --- fetch_performance_schema --------------------------------------------------------------------

IO_OPERATIONS = ("delete", "fetch", "insert", "update")
READ_LOCKS = ("normal", "with_shared_locks", "high_priority", "no_insert", "external")
WRITE_LOCKS = ("allow_write", "concurrent_insert", "low_priority", "normal", "external")
DIGEST_COUNTS = (
    "errors",
    "warnings",
    "rows_affected",
    "rows_sent",
    "rows_examined",
    "created_tmp_disk_tables",
    "created_tmp_tables",
    "sort_merge_passes",
    "sort_rows",
    "no_index_used",
)
NO_INDEX = "NONE"  # the receiver's index label for I/O that used no index (INDEX_NAME NULL)


def _nanoseconds(picoseconds: Any) -> int | None:
    value = float_number(picoseconds)
    return None if value is None else int(value) // 1000


def performance_schema_samples(parts: Mapping[str, Iterable[Row]], enabled: frozenset[str]) -> list[Sample]:
    """fetch_performance_schema: {"table_io": rows, "index_io": rows, "table_lock": rows, "digest": rows},
    each row keyed by the lower-cased performance_schema column names plus schema/table/index/digest."""
    emit = _emitter(enabled)
    for row in parts.get("table_io", ()):
        table = (row["table"], row["schema"])
        for operation in IO_OPERATIONS:
            emit("mysql.table.io.wait.count", row[f"count_{operation}"], operation, *table)
            emit("mysql.table.io.wait.time", _nanoseconds(row[f"sum_timer_{operation}"]), operation, *table)
    for row in parts.get("index_io", ()):
        index = (row["table"], row["schema"], row["index"] if row["index"] is not None else NO_INDEX)
        for operation in IO_OPERATIONS:
            emit("mysql.index.io.wait.count", row[f"count_{operation}"], operation, *index)
            emit("mysql.index.io.wait.time", _nanoseconds(row[f"sum_timer_{operation}"]), operation, *index)
    for row in parts.get("table_lock", ()):
        locked = (row["schema"], row["table"])
        for direction, kinds in (("read", READ_LOCKS), ("write", WRITE_LOCKS)):
            for kind in kinds:
                emit(f"mysql.table.lock_wait.{direction}.count", row[f"count_{direction}_{kind}"], *locked, kind)
                emit(
                    f"mysql.table.lock_wait.{direction}.time",
                    _nanoseconds(row[f"sum_timer_{direction}_{kind}"]),
                    *locked,
                    kind,
                )
    for row in parts.get("digest", ()):
        digest = (row["schema"], row["digest"], row["digest_text"])
        for kind in DIGEST_COUNTS:
            emit("mysql.statement_event.count", row[f"sum_{kind}"], *digest, kind)
        emit("mysql.statement_event.wait.time", _nanoseconds(row["sum_timer_wait"]), *digest)
    return emit.samples


# --- fetch_replica_status ------------------------------------------------------------------------


def normalize_replica_row(row: Row) -> dict[str, Any]:
    """One SHOW REPLICA/SLAVE STATUS row with MySQL 8.0.22+ names, lower-cased: Slave_IO_Running ->
    replica_io_running, Seconds_Behind_Master -> seconds_behind_source; the channel (MySQL Channel_Name,
    MariaDB Connection_name) as `channel`."""
    normalized: dict[str, Any] = {}
    for column, value in row.items():
        key = column.lower().replace("slave", "replica").replace("master", "source")
        normalized[key] = value
    normalized["channel"] = normalized.get("channel_name", normalized.get("connection_name")) or ""
    return normalized


def replica_samples(rows: Iterable[Row], enabled: frozenset[str]) -> list[Sample]:
    """SHOW REPLICA STATUS / SHOW SLAVE STATUS / SHOW ALL SLAVES STATUS rows, one per channel (none on a
    server that is not a replica)."""
    emit = _emitter(enabled)
    channels = [normalize_replica_row(row) for row in rows]
    for channel in channels:
        name = str(channel["channel"])
        for thread in ("io", "sql"):
            running = channel.get(f"replica_{thread}_running")
            if running is not None:
                emit("mysql.replica.thread.running", 1 if str(running) == "Yes" else 0, thread, name)
            emit("mysql.replica.thread.last_error", channel.get(f"last_{thread}_errno"), thread, name)
    # Attribute-less in the reference: one series, the worst channel.
    for metric, column in (
        ("mysql.replica.time_behind_source", "seconds_behind_source"),
        ("mysql.replica.sql_delay", "sql_delay"),
    ):
        values = [v for v in (float_number(c.get(column)) for c in channels) if v is not None]
        if values:
            emit(metric, max(values))
    return emit.samples
