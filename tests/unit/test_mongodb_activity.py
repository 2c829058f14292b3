"""MongoDB query intelligence, pure mapping, on reply shapes as MongoDB documents them (currentOp's output
fields, the database profiler's output, top's output)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from dbintel.agent.collectors.mongodb.activity import (
    operation_sessions,
    parse_cursor,
    profile_counters,
    profile_cursor,
    statement_id,
    top_counters,
    ts_millis,
)

ENVELOPE = {"lsid": {"id": "uuid"}, "$clusterTime": {"clusterTime": 1}, "$db": "shop", "txnNumber": 4}
LEAK = re.compile(r"secret|example|4111|@")


def profile_entry(ts_ms: int, millis: int, command: dict, op: str = "query", **fields) -> dict:
    ts = datetime.fromtimestamp(ts_ms / 1000, UTC).replace(tzinfo=None)  # naive UTC, as PyMongo decodes it
    return {"op": op, "ns": "shop.orders", "command": command, "millis": millis, "ts": ts, **fields}


# After the database profiler's output reference (4.4+: the command document under "command").
FIND = {"find": "orders", "filter": {"email": "alice.secret@example.com", "total": {"$gt": 100}}, **ENVELOPE}
UPDATE = {
    "update": "orders",
    "updates": [{"q": {"_id": 7}, "u": {"$set": {"card": "4111111111111111"}}, "multi": False, "upsert": False}],
    "ordered": True,
    **ENVELOPE,
}


def test_profile_entries_group_by_shape_heaviest_first():
    entries = [
        profile_entry(1000, 5, FIND, nreturned=2, docsExamined=1000, keysExamined=0),
        profile_entry(
            1001, 7, {**FIND, "filter": {"email": "bob.secret@example.com", "total": {"$gt": 5}}}, nreturned=1
        ),
        profile_entry(1002, 40, UPDATE, op="update", nModified=1, keysExamined=1, docsExamined=1),
        profile_entry(1003, 1, {"getMore": 123456789, "collection": "orders"}, op="getmore", nreturned=101),
    ]
    update, find, get_more = profile_counters(entries, limit=10)
    assert (find.calls, find.total_time_s, find.rows) == (2.0, 0.012, 3.0)
    assert find.extra == {"mongodb.docs_examined": 1000.0, "mongodb.keys_examined": 0.0}
    assert find.text == '{"find":"orders","filter":{"email":"?","total":{"$gt":"?"}}}'  # the envelope is gone
    assert find.summary == "find orders" and find.namespace == "shop.orders"
    assert find.query_id == statement_id("shop.orders", find.text)
    assert (update.summary, update.rows, update.total_time_s) == ("update orders", 1.0, 0.04)
    assert get_more.summary == "getMore orders" and "123456789" not in get_more.text
    for counter in (update, find, get_more):
        assert not LEAK.search(counter.text)
    assert len(profile_counters(entries, limit=1)) == 1


def test_profile_cursor():
    entries = [profile_entry(1_700_000_000_123, 1, FIND), profile_entry(1_700_000_000_456, 1, FIND)]
    assert profile_cursor(entries, "5") == "1700000000456"
    assert ts_millis(parse_cursor("1700000000456")) == 1_700_000_000_456
    assert profile_cursor([], "1700000000456") == "1700000000456"  # nothing new: same place
    assert profile_cursor([], None) == "0"  # an empty profile: every later entry counts
    assert parse_cursor(None) is None and parse_cursor("garbage") is None


@given(
    st.recursive(
        st.text() | st.integers() | st.floats(allow_nan=False) | st.booleans(), lambda c: st.lists(c, max_size=3)
    )
)
def test_no_filter_value_survives(value):
    (counter,) = profile_counters([profile_entry(1, 1, {"find": "orders", "filter": {"email": value}})], limit=5)
    shape = json.loads(counter.text)
    assert shape["find"] == "orders"
    assert leaves(shape["filter"]["email"]) <= {"?", "..."}


def leaves(value) -> set:
    if isinstance(value, list):
        return set().union(*map(leaves, value)) if value else set()
    return {value}


# After top's output reference ("all times in microseconds").
TOP = {
    "totals": {
        "note": "all times in microseconds",
        "records.users": {
            "total": {"time": 305277, "count": 2825},
            "readLock": {"time": 305264, "count": 2824},
            "writeLock": {"time": 13, "count": 1},
            "queries": {"time": 305264, "count": 2824},
            "getmore": {"time": 0, "count": 0},
            "insert": {"time": 0, "count": 0},
            "update": {"time": 0, "count": 0},
            "remove": {"time": 0, "count": 0},
            "commands": {"time": 13, "count": 1},
        },
        "local.oplog.rs": {"total": {"time": 0, "count": 0}, "queries": {"time": 0, "count": 0}},
    },
    "ok": 1,
}


def test_top_statements_per_namespace_and_kind():
    queries, commands = top_counters(TOP, limit=10)
    assert (queries.query_id, queries.calls, queries.total_time_s) == ("records.users queries", 2824.0, 0.305264)
    assert (queries.text, queries.summary, queries.namespace) == ('{"find":"users"}', "find users", "records.users")
    assert (commands.query_id, commands.summary) == ("records.users commands", "command users")
    assert top_counters(TOP, limit=1) == (queries,)


# After currentOp's output example (a find waiting for a lock, our own currentOp, a driver's hello).
CURRENT_OP = {
    "inprog": [
        {
            "type": "op",
            "host": "db1:27017",
            "desc": "conn12",
            "connectionId": 12,
            "client": "10.0.0.5:51234",
            "appName": "orders-service",
            "clientMetadata": {"application": {"name": "orders-service"}, "driver": {"name": "nodejs"}},
            "active": True,
            "currentOpTime": "2024-05-01T10:00:00.000+00:00",
            "effectiveUsers": [{"user": "app", "db": "admin"}],
            "opid": 4512,
            "secs_running": 12,
            "microsecs_running": 12345678,
            "op": "query",
            "ns": "shop.orders",
            "command": FIND,
            "planSummary": "COLLSCAN",
            "numYields": 40,
            "locks": {"Global": "r", "Database": "r"},
            "waitingForLock": True,
            "lockStats": {},
        },
        {
            "type": "op",
            "connectionId": 13,
            "client": "10.0.0.6:40000",
            "active": True,
            "opid": 4513,
            "microsecs_running": 2000,
            "op": "update",
            "ns": "shop.orders",
            "command": UPDATE,
            "waitingForLock": False,
            "waitingForLatch": {"timestamp": "x", "captureName": "ReplicationCoordinatorImpl::_mutex"},
        },
        {
            "connectionId": 14,
            "client": "127.0.0.1:50000",
            "appName": "dbintel",
            "active": True,
            "opid": 4514,
            "microsecs_running": 50,
            "op": "command",
            "ns": "admin.$cmd",
            "command": {"currentOp": 1, "active": True, "$db": "admin"},
        },
        {
            "connectionId": 15,
            "client": "10.0.0.7:1",
            "active": True,
            "opid": 4515,
            "microsecs_running": 9_000_000,
            "op": "command",
            "ns": "admin.$cmd",
            "command": {"hello": 1, "topologyVersion": {}, "maxAwaitTimeMS": 10000},
        },
    ]
}


def test_current_op_sessions():
    waiting, latched = operation_sessions(CURRENT_OP, "dbintel", limit=10)
    assert (waiting.session_id, waiting.state, waiting.wait_event_type, waiting.duration_s) == (
        "4512",
        "waiting",
        "Lock",
        12.345678,
    )
    assert (waiting.summary, waiting.namespace, waiting.user, waiting.application) == (
        "find orders",
        "shop.orders",
        "app",
        "orders-service",
    )
    assert (waiting.client_address, waiting.client_port, waiting.blocked_by) == ("10.0.0.5", 51234, ())
    assert waiting.attributes["mongodb.plan_summary"] == "COLLSCAN"
    assert (latched.wait_event_type, latched.wait_event, latched.summary) == (
        "Latch",
        "ReplicationCoordinatorImpl::_mutex",
        "update orders",
    )
    for session in (waiting, latched):
        assert not LEAK.search(session.text)
    assert len(operation_sessions(CURRENT_OP, "dbintel", limit=1)) == 1
