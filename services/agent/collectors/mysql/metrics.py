"""Every MySQL/MariaDB metric, as data, grouped by the one query (client method) it comes from.

Names, types, monotonicity, units and data-point attributes follow the OTel mysqlreceiver
(tests/reference/metrics/mysql.tsv). The receiver's resource attribute mysql.instance.endpoint
is not emitted (the exposition adds dbintel_resource). Where the receiver and this table differ:

- mysql.buffer_pool.limit comes from @@global.innodb_buffer_pool_size (bytes on MySQL and
  MariaDB), not information_schema.innodb_metrics buffer_pool_size: MariaDB 10.11 reports that
  counter in pages (8112 for a 128 MiB pool), and the variable costs no PROCESS grant.
- mysql.replica.time_behind_source and mysql.replica.sql_delay have no data-point attributes in
  the reference; with several replication channels the largest value is emitted (worst lag).
- Perf-schema timers are picoseconds; the *.time metrics are nanoseconds (ps // 1000), as the
  receiver's FLOOR(SUM_TIMER_*/1000).

Beyond the receiver (tier="beyond", on by default): max_connections and its use, InnoDB
checkpoint age and redo log capacity, binlog cache (disk) use, deadlocks, the replica threads'
last error numbers, the replicas connected to a source — what mysqld_exporter and Datadog users
alert on.
"""

from __future__ import annotations

from functools import partial

from ..metric_table import MetricSpec, MetricTable, metric_spec

MARIADB = "MariaDB 10.11"
MARIADB_PAIR = "MariaDB 10.11 source + replica"  # a real replication pair: tests/integration/test_replication.py
MYSQL8 = "MySQL 8.0 (documented shape)"
BOTH = (MARIADB, MYSQL8)
# Replica state seen on the lone test server (a replica connection to nowhere) and on a real pair.
REPLICA_VERIFIED = (MARIADB, MARIADB_PAIR, MYSQL8)

STATUS = "fetch_global_status"
CATALOG = "fetch_catalog"
INNODB = "fetch_innodb"
PERF = "fetch_performance_schema"
REPLICA = "fetch_replica_status"

_STATUS_SOURCE = f"{STATUS}: SHOW GLOBAL STATUS"
_VARIABLES_SOURCE = f"{CATALOG}: @@global variables (slow schedule)"
_TABLES_SOURCE = f"{CATALOG}: information_schema.TABLES (slow schedule)"
_TRX_SOURCE = f"{INNODB}: information_schema.INNODB_TRX"
_IO_TABLE_SOURCE = f"{PERF}: performance_schema.table_io_waits_summary_by_table"
_IO_INDEX_SOURCE = f"{PERF}: performance_schema.table_io_waits_summary_by_index_usage"
_LOCK_SOURCE = f"{PERF}: performance_schema.table_lock_waits_summary_by_table"
_DIGEST_SOURCE = f"{PERF}: performance_schema.events_statements_summary_by_digest (top 250 by time, seen in 24 h)"
_REPLICA_SOURCE = (
    f"{REPLICA}: SHOW REPLICA STATUS (MySQL 8.0.22+), SHOW SLAVE STATUS (older MySQL), SHOW ALL SLAVES STATUS (MariaDB)"
)

IO_ATTRS = ("operation", "table", "schema")
INDEX_IO_ATTRS = ("operation", "table", "schema", "index")
LOCK_ATTRS = ("schema", "table", "kind")
DIGEST_ATTRS = ("schema", "digest", "digest_text")
TABLE_ATTRS = ("table", "schema")
REPLICA_THREAD_ATTRS = ("mysql.replica.thread.type", "mysql.replica.channel.name")


# Rows name where they were verified only when it differs from BOTH.
_spec = partial(metric_spec, verified=BOTH)


def _status_counter(
    name: str, unit: str, description: str, variables: str, attributes: tuple[str, ...] = (), **kw
) -> MetricSpec:
    return _spec(
        name, "sum", unit, description, f"{_STATUS_SOURCE} {variables}", monotonic=True, attributes=attributes, **kw
    )


def _status_updown(
    name: str, unit: str, description: str, variables: str, attributes: tuple[str, ...] = (), **kw
) -> MetricSpec:
    return _spec(name, "sum", unit, description, f"{_STATUS_SOURCE} {variables}", attributes=attributes, **kw)


def _status_gauge(name: str, unit: str, description: str, variables: str, **kw) -> MetricSpec:
    return _spec(name, "gauge", unit, description, f"{_STATUS_SOURCE} {variables}", **kw)


STATUS_SPECS = (
    # --- reference, enabled by default ---------------------------------------------------------
    _status_updown(
        "mysql.buffer_pool.data_pages",
        "1",
        "InnoDB buffer pool data pages, dirty vs clean.",
        "Innodb_buffer_pool_pages_dirty, _pages_data minus _pages_dirty",
        ("status",),
    ),
    _status_counter(
        "mysql.buffer_pool.operations",
        "1",
        "InnoDB buffer pool operations by kind.",
        "Innodb_buffer_pool_read_ahead_rnd/_read_ahead/_read_ahead_evicted/_read_requests/_reads/"
        "_wait_free/_write_requests",
        ("operation",),
    ),
    _status_counter(
        "mysql.buffer_pool.page_flushes", "1", "Buffer pool page flush requests.", "Innodb_buffer_pool_pages_flushed"
    ),
    _status_updown(
        "mysql.buffer_pool.pages",
        "1",
        "Buffer pool pages by kind (misc skipped when out of range).",
        "Innodb_buffer_pool_pages_data/_free/_misc/_total",
        ("kind",),
    ),
    _status_updown(
        "mysql.buffer_pool.usage",
        "By",
        "Bytes held in the buffer pool, dirty vs clean.",
        "Innodb_buffer_pool_bytes_dirty, _bytes_data minus _bytes_dirty",
        ("status",),
    ),
    _status_counter(
        "mysql.double_writes",
        "1",
        "InnoDB doublewrite buffer activity.",
        "Innodb_dblwr_pages_written/_writes",
        ("kind",),
    ),
    _status_counter("mysql.handlers", "1", "Storage-engine handler requests by kind.", "Handler_*", ("kind",)),
    _status_counter(
        "mysql.locks",
        "1",
        "Table locks granted immediately vs after waiting.",
        "Table_locks_immediate/_waited",
        ("kind",),
    ),
    _status_counter(
        "mysql.log_operations",
        "1",
        "InnoDB redo log operations (fsyncs absent on MariaDB 10.8+, which dropped Innodb_os_log_fsyncs).",
        "Innodb_log_waits/_write_requests/_writes, Innodb_os_log_fsyncs",
        ("operation",),
    ),
    _status_counter(
        "mysql.mysqlx_connections",
        "1",
        "X Plugin connections by outcome (MySQL only).",
        "Mysqlx_connections_accepted/_closed/_rejected",
        ("status",),
        verified=(MYSQL8,),
    ),
    _status_counter(
        "mysql.opened_resources",
        "1",
        "Files, table definitions and tables opened.",
        "Opened_files/_table_definitions/_tables",
        ("kind",),
    ),
    _status_counter(
        "mysql.operations",
        "1",
        "InnoDB data-file fsyncs, reads, writes.",
        "Innodb_data_fsyncs/_reads/_writes",
        ("operation",),
    ),
    _status_counter(
        "mysql.page_operations",
        "1",
        "InnoDB pages created, read, written.",
        "Innodb_pages_created/_read/_written",
        ("operation",),
    ),
    _status_counter(
        "mysql.prepared_statements", "1", "Prepared-statement protocol commands.", "Com_stmt_*", ("command",)
    ),
    _status_counter(
        "mysql.row_locks",
        "1",
        "InnoDB row lock waits and total wait time (ms).",
        "Innodb_row_lock_waits/_time",
        ("kind",),
    ),
    _status_counter(
        "mysql.row_operations",
        "1",
        "InnoDB row operations (MySQL only: MariaDB 10.11 no longer exports Innodb_rows_*).",
        "Innodb_rows_deleted/_inserted/_read/_updated",
        ("operation",),
        verified=(MYSQL8,),
    ),
    _status_counter("mysql.sorts", "1", "Sort activity by kind.", "Sort_merge_passes/_range/_rows/_scan", ("kind",)),
    _status_updown(
        "mysql.threads", "1", "Server threads by state.", "Threads_cached/_connected/_created/_running", ("kind",)
    ),
    _status_counter(
        "mysql.tmp_resources",
        "1",
        "Temporary tables/files created.",
        "Created_tmp_disk_tables/_files/_tables",
        ("resource",),
    ),
    _status_counter("mysql.uptime", "s", "Server uptime.", "Uptime"),
    # --- reference, optional -------------------------------------------------------------------
    _status_counter(
        "mysql.client.network.io",
        "By",
        "Bytes exchanged with clients.",
        "Bytes_received/_sent",
        ("kind",),
        enabled=False,
    ),
    _status_counter("mysql.commands", "1", "Executions per statement type.", "Com_*", ("command",), enabled=False),
    _status_counter(
        "mysql.connection.count", "1", "Connection attempts, successful or not.", "Connections", enabled=False
    ),
    _status_counter(
        "mysql.connection.errors",
        "1",
        "Connection errors by cause.",
        "Connection_errors_*, Aborted_connects/_clients, Locked_connects (MySQL 8.0.19+ only)",
        ("error",),
        enabled=False,
    ),
    _status_counter(
        "mysql.innodb.data_file.io",
        "By",
        "Bytes read from / written to InnoDB data files.",
        "Innodb_data_read/_written",
        ("disk.io.direction",),
        enabled=False,
    ),
    _status_updown(
        "mysql.innodb.operation.pending",
        "1",
        "Pending InnoDB data-file operations.",
        "Innodb_data_pending_fsyncs/_reads/_writes",
        ("operation",),
        enabled=False,
    ),
    _status_gauge(
        "mysql.innodb.row_lock.wait.count",
        "{wait}",
        "Row lock waits currently pending.",
        "Innodb_row_lock_current_waits",
        enabled=False,
    ),
    _status_gauge(
        "mysql.innodb.row_lock.wait.duration.avg",
        "s",
        "Average row lock wait since start/reset.",
        "Innodb_row_lock_time_avg (ms)",
        enabled=False,
    ),
    _status_gauge(
        "mysql.innodb.row_lock.wait.duration.max",
        "s",
        "Longest row lock wait since start/reset.",
        "Innodb_row_lock_time_max (ms)",
        enabled=False,
    ),
    _status_counter(
        "mysql.joins",
        "1",
        "Joins by access type.",
        "Select_full_join/_full_range_join/_range/_range_check/_scan",
        ("kind",),
        enabled=False,
    ),
    _status_updown(
        "mysql.max_used_connections",
        "1",
        "Peak simultaneous connections since start.",
        "Max_used_connections",
        enabled=False,
    ),
    _status_updown(
        "mysql.mysqlx_worker_threads",
        "1",
        "X Plugin worker threads (MySQL only).",
        "Mysqlx_worker_threads/_active",
        ("kind",),
        enabled=False,
        verified=(MYSQL8,),
    ),
    _status_updown("mysql.page_size", "By", "InnoDB page size.", "Innodb_page_size", enabled=False),
    _status_counter("mysql.query.client.count", "1", "Statements sent by clients.", "Questions", enabled=False),
    _status_counter(
        "mysql.query.count", "1", "All statements executed (incl. stored programs).", "Queries", enabled=False
    ),
    _status_counter(
        "mysql.query.slow.count", "1", "Queries slower than long_query_time.", "Slow_queries", enabled=False
    ),
    _status_gauge(
        "mysql.replica.temp_table.open",
        "{table}",
        "Temp tables held open by the replica SQL thread.",
        "Replica_open_temp_tables (MySQL 8.0.26+), else Slave_open_temp_tables",
        enabled=False,
        verified=REPLICA_VERIFIED,
    ),
    _status_counter(
        "mysql.table_open_cache",
        "1",
        "Open-table cache hits, misses, overflows.",
        "Table_open_cache_hits/_misses/_overflows",
        ("status",),
        enabled=False,
    ),
    _status_gauge(
        "mysql.myisam.key_cache.block.unused",
        "{block}",
        "Unused MyISAM key cache blocks.",
        "Key_blocks_unused",
        enabled=False,
    ),
    _status_gauge(
        "mysql.myisam.key_cache.block.used.max",
        "{block}",
        "Peak MyISAM key cache blocks in use.",
        "Key_blocks_used",
        enabled=False,
    ),
    _status_counter(
        "mysql.myisam.key_cache.disk.operation",
        "{operation}",
        "Physical key-cache disk reads/writes.",
        "Key_reads/Key_writes",
        ("operation",),
        enabled=False,
    ),
    _status_counter(
        "mysql.myisam.key_cache.request",
        "{request}",
        "Logical key-cache read/write requests.",
        "Key_read_requests/Key_write_requests",
        ("operation",),
        enabled=False,
    ),
    # --- beyond the receiver -------------------------------------------------------------------
    _status_counter(
        "mysql.binlog.cache.use",
        "{transaction}",
        "Transactions / non-transactional statements that used the binary log cache.",
        "Binlog_cache_use, Binlog_stmt_cache_use",
        ("kind",),
        tier="beyond",
    ),
    _status_counter(
        "mysql.binlog.cache.disk_use",
        "{transaction}",
        "Of those, how many overflowed binlog_(stmt_)cache_size into a temporary file.",
        "Binlog_cache_disk_use, Binlog_stmt_cache_disk_use",
        ("kind",),
        tier="beyond",
    ),
    _status_updown(
        "mysql.replicas.connected",
        "{replica}",
        "On a source: replicas connected to it (one binlog dump thread each); it drops when a replica's link "
        "breaks, once the source next writes to it (an event or a heartbeat). MariaDB only: MySQL has no such "
        "status variable.",
        "Slaves_connected (MariaDB)",
        tier="beyond",
        verified=(MARIADB, MARIADB_PAIR),
    ),
)

# Status where the server has it, else information_schema.INNODB_METRICS (PROCESS grant) in fetch_innodb.
ADAPTIVE_SPECS = (
    _spec(
        "mysql.innodb.deadlocks",
        "sum",
        "{deadlock}",
        "InnoDB deadlocks detected.",
        f"{_STATUS_SOURCE} Innodb_deadlocks (MariaDB); {INNODB}: INNODB_METRICS lock_deadlocks (MySQL)",
        monotonic=True,
        tier="beyond",
    ),
    _spec(
        "mysql.innodb.checkpoint.age",
        "gauge",
        "By",
        "Redo log written since the last checkpoint; writes stall as it nears the redo log capacity.",
        f"{_STATUS_SOURCE} Innodb_checkpoint_age (MariaDB), Innodb_redo_log_current_lsn - "
        f"Innodb_redo_log_checkpoint_lsn (MySQL 8.0.30+); {INNODB}: INNODB_METRICS log_lsn_checkpoint_age "
        "(older MySQL, when that counter is enabled)",
        tier="beyond",
    ),
    _spec(
        "mysql.innodb.history_list.length",
        "gauge",
        "{transactions}",
        "InnoDB undo history list length.",
        f"{_STATUS_SOURCE} Innodb_history_list_length (MariaDB); {INNODB}: INNODB_METRICS trx_rseg_history_len (MySQL)",
        enabled=False,
    ),
)

INNODB_SPECS = (
    _spec(
        "mysql.innodb.transaction.active.count",
        "gauge",
        "{transaction}",
        "Active InnoDB transactions.",
        f"{_TRX_SOURCE}: COUNT(*)",
        enabled=False,
    ),
    _spec(
        "mysql.innodb.transaction.active.duration.max",
        "gauge",
        "s",
        "Age of the longest-running InnoDB transaction (0 when none).",
        f"{_TRX_SOURCE}: MAX(TIMESTAMPDIFF(SECOND, trx_started, NOW()))",
        enabled=False,
    ),
)

VARIABLE_SPECS = (
    _spec(
        "mysql.buffer_pool.limit",
        "sum",
        "By",
        "Configured InnoDB buffer pool size.",
        f"{_VARIABLES_SOURCE} innodb_buffer_pool_size",
    ),
    _spec(
        "mysql.connection.max",
        "gauge",
        "{connections}",
        "Configured max_connections.",
        f"{_VARIABLES_SOURCE} max_connections",
        tier="beyond",
    ),
    _spec(
        "mysql.innodb.redo_log.capacity",
        "gauge",
        "By",
        "InnoDB redo log capacity (bounds the checkpoint age).",
        f"{_VARIABLES_SOURCE} innodb_redo_log_capacity (MySQL 8.0.30+), innodb_log_file_size (MariaDB 10.5+), "
        "else innodb_log_file_size * innodb_log_files_in_group",
        tier="beyond",
    ),
)

# Needs both the (cached) variables and this round's status.
UTILIZATION_SPECS = (
    _spec(
        "mysql.connection.utilization",
        "gauge",
        "1",
        "Connected threads over max_connections.",
        f"{_STATUS_SOURCE} Threads_connected / {_VARIABLES_SOURCE} max_connections",
        tier="beyond",
    ),
)

TABLE_SPECS = (
    _spec(
        "mysql.table.average_row_length",
        "sum",
        "By",
        "Average row length per table.",
        f"{_TABLES_SOURCE} AVG_ROW_LENGTH",
        attributes=TABLE_ATTRS,
        enabled=False,
    ),
    _spec(
        "mysql.table.rows",
        "sum",
        "1",
        "Estimated rows per table.",
        f"{_TABLES_SOURCE} TABLE_ROWS",
        attributes=TABLE_ATTRS,
        enabled=False,
    ),
    _spec(
        "mysql.table.size",
        "sum",
        "By",
        "Table data and index size.",
        f"{_TABLES_SOURCE} DATA_LENGTH/INDEX_LENGTH",
        attributes=TABLE_ATTRS + ("kind",),
        enabled=False,
    ),
)

PERF_SPECS = (
    _spec(
        "mysql.index.io.wait.count",
        "sum",
        "1",
        "I/O wait events per index ('NONE': without an index).",
        f"{_IO_INDEX_SOURCE} COUNT_*",
        monotonic=True,
        attributes=INDEX_IO_ATTRS,
    ),
    _spec(
        "mysql.index.io.wait.time",
        "sum",
        "ns",
        "I/O wait time per index ('NONE': without an index).",
        f"{_IO_INDEX_SOURCE} SUM_TIMER_*",
        monotonic=True,
        attributes=INDEX_IO_ATTRS,
    ),
    _spec(
        "mysql.table.io.wait.count",
        "sum",
        "1",
        "I/O wait events per table.",
        f"{_IO_TABLE_SOURCE} COUNT_*",
        monotonic=True,
        attributes=IO_ATTRS,
    ),
    _spec(
        "mysql.table.io.wait.time",
        "sum",
        "ns",
        "I/O wait time per table.",
        f"{_IO_TABLE_SOURCE} SUM_TIMER_*",
        monotonic=True,
        attributes=IO_ATTRS,
    ),
    _spec(
        "mysql.table.lock_wait.read.count",
        "sum",
        "1",
        "Table read-lock wait events.",
        f"{_LOCK_SOURCE} COUNT_READ_*",
        attributes=LOCK_ATTRS,
        enabled=False,
    ),
    _spec(
        "mysql.table.lock_wait.read.time",
        "sum",
        "ns",
        "Table read-lock wait time.",
        f"{_LOCK_SOURCE} SUM_TIMER_READ_*",
        attributes=LOCK_ATTRS,
        enabled=False,
    ),
    _spec(
        "mysql.table.lock_wait.write.count",
        "sum",
        "1",
        "Table write-lock wait events.",
        f"{_LOCK_SOURCE} COUNT_WRITE_*",
        attributes=LOCK_ATTRS,
        enabled=False,
    ),
    _spec(
        "mysql.table.lock_wait.write.time",
        "sum",
        "ns",
        "Table write-lock wait time.",
        f"{_LOCK_SOURCE} SUM_TIMER_WRITE_*",
        attributes=LOCK_ATTRS,
        enabled=False,
    ),
    _spec(
        "mysql.statement_event.count",
        "sum",
        "1",
        "Per-digest statement counters.",
        f"{_DIGEST_SOURCE} SUM_*",
        attributes=DIGEST_ATTRS + ("kind",),
        enabled=False,
    ),
    _spec(
        "mysql.statement_event.wait.time",
        "sum",
        "ns",
        "Per-digest total wait time.",
        f"{_DIGEST_SOURCE} SUM_TIMER_WAIT",
        attributes=DIGEST_ATTRS,
        enabled=False,
    ),
)

REPLICA_SPECS = (
    _spec(
        "mysql.replica.sql_delay",
        "sum",
        "s",
        "Configured delay the replica keeps behind the source (largest over channels).",
        f"{_REPLICA_SOURCE}: SQL_Delay",
        enabled=False,
        verified=REPLICA_VERIFIED,
    ),
    _spec(
        "mysql.replica.time_behind_source",
        "sum",
        "s",
        "Replication lag in seconds (largest over channels; absent while unknown).",
        f"{_REPLICA_SOURCE}: Seconds_Behind_Source / Seconds_Behind_Master",
        enabled=False,
        verified=(MARIADB_PAIR, MYSQL8),
    ),  # the lone server's replica connection has no source to lag behind: NULL there
    _spec(
        "mysql.replica.thread.running",
        "gauge",
        "1",
        "1 if the replica IO/SQL thread reports Yes, else 0.",
        f"{_REPLICA_SOURCE}: Replica_IO_Running/Replica_SQL_Running (Slave_* on MariaDB and older MySQL)",
        attributes=REPLICA_THREAD_ATTRS,
        enabled=False,
        verified=REPLICA_VERIFIED,
    ),
    _spec(
        "mysql.replica.thread.last_error",
        "gauge",
        "{errno}",
        "Last error number of the replica IO/SQL thread (0: no error).",
        f"{_REPLICA_SOURCE}: Last_IO_Errno/Last_SQL_Errno",
        attributes=REPLICA_THREAD_ATTRS,
        tier="beyond",
        verified=REPLICA_VERIFIED,
    ),
)

TABLE = MetricTable(
    STATUS_SPECS
    + ADAPTIVE_SPECS
    + INNODB_SPECS
    + VARIABLE_SPECS
    + UTILIZATION_SPECS
    + TABLE_SPECS
    + PERF_SPECS
    + REPLICA_SPECS
)


def _names(*groups: tuple[MetricSpec, ...]) -> frozenset[str]:
    return frozenset(spec.name for group in groups for spec in group)


ADAPTIVE_METRICS = _names(ADAPTIVE_SPECS)
TRX_METRICS = _names(INNODB_SPECS)
VARIABLE_METRICS = _names(VARIABLE_SPECS, UTILIZATION_SPECS)
TABLE_METRICS = _names(TABLE_SPECS)
PERF_METRICS = _names(PERF_SPECS)

# Which metrics each client method feeds: a query runs only if one of its metrics is enabled
# (fetch_innodb also only when the status lacked an adaptive metric; see mapping.innodb_metric_names).
METRICS_BY_QUERY = {
    STATUS: _names(STATUS_SPECS, ADAPTIVE_SPECS, UTILIZATION_SPECS),
    CATALOG: _names(VARIABLE_SPECS, UTILIZATION_SPECS, TABLE_SPECS),
    INNODB: _names(ADAPTIVE_SPECS, INNODB_SPECS),
    PERF: PERF_METRICS,
    REPLICA: _names(REPLICA_SPECS),
}
