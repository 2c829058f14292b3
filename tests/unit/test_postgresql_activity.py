"""PostgreSQL query intelligence, pure mapping: pg_stat_statements / pg_stat_activity rows -> records."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from dbintel.agent.collectors.postgresql import activity
from dbintel.agent.collectors.postgresql.client import (
    PG13,
    PG14,
    query_samples_sql,
    statement_stats_sql,
)
from dbintel.agent.queries.obfuscation import ObfuscatedText

RESET = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def statement_row(**overrides):
    row = {
        "stats_reset": RESET,
        "queryid": -4922882474069691897,
        "calls": 3.0,
        "total_exec_time": 1500.0,  # ms
        "rows": 30.0,
        "shared_blks_hit": 10.0,
        "shared_blks_read": 2.0,
        "shared_blks_dirtied": 1.0,
        "shared_blks_written": 0.0,
        "local_blks_hit": 0.0,
        "local_blks_read": 0.0,
        "local_blks_dirtied": 0.0,
        "local_blks_written": 0.0,
        "temp_blks_read": 4.0,
        "temp_blks_written": 5.0,
        "total_plan_time": 7.5,
        "dbid": 16384,
        "userid": 10,
        "datname": "shop",
        "rolname": "app",
    }
    row.update(overrides)
    return row


def test_a_statement_row_becomes_counters_with_seconds_and_the_receivers_names():
    (counters,) = activity.statement_counters([statement_row()])
    assert counters.query_id == "-4922882474069691897"
    assert (counters.calls, counters.total_time_s, counters.rows) == (3.0, 1.5, 30.0)
    assert counters.namespace == "shop"
    assert counters.attributes == {"postgresql.queryid": "-4922882474069691897", "postgresql.rolname": "app"}
    assert counters.extra["postgresql.shared_blks_hit"] == 10.0
    assert counters.extra["postgresql.temp_blks_written"] == 5.0
    assert counters.extra["postgresql.total_plan_time"] == 7.5  # the receiver's unit (ms), as the server counts
    assert set(counters.extra) == {f"postgresql.{c}" for c in activity.EXTRA_COLUMNS}
    assert counters.text is None  # numbers only: texts come from fetch_statement_texts


@given(st.floats(min_value=0, max_value=1e12, allow_nan=False))
def test_execution_time_is_milliseconds_over_a_thousand(ms):
    (counters,) = activity.statement_counters([statement_row(total_exec_time=ms)])
    assert counters.total_time_s == ms / 1000.0


def test_a_queryid_shared_by_several_databases_or_users_has_no_namespace_or_role():
    (counters,) = activity.statement_counters([statement_row(dbid=None, userid=None, datname=None, rolname=None)])
    assert counters.namespace == ""
    assert "postgresql.rolname" not in counters.attributes


def test_before_pg13_there_is_no_plan_time():
    row = statement_row()
    del row["total_plan_time"]
    (counters,) = activity.statement_counters([row])
    assert "postgresql.total_plan_time" not in counters.extra


def test_an_empty_view_gives_no_counters_but_its_reset_time():
    empty = dict.fromkeys(statement_row()) | {"stats_reset": RESET}
    assert activity.statement_counters([empty]) == ()
    assert activity.stats_reset([empty]) == RESET.timestamp()


def test_reset_is_unknown_before_pg14_or_without_rows():
    assert activity.stats_reset([statement_row(stats_reset=None)]) is None
    assert activity.stats_reset([]) is None


def test_order_is_kept_heaviest_first():
    rows = [statement_row(queryid=2, total_exec_time=900.0), statement_row(queryid=1, total_exec_time=100.0)]
    assert [c.query_id for c in activity.statement_counters(rows)] == ["2", "1"]


def test_texts_are_obfuscated_and_summarised():
    texts = activity.statement_texts(
        [
            {"queryid": 7, "query": "SELECT * FROM orders WHERE email = 'jane@example.com' AND id = 4111111111111111"},
            {"queryid": -8, "query": "UPDATE orders SET total = $1 WHERE id = $2"},
        ]
    )
    text, summary = texts["7"]
    assert isinstance(text, ObfuscatedText)
    assert "jane@example.com" not in text and "4111111111111111" not in text
    assert summary == "SELECT orders"
    assert texts["-8"][1] == "UPDATE orders"


def test_a_missing_text_is_the_placeholder_not_an_error():
    text, summary = activity.statement_texts([{"queryid": 1, "query": None}])["1"]
    assert text == activity.obfuscate_sql("", "postgresql")
    assert summary == activity.query_summary("", "postgresql")


def session_row(**overrides):
    row = {
        "pid": 4242,
        "state": "active",
        "wait_event_type": "Lock",
        "wait_event": "transactionid",
        "duration": 12.5,
        "blocked_by": "4141 4040",  # pg_blocking_pids(), space-separated
        "query_id": -123,
        "datname": "shop",
        "usename": "app",
        "client_addr": "10.0.0.7",
        "client_port": 51234,
        "application_name": "checkout",
        "backend_type": "client backend",
        "query": "UPDATE accounts SET balance = balance - 100 WHERE owner = 'jane@example.com'",
    }
    row.update(overrides)
    return row


def test_a_blocked_session_names_its_blockers_and_its_wait():
    (session,) = activity.active_sessions([session_row()])
    assert session.session_id == "4242"
    assert (session.state, session.wait_event_type, session.wait_event) == ("active", "Lock", "transactionid")
    assert session.blocked_by == ("4141", "4040")
    assert session.duration_s == 12.5
    assert session.query_id == "-123"
    assert (session.namespace, session.user, session.application) == ("shop", "app", "checkout")
    assert (session.client_address, session.client_port) == ("10.0.0.7", 51234)
    assert session.attributes == {"postgresql.pid": 4242, "postgresql.backend_type": "client backend"}
    assert "jane@example.com" not in session.text and "100" not in session.text
    assert session.summary == "UPDATE accounts"


def test_an_idle_in_transaction_session_without_wait_or_query_id():
    (session,) = activity.active_sessions(
        [
            session_row(
                state="idle in transaction",
                wait_event_type="Client",
                wait_event="ClientRead",
                blocked_by=None,  # pg_blocking_pids() is called only for Lock waits
                query_id=0,  # compute_query_id off
                client_addr=None,  # unix socket
                client_port=-1,
            )
        ]
    )
    assert session.blocked_by == ()
    assert session.query_id == ""
    assert (session.client_address, session.client_port) == ("", None)


def test_a_background_worker_without_wait_or_text():
    (session,) = activity.active_sessions(
        [session_row(wait_event_type=None, wait_event=None, duration=None, query=None, blocked_by=None)]
    )
    assert (session.wait_event_type, session.wait_event, session.duration_s) == ("", "", None)
    assert isinstance(session.text, ObfuscatedText)


def test_statement_sql_reads_numbers_only_and_names_by_version():
    for version in (120000, PG13, PG14, 170000):
        sql = statement_stats_sql(version)
        assert "pg_stat_statements(false)" in sql and "query," not in sql
        assert ("total_exec_time)" in sql) == (version >= PG13)
        assert ("total_plan_time" in sql) == (version >= PG13)
        assert ("pg_stat_statements_info" in sql) == (version >= PG14)
        assert "LIMIT $1" in sql


def test_sample_sql_calls_pg_blocking_pids_only_for_lock_waits():
    for version in (120000, PG14):
        sql = query_samples_sql(version)
        assert "CASE WHEN a.wait_event_type = 'Lock' THEN array_to_string(pg_blocking_pids(a.pid), ' ') END" in sql
        assert "pg_backend_pid()" in sql and "<> 'idle'" in sql
        assert ("a.query_id" in sql) == (version >= PG14)
