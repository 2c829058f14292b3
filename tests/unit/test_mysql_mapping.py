"""MySQL collector without a server: declarations vs the reference TSV, version handling, SQL vs the
documented tables of MySQL 8.0 and MariaDB 10.11, and replies -> samples for both flavours.

MariaDB 10.11 replies were captured from the real server; MySQL 8.0 replies are documented shapes
(see tests/unit/data/mysql_README.md)."""

from __future__ import annotations

import csv
import json
import re
import ssl
from collections import Counter
from pathlib import Path
from typing import Any

import pymysql
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbintel.agent.collectors.mysql import client, mapping
from dbintel.agent.collectors.mysql.metrics import (
    MARIADB,
    MARIADB_PAIR,
    METRICS_BY_QUERY,
    MYSQL8,
    TABLE,
    TABLE_METRICS,
    TRX_METRICS,
)
from dbintel.agent.collectors.samples import float_number
from dbintel.common.config import TLSSettings

DATA = Path(__file__).resolve().parent / "data"
REFERENCE = Path(__file__).resolve().parents[1] / "reference" / "metrics" / "mysql.tsv"
ALL = TABLE.enabled(dict.fromkeys(TABLE.by_name, True))
MARIADB_1011 = client.ServerVersion("mariadb", (10, 11, 19))
MYSQL_8036 = client.ServerVersion("mysql", (8, 0, 36))


def reference_rows() -> list[dict[str, str]]:
    with REFERENCE.open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def load_status(name: str) -> dict[str, str]:
    return dict(line.split("\t", 1) for line in (DATA / name).read_text().splitlines())


def load_replies(name: str) -> dict[str, Any]:
    return json.loads((DATA / name).read_text())


FLAVOURS = {
    MARIADB: (load_status("mysql_mariadb_10_11_global_status.tsv"), load_replies("mysql_mariadb_10_11_replies.json")),
    MYSQL8: (load_status("mysql_mysql_8_0_global_status.tsv"), load_replies("mysql_mysql_8_0_replies.json")),
}


def collect_offline(status: dict[str, str], replies: dict[str, Any], enabled: frozenset[str] = ALL) -> list:
    """What MysqlCollector.collect() makes of these replies: the same mapping calls, in the same order."""
    samples = mapping.status_samples(status, enabled)
    samples += mapping.variable_samples(replies["catalog"]["variables"], status, enabled)
    samples += mapping.table_samples(replies["catalog"]["tables"], enabled)
    counters = mapping.innodb_metric_names(status, enabled)
    innodb = {
        "metrics": {k: v for k, v in replies["innodb"]["metrics"].items() if k in counters},
        "trx": replies["innodb"]["trx"],
    }
    samples += mapping.innodb_samples(innodb, enabled)
    samples += mapping.performance_schema_samples(replies["performance_schema"], enabled)
    samples += mapping.replica_samples(replies["replica_status"], enabled)
    return samples


def by_key(samples: list) -> dict[tuple[str, tuple[str, ...]], float]:
    return {(s.spec.name, s.attributes): s.value for s in samples}


# --- declarations vs the reference --------------------------------------------------------------
def _attribute_names(text: str) -> tuple[str, ...]:
    return tuple(part.split("=")[0] for part in text.split(",") if part)


@pytest.mark.parametrize("row", reference_rows(), ids=lambda r: r["metric_name"])
def test_every_reference_metric_is_declared_as_the_reference_says(row: dict[str, str]) -> None:
    spec = TABLE[row["metric_name"]]
    assert spec.enabled_by_default == (row["enabled_by_default"] == "true")
    assert spec.tier == "reference"
    assert spec.type == row["type"]
    assert spec.monotonic == (row["monotonic"] == "true")
    assert spec.unit == row["unit"]
    assert spec.attributes == _attribute_names(row["attributes"])


def test_the_default_floor_is_the_25_reference_rows_plus_the_beyond_metrics() -> None:
    defaults = {r["metric_name"] for r in reference_rows() if r["enabled_by_default"] == "true"}
    assert len(defaults) == 25
    beyond = {s.name for s in TABLE if s.tier == "beyond"}
    assert beyond == {
        "mysql.connection.max",
        "mysql.connection.utilization",
        "mysql.innodb.checkpoint.age",
        "mysql.innodb.redo_log.capacity",
        "mysql.binlog.cache.use",
        "mysql.binlog.cache.disk_use",
        "mysql.innodb.deadlocks",
        "mysql.replica.thread.last_error",
        "mysql.replicas.connected",
    }
    assert not beyond & {r["metric_name"] for r in reference_rows()}
    assert TABLE.enabled() == defaults | beyond
    assert len(TABLE.specs) == len(reference_rows()) + len(beyond)


def test_every_metric_says_where_it_was_verified_and_belongs_to_a_query() -> None:
    fed = set().union(*METRICS_BY_QUERY.values())
    for spec in TABLE:
        assert spec.verified_on and set(spec.verified_on) <= {MARIADB, MARIADB_PAIR, MYSQL8}, spec.name
        assert spec.name in fed and spec.source, spec.name


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_verified_on_is_what_the_replies_of_that_server_produce(flavour: str) -> None:
    status, replies = FLAVOURS[flavour]
    emitted = {s.spec.name for s in collect_offline(status, replies)}
    assert emitted == {spec.name for spec in TABLE if flavour in spec.verified_on}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_no_series_is_emitted_twice_and_attributes_fit(flavour: str) -> None:
    samples = collect_offline(*FLAVOURS[flavour])
    duplicates = [key for key, n in Counter((s.spec.name, s.attributes) for s in samples).items() if n > 1]
    assert duplicates == []
    for sample in samples:
        assert len(sample.attributes) == len(sample.spec.attributes), sample
        assert all(isinstance(value, str) for value in sample.attributes), sample


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_only_enabled_metrics_are_emitted(flavour: str) -> None:
    status, replies = FLAVOURS[flavour]
    enabled = TABLE.enabled()
    assert {s.spec.name for s in collect_offline(status, replies, enabled)} <= enabled
    assert collect_offline(status, replies, frozenset()) == []


# --- server version --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, flavour, number",
    [
        ("5.5.5-10.11.19-MariaDB-0+deb12u1", "mariadb", (10, 11, 19)),  # the handshake of this fixture
        ("10.6.14-MariaDB-1:10.6.14+maria~ubu2204", "mariadb", (10, 6, 14)),
        ("11.4.2-MariaDB-log", "mariadb", (11, 4, 2)),
        ("8.0.36", "mysql", (8, 0, 36)),
        ("8.0.21-log", "mysql", (8, 0, 21)),
        ("8.0.36-0ubuntu0.22.04.1", "mysql", (8, 0, 36)),
        ("5.7.44-48-log", "mysql", (5, 7, 44)),
    ],
)
def test_server_version_is_parsed_from_the_handshake(text: str, flavour: str, number: tuple[int, ...]) -> None:
    version = client.parse_server_version(text)
    assert (version.flavour, version.number) == (flavour, number)


def test_an_unparseable_version_is_an_error() -> None:
    with pytest.raises(ValueError):
        client.parse_server_version("unknown")


@pytest.mark.parametrize(
    "version, statement, privilege, predicate, capacity",
    [
        (MARIADB_1011, "SHOW ALL SLAVES STATUS", "SLAVE MONITOR", "ENABLED = 1", "@@global.innodb_log_file_size"),
        (
            client.ServerVersion("mariadb", (10, 5, 4)),
            "SHOW ALL SLAVES STATUS",
            "REPLICATION SLAVE ADMIN",
            "ENABLED = 1",
            "@@global.innodb_log_file_size",
        ),
        (
            client.ServerVersion("mariadb", (10, 4, 30)),
            "SHOW ALL SLAVES STATUS",
            "REPLICATION CLIENT",
            "STATUS = 'enabled'",
            "@@global.innodb_log_file_size * @@global.innodb_log_files_in_group",
        ),
        (
            MYSQL_8036,
            "SHOW REPLICA STATUS",
            "REPLICATION CLIENT",
            "STATUS = 'enabled'",
            "@@global.innodb_redo_log_capacity",
        ),
        (
            client.ServerVersion("mysql", (8, 0, 21)),
            "SHOW SLAVE STATUS",
            "REPLICATION CLIENT",
            "STATUS = 'enabled'",
            "@@global.innodb_log_file_size * @@global.innodb_log_files_in_group",
        ),
    ],
)
def test_statements_and_grants_follow_the_version(version, statement, privilege, predicate, capacity) -> None:
    assert client.replica_status_statement(version) == statement
    assert client.replica_status_privilege(version) == privilege
    assert client.innodb_metrics_enabled_predicate(version) == predicate
    assert client.redo_log_capacity_expression(version) == capacity


def test_grant_hints_name_the_privilege_and_the_account() -> None:
    account = client.quote_account("dbintel_monitor@10.0.%", "ignored")
    assert account == "'dbintel_monitor'@'10.0.%'"
    assert client.quote_account(None, "monitor") == "'monitor'@'%'"
    assert client.required_grant("fetch_innodb", MYSQL_8036, account) == f"GRANT PROCESS ON *.* TO {account}"
    assert client.required_grant("fetch_performance_schema", MARIADB_1011, account) == (
        f"GRANT SELECT ON performance_schema.* TO {account}"
    )
    assert client.required_grant("fetch_replica_status", MYSQL_8036, account) == (
        f"GRANT REPLICATION CLIENT ON *.* TO {account}"
    )
    assert client.required_grant("fetch_replica_status", MARIADB_1011, account) == (
        f"GRANT SLAVE MONITOR ON *.* TO {account}"
    )
    assert client.required_grant("fetch_global_status", MYSQL_8036, account) is None


# --- SQL vs documented tables ------------------------------------------------------------------------
# performance_schema columns read, per table, as documented for MySQL 8.0 and listed by MariaDB 10.11.
_IO = {"OBJECT_TYPE", "OBJECT_SCHEMA", "OBJECT_NAME", "COUNT_STAR", "SUM_TIMER_WAIT"} | {
    f"{agg}_{op}"
    for agg in ("COUNT", "SUM_TIMER", "MIN_TIMER", "AVG_TIMER", "MAX_TIMER")
    for op in ("READ", "WRITE", "FETCH", "INSERT", "UPDATE", "DELETE")
}
_LOCK_KINDS = (
    "READ_NORMAL",
    "READ_WITH_SHARED_LOCKS",
    "READ_HIGH_PRIORITY",
    "READ_NO_INSERT",
    "READ_EXTERNAL",
    "WRITE_ALLOW_WRITE",
    "WRITE_CONCURRENT_INSERT",
    "WRITE_LOW_PRIORITY",
    "WRITE_NORMAL",
    "WRITE_EXTERNAL",
)
_LOCK = {"OBJECT_TYPE", "OBJECT_SCHEMA", "OBJECT_NAME", "COUNT_STAR", "SUM_TIMER_WAIT"} | {
    f"{agg}_{kind}" for agg in ("COUNT", "SUM_TIMER") for kind in _LOCK_KINDS
}
_DIGEST = {
    "SCHEMA_NAME",
    "DIGEST",
    "DIGEST_TEXT",
    "COUNT_STAR",
    "SUM_TIMER_WAIT",
    "SUM_LOCK_TIME",
    "SUM_ERRORS",
    "SUM_WARNINGS",
    "SUM_ROWS_AFFECTED",
    "SUM_ROWS_SENT",
    "SUM_ROWS_EXAMINED",
    "SUM_CREATED_TMP_DISK_TABLES",
    "SUM_CREATED_TMP_TABLES",
    "SUM_SELECT_FULL_JOIN",
    "SUM_SORT_MERGE_PASSES",
    "SUM_SORT_ROWS",
    "SUM_NO_INDEX_USED",
    "SUM_NO_GOOD_INDEX_USED",
    "FIRST_SEEN",
    "LAST_SEEN",
}
DOCUMENTED = {"table_io": _IO, "index_io": _IO | {"INDEX_NAME"}, "table_lock": _LOCK, "digest": _DIGEST}


@pytest.mark.parametrize("source", client.PERFORMANCE_SCHEMA_PARTS)
def test_performance_schema_parts_read_documented_columns(source: str) -> None:
    part = client.PERFORMANCE_SCHEMA_PARTS[source]
    sql = client.union_sql([part])
    read = set(re.findall(r"\b[A-Z][A-Z_]{3,}\b", sql)) - {
        "SELECT",
        "FROM",
        "WHERE",
        "TABLE",
        "USING",
        "COLLATE",
        "CONVERT",
        "NULL",
        "LEFT",
        "ORDER",
        "DESC",
        "LIMIT",
        "INTERVAL",
        "SECOND",
        "NOW",
    }
    assert read <= DOCUMENTED[source], read - DOCUMENTED[source]
    assert "performance_schema." in sql and "'mysql'" in sql  # system schemas are left out


def test_one_statement_reads_every_enabled_performance_schema_table() -> None:
    parts = list(client.PERFORMANCE_SCHEMA_PARTS.values())
    sql = client.union_sql(parts)
    assert sql.count("UNION ALL") == len(parts) - 1
    assert sql.count("SELECT ") == len(parts)
    # Every part has the same width, so the UNION is valid: source + 3 keys + 20 values.
    widths = {select.count(" AS ") for select in sql.split("UNION ALL")}
    assert widths == {1 + 3 + 20}
    assert "ORDER BY SUM_TIMER_WAIT DESC LIMIT 250" in sql  # inside its parenthesised part


def test_status_is_asked_for_exactly_the_variables_the_mapping_reads() -> None:
    listed = re.findall(r"'([A-Za-z_]+)'", client.GLOBAL_STATUS_SQL)
    assert client.GLOBAL_STATUS_SQL.startswith("SHOW GLOBAL STATUS WHERE Variable_name IN (")
    assert sorted(listed) == listed and set(listed) == mapping.STATUS_VARIABLES
    mapped = mapping.status_samples(FLAVOURS[MYSQL8][0], ALL)
    trimmed = {k: v for k, v in FLAVOURS[MYSQL8][0].items() if k in mapping.STATUS_VARIABLES}
    assert mapping.status_samples(trimmed, ALL) == mapped  # nothing outside the list matters


def test_catalog_and_innodb_statements_by_version() -> None:
    catalog = client.union_sql(client.catalog_parts(MYSQL_8036, tables=True))
    assert "@@global.innodb_redo_log_capacity" in catalog and "information_schema.TABLES" in catalog
    assert "information_schema" not in client.union_sql(client.catalog_parts(MARIADB_1011, tables=False))
    innodb = client.union_sql(client.innodb_parts(MYSQL_8036, ("lock_deadlocks",), transactions=True))
    assert "STATUS = 'enabled' AND NAME IN ('lock_deadlocks')" in innodb and "INNODB_TRX" in innodb
    assert client.innodb_parts(MARIADB_1011, (), transactions=False) == ()


_NAMES = st.text(alphabet="abcdefghij_", min_size=1, max_size=8)


@given(
    st.lists(
        st.tuples(
            st.lists(_NAMES, min_size=0, max_size=3, unique=True), st.lists(_NAMES, min_size=0, max_size=4, unique=True)
        ),
        min_size=1,
        max_size=4,
    ),
    st.data(),
)
def test_union_rows_split_back_into_their_parts(shapes, data) -> None:
    parts = [
        client.UnionPart(f"s{i}", tuple((k, k.upper()) for k in keys), tuple((v, v.upper()) for v in values))
        for i, (keys, values) in enumerate(shapes)
    ]
    key_width = max(len(p.keys) for p in parts)
    value_width = max(len(p.values) for p in parts)
    expected: dict[str, list[dict]] = {p.source: [] for p in parts}
    rows = []
    for part in data.draw(st.lists(st.sampled_from(parts), max_size=6)):
        keys = [data.draw(st.text(max_size=4)) for _ in part.keys]
        values = [data.draw(st.integers()) for _ in part.values]
        rows.append(
            (part.source, *keys, *[None] * (key_width - len(keys)), *values, *[None] * (value_width - len(values)))
        )
        expected[part.source].append(
            {
                **dict(zip((k for k, _ in part.keys), keys, strict=False)),
                **dict(zip((v for v, _ in part.values), values, strict=False)),
            }
        )
    assert client.split_union(parts, rows) == expected
    assert client.union_sql(parts).count("SELECT ") == len(parts)


def test_a_row_of_an_unknown_part_is_a_bad_reply() -> None:
    part = client.UnionPart("a", (), (("v", "1"),))
    with pytest.raises(ValueError):
        client.split_union([part], [("b", 1)])


# --- SHOW GLOBAL STATUS -------------------------------------------------------------------------------
def test_mariadb_status_maps_as_the_receiver_does() -> None:
    status, _ = FLAVOURS[MARIADB]
    found = by_key(mapping.status_samples(status, ALL))
    data, dirty = int(status["Innodb_buffer_pool_pages_data"]), int(status["Innodb_buffer_pool_pages_dirty"])
    assert found[("mysql.buffer_pool.data_pages", ("dirty",))] == dirty
    assert found[("mysql.buffer_pool.data_pages", ("clean",))] == data - dirty
    assert found[("mysql.buffer_pool.usage", ("clean",))] == (
        int(status["Innodb_buffer_pool_bytes_data"]) - int(status["Innodb_buffer_pool_bytes_dirty"])
    )
    assert found[("mysql.buffer_pool.pages", ("total",))] == int(status["Innodb_buffer_pool_pages_total"])
    assert found[("mysql.uptime", ())] == int(status["Uptime"])
    assert found[("mysql.handlers", ("read_rnd_next",))] == int(status["Handler_read_rnd_next"])
    assert found[("mysql.table_open_cache", ("miss",))] == int(status["Table_open_cache_misses"])
    assert found[("mysql.connection.errors", ("aborted",))] == int(status["Aborted_connects"])
    assert found[("mysql.innodb.checkpoint.age", ())] == int(status["Innodb_checkpoint_age"])
    assert found[("mysql.innodb.deadlocks", ())] == int(status["Innodb_deadlocks"])
    assert found[("mysql.replica.temp_table.open", ())] == int(status["Slave_open_temp_tables"])
    assert found[("mysql.binlog.cache.disk_use", ("statement",))] == int(status["Binlog_stmt_cache_disk_use"])
    # Not exported by MariaDB 10.11: absent, not zero.
    assert not any(name in ("mysql.row_operations", "mysql.mysqlx_connections") for name, _ in found)
    assert ("mysql.log_operations", ("fsyncs",)) not in found and ("mysql.log_operations", ("writes",)) in found
    assert ("mysql.connection.errors", ("locked",)) not in found


def test_mysql8_status_maps_as_the_receiver_does() -> None:
    status, _ = FLAVOURS[MYSQL8]
    found = by_key(mapping.status_samples(status, ALL))
    assert found[("mysql.row_operations", ("read",))] == int(status["Innodb_rows_read"])
    assert found[("mysql.mysqlx_connections", ("accepted",))] == int(status["Mysqlx_connections_accepted"])
    assert found[("mysql.mysqlx_worker_threads", ("available",))] == int(status["Mysqlx_worker_threads"])
    assert found[("mysql.log_operations", ("fsyncs",))] == int(status["Innodb_os_log_fsyncs"])
    assert found[("mysql.innodb.row_lock.wait.duration.avg", ())] == 0.125  # 125 ms
    assert found[("mysql.innodb.row_lock.wait.duration.max", ())] == 0.8
    assert found[("mysql.innodb.checkpoint.age", ())] == 31419731 - 31401216  # redo current - checkpoint LSN
    assert found[("mysql.replica.temp_table.open", ())] == int(status["Replica_open_temp_tables"])
    assert ("mysql.innodb.deadlocks", ()) not in found  # MySQL has no Innodb_deadlocks: INNODB_METRICS instead


def test_status_lacking_a_metric_asks_innodb_metrics_for_it() -> None:
    mariadb, mysql8 = FLAVOURS[MARIADB][0], FLAVOURS[MYSQL8][0]
    assert mapping.innodb_metric_names(mariadb, ALL) == ()
    assert not mapping.innodb_needed(mariadb, TABLE.enabled())  # MariaDB defaults: no fetch_innodb at all
    assert mapping.innodb_metric_names(mysql8, ALL) == ("lock_deadlocks", "trx_rseg_history_len")
    assert mapping.innodb_needed(mysql8, TABLE.enabled())  # MySQL: deadlocks come from INNODB_METRICS
    pre_8030 = {k: v for k, v in mysql8.items() if not k.startswith("Innodb_redo_log_")}
    assert "log_lsn_checkpoint_age" in mapping.innodb_metric_names(pre_8030, ALL)
    assert mapping.innodb_metric_names(None, frozenset({"mysql.innodb.deadlocks"})) == ("lock_deadlocks",)
    assert mapping.innodb_needed(mariadb, TRX_METRICS)


def test_innodb_replies_map_to_the_adaptive_and_transaction_metrics() -> None:
    found = by_key(mapping.innodb_samples(FLAVOURS[MYSQL8][1]["innodb"], ALL))
    assert found == {
        ("mysql.innodb.deadlocks", ()): 2,
        ("mysql.innodb.history_list.length", ()): 31,
        ("mysql.innodb.transaction.active.count", ()): 3,
        ("mysql.innodb.transaction.active.duration.max", ()): 42,
    }


def test_an_out_of_range_misc_page_count_is_skipped() -> None:
    status = {
        "Innodb_buffer_pool_pages_misc": "18446744073709551608",
        "Innodb_buffer_pool_pages_total": "8191",
        "Innodb_buffer_pool_pages_free": "100",
    }
    found = by_key(mapping.status_samples(status, ALL))
    assert ("mysql.buffer_pool.pages", ("misc",)) not in found and ("mysql.buffer_pool.pages", ("free",)) in found


@given(
    st.dictionaries(
        st.sampled_from(sorted(mapping.STATUS_VARIABLES)),
        st.one_of(st.text(max_size=12), st.integers(-(10**20), 10**20).map(str)),
        max_size=40,
    )
)
def test_any_status_text_maps_without_error(status: dict[str, str]) -> None:
    for sample in mapping.status_samples(status, ALL):
        assert isinstance(sample.value, float) and sample.spec.name in ALL


@given(st.one_of(st.none(), st.text(max_size=10), st.integers(), st.floats(allow_nan=False), st.booleans()))
def test_number_is_a_float_or_none(value: Any) -> None:
    result = float_number(value)
    assert result is None or isinstance(result, float)


# --- catalog, performance_schema, replicas -----------------------------------------------------------
def test_variables_and_utilization() -> None:
    variables = {"max_connections": 200, "innodb_buffer_pool_size": 1 << 30, "redo_log_capacity": 1 << 28}
    found = by_key(mapping.variable_samples(variables, {"Threads_connected": "50"}, ALL))
    assert found == {
        ("mysql.buffer_pool.limit", ()): 1 << 30,
        ("mysql.connection.max", ()): 200,
        ("mysql.innodb.redo_log.capacity", ()): 1 << 28,
        ("mysql.connection.utilization", ()): 0.25,
    }
    assert ("mysql.connection.utilization", ()) not in by_key(mapping.variable_samples(variables, None, ALL))
    assert mapping.variable_samples(None, {"Threads_connected": "5"}, ALL) == []


def test_table_sizes() -> None:
    found = by_key(mapping.table_samples(FLAVOURS[MYSQL8][1]["catalog"]["tables"], TABLE_METRICS))
    assert found[("mysql.table.size", ("orders", "shop", "index"))] == 3686400
    assert found[("mysql.table.rows", ("customers", "shop"))] == 5000
    assert found[("mysql.table.average_row_length", ("orders", "shop"))] == 97


def test_performance_schema_timers_are_nanoseconds_and_no_index_is_none() -> None:
    found = by_key(mapping.performance_schema_samples(FLAVOURS[MYSQL8][1]["performance_schema"], ALL))
    assert found[("mysql.table.io.wait.time", ("fetch", "orders", "shop"))] == 48211930  # ps // 1000
    assert found[("mysql.table.io.wait.count", ("insert", "orders", "shop"))] == 5120
    assert found[("mysql.index.io.wait.count", ("fetch", "orders", "shop", "NONE"))] == 88911
    assert found[("mysql.index.io.wait.time", ("update", "orders", "shop", "PRIMARY"))] == 440112
    assert found[("mysql.table.lock_wait.read.count", ("shop", "orders", "normal"))] == 7
    assert found[("mysql.table.lock_wait.read.time", ("shop", "orders", "normal"))] == 7
    assert found[("mysql.table.lock_wait.write.count", ("shop", "orders", "concurrent_insert"))] == 0
    digest = (
        "shop",
        "1f6e5a0b6c55ba1c4b6e1e4a3a7e1c2d9b8e3f4a5c6d7e8f9a0b1c2d3e4f5a6b",
        "SELECT * FROM `orders` WHERE `customer_id` = ?",
    )
    assert found[("mysql.statement_event.count", digest + ("rows_examined",))] == 96244
    assert found[("mysql.statement_event.wait.time", digest)] == 932110000


def test_mysql8_replica_channels() -> None:
    found = by_key(mapping.replica_samples(FLAVOURS[MYSQL8][1]["replica_status"], ALL))
    assert found[("mysql.replica.thread.running", ("io", ""))] == 1
    assert found[("mysql.replica.thread.running", ("sql", "analytics"))] == 0
    assert found[("mysql.replica.thread.last_error", ("sql", "analytics"))] == 1062
    assert found[("mysql.replica.thread.last_error", ("io", "analytics"))] == 0
    assert found[("mysql.replica.time_behind_source", ())] == 3  # the channel whose lag is known
    assert found[("mysql.replica.sql_delay", ())] == 3600  # the largest over channels


def test_mariadb_replica_connection_with_a_failing_io_thread() -> None:
    [row] = FLAVOURS[MARIADB][1]["replica_status"]
    found = by_key(mapping.replica_samples([row], ALL))
    channel = row["Connection_name"]
    assert channel == "dbintel_probe"
    assert found[("mysql.replica.thread.running", ("io", channel))] == 0  # "Connecting"
    assert found[("mysql.replica.thread.running", ("sql", channel))] == 1
    assert found[("mysql.replica.thread.last_error", ("io", channel))] == 2003
    assert ("mysql.replica.time_behind_source", ()) not in found  # Seconds_Behind_Master is NULL


def test_pre_8022_slave_status_columns_are_understood() -> None:
    row = {
        "Slave_IO_Running": "Yes",
        "Slave_SQL_Running": "Yes",
        "Seconds_Behind_Master": 12,
        "SQL_Delay": 0,
        "Last_IO_Errno": 0,
        "Last_SQL_Errno": 0,
        "Channel_Name": "eu",
    }
    found = by_key(mapping.replica_samples([row], ALL))
    assert found[("mysql.replica.time_behind_source", ())] == 12
    assert found[("mysql.replica.thread.running", ("io", "eu"))] == 1
    assert mapping.replica_samples([], ALL) == []  # not a replica


# --- errors and TLS ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "exc, reason",
    [
        (
            pymysql.err.OperationalError(1227, "Access denied; you need (at least one of) the PROCESS privilege(s)"),
            "permission",
        ),
        (pymysql.err.OperationalError(1142, "SELECT command denied to user 'u'@'h' for table 'threads'"), "permission"),
        (pymysql.err.ProgrammingError(1146, "Table 'performance_schema.x' doesn't exist"), "unsupported"),
        (pymysql.err.OperationalError(1193, "Unknown system variable 'innodb_redo_log_capacity'"), "unsupported"),
        (pymysql.err.ProgrammingError(1064, "You have an error in your SQL syntax"), "unsupported"),
        (
            pymysql.err.OperationalError(
                3024, "Query execution was interrupted, maximum statement execution time exceeded"
            ),
            "timeout",
        ),
        (pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query"), "connection"),
        (
            pymysql.err.OperationalError(4031, "The client was disconnected by the server because of inactivity"),
            "connection",
        ),
        (pymysql.err.OperationalError(1045, "Access denied for user 'u'@'h' (using password: YES)"), "connection"),
        (pymysql.err.InterfaceError(0, ""), "connection"),
        (ConnectionRefusedError(111, "Connection refused"), "connection"),
        (TimeoutError(), "timeout"),
        (pymysql.err.InternalError(1021, "Disk full"), "server_error"),
        (ValueError("SHOW GLOBAL STATUS returned 3 columns"), "bad_reply"),
    ],
)
def test_errors_are_classified(exc: BaseException, reason: str) -> None:
    assert client.classify_error(exc) == reason


def test_error_messages_are_one_line_and_scrub_secrets() -> None:
    reason, message = client.describe_error(
        pymysql.err.OperationalError(1045, "Access denied for 'u' hunter2\nsecond line"), secrets=("hunter2",)
    )
    assert reason == "connection"
    assert message == "OperationalError: 1045 Access denied for 'u' ***"
    assert client.describe_error(TimeoutError())[1] == "TimeoutError: no reply within the poll timeout"


def test_tls_settings_map_to_an_ssl_context() -> None:
    assert client.ssl_context(TLSSettings()) is None
    context = client.ssl_context(TLSSettings(enabled=True, server_name="db.internal"))
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname and context.server_name == "db.internal"
    insecure = client.ssl_context(TLSSettings(enabled=True, insecure_skip_verify=True))
    assert insecure.verify_mode == ssl.CERT_NONE and not insecure.check_hostname
