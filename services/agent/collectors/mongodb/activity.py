"""MongoDB query intelligence, pure: profiler entries and `top` -> statement counters, currentOp -> sessions.

Top queries, two sources (the collector picks one per read, see collector.py):
- the profiler (`system.profile` of the entry's `database`, when the user turned it on): entries read
  incrementally by `ts` (the cursor is the newest entry's ts in epoch milliseconds), grouped by shape:
  query_id = a stable hash of (ns, mongo_shape(command)), calls = entries, time = their `millis`, rows =
  nreturned + ninserted + nModified + ndeleted, extra = docsExamined and keysExamined. The counters are the
  interval's amounts (cumulative=False). Without a cursor (a fresh owner without hand-off state) the
  profile is history: nothing is counted, the cursor is set to its newest entry. The profile is a capped
  collection (1 MB by default): entries that rolled out between two reads are lost, unnoticed but for a
  first entry far newer than the cursor. Entries logged within the cursor's own millisecond after a read
  are missed (`ts` has millisecond precision).
- `top` (admin): cumulative time and count per namespace and operation kind since the server started;
  one statement per (namespace, kind) with count > 0: query_id = "<ns> <kind>", text = the kind's command
  verb on the collection (`{"find":"orders"}`), no shapes. cumulative=True.

Shapes: the driver's envelope (lsid, $clusterTime, $db, txnNumber, ...; ENVELOPE) is dropped before
shaping, so one query from two sessions is one statement; every value becomes "?" (mongo_shape).

Samples: the `currentOp` command's `inprog` (active operations): opid, the command's shape and verb,
ns, microsecs_running, waiting for a lock (waitingForLock), a latch (waitingForLatch, 4.2.2+) or flow
control (waitingForFlowControl); client, appName, effectiveUsers. MongoDB does not say which operation
holds the lock one waits for: blocked_by stays empty. Left out: our own currentOp, the drivers'
hello/isMaster monitoring (awaitable hellos sit "active" for up to 10 s), and ops without a command.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from ...queries.model import ActiveSession, StatementCounters
from ...queries.obfuscation import ObfuscatedText, mongo_shape, mongo_summary
from .mapping import TOP_OPERATIONS, bson_number

Doc = Mapping[str, Any]

# What a driver adds to every command: not part of what the user asked.
ENVELOPE = frozenset(
    {
        "lsid",
        "$clusterTime",
        "$db",
        "$readPreference",
        "txnNumber",
        "autocommit",
        "startTransaction",
        "$audit",
        "$client",
        "$configServerState",
        "$gleStats",
        "readConcern",
        "writeConcern",
        "maxTimeMS",
        "apiVersion",
        "apiStrict",
        "apiDeprecationErrors",
        "comment",
        "shardVersion",
        "databaseVersion",
        "$shardVersion",
        "clientOperationKey",
    }
)
MONITORING_VERBS = frozenset({"hello", "isMaster", "ismaster"})
# top's operation kinds -> the command verb that text and summary name
TOP_VERBS = {"queries": "find", "getmore": "getMore", "insert": "insert", "update": "update", "remove": "delete"}
TOP_VERBS["commands"] = "command"

# The profile fields a read needs (a projection: the rest of each entry stays on the server).
PROFILE_FIELDS = (
    "ts",
    "op",
    "ns",
    "command",
    "millis",
    "nreturned",
    "ninserted",
    "nModified",
    "ndeleted",
    "docsExamined",
    "keysExamined",
)


def statement_command(command: Any) -> dict[str, Any]:
    """The command without the driver's envelope."""
    if not isinstance(command, Mapping):
        return {}
    return {key: value for key, value in command.items() if key not in ENVELOPE}


def _collection(command: Mapping[str, Any], ns: str) -> str:
    verb = next(iter(command), None)
    if verb == "getMore" and isinstance(command.get("collection"), str):
        return command["collection"]
    if isinstance(verb, str) and isinstance(command.get(verb), str):
        return command[verb]
    return ns.partition(".")[2]


def _verb(command: Mapping[str, Any], op: str) -> str:
    verb = next(iter(command), None)
    return verb if isinstance(verb, str) else op


def statement_id(ns: str, text: str) -> str:
    """A stable short id of a namespace and an obfuscated shape: the same on every agent."""
    return hashlib.sha1(f"{ns}\0{text}".encode()).hexdigest()[:16]


# --- the profiler ----------------------------------------------------------------------------------


def ts_millis(value: Any) -> int | None:
    """A profile entry's ts (a datetime, naive UTC as PyMongo decodes it) in epoch milliseconds."""
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return round(value.timestamp() * 1000)


def parse_cursor(cursor: str | None) -> datetime | None:
    """The profiler cursor (epoch ms) as the datetime to read after; None (or unreadable) -> None."""
    try:
        return datetime.fromtimestamp(int(cursor) / 1000, UTC) if cursor else None
    except (ValueError, OverflowError, OSError):
        return None


def profile_cursor(entries: Iterable[Doc], previous: str | None) -> str:
    """The next cursor: the newest ts read, else the previous cursor ("0" for none: count all later ones)."""
    newest = max((ms for entry in entries if (ms := ts_millis(entry.get("ts"))) is not None), default=None)
    if newest is None:
        return previous or "0"
    return str(newest)


def _number(entry: Doc, field: str) -> float:
    return bson_number(entry.get(field)) or 0.0


def profile_counters(entries: Iterable[Doc], limit: int) -> tuple[StatementCounters, ...]:
    """Profile entries grouped by (ns, shape); at most `limit` statements, the heaviest by time first."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in entries:
        ns = _text(entry.get("ns"))
        command = statement_command(entry.get("command"))
        text = mongo_shape(command) if command else mongo_shape({str(entry.get("op", "")): 1})
        group = groups.get((ns, text))
        if group is None:
            summary = mongo_summary(_verb(command, _text(entry.get("op"))), _collection(command, ns))
            group = groups[(ns, text)] = {"text": text, "summary": summary, "calls": 0, "ms": 0.0, "rows": 0.0}
            group["docs"] = group["keys"] = 0.0
        group["calls"] += 1
        group["ms"] += _number(entry, "millis")
        group["rows"] += sum(_number(entry, f) for f in ("nreturned", "ninserted", "nModified", "ndeleted"))
        group["docs"] += _number(entry, "docsExamined")
        group["keys"] += _number(entry, "keysExamined")
    counters = [
        StatementCounters(
            query_id=statement_id(ns, g["text"]),
            calls=float(g["calls"]),
            total_time_s=g["ms"] / 1000,
            rows=g["rows"],
            extra={"mongodb.docs_examined": g["docs"], "mongodb.keys_examined": g["keys"]},
            namespace=ns,
            text=g["text"],
            summary=g["summary"],
        )
        for (ns, _), g in groups.items()
    ]
    counters.sort(key=lambda c: (-c.total_time_s, -c.calls, c.query_id))
    return tuple(counters[: max(limit, 0)])


# --- top -------------------------------------------------------------------------------------------


def top_counters(top: Doc, limit: int) -> tuple[StatementCounters, ...]:
    """top's totals: one cumulative statement per (namespace, operation kind) that ran at least once."""
    totals = top.get("totals")
    if not isinstance(totals, Mapping):
        raise ValueError("top reply has no totals")
    counters = []
    for ns, entry in totals.items():
        if not isinstance(ns, str) or "." not in ns or not isinstance(entry, Mapping):
            continue  # "note", and anything not a namespace
        collection = ns.partition(".")[2]
        for kind in TOP_OPERATIONS:
            stats = entry.get(kind)
            if not isinstance(stats, Mapping):
                continue
            count = bson_number(stats.get("count"))
            if not count:
                continue
            verb = TOP_VERBS[kind]
            counters.append(
                StatementCounters(
                    query_id=f"{ns} {kind}",
                    calls=count,
                    total_time_s=(bson_number(stats.get("time")) or 0.0) / 1e6,
                    namespace=ns,
                    text=mongo_shape({verb: collection}),
                    summary=mongo_summary(verb, collection),
                )
            )
    counters.sort(key=lambda c: (-c.total_time_s, -c.calls, c.query_id))
    return tuple(counters[: max(limit, 0)])


# --- currentOp -------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _application(op: Doc) -> str:
    if isinstance(op.get("appName"), str):
        return op["appName"]
    metadata = op.get("clientMetadata")
    application = metadata.get("application") if isinstance(metadata, Mapping) else None
    return _text(application.get("name")) if isinstance(application, Mapping) else ""


def _user(op: Doc) -> str:
    users = op.get("effectiveUsers")
    if isinstance(users, list) and users and isinstance(users[0], Mapping):
        return _text(users[0].get("user"))
    return ""


def _wait(op: Doc) -> tuple[str, str]:
    if op.get("waitingForLock") is True:
        return "Lock", "lock"
    latch = op.get("waitingForLatch")
    if isinstance(latch, Mapping):
        return "Latch", _text(latch.get("captureName")) or "latch"
    if op.get("waitingForFlowControl") is True:
        return "FlowControl", "flowControl"
    return "", ""


def _duration(op: Doc) -> float | None:
    micros = bson_number(op.get("microsecs_running"))
    if micros is not None:
        return micros / 1e6
    secs = bson_number(op.get("secs_running"))
    return secs


def operation_session(op: Doc, own_app: str) -> ActiveSession | None:
    """One currentOp entry as a session; None for ours, monitoring hellos and ops without a command."""
    command = statement_command(op.get("command"))
    verb = next(iter(command), None)
    if not isinstance(verb, str) or verb in MONITORING_VERBS or op.get("op") == "none":
        return None
    if _application(op) == own_app and (verb == "currentOp" or _is_current_op_stage(command)):
        return None
    ns = _text(op.get("ns"))
    wait_type, wait_event = _wait(op)
    host, _, port = _text(op.get("client") or op.get("client_s")).rpartition(":")
    attributes: dict[str, str | int] = {"mongodb.op": _text(op.get("op"))}
    connection = bson_number(op.get("connectionId"))
    if connection is not None:
        attributes["mongodb.connection_id"] = int(connection)
    plan = op.get("planSummary")
    if isinstance(plan, str):  # COLLSCAN, IXSCAN { email: 1 }: index keys, never values
        attributes["mongodb.plan_summary"] = plan[:200]
    text: ObfuscatedText = mongo_shape(command)
    return ActiveSession(
        session_id=str(op.get("opid", "")),
        state="waiting" if wait_type else ("active" if op.get("active", True) else "idle"),
        wait_event_type=wait_type,
        wait_event=wait_event,
        duration_s=_duration(op),
        text=text,
        summary=mongo_summary(verb, _collection(command, ns)),
        namespace=ns,
        user=_user(op),
        client_address=host,
        client_port=int(port) if port.isdigit() else None,
        application=_application(op),
        attributes=attributes,
    )


def _is_current_op_stage(command: Mapping[str, Any]) -> bool:
    pipeline = command.get("pipeline")
    return (
        isinstance(pipeline, list)
        and bool(pipeline)
        and isinstance(pipeline[0], Mapping)
        and "$currentOp" in pipeline[0]
    )


def operation_sessions(reply: Doc, own_app: str, limit: int) -> tuple[ActiveSession, ...]:
    """currentOp's inprog as sessions, ours excluded, the longest-running first."""
    inprog = reply.get("inprog")
    if not isinstance(inprog, list):
        raise ValueError("currentOp reply has no inprog list")
    sessions = [s for op in inprog if isinstance(op, Mapping) and (s := operation_session(op, own_app)) is not None]
    sessions.sort(key=lambda s: -(s.duration_s if s.duration_s is not None else -1.0))
    return tuple(sessions[: max(limit, 0)])
