"""PostgreSQL collector without a server: declarations vs the reference TSV, SQL per version vs the
documented catalog columns of PostgreSQL 12, 15 and 17, and rows -> samples mapping."""

from __future__ import annotations

import csv
import datetime as dt
import math
import re
import ssl
from pathlib import Path

import asyncpg
import pytest
from asyncpg.types import ServerVersion
from hypothesis import given
from hypothesis import strategies as st

from dbintel.agent.collectors.postgresql import client, mapping
from dbintel.agent.collectors.postgresql.metrics import METRICS_BY_QUERY, SIZE_METRICS, TABLE
from dbintel.common.config import TLSSettings

REFERENCE = Path(__file__).resolve().parents[1] / "reference" / "metrics" / "postgresql.tsv"
ALL = TABLE.enabled(dict.fromkeys(TABLE.by_name, True))
UTC = dt.UTC


def reference_rows() -> list[dict[str, str]]:
    with REFERENCE.open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


# --- documented catalog columns (PostgreSQL docs, "Monitoring Database Activity") ----------------
_STAT_DATABASE_12 = {
    "datid",
    "datname",
    "numbackends",
    "xact_commit",
    "xact_rollback",
    "blks_read",
    "blks_hit",
    "tup_returned",
    "tup_fetched",
    "tup_inserted",
    "tup_updated",
    "tup_deleted",
    "conflicts",
    "temp_files",
    "temp_bytes",
    "deadlocks",
    "checksum_failures",
    "checksum_last_failure",
    "blk_read_time",
    "blk_write_time",
    "stats_reset",
}
_STAT_DATABASE_14 = _STAT_DATABASE_12 | {
    "session_time",
    "active_time",
    "idle_in_transaction_time",
    "sessions",
    "sessions_abandoned",
    "sessions_fatal",
    "sessions_killed",
}
_USER_TABLES_12 = {
    "relid",
    "schemaname",
    "relname",
    "seq_scan",
    "seq_tup_read",
    "idx_scan",
    "idx_tup_fetch",
    "n_tup_ins",
    "n_tup_upd",
    "n_tup_del",
    "n_tup_hot_upd",
    "n_live_tup",
    "n_dead_tup",
    "n_mod_since_analyze",
    "last_vacuum",
    "last_autovacuum",
    "last_analyze",
    "last_autoanalyze",
    "vacuum_count",
    "autovacuum_count",
    "analyze_count",
    "autoanalyze_count",
}
_USER_TABLES_15 = _USER_TABLES_12 | {"n_ins_since_vacuum"}
_USER_TABLES_17 = _USER_TABLES_15 | {"last_seq_scan", "last_idx_scan", "n_tup_newpage_upd"}
_STATIO_USER_TABLES = {
    "relid",
    "schemaname",
    "relname",
    "heap_blks_read",
    "heap_blks_hit",
    "idx_blks_read",
    "idx_blks_hit",
    "toast_blks_read",
    "toast_blks_hit",
    "tidx_blks_read",
    "tidx_blks_hit",
}
_USER_INDEXES_12 = {
    "relid",
    "indexrelid",
    "schemaname",
    "relname",
    "indexrelname",
    "idx_scan",
    "idx_tup_read",
    "idx_tup_fetch",
}
_USER_INDEXES_17 = _USER_INDEXES_12 | {"last_idx_scan"}
_BGWRITER_12 = {
    "checkpoints_timed",
    "checkpoints_req",
    "checkpoint_write_time",
    "checkpoint_sync_time",
    "buffers_checkpoint",
    "buffers_clean",
    "maxwritten_clean",
    "buffers_backend",
    "buffers_backend_fsync",
    "buffers_alloc",
    "stats_reset",
}
_BGWRITER_17 = {"buffers_clean", "maxwritten_clean", "buffers_alloc", "stats_reset"}
_CHECKPOINTER_17 = {
    "num_timed",
    "num_requested",
    "restartpoints_timed",
    "restartpoints_req",
    "restartpoints_done",
    "write_time",
    "sync_time",
    "buffers_written",
    "stats_reset",
}
_ARCHIVER = {
    "archived_count",
    "last_archived_wal",
    "last_archived_time",
    "failed_count",
    "last_failed_wal",
    "last_failed_time",
    "stats_reset",
}
_CONFLICTS_12 = {
    "datid",
    "datname",
    "confl_tablespace",
    "confl_lock",
    "confl_snapshot",
    "confl_bufferpin",
    "confl_deadlock",
}
_CONFLICTS_17 = _CONFLICTS_12 | {"confl_active_logicalslot"}
_REPLICATION = {
    "pid",
    "usesysid",
    "usename",
    "application_name",
    "client_addr",
    "client_hostname",
    "client_port",
    "backend_start",
    "backend_xmin",
    "state",
    "sent_lsn",
    "write_lsn",
    "flush_lsn",
    "replay_lsn",
    "write_lag",
    "flush_lag",
    "replay_lag",
    "sync_priority",
    "sync_state",
    "reply_time",
}

# alias in our SQL -> documented columns of the view it stands for, per major version
VIEWS = {
    12: {"s": _STAT_DATABASE_12, "bg": _BGWRITER_12, "ar": _ARCHIVER, "c": _CONFLICTS_12},
    15: {"s": _STAT_DATABASE_14, "bg": _BGWRITER_12, "ar": _ARCHIVER, "c": _CONFLICTS_12},
    17: {"s": _STAT_DATABASE_14, "bg": _BGWRITER_17, "cp": _CHECKPOINTER_17, "ar": _ARCHIVER, "c": _CONFLICTS_17},
}
TABLE_VIEWS = {
    12: (_USER_TABLES_12, _USER_INDEXES_12),
    15: (_USER_TABLES_15, _USER_INDEXES_12),
    17: (_USER_TABLES_17, _USER_INDEXES_17),
}


def qualified_columns(sql: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for alias, column in re.findall(r"\b(s|bg|cp|ar|c|io|d|a|locked)\.([a-z_]+)\b", sql):
        found.setdefault(alias, set()).add(column)
    return found


# --- declarations vs the reference --------------------------------------------------------------
def _attribute_names(text: str) -> tuple[str, ...]:
    return tuple(part.split("=")[0] for part in text.split(",") if part)


@pytest.mark.parametrize(
    "row", [r for r in reference_rows() if r["metric_name"] in TABLE.by_name], ids=lambda r: r["metric_name"]
)
def test_declared_metrics_match_the_reference(row: dict[str, str]) -> None:
    spec = TABLE[row["metric_name"]]
    assert spec.enabled_by_default == (row["enabled_by_default"] == "true")
    assert spec.tier == "reference"
    assert spec.type == row["type"]
    assert spec.monotonic == (row["monotonic"] == "true")
    assert spec.unit == row["unit"]
    attributes = _attribute_names(row["attributes"])
    assert spec.attributes[: len(attributes)] == attributes
    resource = {name.removesuffix("(off)") for name in row["resource_attributes"].split(",")}
    assert set(spec.attributes[len(attributes) :]) <= resource - {
        "server.address",
        "server.port",
        "service.instance.id",
        "service.name",
        "service.namespace",
    }


def test_every_default_reference_metric_is_declared_and_enabled() -> None:
    defaults = {r["metric_name"] for r in reference_rows() if r["enabled_by_default"] == "true"}
    assert len(defaults) == 22
    assert defaults <= TABLE.enabled()


def test_beyond_metrics_are_on_by_default_and_not_in_the_reference() -> None:
    reference = {r["metric_name"] for r in reference_rows()}
    beyond = {s.name for s in TABLE if s.tier == "beyond"}
    assert beyond == {
        "postgresql.connection.count",
        "postgresql.transaction.oldest_age",
        "postgresql.recovery.active",
        "postgresql.database.frozen_xid_age",
        "postgresql.recovery.replay_lag",
        "postgresql.recovery.unreplayed_wal",
        "postgresql.wal_receiver.connected",
        "postgresql.wal_receiver.last_msg_receipt_age",
        "postgresql.replication.slot.retained_wal",
        "postgresql.replication.slot.active",
        "postgresql.table.autovacuum.count",
        "postgresql.table.autoanalyze.count",
        "postgresql.table.last_autovacuum.age",
        "postgresql.table.last_autoanalyze.age",
    }
    assert not beyond & reference
    assert beyond <= TABLE.enabled()
    assert TABLE["postgresql.transaction.oldest_age"].prometheus_name == "postgresql_transaction_oldest_age_seconds"


def test_every_metric_belongs_to_exactly_one_query() -> None:
    owners = [name for names in METRICS_BY_QUERY.values() for name in names]
    assert sorted(owners) == sorted(TABLE.by_name)
    assert set(owners) >= SIZE_METRICS


# --- SQL per version vs documented columns -----------------------------------------------------------
@pytest.mark.parametrize("major", [12, 15, 17])
def test_server_sql_reads_only_columns_the_version_has(major: int) -> None:
    sql = client.server_stats_sql(major * 10000 + 3)
    used = qualified_columns(sql)
    views = VIEWS[major]
    for alias, columns in used.items():
        assert columns <= views[alias], (major, alias, columns - views[alias])
    assert ("cp" in used) == (major >= 17)
    assert "pg_stat_checkpointer" in sql if major >= 17 else "pg_stat_checkpointer" not in sql


@pytest.mark.parametrize("major", [12, 15, 17])
@pytest.mark.parametrize("sizes", [False, True])
def test_relation_and_database_sql_read_only_documented_columns(major: int, sizes: bool) -> None:
    tables, indexes = TABLE_VIEWS[major]
    database_sql = client.database_stats_sql(sizes=sizes, conflicts=True)
    used = qualified_columns(database_sql)
    assert used["s"] <= VIEWS[major]["s"] and used["c"] <= VIEWS[major]["c"]
    assert ("pg_database_size" in database_sql) == sizes
    used = qualified_columns(client.table_stats_sql(sizes=sizes))
    assert used["s"] <= tables and used["io"] <= _STATIO_USER_TABLES
    used = qualified_columns(client.index_stats_sql(sizes=sizes))
    assert used["s"] <= indexes
    assert ("pg_relation_size" in client.table_stats_sql(sizes=sizes)) == sizes
    assert ("pg_relation_size" in client.index_stats_sql(sizes=sizes)) == sizes


def test_replication_sql_reads_only_documented_columns() -> None:
    body, _, source = client.REPLICATION_SQL.partition("FROM")
    assert source.split() == ["pg_stat_replication"]
    functions = {
        "varchar",
        "pg_wal_lsn_diff",
        "pg_is_in_recovery",
        "pg_last_wal_receive_lsn",
        "pg_current_wal_lsn",
        "float8",
    }
    columns = set(re.findall(r"\b([a-z_][a-z0-9_]*)\b", body)) - functions - {"replay_bytes"}
    assert columns == {"client_addr", "replay_lsn", "write_lag", "flush_lag", "replay_lag"} <= _REPLICATION


def test_conflicts_join_only_when_asked() -> None:
    assert "pg_stat_database_conflicts" not in client.database_stats_sql(sizes=False, conflicts=False)


@pytest.mark.parametrize(
    "version, expected",
    [
        (ServerVersion(12, 0, 22, "final", 0), 120022),
        (ServerVersion(15, 0, 18, "final", 0), 150018),
        (ServerVersion(17, 0, 2, "final", 0), 170002),
        (ServerVersion(9, 6, 24, "final", 0), 90624),
    ],
)
def test_server_version_num(version: ServerVersion, expected: int) -> None:
    assert client.server_version_num(version) == expected


# --- server row: pg_stat_bgwriter / pg_stat_checkpointer -------------------------------------------
def _activity(**counts: int) -> dict:
    row = dict.fromkeys(mapping.ACTIVITY_STATES, 0)
    row.update({k.replace("_", " "): v for k, v in counts.items()})
    return row


def _extras(**overrides) -> dict:
    row = {
        "last_archived_time": None,
        "server_now": dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC),
        "max_connections": 100,
        "in_recovery": False,
        "oldest_xact_age": None,
        "replay_lag": None,
        "unreplayed_bytes": None,
        "wal_receiver_status": None,
        "wal_receiver_receipt_age": None,
        "replication_slots": [],
    }
    row.update(_activity(active=2, idle=5, idle_in_transaction=1))
    row.update(overrides)
    return row


BGWRITER_PRE17 = {  # pg_stat_bgwriter on 12-16: every column, as documented
    "checkpoints_timed": 41,
    "checkpoints_req": 3,
    "checkpoint_write_time": 1250.5,
    "checkpoint_sync_time": 12.25,
    "buffers_checkpoint": 900,
    "buffers_clean": 70,
    "maxwritten_clean": 2,
    "buffers_backend": 3100,
    "buffers_backend_fsync": 0,
    "buffers_alloc": 5000,
    "stats_reset": dt.datetime(2024, 1, 1, tzinfo=UTC),
}
BGWRITER_17 = {
    "buffers_clean": 70,
    "maxwritten_clean": 2,
    "buffers_alloc": 5000,
    "stats_reset": dt.datetime(2024, 1, 1, tzinfo=UTC),
}
CHECKPOINTER_17 = {
    "num_timed": 41,
    "num_requested": 3,
    "restartpoints_timed": 0,
    "restartpoints_req": 0,
    "restartpoints_done": 0,
    "write_time": 1250.5,
    "sync_time": 12.25,
    "buffers_written": 900,
    "stats_reset": dt.datetime(2024, 1, 1, tzinfo=UTC),
}


def by_key(samples) -> dict[tuple[str, tuple[str, ...]], float]:
    keyed = {}
    for sample in samples:
        key = (sample.spec.name, sample.attributes)
        assert key not in keyed, f"duplicate series {key}"
        keyed[key] = sample.value
    return keyed


@pytest.mark.parametrize("major", [12, 15])
def test_bgwriter_before_17(major: int) -> None:
    got = by_key(mapping.server_samples({**BGWRITER_PRE17, **_extras()}, ALL))
    assert got[("postgresql.bgwriter.buffers.allocated", ())] == 5000
    assert got[("postgresql.bgwriter.buffers.writes", ("bgwriter",))] == 70
    assert got[("postgresql.bgwriter.buffers.writes", ("checkpoints",))] == 900
    assert got[("postgresql.bgwriter.buffers.writes", ("backend",))] == 3100
    assert got[("postgresql.bgwriter.buffers.writes", ("backend_fsync",))] == 0
    assert got[("postgresql.bgwriter.checkpoint.count", ("requested",))] == 3
    assert got[("postgresql.bgwriter.checkpoint.count", ("scheduled",))] == 41
    assert got[("postgresql.bgwriter.duration", ("write",))] == 1250.5
    assert got[("postgresql.bgwriter.duration", ("sync",))] == 12.25
    assert got[("postgresql.bgwriter.maxwritten", ())] == 2


def test_bgwriter_and_checkpointer_on_17() -> None:
    got = by_key(mapping.server_samples({**BGWRITER_17, **CHECKPOINTER_17, **_extras()}, ALL))
    assert got[("postgresql.bgwriter.checkpoint.count", ("requested",))] == 3
    assert got[("postgresql.bgwriter.checkpoint.count", ("scheduled",))] == 41
    assert got[("postgresql.bgwriter.duration", ("write",))] == 1250.5
    assert got[("postgresql.bgwriter.buffers.writes", ("checkpoints",))] == 900
    assert got[("postgresql.bgwriter.buffers.writes", ("bgwriter",))] == 70
    # 17 moved backend writes to pg_stat_io: no backend/backend_fsync series rather than a made-up value
    assert ("postgresql.bgwriter.buffers.writes", ("backend",)) not in got
    assert ("postgresql.bgwriter.buffers.writes", ("backend_fsync",)) not in got


def test_server_extras_connections_recovery_and_wal_age() -> None:
    now = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    row = {
        **BGWRITER_PRE17,
        **_extras(last_archived_time=now - dt.timedelta(seconds=95.7), in_recovery=True, oldest_xact_age=12.5),
    }
    got = by_key(mapping.server_samples(row, ALL))
    assert got[("postgresql.wal.age", ())] == 95  # whole seconds, truncated like the receiver
    assert got[("postgresql.connection.max", ())] == 100
    assert got[("postgresql.recovery.active", ())] == 1
    assert got[("postgresql.transaction.oldest_age", ())] == 12.5
    assert got[("postgresql.connection.count", ("active",))] == 2
    assert got[("postgresql.connection.count", ("idle in transaction",))] == 1
    assert got[("postgresql.connection.count", ("disabled",))] == 0
    assert len([k for k in got if k[0] == "postgresql.connection.count"]) == len(mapping.ACTIVITY_STATES)


def test_never_archived_gives_no_wal_age_and_no_open_transaction_gives_zero() -> None:
    got = by_key(mapping.server_samples({**BGWRITER_PRE17, **_extras()}, ALL))
    assert not any(name == "postgresql.wal.age" for name, _ in got)
    assert got[("postgresql.transaction.oldest_age", ())] == 0
    assert got[("postgresql.recovery.active", ())] == 0


def test_disabled_metrics_produce_nothing() -> None:
    enabled = frozenset({"postgresql.connection.max"})
    samples = mapping.server_samples({**BGWRITER_PRE17, **_extras()}, enabled)
    assert [(s.spec.name, s.value) for s in samples] == [("postgresql.connection.max", 100)]


# --- databases --------------------------------------------------------------------------------------
def _database_row(name: str, **extra) -> dict:
    """Our database query's row: the pg_stat_database columns it selects plus backends/XID age."""
    row = {
        "datname": name,
        "xact_commit": 120,
        "xact_rollback": 4,
        "blks_read": 30,
        "blks_hit": 900,
        "tup_returned": 5000,
        "tup_fetched": 800,
        "tup_inserted": 50,
        "tup_updated": 7,
        "tup_deleted": 3,
        "temp_files": 0,
        "temp_bytes": 0,
        "deadlocks": 0,
        "backends": 3,
        "frozen_xid_age": 1234,
    }
    row.update(extra)
    return row


def test_database_rows() -> None:
    rows = [_database_row("app", size=8_000_000), _database_row("postgres", size=7_500_000, backends=0)]
    got = by_key(mapping.database_samples(rows, TABLE.enabled()))
    assert got[("postgresql.database.count", ())] == 2
    assert got[("postgresql.commits", ("app", "app"))] == 120
    assert got[("postgresql.rollbacks", ("app", "app"))] == 4
    assert got[("postgresql.backends", ("postgres", "postgres"))] == 0
    assert got[("postgresql.db_size", ("app", "app"))] == 8_000_000
    assert got[("postgresql.database.frozen_xid_age", ("app", "app"))] == 1234
    assert ("postgresql.deadlocks", ("app", "app")) not in got  # optional, off by default
    assert mapping.unsized_databases(rows) == []


def test_database_optional_metrics_and_conflicts() -> None:
    row = _database_row("app", confl_tablespace=0, confl_lock=1, confl_snapshot=2, confl_bufferpin=0, confl_deadlock=0)
    got = by_key(mapping.database_samples([row], ALL))
    assert got[("postgresql.tup_returned", ("app", "app"))] == 5000
    assert got[("postgresql.temp.io", ("app", "app"))] == 0
    assert got[("postgresql.query.conflicts", ("snapshot", "app", "app"))] == 2
    assert ("postgresql.db_size", ("app", "app")) not in got  # not a slow round: no size column


def test_withheld_database_sizes_are_named() -> None:
    rows = [_database_row("app", size=None), _database_row("open", size=10), _database_row("zz", size=None)]
    assert mapping.unsized_databases(rows) == ["app", "zz"]
    got = by_key(mapping.database_samples(rows, TABLE.enabled()))
    assert ("postgresql.db_size", ("open", "open")) in got
    assert ("postgresql.db_size", ("app", "app")) not in got


# --- tables and indexes -----------------------------------------------------------------------------
def _table_row(version: int, schema: str, table: str, **values) -> dict:
    """A pg_stat_user_tables row of that version joined with its pg_statio_user_tables row."""
    columns = TABLE_VIEWS[version][0] | _STATIO_USER_TABLES
    row = dict.fromkeys(columns, 0)
    row.update(
        {
            "relid": 16384,
            "schemaname": schema,
            "relname": table,
            "last_vacuum": None,
            "last_autovacuum_age": None,
            "last_autoanalyze_age": None,
        }
    )
    if version >= 17:
        row["last_seq_scan"] = None
    row.update(values)
    return row


@pytest.mark.parametrize("version", [12, 15, 17])
def test_table_rows(version: int) -> None:
    rows = [
        _table_row(
            version,
            "public",
            "orders",
            n_live_tup=450,
            n_dead_tup=5,
            n_tup_ins=500,
            n_tup_upd=166,
            n_tup_del=50,
            n_tup_hot_upd=100,
            vacuum_count=1,
            seq_scan=9,
            heap_blks_read=4,
            heap_blks_hit=1000,
            idx_blks_read=2,
            idx_blks_hit=300,
            toast_blks_read=None,
            toast_blks_hit=None,
            tidx_blks_read=None,
            tidx_blks_hit=None,
            table_size=65536,
        ),
        _table_row(version, "sales", "notes", idx_blks_read=None, idx_blks_hit=None),
    ]
    got = by_key(mapping.table_samples(rows, "app", TABLE.enabled()))
    orders = ("app|public", "orders", "app", "public", "public.orders")
    assert got[("postgresql.table.count", ("app", "app"))] == 2
    assert got[("postgresql.rows", ("live",) + orders)] == 450
    assert got[("postgresql.rows", ("dead",) + orders)] == 5
    assert got[("postgresql.operations", ("hot_upd",) + orders)] == 100
    assert got[("postgresql.operations", ("upd",) + orders)] == 166
    assert got[("postgresql.table.vacuum.count", orders)] == 1
    assert got[("postgresql.table.size", orders)] == 65536
    assert got[("postgresql.blocks_read", ("heap_hit",) + orders)] == 1000
    assert got[("postgresql.blocks_read", ("toast_read",) + orders)] == 0  # no TOAST table: NULL -> 0
    notes = ("app|sales", "notes", "app", "sales", "sales.notes")
    assert got[("postgresql.blocks_read", ("idx_hit",) + notes)] == 0
    assert ("postgresql.table.size", notes) not in got  # no size column this round (or relation locked)
    assert ("postgresql.sequential_scans", orders) not in got  # optional


@pytest.mark.parametrize("version", [12, 15, 17])
def test_index_rows(version: int) -> None:
    row = dict.fromkeys(TABLE_VIEWS[version][1])
    row.update(
        {
            "relid": 1,
            "indexrelid": 2,
            "schemaname": "public",
            "relname": "orders",
            "indexrelname": "orders_pkey",
            "idx_scan": 77,
            "idx_tup_read": 80,
            "idx_tup_fetch": 80,
        }
    )
    got = by_key(
        mapping.index_samples([row, {**row, "indexrelname": "orders_x", "index_size": 16384}], "app", TABLE.enabled())
    )
    labels = ("app|public", "orders", "orders_pkey", "app", "public", "orders")
    assert got[("postgresql.index.scans", labels)] == 77
    assert ("postgresql.index.size", labels) not in got
    assert got[("postgresql.index.size", ("app|public", "orders", "orders_x", "app", "public", "orders"))] == 16384


# --- replication ------------------------------------------------------------------------------------
def _replication_row(client_addr, replay_bytes, write, flush, replay) -> dict:
    seconds = lambda v: None if v is None else dt.timedelta(seconds=v)  # noqa: E731
    return {
        "client_addr": client_addr,
        "replay_bytes": replay_bytes,
        "write_lag": seconds(write),
        "flush_lag": seconds(flush),
        "replay_lag": seconds(replay),
    }


def test_replication_rows() -> None:
    rows = [
        _replication_row("10.0.0.7/32", 4096.0, 0.0004, 1.5, 2.49),
        _replication_row(None, None, None, None, None),
    ]  # unix socket, pg_receivewal-like: no replay
    got = by_key(mapping.replication_samples(rows, ALL))
    assert got[("postgresql.replication.data_delay", ("10.0.0.7/32",))] == 4096
    assert got[("postgresql.wal.lag", ("write", "10.0.0.7/32"))] == 0
    assert got[("postgresql.wal.lag", ("flush", "10.0.0.7/32"))] == 2  # ::integer rounds half away from zero
    assert got[("postgresql.wal.lag", ("replay", "10.0.0.7/32"))] == 2
    assert got[("postgresql.wal.delay", ("replay", "10.0.0.7/32"))] == pytest.approx(2.49)
    assert not [key for key in got if key[1][-1] == "unix"]


def test_standbys_sharing_a_client_address_give_one_series_each_the_furthest_behind() -> None:
    rows = [
        _replication_row("10.0.0.7/32", 4096.0, 0.5, 0.5, 3.0),
        _replication_row("10.0.0.7/32", 65536.0, 0.2, 2.0, None),  # another standby on that host
        _replication_row("10.0.0.8/32", 0.0, 0.1, 0.1, 0.1),
    ]
    samples = mapping.replication_samples(rows, ALL)
    keys = [(s.spec.name, s.attributes) for s in samples]
    assert len(keys) == len(set(keys))  # no duplicate series
    got = by_key(samples)
    assert got[("postgresql.replication.data_delay", ("10.0.0.7/32",))] == 65536
    assert got[("postgresql.wal.delay", ("write", "10.0.0.7/32"))] == 0.5
    assert got[("postgresql.wal.delay", ("flush", "10.0.0.7/32"))] == 2.0
    assert got[("postgresql.wal.lag", ("replay", "10.0.0.7/32"))] == 3
    assert got[("postgresql.replication.data_delay", ("10.0.0.8/32",))] == 0


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_wal_lag_is_the_delay_rounded_half_up(seconds: float) -> None:
    rows = [_replication_row("10.1.1.1/32", 0.0, seconds, seconds, seconds)]
    got = by_key(mapping.replication_samples(rows, ALL))
    delay = got[("postgresql.wal.delay", ("write", "10.1.1.1/32"))]
    lag = got[("postgresql.wal.lag", ("write", "10.1.1.1/32"))]
    assert lag == math.floor(delay + 0.5)
    assert abs(lag - delay) <= 0.5


# --- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "exc, reason",
    [
        (asyncpg.InsufficientPrivilegeError("permission denied for view pg_stat_archiver"), "permission"),
        (asyncpg.QueryCanceledError("canceling statement due to statement timeout"), "timeout"),
        (TimeoutError(), "timeout"),
        (asyncpg.InvalidPasswordError('password authentication failed for user "m"'), "connection"),
        (asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"), "connection"),
        (asyncpg.AdminShutdownError("terminating connection due to administrator command"), "connection"),
        (ConnectionRefusedError(111, "Connect call failed"), "connection"),
        (asyncpg.UndefinedTableError('relation "pg_stat_checkpointer" does not exist'), "unsupported"),
        (asyncpg.UndefinedFunctionError("function pg_current_wal_lsn() does not exist"), "unsupported"),
        (asyncpg.DivisionByZeroError("division by zero"), "server_error"),
        (KeyError("checkpoints_req"), "bad_reply"),
    ],
)
def test_error_reasons(exc: BaseException, reason: str) -> None:
    assert client.classify_error(exc) == reason


def test_permission_message_names_the_grant_and_never_a_secret() -> None:
    exc = asyncpg.InsufficientPrivilegeError("permission denied for view pg_statio_user_tables\nDETAIL: hunter2")
    reason, message = client.describe_error(exc, user="monitor", secrets=("hunter2",))
    assert reason == "permission"
    assert message.endswith("— run: GRANT SELECT ON pg_statio_user_tables TO monitor")
    assert "hunter2" not in message and "\n" not in message
    _, message = client.describe_error(OSError("bad hunter2 here"), user=None, secrets=("hunter2",))
    assert "hunter2" not in message and "***" in message
    assert client.describe_error(TimeoutError(), user=None)[1] == "TimeoutError: no reply within the poll timeout"


@pytest.mark.parametrize(
    ("denial", "user", "grant"),
    [
        ("permission denied for view pg_stat_replication", "monitor", "GRANT SELECT ON pg_stat_replication TO monitor"),
        (
            "permission denied for relation pg_stat_user_tables",
            "monitor",  # PostgreSQL 10 and older
            "GRANT SELECT ON pg_stat_user_tables TO monitor",
        ),
        (
            "permission denied for table pg_stat_statements",
            "Ops Team",
            'GRANT SELECT ON pg_stat_statements TO "Ops Team"',
        ),
        ("permission denied for function pg_ls_waldir", "monitor", "GRANT EXECUTE ON FUNCTION pg_ls_waldir TO monitor"),
        ("permission denied for schema metrics", "monitor", "GRANT USAGE ON SCHEMA metrics TO monitor"),
        ("must be a member of pg_read_all_stats", None, "GRANT pg_monitor TO <user>"),
    ],
)
def test_required_grant_names_what_the_server_refused(denial: str, user: str | None, grant: str) -> None:
    assert client.required_grant(denial, user) == grant


# --- TLS --------------------------------------------------------------------------------------------
def test_tls_disabled_means_plaintext() -> None:
    assert client.ssl_context(TLSSettings()) is False


def test_tls_insecure_skip_verify_and_server_name() -> None:
    context = client.ssl_context(TLSSettings(enabled=True, insecure_skip_verify=True, server_name="db.internal"))
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname
    tls_object = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="10.0.0.5")
    assert tls_object.server_hostname == "db.internal"  # SNI and hostname check use the configured name


def test_tls_verifies_by_default() -> None:
    context = client.ssl_context(TLSSettings(enabled=True))
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    tls_object = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="10.0.0.5")
    assert tls_object.server_hostname == "10.0.0.5"


# --- standby replay, replication slots, autovacuum (beyond the receiver) ---------------------------------
_REPLICATION_SLOTS_12 = {
    "slot_name",
    "plugin",
    "slot_type",
    "datoid",
    "database",
    "temporary",
    "active",
    "active_pid",
    "xmin",
    "catalog_xmin",
    "restart_lsn",
    "confirmed_flush_lsn",
}
_REPLICATION_SLOTS_17 = _REPLICATION_SLOTS_12 | {
    "wal_status",
    "safe_wal_size",
    "two_phase",
    "conflicting",
    "inactive_since",
    "invalidation_reason",
    "failover",
    "synced",
}


def columns_of(sql: str, alias: str) -> set[str]:
    return set(re.findall(rf"\b{alias}\.([a-z_]+)\b", sql))


@pytest.mark.parametrize(
    "major, slots", [(12, _REPLICATION_SLOTS_12), (15, _REPLICATION_SLOTS_12), (17, _REPLICATION_SLOTS_17)]
)
def test_server_sql_reads_documented_slot_columns_and_only_standby_functions_on_a_standby(major, slots) -> None:
    sql = client.server_stats_sql(major * 10000)
    assert columns_of(sql, "sl") == {"slot_name", "slot_type", "active", "restart_lsn"} <= slots
    # pg_current_wal_lsn() raises in recovery: it may only appear as the primary branch of the CASE
    assert sql.count("pg_current_wal_lsn()") == 1
    assert client._CURRENT_LSN in sql and "pg_last_xact_replay_timestamp()" in sql


def test_standby_row_gives_replay_lag_and_unreplayed_wal() -> None:
    row = {**BGWRITER_PRE17, **_extras(in_recovery=True, replay_lag=3.25, unreplayed_bytes=8192.0)}
    got = by_key(mapping.server_samples(row, TABLE.enabled()))
    assert got[("postgresql.recovery.active", ())] == 1
    assert got[("postgresql.recovery.replay_lag", ())] == 3.25
    assert got[("postgresql.recovery.unreplayed_wal", ())] == 8192


def test_primary_row_has_no_standby_replay_series() -> None:
    got = by_key(mapping.server_samples({**BGWRITER_PRE17, **_extras()}, TABLE.enabled()))
    standby_only = {
        "postgresql.recovery.replay_lag",
        "postgresql.recovery.unreplayed_wal",
        "postgresql.wal_receiver.connected",
        "postgresql.wal_receiver.last_msg_receipt_age",
    }
    assert not standby_only & {n for n, _ in got}


@pytest.mark.parametrize(
    "status, age, connected",
    [
        ("streaming", 0.25, 1),  # the link is up
        ("starting", 0.0, 0),  # a receiver still connecting (or failing to)
        ("waiting", 4.0, 0),
        ("stopped", None, 0),  # no receiver at all: the client's coalesce when the view has no row
        ("hidden", None, None),  # not shown to a user without pg_read_all_stats: no guess
    ],
)
def test_standby_wal_receiver_status_and_receipt_age(status, age, connected) -> None:
    extras = _extras(in_recovery=True, replay_lag=0.0, unreplayed_bytes=0.0)
    row = {**BGWRITER_PRE17, **extras, "wal_receiver_status": status, "wal_receiver_receipt_age": age}
    got = by_key(mapping.server_samples(row, TABLE.enabled()))
    assert got.get(("postgresql.wal_receiver.connected", ())) == connected
    assert got.get(("postgresql.wal_receiver.last_msg_receipt_age", ())) == age


def test_server_sql_reads_the_documented_wal_receiver_columns() -> None:
    sql = client.server_stats_sql(150000)
    receiver = sql[sql.index("AS unreplayed_bytes") : sql.index("AS wal_receiver_receipt_age")]
    # pg_stat_wal_receiver (PostgreSQL 10+): pid, status, ..., last_msg_receipt_time, ...
    assert re.findall(r"\b(status|last_msg_receipt_time)\b", receiver) == ["status", "last_msg_receipt_time"]
    assert receiver.count("FROM pg_stat_wal_receiver") == 2


def test_replication_slots_retained_wal_and_activity() -> None:
    slots = [
        {"slot_name": "standby_a", "slot_type": "physical", "active": True, "retained_bytes": 16384.0},
        {"slot_name": "cdc", "slot_type": "logical", "active": False, "retained_bytes": 7.5e9},
        {"slot_name": "fresh", "slot_type": "physical", "active": False, "retained_bytes": None},
    ]
    got = by_key(mapping.server_samples({**BGWRITER_PRE17, **_extras(replication_slots=slots)}, TABLE.enabled()))
    assert got[("postgresql.replication.slot.retained_wal", ("standby_a", "physical"))] == 16384
    assert got[("postgresql.replication.slot.retained_wal", ("cdc", "logical"))] == 7.5e9
    assert ("postgresql.replication.slot.retained_wal", ("fresh", "physical")) not in got  # no WAL reserved yet
    assert got[("postgresql.replication.slot.active", ("standby_a", "physical"))] == 1
    assert got[("postgresql.replication.slot.active", ("cdc", "logical"))] == 0
    assert got[("postgresql.replication.slot.active", ("fresh", "physical"))] == 0


@pytest.mark.parametrize("version", [12, 15, 17])
def test_autovacuum_and_autoanalyze_per_table(version: int) -> None:
    assert (
        {"autovacuum_count", "autoanalyze_count", "last_autovacuum", "last_autoanalyze"}
        <= columns_of(client.table_stats_sql(sizes=False), "s")
        <= TABLE_VIEWS[version][0]
    )
    rows = [
        _table_row(
            version,
            "public",
            "orders",
            autovacuum_count=4,
            autoanalyze_count=6,
            last_autovacuum_age=120.5,
            last_autoanalyze_age=30.0,
        ),
        _table_row(version, "public", "fresh"),
    ]  # never autovacuumed: no age
    got = by_key(mapping.table_samples(rows, "app", TABLE.enabled()))
    orders = ("app|public", "orders", "app", "public", "public.orders")
    fresh = ("app|public", "fresh", "app", "public", "public.fresh")
    assert got[("postgresql.table.autovacuum.count", orders)] == 4
    assert got[("postgresql.table.autoanalyze.count", orders)] == 6
    assert got[("postgresql.table.last_autovacuum.age", orders)] == 120.5
    assert got[("postgresql.table.last_autoanalyze.age", orders)] == 30
    assert got[("postgresql.table.autovacuum.count", fresh)] == 0
    assert ("postgresql.table.last_autovacuum.age", fresh) not in got


# --- optional statements: locks, functions, pg_stat_statements ---------------------------------------------
_LOCKS_12 = {
    "locktype",
    "database",
    "relation",
    "page",
    "tuple",
    "virtualxid",
    "transactionid",
    "classid",
    "objid",
    "objsubid",
    "virtualtransaction",
    "pid",
    "mode",
    "granted",
    "fastpath",
}
_LOCKS_17 = _LOCKS_12 | {"waitstart"}
_USER_FUNCTIONS = {"funcid", "schemaname", "funcname", "calls", "total_time", "self_time"}
_STATEMENTS_1_7 = {  # pg_stat_statements 1.7, PostgreSQL 12
    "userid",
    "dbid",
    "queryid",
    "query",
    "calls",
    "total_time",
    "min_time",
    "max_time",
    "mean_time",
    "stddev_time",
    "rows",
    "shared_blks_hit",
    "shared_blks_read",
    "shared_blks_dirtied",
    "shared_blks_written",
    "local_blks_hit",
    "local_blks_read",
    "local_blks_dirtied",
    "local_blks_written",
    "temp_blks_read",
    "temp_blks_written",
    "blk_read_time",
    "blk_write_time",
}
_STATEMENTS_1_10 = {  # pg_stat_statements 1.10, PostgreSQL 15 (1.8 renamed the timing columns)
    "userid",
    "dbid",
    "toplevel",
    "queryid",
    "query",
    "plans",
    "total_plan_time",
    "min_plan_time",
    "max_plan_time",
    "mean_plan_time",
    "stddev_plan_time",
    "calls",
    "total_exec_time",
    "min_exec_time",
    "max_exec_time",
    "mean_exec_time",
    "stddev_exec_time",
    "rows",
    "shared_blks_hit",
    "shared_blks_read",
    "shared_blks_dirtied",
    "shared_blks_written",
    "local_blks_hit",
    "local_blks_read",
    "local_blks_dirtied",
    "local_blks_written",
    "temp_blks_read",
    "temp_blks_written",
    "blk_read_time",
    "blk_write_time",
    "temp_blk_read_time",
    "temp_blk_write_time",
    "wal_records",
    "wal_fpi",
    "wal_bytes",
    "jit_functions",
    "jit_generation_time",
    "jit_inlining_count",
    "jit_inlining_time",
    "jit_optimization_count",
    "jit_optimization_time",
    "jit_emission_count",
    "jit_emission_time",
}
_STATEMENTS_1_11 = (_STATEMENTS_1_10 - {"blk_read_time", "blk_write_time"}) | {  # PostgreSQL 17
    "shared_blk_read_time",
    "shared_blk_write_time",
    "local_blk_read_time",
    "local_blk_write_time",
    "jit_deform_count",
    "jit_deform_time",
    "stats_since",
    "minmax_stats_since",
}
STATEMENTS = {12: _STATEMENTS_1_7, 15: _STATEMENTS_1_10, 17: _STATEMENTS_1_11}


@pytest.mark.parametrize("locks", [_LOCKS_12, _LOCKS_17])
def test_locks_and_function_sql_read_documented_columns(locks: set[str]) -> None:
    assert columns_of(client.LOCKS_SQL, "l") == {"relation", "mode", "locktype", "database"} <= locks
    assert columns_of(client.LOCKS_SQL, "c") == {"oid", "relname", "relisshared"}
    assert (
        columns_of(client.FUNCTION_STATS_SQL, "s") == {"schemaname", "funcname", "calls", "funcid"} <= _USER_FUNCTIONS
    )
    assert columns_of(client.FUNCTION_STATS_SQL, "p") == {"oid", "proargnames"}


@pytest.mark.parametrize("major", [12, 15, 17])
def test_pg_stat_statements_sql_uses_the_columns_of_the_version(major: int) -> None:
    for sql in (client.execution_time_sql(major * 10000 + 1), client.vector_stats_sql(major * 10000 + 1)):
        used = columns_of(sql, "s") - {"datname"}
        assert used <= STATEMENTS[major], (major, used - STATEMENTS[major])
        assert ("total_exec_time" in used) == (major >= 13)
    assert "pg_stat_statements(false)" in client.execution_time_sql(150000)  # no query texts for a sum


def test_distance_matchers_cover_exactly_the_receiver_enum() -> None:
    enum = next(r["attributes"] for r in reference_rows() if r["metric_name"] == "postgresql.vector.search.calls")
    names = set(enum.split(",")[0].split("=")[1].split("|"))
    assert set(client.DISTANCE_MATCHERS) == set(mapping.DISTANCE_FUNCTION_NAMES) == names


def test_lock_rows() -> None:
    rows = [
        {"relation": "orders", "mode": "RowExclusiveLock", "locktype": "relation", "in_database": True, "locks": 3},
        {"relation": "", "mode": "ExclusiveLock", "locktype": "advisory", "in_database": True, "locks": 1},
        {"relation": "", "mode": "ExclusiveLock", "locktype": "virtualxid", "in_database": False, "locks": 4},
    ]
    got = by_key(mapping.lock_samples(rows, "app", ALL))
    assert got == {
        ("postgresql.database.locks", ("orders", "RowExclusiveLock", "relation", "app", "app")): 3,
        ("postgresql.database.locks", ("", "ExclusiveLock", "advisory", "app", "app")): 1,
        ("postgresql.database.locks", ("", "ExclusiveLock", "virtualxid", "", "")): 4,
    }
    assert mapping.lock_samples(rows, "app", TABLE.enabled()) == []  # optional: off by default


@pytest.mark.parametrize(
    "funcname, argnames, overloaded, expected",
    [
        ("add_item", ["id", "qty"], False, "add_item"),
        ("add_item", ["id", "qty"], True, "add_item_id_qty"),
        ("add_item", None, True, "add_item"),  # unnamed arguments: proargnames is NULL
    ],
)
def test_function_names_follow_the_receiver(funcname, argnames, overloaded, expected) -> None:
    assert mapping.function_name(funcname, argnames, overloaded) == expected


def test_function_rows() -> None:
    rows = [
        {"schemaname": "public", "funcname": "touch", "calls": 5, "proargnames": None, "overloaded": False},
        {"schemaname": "billing", "funcname": "total", "calls": 2, "proargnames": ["a"], "overloaded": True},
        {"schemaname": "billing", "funcname": "total", "calls": 9, "proargnames": ["a", "b"], "overloaded": True},
    ]
    got = by_key(mapping.function_samples(rows, "app", ALL))
    assert got == {
        ("postgresql.function.calls", ("touch", "app|public", "app", "public")): 5,
        ("postgresql.function.calls", ("total_a", "app|billing", "app", "billing")): 2,
        ("postgresql.function.calls", ("total_a_b", "app|billing", "app", "billing")): 9,
    }


def test_execution_time_rows() -> None:
    from decimal import Decimal

    rows = [{"datname": "app", "exec_seconds": 12.5}, {"datname": "postgres", "exec_seconds": Decimal("0.004")}]
    got = by_key(mapping.execution_time_samples(rows, ALL))
    assert got == {
        ("postgresql.query.execution.time", ("app", "app")): 12.5,
        ("postgresql.query.execution.time", ("postgres", "postgres")): 0.004,
    }


def test_vector_rows() -> None:
    from decimal import Decimal

    rows = [
        {
            "kind": "search",
            "distance_function": "cosine",
            "calls": Decimal(40),
            "exec_seconds": 1.5,
            "rows": Decimal(400),
        },
        {"kind": "search", "distance_function": None, "calls": Decimal(1), "exec_seconds": 0.1, "rows": 1},
        {"kind": "insert", "distance_function": None, "calls": Decimal(3), "exec_seconds": 0.25, "rows": Decimal(3000)},
    ]
    got = by_key(mapping.vector_samples(rows, "app", ALL))
    assert got == {
        ("postgresql.vector.search.calls", ("cosine", "app", "app")): 40,
        ("postgresql.vector.search.duration", ("cosine", "app", "app")): 1.5,
        ("postgresql.vector.search.rows_returned", ("cosine", "app", "app")): 400,
        ("postgresql.vector.insert.rows", ("app", "app")): 3000,
        ("postgresql.vector.insert.duration", ("app", "app")): 0.25,
    }


def test_optional_queries_say_what_they_need_when_unsupported() -> None:
    assert set(client.REQUIREMENTS) - client.QUERY_INTELLIGENCE_READS <= set(METRICS_BY_QUERY)
    assert all(
        not (METRICS_BY_QUERY[q] & TABLE.enabled())
        for q in ("fetch_locks", "fetch_function_stats", "fetch_execution_time", "fetch_vector_stats")
    )
