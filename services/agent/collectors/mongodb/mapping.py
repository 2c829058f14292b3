"""Command replies -> samples, as pure functions (no I/O), one per client command.

Replies are the plain dicts PyMongo decodes (int/float numbers, datetime, bson Timestamp), so they
can be written down exactly as MongoDB documents them. Only enabled metrics produce samples; a
field the server does not report (SecantusDB lacks whole serverStatus sections, MongoDB drops
numExtents in 4.4, …) produces none and no error.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from bson.timestamp import Timestamp

from ..metric_table import Sample
from ..samples import SampleEmitter, float_number
from .metrics import TABLE

Doc = Mapping[str, Any]

# serverStatus values are server-wide; the receiver's db.namespace for them becomes this one name.
SERVER_NAMESPACE = "admin"

OPERATIONS = ("insert", "query", "update", "delete", "getmore", "command")  # opcounters keys = attribute values
TOP_OPERATIONS = {
    "insert": "insert",
    "queries": "query",
    "update": "update",
    "remove": "delete",
    "getmore": "getmore",
    "commands": "command",
}
DOCUMENT_OPERATIONS = {"inserted": "insert", "updated": "update", "deleted": "delete"}
LOCK_TYPES = {
    "ParallelBatchWriterMode": "parallel_batch_write_mode",
    "ReplicationStateTransition": "replication_state_transition",
    "Global": "global",
    "Database": "database",
    "Collection": "collection",
    "Mutex": "mutex",
    "Metadata": "metadata",
    "oplog": "oplog",
}
LOCK_MODES = {"R": "shared", "W": "exclusive", "r": "intent_shared", "w": "intent_exclusive"}
LOCK_FIELDS = {
    "acquireCount": "mongodb.lock.acquire.count",
    "timeAcquiringMicros": "mongodb.lock.acquire.time",
    "acquireWaitCount": "mongodb.lock.acquire.wait_count",
    "deadlockCount": "mongodb.lock.deadlock.count",
}
LATENCY_CLASSES = {"reads": "read", "writes": "write", "commands": "command"}
ASSERT_TYPES = ("regular", "warning", "msg", "user", "rollovers")
# Keyed as numbers: a state sent as a double (1.0) names the same state as the int32 1.
MEMBER_STATES: dict[float, str] = {
    0: "startup",
    1: "primary",
    2: "secondary",
    3: "recovering",
    5: "startup2",
    6: "unknown",
    7: "arbiter",
    8: "down",
    9: "rollback",
    10: "removed",
}
# serverStatus opcounter fields -> the metric word: one list for primary and replicated operations.
OPCOUNTERS = (
    ("command", "commands"),
    ("delete", "deletes"),
    ("getmore", "getmores"),
    ("insert", "inserts"),
    ("query", "queries"),
    ("update", "updates"),
)
RATES = {("opcounters", op): f"mongodb.{name}.rate" for op, name in OPCOUNTERS}
RATES.update({("opcountersRepl", op): f"mongodb.repl_{name}_per_sec" for op, name in OPCOUNTERS})
RATES[("checkpoints", "")] = "mongodb.flushes.rate"
MIB = 1 << 20

# Roles a server can have, from serverStatus.repl or the driver's view of its hello reply.
REPLICA_ROLES = frozenset({"primary", "secondary", "arbiter", "member"})
_SERVER_TYPES = {
    "RSPrimary": "primary",
    "RSSecondary": "secondary",
    "RSArbiter": "arbiter",
    "RSOther": "member",
    "RSGhost": "member",
    "Standalone": "standalone",
    "Mongos": "mongos",
}


def dig(doc: Any, *path: str) -> Any:
    """doc[path[0]][path[1]]…, or None where a level is missing or not a document."""
    for key in path:
        if not isinstance(doc, Mapping):
            return None
        doc = doc.get(key)
    return doc


# BSON replies are typed: text there is never a count.
bson_number = partial(float_number, text=False)
_emitter = partial(SampleEmitter, TABLE, read=bson_number)


def _scaled(value: Any, factor: float) -> float | None:
    value = bson_number(value)
    return None if value is None else value * factor


# --- serverStatus -------------------------------------------------------------------------------

# Default-included serverStatus sections that only some metrics read: left out of the reply when none
# of those metrics is enabled (a smaller reply to build, send and decode).
OPTIONAL_SECTIONS = {
    "locks": frozenset(LOCK_FIELDS.values()),
    "opLatencies": frozenset({"mongodb.operation.latency.time"}),
    "extra_info": frozenset({"mongodb.page_faults"}),
    "asserts": frozenset({"mongodb.asserts"}),
    "opcountersRepl": frozenset(
        {"mongodb.operation.repl.count"}
        | {metric for (section, _), metric in RATES.items() if section == "opcountersRepl"}
    ),
    "globalLock": frozenset(
        {"mongodb.global_lock.time", "mongodb.active.reads", "mongodb.active.writes", "mongodb.global_lock.queue"}
    ),
}
# Sections no metric reads, some of them large (tcmalloc, transactions, per-command metrics are kept:
# `metrics` also holds the cursor and document counters). Unknown names are ignored by the server.
UNUSED_SECTIONS = (
    "tcmalloc",
    "transactions",
    "shardingStatistics",
    "electionMetrics",
    "flowControl",
    "logicalSessionRecordCache",
    "opReadConcernCounters",
    "opWriteConcernCounters",
    "readConcernCounters",
    "readPreferenceCounters",
    "security",
    "twoPhaseCommitCoordinator",
    "catalogStats",
    "bucketCatalog",
    "indexBulkBuilder",
    "planCache",
    "queryAnalyzers",
)


def unread_sections(enabled: frozenset[str]) -> tuple[str, ...]:
    """The serverStatus sections no enabled metric reads, for the client to exclude from the reply."""
    optional = tuple(section for section, metrics in OPTIONAL_SECTIONS.items() if not metrics & enabled)
    return UNUSED_SECTIONS + optional


def ticket_section(status: Doc) -> Doc | None:
    """WiredTiger read/write tickets: wiredTiger.concurrentTransactions up to 7.0, queues.execution from 7.0
    (the only place from 8.0)."""
    section = dig(status, "wiredTiger", "concurrentTransactions")
    if not isinstance(section, Mapping):
        section = dig(status, "queues", "execution")
    return section if isinstance(section, Mapping) else None


def server_status_samples(status: Doc, enabled: frozenset[str]) -> list[Sample]:
    """serverStatus: every serverStatus metric except the rates (rate_samples)."""
    emit = _emitter(enabled)
    ns = SERVER_NAMESPACE
    cache = dig(status, "wiredTiger", "cache")
    miss, requested = (
        bson_number(dig(cache, "pages read into cache")),
        bson_number(dig(cache, "pages requested from the cache")),
    )
    emit("mongodb.cache.operations", miss, "miss")
    if miss is not None and requested is not None:
        emit("mongodb.cache.operations", requested - miss, "hit")
    for kind in ("active", "available", "current"):
        emit("mongodb.connection.count", dig(status, "connections", kind), kind, ns)
    emit("mongodb.cursor.count", dig(status, "metrics", "cursor", "open", "total"))
    emit("mongodb.cursor.timeout.count", dig(status, "metrics", "cursor", "timedOut"))
    for field, operation in DOCUMENT_OPERATIONS.items():
        emit("mongodb.document.operation.count", dig(status, "metrics", "document", field), operation, ns)
    emit("mongodb.global_lock.time", _scaled(dig(status, "globalLock", "totalTime"), 1 / 1000))
    for kind in ("resident", "virtual"):
        emit("mongodb.memory.usage", _scaled(dig(status, "mem", kind), MIB), kind, ns)
    emit("mongodb.network.io.receive", dig(status, "network", "bytesIn"))
    emit("mongodb.network.io.transmit", dig(status, "network", "bytesOut"))
    emit("mongodb.network.request.count", dig(status, "network", "numRequests"))
    for operation in OPERATIONS:
        emit("mongodb.operation.count", dig(status, "opcounters", operation), operation)
        emit("mongodb.operation.repl.count", dig(status, "opcountersRepl", operation), operation)
    if dig(status, "storageEngine", "name") == "wiredTiger":  # as the receiver: other engines have no sessions
        emit("mongodb.session.count", dig(status, "wiredTiger", "session", "open session count"))
    emit("mongodb.active.reads", dig(status, "globalLock", "activeClients", "readers"))
    emit("mongodb.active.writes", dig(status, "globalLock", "activeClients", "writers"))
    emit("mongodb.health", 1 if bson_number(status.get("ok")) == 1 else 0)
    for resource, lock_type in LOCK_TYPES.items():
        for field, metric in LOCK_FIELDS.items():
            counts = dig(status, "locks", resource, field)
            for mode_key, mode in LOCK_MODES.items():
                emit(metric, dig(counts, mode_key), lock_type, mode, ns)
    for key, operation in LATENCY_CLASSES.items():
        emit("mongodb.operation.latency.time", dig(status, "opLatencies", key, "latency"), operation)
    emit("mongodb.page_faults", dig(status, "extra_info", "page_faults"))
    emit("mongodb.uptime", status.get("uptimeMillis"))
    emit("mongodb.wtcache.bytes.read", dig(cache, "bytes read into cache"))
    # beyond the receiver
    emit("mongodb.global_lock.queue", dig(status, "globalLock", "currentQueue", "readers"), "read")
    emit("mongodb.global_lock.queue", dig(status, "globalLock", "currentQueue", "writers"), "write")
    tickets = ticket_section(status)
    for operation in ("read", "write"):
        emit("mongodb.wiredtiger.tickets", dig(tickets, operation, "out"), operation, "used")
        emit("mongodb.wiredtiger.tickets", dig(tickets, operation, "available"), operation, "available")
    used, limit = (
        bson_number(dig(cache, "bytes currently in the cache")),
        bson_number(dig(cache, "maximum bytes configured")),
    )
    emit("mongodb.wiredtiger.cache.usage", used)
    emit("mongodb.wiredtiger.cache.limit", limit)
    if used is not None and limit:
        emit("mongodb.wiredtiger.cache.fill", used / limit)
    for kind in ASSERT_TYPES:
        emit("mongodb.asserts", dig(status, "asserts", kind), kind)
    return emit.samples


def health_sample(enabled: frozenset[str]) -> list[Sample]:
    """mongodb.health = 0, for a collection whose serverStatus failed."""
    emit = _emitter(enabled)
    emit("mongodb.health", 0)
    return emit.samples


@dataclass(frozen=True)
class Counters:
    """The serverStatus counters behind the *.rate gauges, and when they were read (monotonic seconds)."""

    at: float
    values: Mapping[tuple[str, str], float]


def rate_counters(status: Doc, at: float) -> Counters:
    values: dict[tuple[str, str], float] = {}
    for section in ("opcounters", "opcountersRepl"):
        for operation in OPERATIONS:
            value = bson_number(dig(status, section, operation))
            if value is not None:
                values[(section, operation)] = value
    checkpoints = bson_number(dig(status, "wiredTiger", "checkpoint", "total succeed number of checkpoints"))
    if checkpoints is None:  # before the checkpoint section (MongoDB 6.0's WiredTiger and older)
        checkpoints = bson_number(dig(status, "wiredTiger", "transaction", "transaction checkpoints"))
    if checkpoints is not None:
        values[("checkpoints", "")] = checkpoints
    uptime = bson_number(status.get("uptimeMillis"))
    if uptime is not None:
        values[("uptimeMillis", "")] = uptime
    return Counters(at, values)


def rate_samples(previous: Counters | None, current: Counters, enabled: frozenset[str]) -> list[Sample]:
    """Per-second rates between two readings; none on the first reading, none for a counter that went back
    (server restart)."""
    emit = _emitter(enabled)
    if previous is None or current.at <= previous.at:
        return []
    uptime_before, uptime_now = previous.values.get(("uptimeMillis", "")), current.values.get(("uptimeMillis", ""))
    if uptime_before is not None and uptime_now is not None and uptime_now < uptime_before:
        return []  # the server restarted in between: every counter started again from zero
    elapsed = current.at - previous.at
    for key, metric in RATES.items():
        now, before = current.values.get(key), previous.values.get(key)
        if now is not None and before is not None and now >= before:
            emit(metric, (now - before) / elapsed)
    return emit.samples


def role_of(status: Doc | None, server_type: str) -> str:
    """primary | secondary | arbiter | member (other replica states) | standalone | mongos | unknown.

    serverStatus.repl (present on replica-set members) is read fresh on every collection; without it
    (a standalone, or a server like SecantusDB that omits the section) the driver's view of the
    server's hello reply decides."""
    repl = dig(status, "repl")
    if isinstance(repl, Mapping):
        if repl.get("isWritablePrimary") or repl.get("ismaster"):
            return "primary"
        if repl.get("secondary"):
            return "secondary"
        if repl.get("arbiterOnly"):
            return "arbiter"
        return "member"
    return _SERVER_TYPES.get(server_type, "unknown")


# --- databases and collections ----------------------------------------------------------------


def database_samples(databases: Sequence[Doc], enabled: frozenset[str]) -> list[Sample]:
    """listDatabases: the number of databases."""
    emit = _emitter(enabled)
    emit("mongodb.database.count", len(databases))
    return emit.samples


def ranked_databases(databases: Iterable[Doc]) -> list[str]:
    """Database names, largest first (sizeOnDisk; then by name), for the bounded per-database commands."""
    named = [db for db in databases if isinstance(db.get("name"), str)]
    return [
        db["name"] for db in sorted(named, key=lambda db: (-(bson_number(db.get("sizeOnDisk")) or 0.0), db["name"]))
    ]


def db_stats_samples(database: str, stats: Doc, enabled: frozenset[str]) -> list[Sample]:
    """dbStats of one database."""
    emit = _emitter(enabled)
    emit("mongodb.collection.count", stats.get("collections"), database)
    emit("mongodb.data.size", stats.get("dataSize"), database)
    emit("mongodb.extent.count", stats.get("numExtents"), database)
    emit("mongodb.index.count", stats.get("indexes"), database)
    emit("mongodb.index.size", stats.get("indexSize"), database)
    emit("mongodb.object.count", stats.get("objects"), database)
    emit("mongodb.storage.size", stats.get("storageSize"), database)
    return emit.samples


def collection_names(entries: Iterable[Doc]) -> list[str]:
    """listCollections (nameOnly) entries -> names of real collections, sorted; views have no indexes or storage."""
    return sorted(
        entry["name"]
        for entry in entries
        if isinstance(entry.get("name"), str) and entry.get("type", "collection") == "collection"
    )


def top_samples(top: Doc, enabled: frozenset[str]) -> list[Sample]:
    """top: time per operation type, summed over every namespace, microseconds -> milliseconds."""
    emit = _emitter(enabled)
    totals = top.get("totals")
    if not isinstance(totals, Mapping):
        return []
    sums = dict.fromkeys(TOP_OPERATIONS.values(), 0.0)
    for namespace, entry in totals.items():
        if namespace == "note" or not isinstance(entry, Mapping):
            continue
        for field, operation in TOP_OPERATIONS.items():
            sums[operation] += bson_number(dig(entry, field, "time")) or 0.0
    for operation, micros in sums.items():
        emit("mongodb.operation.time", micros / 1000, operation)
    return emit.samples


def index_access_samples(
    database: str, collection: str, indexes: Iterable[Doc], enabled: frozenset[str]
) -> list[Sample]:
    """$indexStats of one collection: accesses.ops summed over its indexes."""
    emit = _emitter(enabled)
    emit(
        "mongodb.index.access.count",
        sum(bson_number(dig(index, "accesses", "ops")) or 0.0 for index in indexes),
        collection,
        database,
    )
    return emit.samples


def collection_stats_samples(
    database: str, collection: str, stats: Iterable[Doc], enabled: frozenset[str]
) -> list[Sample]:
    """$collStats {storageStats} of one collection (one document on a mongod)."""
    emit = _emitter(enabled)
    for doc in stats:
        storage = doc.get("storageStats")
        emit("mongodb.collection.document.count", dig(storage, "count"), collection, database)
        emit("mongodb.collection.data.size", dig(storage, "size"), collection, database)
        emit("mongodb.collection.storage.size", dig(storage, "storageSize"), collection, database)
        emit("mongodb.collection.index.size", dig(storage, "totalIndexSize"), collection, database)
    return emit.samples


# --- replica set and oplog ----------------------------------------------------------------------


def oplog_stats_samples(stats: Iterable[Doc], enabled: frozenset[str]) -> list[Sample]:
    """$collStats {storageStats} of local.oplog.rs."""
    emit = _emitter(enabled)
    for doc in stats:
        emit("mongodb.oplog.limit", dig(doc, "storageStats", "maxSize"))
        emit("mongodb.oplog.usage", dig(doc, "storageStats", "size"))
    return emit.samples


def _seconds_between(later: Any, earlier: Any) -> float | None:
    if not isinstance(later, dt.datetime) or not isinstance(earlier, dt.datetime):
        return None
    if (later.tzinfo is None) != (earlier.tzinfo is None):
        return None
    return (later - earlier).total_seconds()


def oplog_window(status: Doc, oldest: Timestamp | None) -> float | None:
    """Seconds between the oldest oplog entry and the last applied optime (replSetGetStatus.optimes).

    Only the seconds part of a BSON timestamp is wall-clock time; the increment orders entries within one."""
    newest = dig(status, "optimes", "appliedOpTime", "ts")
    if not isinstance(newest, Timestamp) or not isinstance(oldest, Timestamp):
        return None
    return float(newest.time - oldest.time)


def member_state(member: Doc) -> str | None:
    """A replSetGetStatus member's state name; None for a state code this mapping does not know."""
    code = member.get("state")
    return MEMBER_STATES.get(code) if isinstance(code, (int, float)) else None


def repl_status_samples(status: Doc, enabled: frozenset[str], *, oplog_oldest: Timestamp | None) -> list[Sample]:
    """replSetGetStatus (+ the oldest oplog entry's timestamp, when known)."""
    emit = _emitter(enabled)
    members = [m for m in status.get("members") or () if isinstance(m, Mapping)]
    counts = dict.fromkeys(MEMBER_STATES.values(), 0)
    for member in members:
        state = member_state(member)
        if state is not None:
            counts[state] += 1
    for state, count in counts.items():
        emit("mongodb.replica_set.member.count", count, state)
    me = next((m for m in members if m.get("self")), None)
    my_state = member_state(me) if me is not None else None
    if my_state is not None:
        for state in MEMBER_STATES.values():
            emit("mongodb.replica.status", int(state == my_state), state)
    window = oplog_window(status, oplog_oldest)
    emit("mongodb.oplog.window", window)
    if me is None or my_state != "primary":  # only the primary has an up-to-date view of every member's progress
        return emit.samples
    for member in members:
        if member.get("state") != 2:
            continue
        name = str(member.get("name", ""))
        applied = _seconds_between(me.get("optimeDate"), member.get("optimeDate"))
        durable = _seconds_between(me.get("lastDurableWallTime"), member.get("lastDurableWallTime"))
        emit("mongodb.replica_set.lag", applied, name, "applied")
        emit("mongodb.replica_set.lag", durable, name, "durable")
        if window is not None and applied is not None:
            emit("mongodb.replica_set.headroom", window - applied, name)
    return emit.samples
