"""MongoDB command replies -> samples, the slow schedule and the error mapping, without I/O.

Replies come from tests/unit/data/mongodb_* (see mongodb_README.md there): replies captured from a
real SecantusDB 0.7, and documents shaped like MongoDB 6.0/7.0's documented output for what
SecantusDB does not serve (wiredTiger, locks, globalLock, opLatencies, repl, a secondary's view, …).
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import pytest
from bson import json_util
from bson.timestamp import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st
from pymongo.errors import (
    AutoReconnect,
    ConfigurationError,
    NetworkTimeout,
    OperationFailure,
    ServerSelectionTimeoutError,
)

from dbintel.agent.collectors import collector_class
from dbintel.agent.collectors.mongodb import COLLECTOR, MAX_COLLECTIONS, MAX_DATABASES, TABLE, mapping
from dbintel.agent.collectors.mongodb.client import (
    _combined_pem,
    classify_error,
    describe_error,
    is_stale_connection,
    is_unreachable,
    server_status_command,
    tls_options,
)
from dbintel.agent.collectors.mongodb.collector import slow_tasks
from dbintel.agent.collectors.mongodb.metrics import (
    DB_STATS,
    DOC_42,
    DOC_60,
    DOC_70,
    METRICS_BY_QUERY,
    OPLOG_OLDEST,
    SECANTUS,
    SERVER_STATUS,
)
from dbintel.agent.collectors.mongodb.refresh import KIND_ORDER, RefreshQueue
from dbintel.common.config import TLSSettings

DATA = Path(__file__).parent / "data"
TSV = Path(__file__).resolve().parents[1] / "reference" / "metrics" / "mongodb.tsv"
ALL = frozenset(TABLE.by_name)
DEFAULT = TABLE.enabled()
JSON = json_util.JSONOptions(tz_aware=False)


def load(name: str):
    return json_util.loads((DATA / name).read_text(), json_options=JSON)


def by_key(samples) -> dict[tuple[str, tuple[str, ...]], float]:
    keyed = {(s.spec.name, s.attributes): s.value for s in samples}
    assert len(keyed) == len(samples), "two samples of one series"
    return keyed


def names(samples) -> set[str]:
    return {s.spec.name for s in samples}


def tsv_rows() -> list[dict[str, str]]:
    with TSV.open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def attribute_names(cell: str) -> tuple[str, ...]:
    return tuple(part.split("=", 1)[0] for part in cell.split(",") if part)


def assert_fits_declaration(samples) -> None:
    for sample in samples:
        assert len(sample.attributes) == len(sample.spec.attributes), sample
        assert all(isinstance(value, str) and value for value in sample.attributes), sample
        assert math.isfinite(sample.value), sample


# --- the declaration table against the reference ----------------------------------------------
def test_every_default_reference_row_is_declared_as_the_tsv_says() -> None:
    defaults = [row for row in tsv_rows() if row["enabled_by_default"] == "true"]
    assert len(defaults) == 22
    for row in defaults:
        spec = TABLE[row["metric_name"]]
        assert spec.enabled_by_default and spec.tier == "reference", row["metric_name"]
        assert (spec.type, spec.unit) == (row["type"], row["unit"]), row["metric_name"]
        assert spec.monotonic == (row["monotonic"] == "true"), row["metric_name"]
        assert spec.attributes == attribute_names(row["attributes"]), row["metric_name"]


def test_every_optional_reference_row_is_declared_off_by_default_as_the_tsv_says() -> None:
    optional = [row for row in tsv_rows() if row["enabled_by_default"] == "false"]
    assert len(optional) == 32
    for row in optional:
        spec = TABLE[row["metric_name"]]
        assert not spec.enabled_by_default and spec.tier == "reference", row["metric_name"]
        assert (spec.type, spec.unit) == (row["type"], row["unit"]), row["metric_name"]
        assert spec.monotonic == (row["monotonic"] == "true"), row["metric_name"]
        assert spec.attributes == attribute_names(row["attributes"]), row["metric_name"]


def test_beyond_metrics_cover_the_readme_list_and_the_registry_finds_the_collector() -> None:
    reference = {row["metric_name"] for row in tsv_rows()}
    beyond = {spec.name: spec for spec in TABLE if spec.tier == "beyond"}
    assert set(beyond) == ALL - reference
    assert {
        "mongodb.global_lock.queue",
        "mongodb.wiredtiger.tickets",
        "mongodb.wiredtiger.cache.fill",
        "mongodb.asserts",
        "mongodb.collection.document.count",
        "mongodb.collection.data.size",
        "mongodb.collection.storage.size",
        "mongodb.collection.index.size",
    } <= set(beyond)
    assert all(name.startswith("mongodb.") for name in beyond)
    # per-collection statistics are optional (and bounded in number); the server-wide ones are on
    assert {name for name, spec in beyond.items() if not spec.enabled_by_default} == {
        name for name in beyond if name.startswith("mongodb.collection.")
    }
    assert collector_class("mongodb") is COLLECTOR and COLLECTOR.table is TABLE


def test_every_metric_comes_from_a_command_and_says_where_it_was_verified() -> None:
    for spec in TABLE:
        assert any(spec.name in metrics for metrics in METRICS_BY_QUERY.values()), spec.name
        assert spec.verified_on and set(spec.verified_on) <= {SECANTUS, DOC_42, DOC_60, DOC_70}, spec.name
        assert spec.source, spec.name


# --- serverStatus, MongoDB 7.0 primary (documented shape) -------------------------------------
def test_server_status_7_0_primary_gives_every_server_status_default() -> None:
    status = load("mongodb_server_status_7_0_primary.json")
    samples = mapping.server_status_samples(status, DEFAULT)
    values = by_key(samples)
    assert DEFAULT & METRICS_BY_QUERY[SERVER_STATUS] == names(samples)
    cache = status["wiredTiger"]["cache"]
    assert values[("mongodb.cache.operations", ("miss",))] == cache["pages read into cache"]
    assert values[("mongodb.cache.operations", ("hit",))] == (
        cache["pages requested from the cache"] - cache["pages read into cache"]
    )
    assert values[("mongodb.connection.count", ("active", "admin"))] == 9
    assert values[("mongodb.connection.count", ("available", "admin"))] == 838833
    assert values[("mongodb.connection.count", ("current", "admin"))] == 27
    assert values[("mongodb.cursor.count", ())] == 6
    assert values[("mongodb.cursor.timeout.count", ())] == 4
    assert {
        op: values[("mongodb.document.operation.count", (op, "admin"))] for op in ("insert", "update", "delete")
    } == {"insert": 500000, "update": 88003, "delete": 1200}
    assert values[("mongodb.global_lock.time", ())] == 86400120000 / 1000  # microseconds -> ms
    assert values[("mongodb.memory.usage", ("resident", "admin"))] == 1390 * 1048576
    assert values[("mongodb.memory.usage", ("virtual", "admin"))] == 3122 * 1048576
    assert values[("mongodb.network.io.receive", ())] == 9812345678
    assert values[("mongodb.network.io.transmit", ())] == 19876543210
    assert values[("mongodb.network.request.count", ())] == 31023456
    assert {op: values[("mongodb.operation.count", (op,))] for op in mapping.OPERATIONS} == status["opcounters"]
    assert values[("mongodb.session.count", ())] == 24
    # beyond the receiver
    assert values[("mongodb.global_lock.queue", ("read",))] == 3
    assert values[("mongodb.global_lock.queue", ("write",))] == 2
    assert values[("mongodb.wiredtiger.tickets", ("read", "used"))] == 5
    assert values[("mongodb.wiredtiger.tickets", ("read", "available"))] == 123
    assert values[("mongodb.wiredtiger.tickets", ("write", "used"))] == 2
    assert values[("mongodb.wiredtiger.tickets", ("write", "available"))] == 126
    assert values[("mongodb.wiredtiger.cache.usage", ())] == 1610612736
    assert values[("mongodb.wiredtiger.cache.limit", ())] == 3221225472
    assert values[("mongodb.wiredtiger.cache.fill", ())] == 0.5
    assert {kind: values[("mongodb.asserts", (kind,))] for kind in mapping.ASSERT_TYPES} == {
        "regular": 0,
        "warning": 0,
        "msg": 0,
        "user": 412,
        "rollovers": 0,
    }
    assert_fits_declaration(samples)


def test_server_status_optional_metrics_when_enabled() -> None:
    status = load("mongodb_server_status_7_0_primary.json")
    values = by_key(mapping.server_status_samples(status, ALL))
    assert values[("mongodb.active.reads", ())] == 6 and values[("mongodb.active.writes", ())] == 8
    assert values[("mongodb.health", ())] == 1
    assert values[("mongodb.lock.acquire.count", ("global", "intent_exclusive", "admin"))] == 500204
    assert values[("mongodb.lock.acquire.count", ("parallel_batch_write_mode", "exclusive", "admin"))] == 12
    assert values[("mongodb.lock.acquire.count", ("collection", "shared", "admin"))] == 3
    assert values[("mongodb.lock.acquire.time", ("global", "intent_exclusive", "admin"))] == 90344
    assert values[("mongodb.lock.acquire.wait_count", ("replication_state_transition", "exclusive", "admin"))] == 1
    assert values[("mongodb.lock.deadlock.count", ("collection", "intent_exclusive", "admin"))] == 1
    # modes a resource does not report produce no series (as the receiver: the key is absent)
    assert ("mongodb.lock.acquire.count", ("mutex", "exclusive", "admin")) not in values
    locks = {k for k in values if k[0] == "mongodb.lock.acquire.count"}
    assert {k[1][0] for k in locks} == {
        "parallel_batch_write_mode",
        "replication_state_transition",
        "global",
        "database",
        "collection",
        "mutex",
        "oplog",
    }
    assert values[("mongodb.operation.latency.time", ("read",))] == 412345678
    assert values[("mongodb.operation.latency.time", ("write",))] == 123456789
    assert values[("mongodb.operation.latency.time", ("command",))] == 98765432
    assert values[("mongodb.operation.repl.count", ("insert",))] == 0
    assert values[("mongodb.page_faults", ())] == 37
    assert values[("mongodb.uptime", ())] == 86400123
    assert values[("mongodb.wtcache.bytes.read", ())] == 7876543210


def test_tickets_come_from_queues_execution_when_the_wired_tiger_section_has_none() -> None:
    status = load("mongodb_server_status_7_0_primary.json")
    del status["wiredTiger"]["concurrentTransactions"]  # the MongoDB 8.0 layout
    status["queues"]["execution"]["read"]["out"] = 9
    values = by_key(mapping.server_status_samples(status, DEFAULT))
    assert values[("mongodb.wiredtiger.tickets", ("read", "used"))] == 9


def test_server_status_6_0_secondary() -> None:
    status = load("mongodb_server_status_6_0_secondary.json")
    samples = mapping.server_status_samples(status, ALL)
    values = by_key(samples)
    assert DEFAULT & METRICS_BY_QUERY[SERVER_STATUS] <= names(samples)
    replicated = {op: values[("mongodb.operation.repl.count", (op,))] for op in mapping.OPERATIONS}
    assert replicated == status["opcountersRepl"]
    assert values[("mongodb.wiredtiger.tickets", ("read", "used"))] == 1
    assert values[("mongodb.session.count", ())] == 11
    assert mapping.role_of(status, "RSSecondary") == "secondary"
    assert_fits_declaration(samples)


# --- serverStatus, SecantusDB (captured) -----------------------------------------------------
def test_secantus_server_status_maps_what_it_serves_and_skips_what_it_lacks() -> None:
    status = load("mongodb_secantus_0_7_server_status.json")
    samples = mapping.server_status_samples(status, ALL)
    values = by_key(samples)
    served = {spec.name for spec in TABLE if SECANTUS in spec.verified_on} & METRICS_BY_QUERY[SERVER_STATUS]
    rates = set(mapping.RATES.values())  # need two readings
    assert names(samples) == served - rates
    # no connections.active on SecantusDB
    assert {k[1] for k in values if k[0] == "mongodb.connection.count"} == {
        ("available", "admin"),
        ("current", "admin"),
    }
    assert values[("mongodb.memory.usage", ("resident", "admin"))] == status["mem"]["resident"] * 1048576
    assert values[("mongodb.uptime", ())] == status["uptimeMillis"]
    assert mapping.role_of(status, "RSPrimary") == "primary"  # no repl section: the driver's view decides
    assert mapping.role_of(status, "Standalone") == "standalone"
    assert_fits_declaration(samples)


def test_role_comes_from_serverstatus_repl_first() -> None:
    primary = load("mongodb_server_status_7_0_primary.json")
    assert mapping.role_of(primary, "RSSecondary") == "primary"  # fresher than the driver's last hello
    assert mapping.role_of({"repl": {"arbiterOnly": True, "secondary": False}}, "Unknown") == "arbiter"
    assert mapping.role_of({"repl": {"setName": "rs0", "secondary": False}}, "Unknown") == "member"
    assert mapping.role_of(None, "Mongos") == "mongos"
    assert mapping.role_of(None, "Unknown") == "unknown"
    assert {"primary", "secondary", "arbiter", "member"} == mapping.REPLICA_ROLES


def test_server_status_command_leaves_out_what_no_enabled_metric_reads() -> None:
    def command(enabled: frozenset[str]) -> dict[str, int]:
        return server_status_command(mapping.unread_sections(enabled))

    default = command(DEFAULT)
    assert next(iter(default)) == "serverStatus"
    for section in ("locks", "opLatencies", "extra_info", "opcountersRepl", "tcmalloc", "transactions"):
        assert default[section] == 0, section
    for section in ("wiredTiger", "metrics", "repl", "connections", "globalLock", "asserts", "opcounters"):
        assert section not in default, section  # included by default on the server: not mentioned
    everything = command(ALL)
    assert not {"locks", "opLatencies", "extra_info", "opcountersRepl", "asserts", "globalLock"} & set(everything)
    lean = command(frozenset({"mongodb.connection.count"}))
    assert lean["globalLock"] == 0 and lean["asserts"] == 0


def test_health_sample_is_zero_when_server_status_failed() -> None:
    assert [(s.spec.name, s.value) for s in mapping.health_sample(ALL)] == [("mongodb.health", 0)]
    assert mapping.health_sample(DEFAULT) == []


# --- rates ---------------------------------------------------------------------------------------
def test_rates_between_two_readings_and_none_across_a_restart() -> None:
    first = load("mongodb_server_status_6_0_secondary.json")
    second = load("mongodb_server_status_6_0_secondary.json")
    second["opcounters"]["query"] += 300
    second["opcountersRepl"]["insert"] += 60
    second["wiredTiger"]["transaction"]["transaction checkpoints"] += 3
    before, after = mapping.rate_counters(first, 100.0), mapping.rate_counters(second, 130.0)
    assert mapping.rate_samples(None, before, ALL) == []
    values = by_key(mapping.rate_samples(before, after, ALL))
    assert values[("mongodb.queries.rate", ())] == 10.0
    assert values[("mongodb.commands.rate", ())] == 0.0
    assert values[("mongodb.repl_inserts_per_sec", ())] == 2.0
    assert values[("mongodb.flushes.rate", ())] == 0.1
    assert len(values) == 13
    restarted = mapping.rate_counters({"opcounters": dict.fromkeys(mapping.OPERATIONS, 0), "uptimeMillis": 900}, 160.0)
    assert mapping.rate_samples(after, restarted, ALL) == []  # even the counters that were 0 and still are
    went_back = mapping.Counters(160.0, {**after.values, ("opcounters", "query"): 0.0})
    assert ("mongodb.queries.rate", ()) not in by_key(mapping.rate_samples(after, went_back, ALL))
    assert mapping.rate_samples(after, after, ALL) == []  # no time passed


def test_flush_counter_reads_the_checkpoint_section_of_newer_servers() -> None:
    status = load("mongodb_server_status_7_0_primary.json")
    counters = mapping.rate_counters(status, 0.0)
    assert counters.values[("checkpoints", "")] == 1440


@given(st.integers(0, 2**50), st.integers(0, 2**40), st.floats(0.001, 1e6))  # counters stay exact in a float
def test_rates_are_never_negative(before: int, delta: int, elapsed: float) -> None:
    first = mapping.Counters(0.0, {("opcounters", "insert"): float(before)})
    second = mapping.Counters(elapsed, {("opcounters", "insert"): float(before + delta)})
    [sample] = mapping.rate_samples(first, second, ALL)
    assert sample.value >= 0 and math.isclose(sample.value, delta / elapsed, rel_tol=1e-9)
    assert mapping.rate_samples(second, first, ALL) == []


# --- databases, collections, top ---------------------------------------------------------------
def test_database_count_and_ranking_by_size() -> None:
    reply = load("mongodb_secantus_0_7_list_databases.json")
    values = by_key(mapping.database_samples(reply["databases"], DEFAULT))
    assert values[("mongodb.database.count", ())] == len(reply["databases"])
    ranked = mapping.ranked_databases(
        [
            {"name": "b", "sizeOnDisk": 10},
            {"name": "a", "sizeOnDisk": 10},
            {"name": "big", "sizeOnDisk": 10**9},
            {"name": "empty", "empty": True},
            {"sizeOnDisk": 5},
        ]
    )
    assert ranked == ["big", "a", "b", "empty"]


@pytest.mark.parametrize(
    "fixture, database, extents",
    [
        ("mongodb_db_stats_7_0.json", "shop", None),
        ("mongodb_db_stats_4_2.json", "legacy", 6),
        ("mongodb_secantus_0_7_db_stats.json", "shop", None),
    ],
)
def test_db_stats(fixture: str, database: str, extents: int | None) -> None:
    stats = load(fixture)
    samples = mapping.db_stats_samples(database, stats, DEFAULT)
    values = by_key(samples)
    expected = {
        "mongodb.collection.count": "collections",
        "mongodb.data.size": "dataSize",
        "mongodb.index.count": "indexes",
        "mongodb.index.size": "indexSize",
        "mongodb.object.count": "objects",
        "mongodb.storage.size": "storageSize",
    }
    for metric, field in expected.items():
        assert values[(metric, (database,))] == stats[field], metric
    assert values.get(("mongodb.extent.count", (database,))) == extents  # MMAPv1 only, gone in 4.4
    assert_fits_declaration(samples)


def test_collection_names_skip_views() -> None:
    entries = [
        {"name": "orders", "type": "collection"},
        {"name": "by_day", "type": "view"},
        {"name": "audit", "type": "collection"},
        {"name": "old"},
        {"type": "collection"},
    ]
    assert mapping.collection_names(entries) == ["audit", "old", "orders"]


@pytest.mark.parametrize("fixture", ["mongodb_top_7_0.json", "mongodb_secantus_0_7_top.json"])
def test_top_sums_time_over_namespaces_in_milliseconds(fixture: str) -> None:
    top = load(fixture)
    samples = mapping.top_samples(top, DEFAULT)
    values = by_key(samples)
    namespaces = [entry for ns, entry in top["totals"].items() if ns != "note"]
    for field, operation in mapping.TOP_OPERATIONS.items():
        assert values[("mongodb.operation.time", (operation,))] == sum(e[field]["time"] for e in namespaces) / 1000
    assert len(samples) == 6
    assert_fits_declaration(samples)


def test_top_of_the_documented_shape() -> None:
    values = by_key(mapping.top_samples(load("mongodb_top_7_0.json"), DEFAULT))
    assert values[("mongodb.operation.time", ("query",))] == (900100 + 1500) / 1000
    assert values[("mongodb.operation.time", ("delete",))] == 50.2


@pytest.mark.parametrize(
    "fixture, expected", [("mongodb_index_stats_7_0.json", 71212), ("mongodb_secantus_0_7_index_stats.json", 0)]
)
def test_index_access_is_summed_over_the_collections_indexes(fixture: str, expected: int) -> None:
    samples = mapping.index_access_samples("shop", "orders", load(fixture), DEFAULT)
    assert by_key(samples) == {("mongodb.index.access.count", ("orders", "shop")): expected}


@pytest.mark.parametrize("fixture", ["mongodb_coll_stats_7_0.json", "mongodb_secantus_0_7_coll_stats.json"])
def test_collection_stats_only_when_enabled(fixture: str) -> None:
    batch = load(fixture)
    assert mapping.collection_stats_samples("shop", "orders", batch, DEFAULT) == []
    values = by_key(mapping.collection_stats_samples("shop", "orders", batch, ALL))
    storage = batch[0]["storageStats"]
    assert values == {
        ("mongodb.collection.document.count", ("orders", "shop")): storage["count"],
        ("mongodb.collection.data.size", ("orders", "shop")): storage["size"],
        ("mongodb.collection.storage.size", ("orders", "shop")): storage["storageSize"],
        ("mongodb.collection.index.size", ("orders", "shop")): storage["totalIndexSize"],
    }


# --- replica set and oplog ---------------------------------------------------------------------
OLDEST = Timestamp(1725271200 - 3600, 1)  # an hour of oplog before the primary's last applied optime


def test_primary_view_of_the_replica_set() -> None:
    status = load("mongodb_repl_set_get_status_7_0_primary.json")
    samples = mapping.repl_status_samples(status, ALL, oplog_oldest=OLDEST)
    values = by_key(samples)
    counts = {k[1][0]: v for k, v in values.items() if k[0] == "mongodb.replica_set.member.count"}
    assert counts == {
        "startup": 0,
        "primary": 1,
        "secondary": 1,
        "recovering": 0,
        "startup2": 0,
        "unknown": 0,
        "arbiter": 0,
        "down": 1,
        "rollback": 0,
        "removed": 0,
    }
    status_values = {k[1][0]: v for k, v in values.items() if k[0] == "mongodb.replica.status"}
    assert status_values["primary"] == 1 and sum(status_values.values()) == 1 and len(status_values) == 10
    assert values[("mongodb.replica_set.lag", ("mongo-1:27017", "applied"))] == 1.5
    assert values[("mongodb.replica_set.lag", ("mongo-1:27017", "durable"))] == 3.0
    assert not any(k[1][0] == "mongo-2:27017" for k in values if k[0] == "mongodb.replica_set.lag")  # down, not lagging
    assert values[("mongodb.oplog.window", ())] == 3600
    assert values[("mongodb.replica_set.headroom", ("mongo-1:27017",))] == 3600 - 1.5
    assert_fits_declaration(samples)


def test_secondary_reports_its_state_but_no_lag_or_headroom() -> None:
    status = load("mongodb_repl_set_get_status_6_0_secondary.json")
    samples = mapping.repl_status_samples(status, ALL, oplog_oldest=OLDEST)
    values = by_key(samples)
    assert values[("mongodb.replica.status", ("secondary",))] == 1
    assert values[("mongodb.replica_set.member.count", ("arbiter",))] == 1
    assert values[("mongodb.oplog.window", ())] == 3600 - 2  # its own last applied optime
    assert not names(samples) & {"mongodb.replica_set.lag", "mongodb.replica_set.headroom"}


def test_secantus_one_member_set_and_no_window_without_the_oldest_entry() -> None:
    status = load("mongodb_secantus_0_7_repl_set_get_status.json")
    values = by_key(mapping.repl_status_samples(status, ALL, oplog_oldest=None))
    assert values[("mongodb.replica.status", ("primary",))] == 1
    assert values[("mongodb.replica_set.member.count", ("primary",))] == 1
    assert ("mongodb.oplog.window", ()) not in values and ("mongodb.replica_set.lag",) not in values
    assert mapping.repl_status_samples(status, DEFAULT, oplog_oldest=None) == []  # all optional


def test_oplog_size_and_limit() -> None:
    values = by_key(mapping.oplog_stats_samples(load("mongodb_oplog_coll_stats_7_0.json"), ALL))
    assert values == {("mongodb.oplog.limit", ()): 1073741824, ("mongodb.oplog.usage", ()): 812345678}


@pytest.mark.parametrize(
    "fixture",
    [
        "mongodb_server_status_7_0_primary.json",
        "mongodb_server_status_6_0_secondary.json",
        "mongodb_secantus_0_7_server_status.json",
    ],
)
def test_only_enabled_metrics_are_emitted(fixture: str) -> None:
    status = load(fixture)
    for enabled in (frozenset(), frozenset({"mongodb.cursor.count"}), DEFAULT):
        assert names(mapping.server_status_samples(status, enabled)) <= enabled


def test_values_of_the_wrong_type_are_skipped_not_fatal() -> None:
    status = {
        "connections": {"current": "many", "available": True, "active": 3},
        "mem": None,
        "opcounters": [],
        "ok": 1,
    }
    values = by_key(mapping.server_status_samples(status, DEFAULT))
    assert values == {("mongodb.connection.count", ("active", "admin")): 3}


# --- the slow schedule ---------------------------------------------------------------------------
def test_refresh_queue_runs_lists_first_then_each_task_once_per_interval() -> None:
    queue = RefreshQueue(300.0)
    queue.want([("dbStats", "a"), ("indexStats", "a", "x"), ("listCollections", "a"), ("listDatabases",)])
    order = []
    while (key := queue.next(0.0)) is not None:
        order.append(key)
        queue.done(key, 0.0)
    assert order == [("listDatabases",), ("listCollections", "a"), ("dbStats", "a"), ("indexStats", "a", "x")]
    assert queue.next(299.0) is None
    assert queue.next(300.0) == ("listDatabases",)
    dropped = queue.want([("dbStats", "a"), ("dbStats", "b")])
    assert set(dropped) == {("indexStats", "a", "x"), ("listCollections", "a"), ("listDatabases",)}
    assert queue.wanted == (("dbStats", "a"), ("dbStats", "b"))
    assert queue.next(1.0) == ("dbStats", "b")  # never run comes before anything that has run
    assert queue.last_run(("dbStats", "a")) == 0.0 and queue.last_run(("listDatabases",)) is None


@settings(max_examples=60)
@given(
    st.lists(st.tuples(st.sampled_from(KIND_ORDER), st.sampled_from("abc")), min_size=1, max_size=12, unique=True),
    st.lists(st.floats(0.0, 200.0), min_size=1, max_size=40),
    st.integers(1, 3),
)
def test_refresh_queue_never_repeats_within_the_interval_and_eventually_runs_everything(keys, steps, budget) -> None:
    queue = RefreshQueue(300.0)
    queue.want(keys)
    now, last_run = 0.0, {}
    for step in steps:
        now += step
        for _ in range(budget):
            key = queue.next(now)
            if key is None:
                break
            assert key not in last_run or now - last_run[key] >= 300.0
            last_run[key] = now
            queue.done(key, now)
    # with enough rounds every wanted task has run
    for _ in range(len(keys)):
        key = queue.next(now + 1e6)
        if key is not None:
            queue.done(key, now + 1e6)
    assert all(queue.last_run(key) is not None for key in keys)


# --- errors --------------------------------------------------------------------------------------
def _failure(code: int, errmsg: str, code_name: str) -> OperationFailure:
    return OperationFailure(errmsg, code, {"ok": 0.0, "errmsg": errmsg, "code": code, "codeName": code_name})


UNAUTHORIZED = _failure(
    13, 'not authorized on admin to execute command { serverStatus: 1, $db: "admin" }', "Unauthorized"
)
AUTH_FAILED = _failure(18, "Authentication failed.", "AuthenticationFailed")


@pytest.mark.parametrize(
    "exc, reason",
    [
        (UNAUTHORIZED, "permission"),
        (AUTH_FAILED, "permission"),
        (_failure(59, "no such command: 'top'", "CommandNotFound"), "unsupported"),
        (_failure(76, "not running with --replSet", "NoReplicationEnabled"), "unsupported"),
        (_failure(50, "operation exceeded time limit", "MaxTimeMSExpired"), "timeout"),
        (_failure(26, "ns not found", "NamespaceNotFound"), "server_error"),
        (NetworkTimeout("127.0.0.1:27017: timed out"), "timeout"),
        (
            ServerSelectionTimeoutError("127.0.0.1:27017: timed out, Timeout: 1.6s, Topology Description: ..."),
            "timeout",
        ),
        (ServerSelectionTimeoutError("127.0.0.1:27017: [Errno 111] Connection refused, Timeout: 1.6s"), "connection"),
        (AutoReconnect("connection closed"), "connection"),
        (ConfigurationError("bad TLS file"), "connection"),
        (ValueError("listDatabases reply has no databases list"), "bad_reply"),
    ],
)
def test_error_reasons(exc: BaseException, reason: str) -> None:
    assert classify_error(exc) == reason


def test_unreachable_and_stale_connection() -> None:
    assert is_unreachable(AUTH_FAILED) and not is_unreachable(UNAUTHORIZED)
    assert is_unreachable(AutoReconnect("x")) and is_unreachable(ServerSelectionTimeoutError("x"))
    assert not is_unreachable(ValueError("x"))
    assert is_stale_connection(AutoReconnect("connection closed"))
    assert not is_stale_connection(NetworkTimeout("timed out"))
    assert not is_stale_connection(ServerSelectionTimeoutError("refused"))


def test_unauthorized_names_the_grant_and_never_a_secret() -> None:
    secret = "pa55-word-xyz"
    leaky = _failure(13, f"not authorized on shop to execute command {{ dbStats: 1 }} {secret}", "Unauthorized")
    reason, message = describe_error(leaky, query=DB_STATS, user="monitor", target="shop", secrets=(secret,))
    assert reason == "permission"
    assert secret not in message and "***" in message
    assert message.startswith("shop: OperationFailure: not authorized on shop")
    assert 'grantRolesToUser("monitor", [{role: "clusterMonitor", db: "admin"}])' in message
    assert 'or read on "shop"' in message
    assert "full error" not in message
    _, oplog = describe_error(UNAUTHORIZED, query=OPLOG_OLDEST, user="monitor")
    assert '{role: "read", db: "local"}' in oplog
    _, auth = describe_error(AUTH_FAILED, query=SERVER_STATUS, user="monitor")
    assert "check the username, password and authSource of user monitor" in auth and "grant" not in auth


def test_topology_dump_is_cut_from_connection_errors() -> None:
    exc = ServerSelectionTimeoutError(
        "127.0.0.1:1: [Errno 111] Connection refused (configured timeouts: socketTimeoutMS: 8000.0ms), "
        "Timeout: 1.6s, Topology Description: <TopologyDescription id: 1, topology_type: Single, servers: [...]>"
    )
    reason, message = describe_error(exc, query=SERVER_STATUS, user=None)
    assert reason == "connection"
    assert message == (
        "ServerSelectionTimeoutError: 127.0.0.1:1: [Errno 111] Connection refused "
        "(configured timeouts: socketTimeoutMS: 8000.0ms)"
    )


def test_tls_settings_map_to_driver_options() -> None:
    assert tls_options(TLSSettings()) == {}
    assert tls_options(
        TLSSettings(enabled=True, ca_file="/ca.pem", cert_file="/client.pem", key_file="/client.pem")
    ) == {"tls": True, "tlsCAFile": "/ca.pem", "tlsCertificateKeyFile": "/client.pem"}
    assert tls_options(TLSSettings(enabled=True, insecure_skip_verify=True)) == {"tls": True, "tlsInsecure": True}
    # a separate key file is joined to the certificate by the client, not passed as is
    assert "tlsCertificateKeyFile" not in tls_options(TLSSettings(enabled=True, cert_file="/c.pem", key_file="/k.pem"))


def test_a_separate_key_file_is_joined_to_the_certificate_in_memory(tmp_path: Path) -> None:
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n")
    fd = _combined_pem(str(cert), str(key))
    try:
        assert Path(f"/proc/self/fd/{fd}").read_bytes() == cert.read_bytes() + key.read_bytes()
        assert "memfd:" in os.readlink(f"/proc/self/fd/{fd}")  # never written to a file system
    finally:
        os.close(fd)


# --- which slow commands a collector plans, by role and bound ---------------------------------
QUERIES_DEFAULT = frozenset(q for q, metrics in METRICS_BY_QUERY.items() if metrics & DEFAULT)
QUERIES_ALL = frozenset(METRICS_BY_QUERY)


def kinds(keys) -> set[str]:
    return {key[0] for key in keys}


def test_slow_tasks_by_role() -> None:
    databases, collections = ["shop", "local"], {"shop": ["orders"], "local": ["oplog.rs"]}
    standalone = slow_tasks(QUERIES_DEFAULT, "standalone", databases, collections)
    assert kinds(standalone) == {"listDatabases", "dbStats", "listCollections", "indexStats"}
    assert standalone[0] == ("listDatabases",)
    primary = slow_tasks(QUERIES_ALL, "primary", databases, collections)
    assert {"oplogStats", "oplogOldest", "collStats"} <= kinds(primary)
    assert ("oplogStats",) not in slow_tasks(QUERIES_ALL, "standalone", databases, collections)
    assert kinds(slow_tasks(QUERIES_ALL, "secondary", databases, collections)) == kinds(primary)
    assert slow_tasks(QUERIES_ALL, "arbiter", databases, collections) == []  # an arbiter holds no data
    assert slow_tasks(frozenset({SERVER_STATUS}), "primary", databases, collections) == []
    # before the first listDatabases only the list itself is known
    assert slow_tasks(QUERIES_DEFAULT, "primary", [], {}) == [("listDatabases",)]


@given(st.integers(0, 80), st.integers(0, 30), st.sampled_from(["primary", "secondary", "standalone", "mongos"]))
def test_slow_tasks_are_bounded(n_databases: int, per_database: int, role: str) -> None:
    databases = [f"db{i:03d}" for i in range(n_databases)]
    collections = {db: [f"c{j:03d}" for j in range(per_database)] for db in databases}
    keys = slow_tasks(QUERIES_ALL, role, databases, collections)
    assert len(keys) == len(set(keys))
    per_kind = {kind: [key for key in keys if key[0] == kind] for kind in kinds(keys)}
    assert len(per_kind.get("dbStats", [])) == min(n_databases, MAX_DATABASES)
    assert len(per_kind.get("indexStats", [])) == min(min(n_databases, MAX_DATABASES) * per_database, MAX_COLLECTIONS)
    assert per_kind.get("collStats", []) == [("collStats",) + key[1:] for key in per_kind.get("indexStats", [])]
    # the largest databases (first in the list) are the ones kept
    assert [key[1] for key in per_kind.get("dbStats", [])] == databases[:MAX_DATABASES]
