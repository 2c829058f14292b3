"""Every MongoDB metric, as data, grouped by the one command (client method) it comes from.

Reference rows follow the OpenTelemetry Collector mongodbreceiver (tests/reference/metrics/mongodb.tsv):
same names, types, monotonicity, units and data-point attributes. Where the TSV's source hint and
the receiver's code disagree, the values follow the receiver (receiver/mongodbreceiver/metrics.go):

- mongodb.session.count is wiredTiger.session["open session count"] (the TSV hints at
  logicalSessionRecordCache, which counts something else).
- mongodb.document.operation.count has operation=insert|update|delete (metrics.document
  inserted/updated/deleted); the receiver emits no other operation values.
- mongodb.connection.count, mongodb.memory.usage, mongodb.document.operation.count and the
  mongodb.lock.* rows carry db.namespace although their values are server-wide: the receiver runs
  serverStatus once per database and repeats the same numbers under every database name. We run
  serverStatus once and emit them once, with db.namespace="admin" (the database the command runs
  against), so a sum over databases is not N-fold.
- mongodb.operation.time: the receiver reports `top`'s microsecond totals under the unit ms; we
  convert to milliseconds so the value matches its unit.
- The *.rate / repl_*_per_sec gauges are computed by us from two consecutive serverStatus
  counters (no value on the first collection, none after a counter reset), like the receiver.

Post-anchor rows (replica set and oplog, [post-anchor PR#50655]) keep the TSV's names and attribute
names; their semantics follow that PR: member.count and replica.status report every member state
(0 for the absent ones), lag and headroom are reported by the primary for each secondary.

Beyond the receiver (tier="beyond"): the global lock queue, WiredTiger read/write tickets, WiredTiger
cache fill, asserts, and per-collection storage statistics (optional, bounded).

`verified_on` says where each metric was seen: on a real SecantusDB 0.7 server (end to end, see
tests/integration/test_mongodb_collector.py) and/or only against MongoDB's documented reply shapes
(tests/unit/data/mongodb_*, see mongodb_README.md there) for what SecantusDB does not serve.
"""

from __future__ import annotations

from functools import partial

from ..metric_table import MetricSpec, MetricTable, metric_spec

SECANTUS = "SecantusDB 0.7"
DOC_60 = "MongoDB 6.0 (documented shape)"
DOC_70 = "MongoDB 7.0 (documented shape)"
DOC_42 = "MongoDB 4.2 (documented shape)"  # the last dbStats with numExtents
EVERYWHERE = (SECANTUS, DOC_60, DOC_70)
DOCUMENTED = (DOC_60, DOC_70)

DB = ("db.namespace",)
COLLECTION = ("collection", "db.namespace")
LOCK = ("lock_type", "lock_mode", "db.namespace")
REPLICA_STATE = ("mongodb.replica.state",)

# Client methods (one command each); the keys of METRICS_BY_QUERY.
SERVER_STATUS = "fetch_server_status"
REPL_STATUS = "fetch_repl_status"
TOP = "fetch_top"
DATABASES = "fetch_databases"
DB_STATS = "fetch_db_stats"
COLLECTIONS = "fetch_collections"
INDEX_STATS = "fetch_index_stats"
COLLECTION_STATS = "fetch_collection_stats"
OPLOG_STATS = "fetch_oplog_stats"
OPLOG_OLDEST = "fetch_oplog_oldest"


# Rows name where they were verified only when it differs from DOCUMENTED.
_spec = partial(metric_spec, verified=DOCUMENTED)


def _rate(name: str, unit: str, counter: str, what: str, *, verified: tuple[str, ...]) -> MetricSpec:
    return _spec(
        name,
        "gauge",
        unit,
        f"{what} per second, from two consecutive collections",
        f"serverStatus: {counter} (delta / elapsed)",
        enabled=False,
        verified=verified,
    )


_SS = "serverStatus"
SERVER_STATUS_SPECS = (
    # --- reference, enabled by default ---------------------------------------------------------
    _spec(
        "mongodb.cache.operations",
        "sum",
        "{operations}",
        "WiredTiger cache page requests, hit vs miss",
        f"{_SS}: wiredTiger.cache['pages read into cache'] (miss), 'pages requested from the cache' - miss (hit)",
        monotonic=True,
        attributes=("type",),
    ),
    _spec(
        "mongodb.connection.count",
        "sum",
        "{connections}",
        "Incoming connections by status",
        f"{_SS}: connections.active|available|current",
        attributes=("type", "db.namespace"),
        verified=EVERYWHERE,
    ),
    _spec(
        "mongodb.cursor.count",
        "sum",
        "{cursors}",
        "Open client cursors",
        f"{_SS}: metrics.cursor.open.total",
        verified=EVERYWHERE,
    ),
    _spec(
        "mongodb.cursor.timeout.count",
        "sum",
        "{cursors}",
        "Cursors that timed out since start",
        f"{_SS}: metrics.cursor.timedOut",
    ),
    _spec(
        "mongodb.document.operation.count",
        "sum",
        "{documents}",
        "Documents inserted, updated, deleted",
        f"{_SS}: metrics.document.inserted|updated|deleted",
        attributes=("operation", "db.namespace"),
    ),
    _spec(
        "mongodb.global_lock.time",
        "sum",
        "ms",
        "Time since the global lock was created",
        f"{_SS}: globalLock.totalTime / 1000",
        monotonic=True,
    ),
    _spec(
        "mongodb.memory.usage",
        "sum",
        "By",
        "Resident and virtual memory of the mongod process",
        f"{_SS}: mem.resident|virtual (MiB) * 1048576",
        attributes=("type", "db.namespace"),
        verified=EVERYWHERE,
    ),
    _spec("mongodb.network.io.receive", "sum", "By", "Bytes received", f"{_SS}: network.bytesIn", verified=EVERYWHERE),
    _spec("mongodb.network.io.transmit", "sum", "By", "Bytes sent", f"{_SS}: network.bytesOut", verified=EVERYWHERE),
    _spec(
        "mongodb.network.request.count",
        "sum",
        "{requests}",
        "Requests received",
        f"{_SS}: network.numRequests",
        verified=EVERYWHERE,
    ),
    _spec(
        "mongodb.operation.count",
        "sum",
        "{operations}",
        "Operations received, by type",
        f"{_SS}: opcounters.insert|query|update|delete|getmore|command",
        monotonic=True,
        attributes=("operation",),
        verified=EVERYWHERE,
    ),
    _spec(
        "mongodb.session.count",
        "sum",
        "{sessions}",
        "Open WiredTiger sessions",
        f"{_SS}: wiredTiger.session['open session count']",
    ),
    # --- reference, optional --------------------------------------------------------------------
    _spec(
        "mongodb.active.reads",
        "sum",
        "{reads}",
        "Read operations currently in progress",
        f"{_SS}: globalLock.activeClients.readers",
        enabled=False,
    ),
    _spec(
        "mongodb.active.writes",
        "sum",
        "{writes}",
        "Write operations currently in progress",
        f"{_SS}: globalLock.activeClients.writers",
        enabled=False,
    ),
    _rate("mongodb.commands.rate", "{command}/s", "opcounters.command", "Commands", verified=EVERYWHERE),
    _rate("mongodb.deletes.rate", "{delete}/s", "opcounters.delete", "Deletes", verified=EVERYWHERE),
    _rate("mongodb.getmores.rate", "{getmore}/s", "opcounters.getmore", "Getmores", verified=EVERYWHERE),
    _rate("mongodb.inserts.rate", "{insert}/s", "opcounters.insert", "Inserts", verified=EVERYWHERE),
    _rate("mongodb.queries.rate", "{query}/s", "opcounters.query", "Queries", verified=EVERYWHERE),
    _rate("mongodb.updates.rate", "{update}/s", "opcounters.update", "Updates", verified=EVERYWHERE),
    _rate(
        "mongodb.flushes.rate",
        "{flush}/s",
        "wiredTiger.checkpoint['total succeed number of checkpoints'] "
        "(before 6.0: wiredTiger.transaction['transaction checkpoints'])",
        "Checkpoints",
        verified=DOCUMENTED,
    ),
    _spec(
        "mongodb.health",
        "gauge",
        "1",
        "1 when serverStatus answers ok, 0 when it fails",
        f"{_SS}: ok",
        enabled=False,
        verified=EVERYWHERE,
    ),
    _spec(
        "mongodb.lock.acquire.count",
        "sum",
        "{count}",
        "Lock acquisitions by resource and mode",
        f"{_SS}: locks.<resource>.acquireCount.<mode>",
        monotonic=True,
        attributes=LOCK,
        enabled=False,
    ),
    _spec(
        "mongodb.lock.acquire.time",
        "sum",
        "microseconds",
        "Time spent waiting to acquire locks",
        f"{_SS}: locks.<resource>.timeAcquiringMicros.<mode>",
        monotonic=True,
        attributes=LOCK,
        enabled=False,
    ),
    _spec(
        "mongodb.lock.acquire.wait_count",
        "sum",
        "{count}",
        "Lock acquisitions that had to wait",
        f"{_SS}: locks.<resource>.acquireWaitCount.<mode>",
        monotonic=True,
        attributes=LOCK,
        enabled=False,
    ),
    _spec(
        "mongodb.lock.deadlock.count",
        "sum",
        "{count}",
        "Lock acquisitions that hit a deadlock",
        f"{_SS}: locks.<resource>.deadlockCount.<mode>",
        monotonic=True,
        attributes=LOCK,
        enabled=False,
    ),
    _spec(
        "mongodb.operation.latency.time",
        "gauge",
        "us",
        "Cumulative operation latency by class",
        f"{_SS}: opLatencies.reads|writes|commands.latency",
        attributes=("operation",),
        enabled=False,
    ),
    _spec(
        "mongodb.operation.repl.count",
        "sum",
        "{operations}",
        "Replicated operations applied, by type",
        f"{_SS}: opcountersRepl.*",
        monotonic=True,
        attributes=("operation",),
        enabled=False,
    ),
    _spec(
        "mongodb.page_faults",
        "sum",
        "{faults}",
        "Page faults of the mongod process",
        f"{_SS}: extra_info.page_faults",
        monotonic=True,
        enabled=False,
    ),
    _rate(
        "mongodb.repl_commands_per_sec",
        "{command}/s",
        "opcountersRepl.command",
        "Replicated commands",
        verified=DOCUMENTED,
    ),
    _rate(
        "mongodb.repl_deletes_per_sec", "{delete}/s", "opcountersRepl.delete", "Replicated deletes", verified=DOCUMENTED
    ),
    _rate(
        "mongodb.repl_getmores_per_sec",
        "{getmore}/s",
        "opcountersRepl.getmore",
        "Replicated getmores",
        verified=DOCUMENTED,
    ),
    _rate(
        "mongodb.repl_inserts_per_sec", "{insert}/s", "opcountersRepl.insert", "Replicated inserts", verified=DOCUMENTED
    ),
    _rate(
        "mongodb.repl_queries_per_sec", "{query}/s", "opcountersRepl.query", "Replicated queries", verified=DOCUMENTED
    ),
    _rate(
        "mongodb.repl_updates_per_sec", "{update}/s", "opcountersRepl.update", "Replicated updates", verified=DOCUMENTED
    ),
    _spec(
        "mongodb.uptime",
        "sum",
        "ms",
        "Time since the server started",
        f"{_SS}: uptimeMillis",
        monotonic=True,
        enabled=False,
        verified=EVERYWHERE,
    ),
    _spec(
        "mongodb.wtcache.bytes.read",
        "sum",
        "By",
        "Bytes read into the WiredTiger cache",
        f"{_SS}: wiredTiger.cache['bytes read into cache']",
        monotonic=True,
        enabled=False,
    ),
    # --- beyond the receiver --------------------------------------------------------------------
    _spec(
        "mongodb.global_lock.queue",
        "sum",
        "{operations}",
        "Operations queued waiting for a lock",
        f"{_SS}: globalLock.currentQueue.readers|writers",
        attributes=("operation",),
        tier="beyond",
    ),
    _spec(
        "mongodb.wiredtiger.tickets",
        "sum",
        "{tickets}",
        "WiredTiger read/write concurrency tickets in use and available",
        f"{_SS}: wiredTiger.concurrentTransactions.read|write.out|available "
        "(8.0: queues.execution.read|write.out|available)",
        attributes=("operation", "state"),
        tier="beyond",
    ),
    _spec(
        "mongodb.wiredtiger.cache.usage",
        "sum",
        "By",
        "Bytes currently in the WiredTiger cache",
        f"{_SS}: wiredTiger.cache['bytes currently in the cache']",
        tier="beyond",
    ),
    _spec(
        "mongodb.wiredtiger.cache.limit",
        "sum",
        "By",
        "Configured maximum size of the WiredTiger cache",
        f"{_SS}: wiredTiger.cache['maximum bytes configured']",
        tier="beyond",
    ),
    _spec(
        "mongodb.wiredtiger.cache.fill",
        "gauge",
        "1",
        "Fraction of the WiredTiger cache in use (bytes in the cache / maximum bytes configured)",
        f"{_SS}: wiredTiger.cache['bytes currently in the cache'] / ['maximum bytes configured']",
        tier="beyond",
    ),
    _spec(
        "mongodb.asserts",
        "sum",
        "{asserts}",
        "Assertions raised since start, by kind",
        f"{_SS}: asserts.regular|warning|msg|user|rollovers",
        monotonic=True,
        attributes=("type",),
        tier="beyond",
    ),
)

DATABASES_SPECS = (
    _spec(
        "mongodb.database.count",
        "sum",
        "{databases}",
        "Databases on the server",
        "listDatabases (slow schedule)",
        verified=EVERYWHERE,
    ),
)

_DBS = "dbStats per database (slow schedule, bounded)"
DB_STATS_SPECS = (
    _spec(
        "mongodb.collection.count",
        "sum",
        "{collections}",
        "Collections per database",
        f"{_DBS}: collections",
        attributes=DB,
        verified=EVERYWHERE,
    ),
    _spec(
        "mongodb.data.size",
        "sum",
        "By",
        "Uncompressed data size per database",
        f"{_DBS}: dataSize",
        attributes=DB,
        verified=EVERYWHERE,
    ),
    _spec(
        "mongodb.extent.count",
        "sum",
        "{extents}",
        "Extents per database (MMAPv1; absent from 4.4 on)",
        f"{_DBS}: numExtents",
        attributes=DB,
        verified=(DOC_42,),
    ),
    _spec(
        "mongodb.index.count",
        "sum",
        "{indexes}",
        "Indexes per database",
        f"{_DBS}: indexes",
        attributes=DB,
        verified=EVERYWHERE,
    ),
    _spec(
        "mongodb.index.size",
        "sum",
        "By",
        "Space allocated to indexes per database",
        f"{_DBS}: indexSize",
        attributes=DB,
        verified=EVERYWHERE,
    ),
    _spec(
        "mongodb.object.count",
        "sum",
        "{objects}",
        "Documents per database",
        f"{_DBS}: objects",
        attributes=DB,
        verified=EVERYWHERE,
    ),
    _spec(
        "mongodb.storage.size",
        "sum",
        "By",
        "Storage allocated per database (declared monotonic, as the receiver)",
        f"{_DBS}: storageSize",
        monotonic=True,
        attributes=DB,
        verified=EVERYWHERE,
    ),
)

TOP_SPECS = (
    _spec(
        "mongodb.operation.time",
        "sum",
        "ms",
        "Time spent per operation type, summed over collections",
        "top: totals.<ns>.insert|queries|update|remove|getmore|commands.time (us) / 1000",
        monotonic=True,
        attributes=("operation",),
        verified=EVERYWHERE,
    ),
)

INDEX_STATS_SPECS = (
    _spec(
        "mongodb.index.access.count",
        "sum",
        "{accesses}",
        "Index accesses per collection (sum over its indexes)",
        "aggregate [$indexStats] per collection (slow schedule, bounded)",
        attributes=COLLECTION,
        verified=EVERYWHERE,
    ),
)

_CS = "aggregate [$collStats: {storageStats}] per collection (slow schedule, bounded)"
COLLECTION_STATS_SPECS = (
    _spec(
        "mongodb.collection.document.count",
        "sum",
        "{documents}",
        "Documents in the collection",
        f"{_CS}: storageStats.count",
        attributes=COLLECTION,
        enabled=False,
        tier="beyond",
        verified=EVERYWHERE,
    ),
    _spec(
        "mongodb.collection.data.size",
        "sum",
        "By",
        "Uncompressed size of the collection's documents",
        f"{_CS}: storageStats.size",
        attributes=COLLECTION,
        enabled=False,
        tier="beyond",
        verified=EVERYWHERE,
    ),
    _spec(
        "mongodb.collection.storage.size",
        "sum",
        "By",
        "Storage allocated to the collection",
        f"{_CS}: storageStats.storageSize",
        attributes=COLLECTION,
        enabled=False,
        tier="beyond",
        verified=EVERYWHERE,
    ),
    _spec(
        "mongodb.collection.index.size",
        "sum",
        "By",
        "Storage allocated to the collection's indexes",
        f"{_CS}: storageStats.totalIndexSize",
        attributes=COLLECTION,
        enabled=False,
        tier="beyond",
        verified=EVERYWHERE,
    ),
)

_RS = "replSetGetStatus (replica-set members only)"
REPL_STATUS_SPECS = (
    _spec(
        "mongodb.replica.status",
        "sum",
        "1",
        "1 for this member's current state, 0 for the other states",
        f"{_RS}: members[self].state",
        attributes=REPLICA_STATE,
        enabled=False,
        verified=EVERYWHERE,
    ),
    _spec(
        "mongodb.replica_set.member.count",
        "sum",
        "{member}",
        "Replica set members by state (0 for absent states)",
        f"{_RS}: members[].state",
        attributes=REPLICA_STATE,
        enabled=False,
        verified=EVERYWHERE,
    ),
    _spec(
        "mongodb.replica_set.lag",
        "gauge",
        "s",
        "On the primary: how far each secondary is behind it",
        f"{_RS}: primary optimeDate - member optimeDate (applied), lastDurableWallTime (durable)",
        attributes=("mongodb.replica.name", "mongodb.replica_set.lag.type"),
        enabled=False,
    ),
    _spec(
        "mongodb.replica_set.headroom",
        "gauge",
        "s",
        "On the primary: oplog window minus each secondary's applied lag",
        f"{_RS} + the oldest oplog entry",
        attributes=("mongodb.replica.name",),
        enabled=False,
    ),
    _spec(
        "mongodb.oplog.window",
        "gauge",
        "s",
        "Seconds between the oldest and the newest oplog entry",
        f"{_RS}: optimes.appliedOpTime - local.oplog.rs oldest entry (slow schedule)",
        enabled=False,
        verified=EVERYWHERE,
    ),
)

OPLOG_STATS_SPECS = (
    _spec(
        "mongodb.oplog.limit",
        "sum",
        "By",
        "Maximum size the oplog may use",
        "aggregate local.oplog.rs [$collStats: {storageStats}]: maxSize (slow schedule)",
        enabled=False,
        verified=EVERYWHERE,
    ),
    _spec(
        "mongodb.oplog.usage",
        "sum",
        "By",
        "Storage the oplog currently uses",
        "aggregate local.oplog.rs [$collStats: {storageStats}]: size (slow schedule)",
        enabled=False,
        verified=EVERYWHERE,
    ),
)

TABLE = MetricTable(
    SERVER_STATUS_SPECS
    + DATABASES_SPECS
    + DB_STATS_SPECS
    + TOP_SPECS
    + INDEX_STATS_SPECS
    + COLLECTION_STATS_SPECS
    + REPL_STATUS_SPECS
    + OPLOG_STATS_SPECS
)


def _names(specs: tuple[MetricSpec, ...]) -> frozenset[str]:
    return frozenset(spec.name for spec in specs)


METRICS_BY_QUERY: dict[str, frozenset[str]] = {
    SERVER_STATUS: _names(SERVER_STATUS_SPECS),
    REPL_STATUS: _names(REPL_STATUS_SPECS),
    TOP: _names(TOP_SPECS),
    # The database list also drives dbStats, the collection lists and the per-collection commands.
    DATABASES: _names(DATABASES_SPECS + DB_STATS_SPECS + INDEX_STATS_SPECS + COLLECTION_STATS_SPECS),
    DB_STATS: _names(DB_STATS_SPECS),
    COLLECTIONS: _names(INDEX_STATS_SPECS + COLLECTION_STATS_SPECS),
    INDEX_STATS: _names(INDEX_STATS_SPECS),
    COLLECTION_STATS: _names(COLLECTION_STATS_SPECS),
    OPLOG_STATS: _names(OPLOG_STATS_SPECS),
    OPLOG_OLDEST: frozenset({"mongodb.oplog.window", "mongodb.replica_set.headroom"}),
}
