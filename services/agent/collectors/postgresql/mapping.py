"""Rows -> samples, as pure functions (no I/O), one per client query.

Rows are dicts keyed by the catalog column names each query selects (see client.py), so they can
be written down exactly as PostgreSQL 12-17 document their views. Only enabled metrics produce
samples; a NULL value produces none (the receiver skips those too).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any

from ..metric_table import Sample
from ..samples import SampleEmitter
from .metrics import TABLE

Row = Mapping[str, Any]

# pg_stat_activity.state values (PostgreSQL 12-17), used verbatim as the `state` label.
ACTIVITY_STATES = (
    "active",
    "idle",
    "idle in transaction",
    "idle in transaction (aborted)",
    "fastpath function call",
    "disabled",
)

_BLOCK_SOURCES = ("heap_read", "heap_hit", "idx_read", "idx_hit", "toast_read", "toast_hit", "tidx_read", "tidx_hit")
_CONFLICT_TYPES = ("tablespace", "lock", "snapshot", "bufferpin", "deadlock")
_DB_COLUMNS = {
    "postgresql.commits": "xact_commit",
    "postgresql.rollbacks": "xact_rollback",
    "postgresql.blks_hit": "blks_hit",
    "postgresql.blks_read": "blks_read",
    "postgresql.deadlocks": "deadlocks",
    "postgresql.temp.io": "temp_bytes",
    "postgresql.temp_files": "temp_files",
    "postgresql.tup_deleted": "tup_deleted",
    "postgresql.tup_fetched": "tup_fetched",
    "postgresql.tup_inserted": "tup_inserted",
    "postgresql.tup_returned": "tup_returned",
    "postgresql.tup_updated": "tup_updated",
    "postgresql.backends": "backends",
    "postgresql.database.frozen_xid_age": "frozen_xid_age",
    "postgresql.db_size": "size",
}
_LAG_COLUMNS = (("write", "write_lag"), ("flush", "flush_lag"), ("replay", "replay_lag"))


def _column_value(value: Any) -> float:
    """A column as float, an interval as seconds; a value of any other type raises (a bad reply)."""
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


_emitter = partial(SampleEmitter, TABLE, read=_column_value)


def namespace(database: str, schema: str) -> str:
    """db.namespace for relation-level metrics: `{database}|{schema}`, as the receiver formats it."""
    return f"{database}|{schema}" if schema else database


def database_samples(rows: Iterable[Row], enabled: frozenset[str]) -> list[Sample]:
    """fetch_database_stats rows (pg_stat_database columns + backends, frozen_xid_age, size?, confl_*?)."""
    emit = _emitter(enabled)
    rows = list(rows)
    emit("postgresql.database.count", len(rows))
    for row in rows:
        name = row["datname"]
        for metric, column in _DB_COLUMNS.items():
            emit(metric, row.get(column), name, name)
        for conflict in _CONFLICT_TYPES:
            emit("postgresql.query.conflicts", row.get(f"confl_{conflict}"), conflict, name, name)
    return emit.samples


def unsized_databases(rows: Iterable[Row]) -> list[str]:
    """Databases whose size was asked for but withheld (no CONNECT privilege, not pg_read_all_stats)."""
    return sorted(row["datname"] for row in rows if "size" in row and row["size"] is None)


def _seconds_between(later: dt.datetime | None, earlier: dt.datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return (later - earlier).total_seconds()


def server_samples(row: Row, enabled: frozenset[str]) -> list[Sample]:
    """fetch_server_stats' one row: pg_stat_bgwriter (+ pg_stat_checkpointer on 17+) columns under their
    catalog names, plus last_archived_time, server_now, max_connections, in_recovery; replay_lag (seconds),
    unreplayed_bytes, wal_receiver_status (pg_stat_wal_receiver.status, 'stopped' without a receiver,
    'hidden' without the privilege to see it) and wal_receiver_receipt_age (seconds), all NULL on a primary;
    replication_slots (a list of {slot_name, slot_type, active, retained_bytes}), one count column per
    ACTIVITY_STATES value and oldest_xact_age (seconds)."""
    emit = _emitter(enabled)
    if "checkpoints_timed" in row:  # PostgreSQL <= 16: everything in pg_stat_bgwriter
        checkpoints = {"requested": row["checkpoints_req"], "scheduled": row["checkpoints_timed"]}
        durations = {"sync": row["checkpoint_sync_time"], "write": row["checkpoint_write_time"]}
        writes = {
            "bgwriter": row["buffers_clean"],
            "checkpoints": row["buffers_checkpoint"],
            "backend": row["buffers_backend"],
            "backend_fsync": row["buffers_backend_fsync"],
        }
    else:  # 17+: checkpoint columns moved to pg_stat_checkpointer; backend writes to pg_stat_io
        checkpoints = {"requested": row["num_requested"], "scheduled": row["num_timed"]}
        durations = {"sync": row["sync_time"], "write": row["write_time"]}
        writes = {"bgwriter": row["buffers_clean"], "checkpoints": row["buffers_written"]}
    emit("postgresql.bgwriter.buffers.allocated", row["buffers_alloc"])
    for source, value in writes.items():
        emit("postgresql.bgwriter.buffers.writes", value, source)
    for kind, value in checkpoints.items():
        emit("postgresql.bgwriter.checkpoint.count", value, kind)
    for kind, value in durations.items():
        emit("postgresql.bgwriter.duration", value, kind)
    emit("postgresql.bgwriter.maxwritten", row["maxwritten_clean"])
    emit("postgresql.connection.max", row["max_connections"])
    wal_age = _seconds_between(row["server_now"], row["last_archived_time"])
    emit("postgresql.wal.age", None if wal_age is None else int(wal_age))
    for state in ACTIVITY_STATES:
        emit("postgresql.connection.count", row[state], state)
    emit("postgresql.transaction.oldest_age", row["oldest_xact_age"] or 0.0)
    emit("postgresql.recovery.active", int(bool(row["in_recovery"])))
    emit("postgresql.recovery.replay_lag", row["replay_lag"])
    emit("postgresql.recovery.unreplayed_wal", row["unreplayed_bytes"])
    receiver = row["wal_receiver_status"]  # NULL on a primary, 'hidden' when the user may not see it
    if receiver is not None and receiver != "hidden":
        emit("postgresql.wal_receiver.connected", int(receiver == "streaming"))
    emit("postgresql.wal_receiver.last_msg_receipt_age", row["wal_receiver_receipt_age"])
    for slot in row["replication_slots"]:
        labels = (slot["slot_name"], slot["slot_type"])
        emit("postgresql.replication.slot.retained_wal", slot["retained_bytes"], *labels)
        emit("postgresql.replication.slot.active", int(bool(slot["active"])), *labels)
    return emit.samples


def table_samples(rows: Iterable[Row], database: str, enabled: frozenset[str]) -> list[Sample]:
    """fetch_table_stats rows: pg_stat_user_tables + pg_statio_user_tables columns, last_autovacuum_age and
    last_autoanalyze_age in seconds (NULL if never), + table_size on slow rounds."""
    emit = _emitter(enabled)
    rows = list(rows)
    emit("postgresql.table.count", len(rows), database, database)
    for row in rows:
        schema, table = row["schemaname"], row["relname"]
        # The receiver's legacy resource names a table schema-qualified in postgresql.table.name.
        labels = (namespace(database, schema), table, database, schema, f"{schema}.{table}")
        emit("postgresql.rows", row["n_live_tup"], "live", *labels)
        emit("postgresql.rows", row["n_dead_tup"], "dead", *labels)
        for operation in ("ins", "upd", "del", "hot_upd"):
            emit("postgresql.operations", row[f"n_tup_{operation}"], operation, *labels)
        emit("postgresql.table.vacuum.count", row["vacuum_count"], *labels)
        emit("postgresql.sequential_scans", row["seq_scan"], *labels)
        emit("postgresql.table.autovacuum.count", row["autovacuum_count"], *labels)
        emit("postgresql.table.autoanalyze.count", row["autoanalyze_count"], *labels)
        emit("postgresql.table.last_autovacuum.age", row["last_autovacuum_age"], *labels)
        emit("postgresql.table.last_autoanalyze.age", row["last_autoanalyze_age"], *labels)
        emit("postgresql.table.size", row.get("table_size"), *labels)
        for source in _BLOCK_SOURCES:
            kind, _, what = source.partition("_")
            emit("postgresql.blocks_read", row[f"{kind}_blks_{what}"] or 0, source, *labels)
    return emit.samples


def index_samples(rows: Iterable[Row], database: str, enabled: frozenset[str]) -> list[Sample]:
    """fetch_index_stats rows: pg_stat_user_indexes columns (+ index_size on slow rounds)."""
    emit = _emitter(enabled)
    for row in rows:
        schema, table, index = row["schemaname"], row["relname"], row["indexrelname"]
        labels = (namespace(database, schema), table, index, database, schema, table)
        emit("postgresql.index.scans", row["idx_scan"], *labels)
        emit("postgresql.index.size", row.get("index_size"), *labels)
    return emit.samples


def replication_samples(rows: Iterable[Row], enabled: frozenset[str]) -> list[Sample]:
    """fetch_replication_stats rows: client_addr (text, NULL for a Unix socket), replay_bytes, *_lag intervals.

    The series are per client address, as the receiver's; several standbys (or pg_receivewal, a
    pg_basebackup streaming WAL) on one host share one, so each series is the largest value among them:
    the one furthest behind, and no duplicate series."""
    worst: dict[tuple[str, tuple[str, ...]], float] = {}

    def keep(name: str, value: float | None, *attributes: str) -> None:
        key = (name, attributes)
        if value is not None and (key not in worst or value > worst[key]):
            worst[key] = value

    for row in rows:
        client = row["client_addr"] or "unix"
        keep("postgresql.replication.data_delay", row["replay_bytes"], client)
        for operation, column in _LAG_COLUMNS:
            lag = row[column]
            if lag is None:
                continue
            seconds = lag.total_seconds()
            keep("postgresql.wal.delay", seconds, operation, client)
            # Whole seconds rounded half up, like the receiver's ::integer cast of the epoch.
            keep("postgresql.wal.lag", math.floor(seconds + 0.5), operation, client)
    emit = _emitter(enabled)
    for (name, attributes), value in worst.items():
        emit(name, value, *attributes)
    return emit.samples


def lock_samples(rows: Iterable[Row], database: str, enabled: frozenset[str]) -> list[Sample]:
    """fetch_locks rows: relation ('' for a non-relation lock), mode, locktype, in_database, locks. Locks of no
    single database (in_database false) carry an empty database, as the receiver reports them."""
    emit = _emitter(enabled)
    for row in rows:
        db = database if row["in_database"] else ""
        emit("postgresql.database.locks", row["locks"], row["relation"], row["mode"], row["locktype"], db, db)
    return emit.samples


def function_name(funcname: str, argnames: list[str] | None, overloaded: bool) -> str:
    """The receiver's `function` value: the name, and for an overloaded one its argument names too."""
    if overloaded and argnames:
        return "_".join([funcname, *(name or "" for name in argnames)])
    return funcname


def function_samples(rows: Iterable[Row], database: str, enabled: frozenset[str]) -> list[Sample]:
    """fetch_function_stats rows: schemaname, funcname, calls, proargnames (text[] or NULL), overloaded."""
    emit = _emitter(enabled)
    for row in rows:
        schema = row["schemaname"]
        name = function_name(row["funcname"], row["proargnames"], row["overloaded"])
        emit("postgresql.function.calls", row["calls"], name, namespace(database, schema), database, schema)
    return emit.samples


def execution_time_samples(rows: Iterable[Row], enabled: frozenset[str]) -> list[Sample]:
    """fetch_execution_time rows: datname, exec_seconds."""
    emit = _emitter(enabled)
    for row in rows:
        emit("postgresql.query.execution.time", row["exec_seconds"], row["datname"], row["datname"])
    return emit.samples


DISTANCE_FUNCTION_NAMES = frozenset({"cosine", "l2", "inner_product", "l1", "hamming", "jaccard"})


def vector_samples(rows: Iterable[Row], database: str, enabled: frozenset[str]) -> list[Sample]:
    """fetch_vector_stats rows: kind ('search' per distance_function, or one 'insert'), calls, exec_seconds, rows."""
    emit = _emitter(enabled)
    for row in rows:
        if row["kind"] == "insert":
            emit("postgresql.vector.insert.rows", row["rows"], database, database)
            emit("postgresql.vector.insert.duration", row["exec_seconds"], database, database)
            continue
        function = row["distance_function"]
        if function not in DISTANCE_FUNCTION_NAMES:
            continue  # matched the filter but no single function: no valid attribute value to give it
        emit("postgresql.vector.search.calls", row["calls"], function, database, database)
        emit("postgresql.vector.search.duration", row["exec_seconds"], function, database, database)
        emit("postgresql.vector.search.rows_returned", row["rows"], function, database, database)
    return emit.samples
