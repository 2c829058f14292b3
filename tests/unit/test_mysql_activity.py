"""The MySQL query-intelligence mapping: rows -> records, units, ids, obfuscation, setup messages. No I/O."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from dbintel.agent.collectors.mysql import activity
from dbintel.agent.collectors.mysql.client import (
    ServerVersion,
    blocked_by_expression,
    query_sample_parts,
    statement_digest_parts,
    union_sql,
)
from dbintel.agent.queries.obfuscation import ObfuscatedText

MARIADB = ServerVersion("mariadb", (10, 11, 6))
MYSQL8 = ServerVersion("mysql", (8, 0, 36))


def digest_row(**values):
    row = {
        "schema": "shop",
        "digest": "ab12",
        "count_star": Decimal(4),
        "sum_timer_wait": Decimal(2_500_000_000_000),  # 2.5 s in picoseconds
        "sum_lock_time": 500_000_000,
        "sum_rows_sent": 10,
        "sum_rows_affected": 3,
        "sum_rows_examined": 99,
        "sum_errors": 1,
        "first_seen": Decimal("1700000000.000000"),
    }
    row.update(values)
    return row


def test_digest_counters_convert_picoseconds_and_sum_rows():
    (counters,) = activity.digest_counters([digest_row()])
    assert counters.query_id == "ab12:shop"
    assert counters.namespace == "shop"
    assert counters.calls == 4
    assert counters.total_time_s == 2.5
    assert counters.rows == 13  # sent + affected
    assert counters.first_seen == 1_700_000_000
    assert counters.text is None  # fetched once, by fetch_statement_texts
    assert counters.attributes == {"mysql.events_statements_summary_by_digest.digest": "ab12"}
    extra = counters.extra
    assert extra["mysql.events_statements_summary_by_digest.sum_lock_time"] == 0.0005
    assert extra["mysql.events_statements_summary_by_digest.sum_rows_examined"] == 99
    assert extra["mysql.events_statements_summary_by_digest.sum_errors"] == 1
    assert extra["mysql.events_statements_summary_by_digest.sum_no_index_used"] == 0  # NULL/missing reads 0
    assert "mysql.events_statements_summary_by_digest.sum_cpu_time" not in extra


def test_digest_without_schema_is_keyed_by_digest_alone_and_overflow_row_dropped():
    rows = [digest_row(schema=None), digest_row(digest=None, schema=None)]
    (counters,) = activity.digest_counters(rows)
    assert counters.query_id == "ab12"
    assert counters.namespace == ""


def test_cpu_time_only_when_the_server_has_it():
    (counters,) = activity.digest_counters([digest_row(sum_cpu_time=2 * 10**12)], cpu_time=True)
    assert counters.extra["mysql.events_statements_summary_by_digest.sum_cpu_time"] == 2.0
    assert "SUM_CPU_TIME" in union_sql(statement_digest_parts(MYSQL8, 10))
    assert "SUM_CPU_TIME" not in union_sql(statement_digest_parts(MARIADB, 10))


@given(schema=st.one_of(st.none(), st.text(min_size=1)), digest=st.from_regex(r"[0-9a-f]{32,64}", fullmatch=True))
def test_query_id_round_trips(schema, digest):
    assert activity.split_query_id(activity.digest_query_id(schema, digest)) == (schema or None, digest)


def test_query_ids_that_are_not_digests_are_refused():
    # never inlined into SQL: fetch_statement_texts drops them
    assert activity.split_query_id("') OR 1=1 -- ") is None
    assert activity.split_query_id("") is None


def test_digest_texts_are_obfuscated_and_only_the_wanted_ids_kept():
    rows = [
        {
            "schema": "shop",
            "digest": "ab12",
            "digest_text": "SELECT * FROM t WHERE email = 'ann@example.com' /* card 4111 */",
        },
        {"schema": "other", "digest": "ab12", "digest_text": "SELECT 1"},
    ]
    texts = activity.digest_texts(rows, ["ab12:shop"])
    assert set(texts) == {"ab12:shop"}
    text, summary = texts["ab12:shop"]
    assert isinstance(text, ObfuscatedText)
    assert "ann@example.com" not in text and "4111" not in text
    assert "ann@example.com" not in summary


def test_setup_row_tells_performance_schema_and_consumers_apart():
    needed = activity.SAMPLE_CONSUMERS
    assert activity.missing_setup({"performance_schema": 0, "enabled": None}, needed) == (False, ())
    all_on = ",".join(needed)
    assert activity.missing_setup({"performance_schema": 1, "enabled": all_on}, needed) == (True, ())
    partly = {"performance_schema": 1, "enabled": "global_instrumentation,thread_instrumentation"}
    assert activity.missing_setup(partly, needed) == (True, ("events_statements_current", "events_waits_current"))


def test_consumer_message_names_the_enabling_statement():
    message = activity.setup_off_message("query samples", ("events_waits_current",))
    assert (
        "UPDATE performance_schema.setup_consumers SET ENABLED='YES' WHERE NAME IN ('events_waits_current')" in message
    )
    assert "performance-schema-consumer-events-waits-current=ON" in message
    assert "performance_schema=ON" in activity.performance_schema_off_message("top queries")
    message = activity.setup_off_message("query samples", ("events_waits_current", "wait/lock/metadata/sql/mdl"))
    assert (
        "UPDATE performance_schema.setup_instruments SET ENABLED='YES', TIMED='YES' "
        "WHERE NAME IN ('wait/lock/metadata/sql/mdl')" in message
    )
    assert "performance-schema-instrument='wait/lock/metadata/sql/mdl=ON'" in message


def session_row(**values):
    row = {
        "processlist_id": Decimal(16),
        "thread_id": Decimal(25),
        "user": "app",
        "host": "10.0.0.7:51234",
        "db": "shop",
        "command": "Query",
        "processlist_state": "Updating",
        "sql_text": "UPDATE orders SET status = 'x' WHERE email = 'ann@example.com'",
        "digest": None,
        "current_schema": "shop",
        "wait_event": "wait/io/table/sql/handler",
        "trx_state": "LOCK WAIT",
        "blocked_by": "15,9",
        "statement_running": 1,
        "statement_timer_wait": Decimal(1_500_000_000_000),
        "processlist_time": 1,
        "wait_timer_wait": 1_400_000_000_000,
    }
    row.update(values)
    return row


def test_blocked_session_is_a_lock_wait_with_its_blockers():
    (session,) = activity.sessions([session_row()])
    assert session.session_id == "16"
    assert session.state == "waiting"
    assert session.wait_event_type == "Lock"  # the handler call waits on an InnoDB row lock
    assert session.wait_event == "wait/io/table/sql/handler"
    assert session.blocked_by == ("9", "15")
    assert session.duration_s == 1.5
    assert session.user == "app"
    assert (session.client_address, session.client_port) == ("10.0.0.7", 51234)
    assert session.namespace == "shop"
    assert session.attributes["mysql.threads.thread_id"] == 25
    assert session.attributes["mysql.events_waits_current.timer_wait"] == 1.4
    assert session.text is not None and "ann@example.com" not in session.text
    assert "ann@example.com" not in session.summary


def test_idle_in_transaction_uses_processlist_time():
    row = session_row(
        command="Sleep",
        processlist_state="",
        statement_running=0,
        statement_timer_wait=None,
        processlist_time=42,
        wait_event="idle",
        trx_state="RUNNING",
        blocked_by=None,
        host="localhost",
        digest="cd34",
    )
    (session,) = activity.sessions([row])
    assert session.state == "idle in transaction"
    assert session.duration_s == 42
    assert session.wait_event_type == "Idle"
    assert session.blocked_by == ()
    assert (session.client_address, session.client_port) == ("localhost", None)
    assert session.query_id == "cd34:shop"


def test_running_statement_without_wait():
    (session,) = activity.sessions([session_row(wait_event=None, trx_state=None, blocked_by=None, sql_text=None)])
    assert session.state == "running"
    assert (session.wait_event_type, session.wait_event) == ("", "")
    assert session.text is None and session.summary == ""


def test_wait_event_classes():
    assert activity.wait_event_type("wait/io/file/innodb/innodb_data_file", lock_wait=False) == "IO"
    assert activity.wait_event_type("wait/lock/metadata/sql/mdl", lock_wait=False) == "Lock"
    assert activity.wait_event_type("wait/synch/mutex/sql/LOCK_open", lock_wait=False) == "Synch"


def test_blockers_come_from_the_version_s_lock_wait_table():
    assert "information_schema.INNODB_LOCK_WAITS" in blocked_by_expression(MARIADB)
    assert "performance_schema.data_lock_waits" in blocked_by_expression(MYSQL8)
    sql = union_sql(query_sample_parts(MARIADB, 7))
    assert "CONNECTION_ID()" in sql and "LIMIT 7" in sql and "setup_consumers" in sql
    assert "performance_schema.metadata_locks" in sql and "setup_instruments" in sql
