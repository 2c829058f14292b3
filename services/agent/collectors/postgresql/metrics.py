"""Every PostgreSQL metric, as data, grouped by the one query (client method) it comes from.

Names, types, monotonicity, units and data-point attributes follow the OTel postgresqlreceiver
(tests/reference/metrics/postgresql.tsv). The receiver's resource attributes that tell series
apart are appended after the data-point attributes, as labels: postgresql.database.name on
database-level metrics; postgresql.database.name, postgresql.schema.name, postgresql.table.name
on table and index metrics (postgresql.index.name is already a data-point attribute there).

verified_on: "PostgreSQL 15" = seen working against the real server of the integration tests
(with pg_receivewal streaming from it, and a replication slot); "PostgreSQL 15 primary + streaming
standby" = seen from both ends of a real streaming replication pair (tests/integration/
test_replication.py: in step, with replay paused, with the link cut and mended, after a replay
conflict); "(documented shape)" = the SQL is checked against that version's documented catalog
columns and the mapping fed rows of that shape.
"""

from __future__ import annotations

from ..metric_table import MetricSpec, MetricTable

DATABASE_ATTRS = ("db.namespace", "postgresql.database.name")
RELATION_RESOURCE = ("postgresql.database.name", "postgresql.schema.name", "postgresql.table.name")
TABLE_ATTRS = ("db.namespace", "db.collection.name") + RELATION_RESOURCE
INDEX_ATTRS = ("db.namespace", "db.collection.name", "postgresql.index.name") + RELATION_RESOURCE
REPLICATION_CLIENT = ("replication_client",)
SLOT_ATTRS = ("slot_name", "slot_type")
FUNCTION_ATTRS = ("function", "db.namespace", "postgresql.database.name", "postgresql.schema.name")
DISTANCE_ATTRS = ("postgresql.distance.function.name",) + DATABASE_ATTRS

PG15 = "PostgreSQL 15"
PG12_DOCUMENTED = "PostgreSQL 12 (documented shape)"
PG17_DOCUMENTED = "PostgreSQL 17 (documented shape)"
PG15_PAIR = "PostgreSQL 15 primary + streaming standby"
VERIFIED = (PG15, PG12_DOCUMENTED, PG17_DOCUMENTED)
# Replication metrics seen on the lone test server too (a WAL receiver, a slot, zeros on a primary).
REPLICATION_VERIFIED = (PG15, PG15_PAIR, PG12_DOCUMENTED, PG17_DOCUMENTED)
# Only a standby, or a primary that archives WAL and has a standby replaying, shows them.
STANDBY_VERIFIED = (PG15_PAIR, PG12_DOCUMENTED, PG17_DOCUMENTED)
# No autovacuum run can be forced within a test's seconds: the ages are read live only as NULL.
AUTOVACUUM_AGE_VERIFIED = (PG12_DOCUMENTED, "PostgreSQL 15 (documented shape)", PG17_DOCUMENTED)
# pgvector is not installed on the test server: its statements are imitated (same text shapes).
VECTOR_VERIFIED = (
    "PostgreSQL 15 (pgvector-shaped statements, extension not installed)",
    PG12_DOCUMENTED,
    PG17_DOCUMENTED,
)

_DB_SOURCE = "fetch_database_stats: pg_stat_database JOIN pg_database (non-template)"
_SERVER_SOURCE = "fetch_server_stats"
_TABLE_SOURCE = "fetch_table_stats: pg_stat_user_tables JOIN pg_statio_user_tables (configured database)"
_INDEX_SOURCE = "fetch_index_stats: pg_stat_user_indexes (configured database)"
_REPLICATION_SOURCE = "fetch_replication_stats: pg_stat_replication"


def _counter(name, unit, description, source, attributes=(), verified_on=VERIFIED, **kw) -> MetricSpec:
    return MetricSpec(
        name, "sum", unit, description, source, monotonic=True, attributes=attributes, verified_on=verified_on, **kw
    )


def _updown(name, unit, description, source, attributes=(), verified_on=VERIFIED, **kw) -> MetricSpec:
    return MetricSpec(
        name, "sum", unit, description, source, monotonic=False, attributes=attributes, verified_on=verified_on, **kw
    )


def _gauge(name, unit, description, source, attributes=(), verified_on=VERIFIED, **kw) -> MetricSpec:
    return MetricSpec(name, "gauge", unit, description, source, attributes=attributes, verified_on=verified_on, **kw)


def _db_counter(name, unit, column, description, **kw) -> MetricSpec:
    return _counter(name, unit, description, f"{_DB_SOURCE}: {column}", DATABASE_ATTRS, **kw)


DATABASE_SPECS = (
    _updown(
        "postgresql.backends",
        "1",
        "Backend processes per database (all states and backend types).",
        f"{_DB_SOURCE}: count(*) of pg_stat_activity per datid",
        DATABASE_ATTRS,
    ),
    _db_counter("postgresql.commits", "1", "xact_commit", "Committed transactions."),
    _db_counter("postgresql.rollbacks", "1", "xact_rollback", "Rolled-back transactions."),
    _updown(
        "postgresql.database.count", "{databases}", "Number of non-template databases.", f"{_DB_SOURCE}: row count"
    ),
    _updown(
        "postgresql.db_size",
        "By",
        "Disk space used by the database (refreshed on the slow schedule).",
        f"{_DB_SOURCE}: pg_database_size(oid), slow rounds only",
        DATABASE_ATTRS,
    ),
    _db_counter(
        "postgresql.blks_hit",
        "{blks_hit}",
        "blks_hit",
        "Block reads satisfied from shared buffers.",
        enabled_by_default=False,
    ),
    _db_counter("postgresql.blks_read", "{blks_read}", "blks_read", "Disk blocks read.", enabled_by_default=False),
    _db_counter("postgresql.deadlocks", "{deadlock}", "deadlocks", "Deadlocks detected.", enabled_by_default=False),
    _db_counter(
        "postgresql.temp.io", "By", "temp_bytes", "Bytes written to temporary files.", enabled_by_default=False
    ),
    _db_counter(
        "postgresql.temp_files", "{temp_file}", "temp_files", "Temporary files created.", enabled_by_default=False
    ),
    _db_counter(
        "postgresql.tup_deleted", "{tup_deleted}", "tup_deleted", "Rows deleted by queries.", enabled_by_default=False
    ),
    _db_counter(
        "postgresql.tup_fetched", "{tup_fetched}", "tup_fetched", "Rows fetched by queries.", enabled_by_default=False
    ),
    _db_counter(
        "postgresql.tup_inserted",
        "{tup_inserted}",
        "tup_inserted",
        "Rows inserted by queries.",
        enabled_by_default=False,
    ),
    _db_counter(
        "postgresql.tup_returned",
        "{tup_returned}",
        "tup_returned",
        "Rows returned by queries.",
        enabled_by_default=False,
    ),
    _db_counter(
        "postgresql.tup_updated", "{tup_updated}", "tup_updated", "Rows updated by queries.", enabled_by_default=False
    ),
    _counter(
        "postgresql.query.conflicts",
        "{query}",
        "Standby queries cancelled by recovery conflicts (0 on a primary).",
        f"{_DB_SOURCE} LEFT JOIN pg_stat_database_conflicts: confl_*",
        ("postgresql.conflict.type",) + DATABASE_ATTRS,
        enabled_by_default=False,
        verified_on=REPLICATION_VERIFIED,
    ),
    _gauge(
        "postgresql.database.frozen_xid_age",
        "{transactions}",
        "Transactions since the database's oldest unfrozen XID; wraparound is forced near 2^31.",
        f"{_DB_SOURCE}: age(datfrozenxid)",
        DATABASE_ATTRS,
        tier="beyond",
    ),
)

SERVER_SPECS = (
    _counter(
        "postgresql.bgwriter.buffers.allocated",
        "{buffers}",
        "Shared buffers allocated.",
        f"{_SERVER_SOURCE}: pg_stat_bgwriter.buffers_alloc",
    ),
    _counter(
        "postgresql.bgwriter.buffers.writes",
        "{buffers}",
        "Buffers written, by writer (backend and backend_fsync absent on PostgreSQL 17+).",
        f"{_SERVER_SOURCE}: pg_stat_bgwriter buffers_clean/_backend/_backend_fsync/_checkpoint; "
        "17+: pg_stat_checkpointer.buffers_written",
        ("source",),
    ),
    _counter(
        "postgresql.bgwriter.checkpoint.count",
        "{checkpoints}",
        "Checkpoints performed (requested vs timed).",
        f"{_SERVER_SOURCE}: pg_stat_bgwriter checkpoints_req/_timed; 17+: pg_stat_checkpointer num_requested/num_timed",
        ("type",),
    ),
    _counter(
        "postgresql.bgwriter.duration",
        "ms",
        "Checkpoint time spent writing and syncing files.",
        f"{_SERVER_SOURCE}: pg_stat_bgwriter checkpoint_write_time/_sync_time; 17+: pg_stat_checkpointer "
        "write_time/sync_time",
        ("type",),
    ),
    _counter(
        "postgresql.bgwriter.maxwritten",
        "1",
        "Times the background writer stopped a cleaning scan after writing too many buffers.",
        f"{_SERVER_SOURCE}: pg_stat_bgwriter.maxwritten_clean",
    ),
    _gauge(
        "postgresql.connection.max",
        "{connections}",
        "Configured max_connections.",
        f"{_SERVER_SOURCE}: current_setting('max_connections')",
    ),
    _gauge(
        "postgresql.wal.age",
        "s",
        "Seconds since the last WAL file was archived (absent until one is).",
        f"{_SERVER_SOURCE}: pg_stat_archiver.last_archived_time vs now()",
        verified_on=STANDBY_VERIFIED,
    ),
    _updown(
        "postgresql.connection.count",
        "{connections}",
        "Backends by pg_stat_activity state.",
        f"{_SERVER_SOURCE}: count(*) FILTER (WHERE state = …) over pg_stat_activity",
        ("state",),
        tier="beyond",
    ),
    _gauge(
        "postgresql.transaction.oldest_age",
        "s",
        "Age of the oldest open transaction (0 when none).",
        f"{_SERVER_SOURCE}: now() - min(pg_stat_activity.xact_start)",
        tier="beyond",
    ),
    _gauge(
        "postgresql.recovery.active",
        "{bool}",
        "1 when the server is a standby in recovery, else 0.",
        f"{_SERVER_SOURCE}: pg_is_in_recovery()",
        tier="beyond",
        verified_on=REPLICATION_VERIFIED,
    ),
    _gauge(
        "postgresql.recovery.replay_lag",
        "s",
        "On a standby: seconds since the last replayed transaction committed on the primary; 0 while all "
        "WAL received is replayed (absent on a primary). A standby cut off from its primary receives nothing and "
        "so reads 0 here too: postgresql.wal_receiver.connected tells the two apart.",
        f"{_SERVER_SOURCE}: now() - pg_last_xact_replay_timestamp(), 0 when pg_last_wal_receive_lsn() = "
        "pg_last_wal_replay_lsn()",
        tier="beyond",
        verified_on=STANDBY_VERIFIED,
    ),
    _gauge(
        "postgresql.recovery.unreplayed_wal",
        "By",
        "On a standby: bytes of WAL received but not yet replayed (absent on a primary).",
        f"{_SERVER_SOURCE}: pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())",
        tier="beyond",
        verified_on=STANDBY_VERIFIED,
    ),
    _gauge(
        "postgresql.wal_receiver.connected",
        "{bool}",
        "On a standby: 1 while its WAL receiver streams from the primary, else 0 (no WAL receiver, or one "
        "still connecting): the replication link is down. Absent on a primary, and for a user without "
        "pg_read_all_stats (which pg_monitor includes), who is not shown the receiver's status.",
        f"{_SERVER_SOURCE}: pg_stat_wal_receiver.status = 'streaming'",
        tier="beyond",
        verified_on=STANDBY_VERIFIED,
    ),
    _gauge(
        "postgresql.wal_receiver.last_msg_receipt_age",
        "s",
        "On a standby: seconds since its WAL receiver last heard from the primary (WAL or keepalive, at "
        "least every wal_sender_timeout / 2 from a live primary): grows while the link hangs. Absent while no "
        "WAL receiver runs.",
        f"{_SERVER_SOURCE}: now() - pg_stat_wal_receiver.last_msg_receipt_time",
        tier="beyond",
        verified_on=STANDBY_VERIFIED,
    ),
    _gauge(
        "postgresql.replication.slot.retained_wal",
        "By",
        "WAL kept for each replication slot, from its restart_lsn to the current WAL position: an abandoned "
        "slot grows it until the disk fills.",
        f"{_SERVER_SOURCE}: pg_replication_slots pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) "
        "(received position on a standby)",
        SLOT_ATTRS,
        tier="beyond",
        verified_on=REPLICATION_VERIFIED,
    ),
    _gauge(
        "postgresql.replication.slot.active",
        "{bool}",
        "1 while a consumer is connected to the slot, else 0.",
        f"{_SERVER_SOURCE}: pg_replication_slots.active",
        SLOT_ATTRS,
        tier="beyond",
        verified_on=REPLICATION_VERIFIED,
    ),
)

TABLE_SPECS = (
    _counter(
        "postgresql.blocks_read",
        "1",
        "Per-table block reads and hits for heap, index, TOAST, TOAST index.",
        f"{_TABLE_SOURCE}: pg_statio_user_tables *_blks_read/*_blks_hit",
        ("source",) + TABLE_ATTRS,
    ),
    _counter(
        "postgresql.operations",
        "1",
        "Row operations per table by kind.",
        f"{_TABLE_SOURCE}: n_tup_ins/_upd/_del/_hot_upd",
        ("operation",) + TABLE_ATTRS,
    ),
    _updown(
        "postgresql.rows",
        "1",
        "Estimated live and dead rows per table.",
        f"{_TABLE_SOURCE}: n_live_tup/n_dead_tup",
        ("state",) + TABLE_ATTRS,
    ),
    _updown(
        "postgresql.table.count",
        "{table}",
        "User tables in the configured database.",
        f"{_TABLE_SOURCE}: row count",
        DATABASE_ATTRS,
    ),
    _updown(
        "postgresql.table.size",
        "By",
        "Main-fork size of each table (refreshed on the slow schedule).",
        f"{_TABLE_SOURCE}: pg_relation_size(relid), slow rounds only",
        TABLE_ATTRS,
    ),
    _counter(
        "postgresql.table.vacuum.count",
        "{vacuum}",
        "Manual VACUUM count per table.",
        f"{_TABLE_SOURCE}: vacuum_count",
        TABLE_ATTRS,
    ),
    _counter(
        "postgresql.sequential_scans",
        "{sequential_scan}",
        "Sequential scans per table.",
        f"{_TABLE_SOURCE}: seq_scan",
        TABLE_ATTRS,
        enabled_by_default=False,
    ),
    _counter(
        "postgresql.table.autovacuum.count",
        "{vacuum}",
        "Autovacuum runs per table.",
        f"{_TABLE_SOURCE}: autovacuum_count",
        TABLE_ATTRS,
        tier="beyond",
    ),
    _counter(
        "postgresql.table.autoanalyze.count",
        "{analyze}",
        "Autoanalyze runs per table.",
        f"{_TABLE_SOURCE}: autoanalyze_count",
        TABLE_ATTRS,
        tier="beyond",
    ),
    _gauge(
        "postgresql.table.last_autovacuum.age",
        "s",
        "Seconds since autovacuum last processed the table (absent if it never has).",
        f"{_TABLE_SOURCE}: now() - last_autovacuum",
        TABLE_ATTRS,
        tier="beyond",
        verified_on=AUTOVACUUM_AGE_VERIFIED,
    ),
    _gauge(
        "postgresql.table.last_autoanalyze.age",
        "s",
        "Seconds since autoanalyze last processed the table (absent if it never has).",
        f"{_TABLE_SOURCE}: now() - last_autoanalyze",
        TABLE_ATTRS,
        tier="beyond",
        verified_on=AUTOVACUUM_AGE_VERIFIED,
    ),
)

INDEX_SPECS = (
    _counter("postgresql.index.scans", "{scans}", "Index scans per index.", f"{_INDEX_SOURCE}: idx_scan", INDEX_ATTRS),
    _gauge(
        "postgresql.index.size",
        "By",
        "On-disk size of each index (refreshed on the slow schedule).",
        f"{_INDEX_SOURCE}: pg_relation_size(indexrelid), slow rounds only",
        INDEX_ATTRS,
    ),
)

REPLICATION_SPECS = (
    _gauge(
        "postgresql.replication.data_delay",
        "By",
        "Bytes of WAL not yet replayed by each standby (standbys sharing a client address: the one furthest behind).",
        f"{_REPLICATION_SOURCE}: pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)",
        REPLICATION_CLIENT,
        verified_on=STANDBY_VERIFIED,
    ),
    _gauge(
        "postgresql.wal.lag",
        "s",
        "Standby write/flush/replay lag, whole seconds (standbys sharing a client address: the largest).",
        f"{_REPLICATION_SOURCE}: write_lag/flush_lag/replay_lag",
        ("operation",) + REPLICATION_CLIENT,
        verified_on=REPLICATION_VERIFIED,
    ),
    _gauge(
        "postgresql.wal.delay",
        "s",
        "Standby write/flush/replay lag, fractional seconds (standbys sharing a client address: the largest).",
        f"{_REPLICATION_SOURCE}: write_lag/flush_lag/replay_lag",
        ("operation",) + REPLICATION_CLIENT,
        enabled_by_default=False,
        verified_on=REPLICATION_VERIFIED,
    ),
)

# Optional metrics with a statement of their own: sent only while one of its metrics is enabled.
LOCK_SPECS = (
    _gauge(
        "postgresql.database.locks",
        "{lock}",
        "Locks held or awaited in the configured database (and locks of no single database: shared catalogs, "
        "transaction ids), by relation, mode and lock type.",
        "fetch_locks: pg_locks LEFT JOIN pg_class GROUP BY relname, mode, locktype",
        ("relation", "mode", "lock_type") + DATABASE_ATTRS,
        enabled_by_default=False,
    ),
)

FUNCTION_SPECS = (
    _counter(
        "postgresql.function.calls",
        "{call}",
        "Calls per user function of the configured database (needs track_functions = pl or all).",
        "fetch_function_stats: pg_stat_user_functions.calls JOIN pg_proc",
        FUNCTION_ATTRS,
        enabled_by_default=False,
    ),
)

EXECUTION_SPECS = (
    _counter(
        "postgresql.query.execution.time",
        "s",
        "Time spent executing the statements pg_stat_statements tracks, per database.",
        "fetch_execution_time: sum(total_exec_time) / 1000 of pg_stat_statements(false) per database "
        "(total_time before PostgreSQL 13)",
        DATABASE_ATTRS,
        enabled_by_default=False,
    ),
)

_VECTOR_SOURCE = "fetch_vector_stats: pg_stat_statements of the configured database"
VECTOR_SPECS = (
    _counter(
        "postgresql.vector.search.calls",
        "{search}",
        "pgvector similarity searches by distance function.",
        f"{_VECTOR_SOURCE}: sum(calls) of statements using a distance operator or function",
        DISTANCE_ATTRS,
        enabled_by_default=False,
        verified_on=VECTOR_VERIFIED,
    ),
    _counter(
        "postgresql.vector.search.duration",
        "s",
        "Execution time of pgvector similarity searches.",
        f"{_VECTOR_SOURCE}: sum(total_exec_time) / 1000 of those statements",
        DISTANCE_ATTRS,
        enabled_by_default=False,
        verified_on=VECTOR_VERIFIED,
    ),
    _counter(
        "postgresql.vector.search.rows_returned",
        "{rows}",
        "Rows returned by pgvector similarity searches.",
        f"{_VECTOR_SOURCE}: sum(rows) of those statements",
        DISTANCE_ATTRS,
        enabled_by_default=False,
        verified_on=VECTOR_VERIFIED,
    ),
    _counter(
        "postgresql.vector.insert.rows",
        "{vectors}",
        "Rows inserted into tables with a pgvector column.",
        f"{_VECTOR_SOURCE}: sum(rows) of INSERT INTO / COPY FROM into a table with a vector, halfvec or "
        "sparsevec column",
        DATABASE_ATTRS,
        enabled_by_default=False,
        verified_on=VECTOR_VERIFIED,
    ),
    _counter(
        "postgresql.vector.insert.duration",
        "s",
        "Execution time of inserts into tables with a pgvector column.",
        f"{_VECTOR_SOURCE}: sum(total_exec_time) / 1000 of those inserts",
        DATABASE_ATTRS,
        enabled_by_default=False,
        verified_on=VECTOR_VERIFIED,
    ),
)

TABLE = MetricTable(
    DATABASE_SPECS
    + SERVER_SPECS
    + TABLE_SPECS
    + INDEX_SPECS
    + REPLICATION_SPECS
    + LOCK_SPECS
    + FUNCTION_SPECS
    + EXECUTION_SPECS
    + VECTOR_SPECS
)

# Which metrics each client method feeds: a query runs only if one of its metrics is enabled.
METRICS_BY_QUERY = {
    "fetch_database_stats": frozenset(s.name for s in DATABASE_SPECS),
    "fetch_server_stats": frozenset(s.name for s in SERVER_SPECS),
    "fetch_table_stats": frozenset(s.name for s in TABLE_SPECS),
    "fetch_index_stats": frozenset(s.name for s in INDEX_SPECS),
    "fetch_replication_stats": frozenset(s.name for s in REPLICATION_SPECS),
    "fetch_locks": frozenset(s.name for s in LOCK_SPECS),
    "fetch_function_stats": frozenset(s.name for s in FUNCTION_SPECS),
    "fetch_execution_time": frozenset(s.name for s in EXECUTION_SPECS),
    "fetch_vector_stats": frozenset(s.name for s in VECTOR_SPECS),
}

# Sizes stat() every file of a relation or database: fetched on the slow schedule only.
SIZE_METRICS = frozenset({"postgresql.db_size", "postgresql.table.size", "postgresql.index.size"})
