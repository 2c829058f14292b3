"""MySQL query intelligence against the real MariaDB of the `mariadb_server` fixture (performance_schema on,
events_statements_current and events_waits_current consumers on, as tests/servers.py starts it).

The fixture server is shared with the other MariaDB tests, so each test works in its own schema and
reads the rows of that schema; a test that switches a consumer off switches it back on.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable

import aiomysql
import pytest

from dbintel.agent.collectors.mysql import MysqlCollector
from dbintel.agent.queries.model import ActiveSession
from dbintel.agent.queries.tracker import TopQueryTracker
from tests.integration.test_mysql_collector import make_collector
from tests.servers import MariaDBServer

pytestmark = pytest.mark.integration

FAKE_EMAIL = "ann.leak@example.com"
FAKE_CARD = "4111111111111111"
WORKER = "dbintel_qi_worker"


@pytest.fixture
async def collector(mariadb_server: MariaDBServer, monkeypatch: pytest.MonkeyPatch):
    collector = make_collector(mariadb_server, monkeypatch)
    yield collector
    await collector.close()


@pytest.fixture
def schema(mariadb_server: MariaDBServer):
    """A fresh schema with a small table, and a worker account that may write it."""
    name = f"qi_{secrets.token_hex(4)}"
    mariadb_server.execute(
        f"CREATE DATABASE {name};\n"
        f"CREATE TABLE {name}.items (id INT PRIMARY KEY, owner VARCHAR(64), card VARCHAR(32)) ENGINE=InnoDB;\n"
        f"USE {name};\n"
        f"INSERT INTO {name}.items SELECT seq, 'nobody', '' FROM seq_1_to_50;\n"
        f"CREATE USER IF NOT EXISTS '{WORKER}'@'%' IDENTIFIED BY '{mariadb_server.monitor_password}';\n"
        f"GRANT ALL ON {name}.* TO '{WORKER}'@'%';"
    )
    yield name
    mariadb_server.execute(f"DROP DATABASE {name};")


@contextlib.asynccontextmanager
async def worker(server: MariaDBServer, schema: str) -> AsyncIterator[aiomysql.Connection]:
    conn = await aiomysql.connect(
        host=server.host, port=server.port, user=WORKER, password=server.monitor_password, db=schema, autocommit=True
    )
    try:
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def consumer_off(server: MariaDBServer, name: str):
    server.execute(f"UPDATE performance_schema.setup_consumers SET ENABLED='NO' WHERE NAME='{name}';")
    try:
        yield
    finally:
        server.execute(f"UPDATE performance_schema.setup_consumers SET ENABLED='YES' WHERE NAME='{name}';")


async def test_heaviest_digest_is_first_and_texts_come_once_obfuscated(
    collector: MysqlCollector, mariadb_server: MariaDBServer, schema: str
):
    # SELECT SLEEP is the heaviest digest by far; the light one runs ten times as often, with leaky literals.
    mariadb_server.execute(
        "SELECT SLEEP(0.3);\n" * 3
        + "".join(
            f"SELECT id FROM items WHERE owner = '{FAKE_EMAIL}' AND card = '{FAKE_CARD}' AND id = {i};\n"
            for i in range(30)
        ),
        database=schema,
    )
    await collector.collect()
    connection = collector.client.connection_id

    read = await collector.read_statement_stats(1000, None)
    assert read.errors == ()
    assert read.statements == 1
    ours = [counters for counters in read.counters if counters.namespace == schema]  # + the client's own
    assert all(counters.text is None for counters in read.counters)  # numbers only, every interval

    before = collector.client.statements
    texts = await collector.fetch_statement_texts([counters.query_id for counters in ours] + ["x'; DROP"])
    assert collector.client.statements - before == 1  # one statement for the batch
    assert set(texts) == {counters.query_id for counters in ours}
    heavy = ours[0]  # heaviest first
    heavy_text, heavy_summary = texts[heavy.query_id]
    assert "SLEEP" in heavy_text.upper()
    (light,) = [c for c in ours if "items" in texts[c.query_id][0] and texts[c.query_id][1].startswith("SELECT")]
    light_text, light_summary = texts[light.query_id]
    for text in (heavy_text, heavy_summary, light_text, light_summary):
        assert FAKE_EMAIL not in text and FAKE_CARD not in text

    assert heavy.calls == 3 and heavy.total_time_s >= 0.9
    assert light.calls == 30 and light.total_time_s < heavy.total_time_s
    assert heavy.rows == 3 and light.rows == 0  # SLEEP returns one row; the lookups match none
    assert light.extra["mysql.events_statements_summary_by_digest.sum_rows_examined"] == 0  # primary key misses
    assert heavy.first_seen is not None and abs(heavy.first_seen - time.time()) < 600
    assert await collector.fetch_statement_texts([]) == {}
    assert collector.client.statements - before == 1  # nothing to fetch, nothing sent
    assert collector.client.connection_id == connection  # the collector's one connection throughout


async def test_tracker_ranks_the_interval_s_heaviest_digest_first(
    collector: MysqlCollector, mariadb_server: MariaDBServer, schema: str
):
    """The source through the agent's tracker: the interval's deltas, not the server's totals."""
    tracker = TopQueryTracker(top_n=5)
    assert tracker.observe(await collector.read_statement_stats(1000, None), time.time(), limit=1000) is None
    mariadb_server.execute(
        "SELECT SLEEP(0.2);\n" * 2 + "".join(f"SELECT owner FROM items WHERE id = {i};\n" for i in range(20)),
        database=schema,
    )
    report = tracker.observe(await collector.read_statement_stats(1000, None), time.time(), limit=1000)
    assert report is not None
    ours = [query for query in report.queries if query.statement.namespace == schema]
    assert ours[0].calls == 2 and ours[0].total_time_s >= 0.4  # the SLEEPs, heaviest of the interval
    assert any(query.calls == 20 for query in ours[1:])


async def test_blocked_session_shows_its_lock_wait_and_blocker(
    collector: MysqlCollector, mariadb_server: MariaDBServer, schema: str
):
    async with worker(mariadb_server, schema) as holder, worker(mariadb_server, schema) as waiter:
        async with holder.cursor() as cursor:
            await cursor.execute("BEGIN")
            await cursor.execute("SELECT * FROM items WHERE id = 7 FOR UPDATE")
        update = asyncio.ensure_future(_execute(waiter, f"UPDATE items SET owner = '{FAKE_EMAIL}' WHERE id = 7"))
        try:
            blocked = await _session(collector, str(waiter.thread_id()), lambda session: bool(session.blocked_by))
            assert blocked.blocked_by == (str(holder.thread_id()),)
            assert blocked.wait_event_type == "Lock" and blocked.state == "waiting"
            assert blocked.wait_event  # the instrument the wait shows (wait/io/table/sql/handler on MariaDB)
            assert blocked.namespace == schema and blocked.user == WORKER
            assert blocked.duration_s is not None and blocked.duration_s >= 0
            assert blocked.text is not None and "items" in blocked.text and FAKE_EMAIL not in blocked.text

            read = await collector.read_query_samples(100)
            assert read.statements == 1 and read.errors == ()
            by_id = {session.session_id: session for session in read.sessions}
            idle = by_id[str(holder.thread_id())]
            assert idle.state == "idle in transaction" and idle.blocked_by == ()
            assert "FOR UPDATE" in (idle.text or "")  # its last statement
            assert str(collector.client.connection_id) not in by_id  # our own session is left out
            durations = [session.duration_s or 0 for session in read.sessions]
            assert durations == sorted(durations, reverse=True)  # longest first
        finally:
            await holder.rollback()
            await update


async def test_metadata_lock_wait_shows_its_blocker(
    collector: MysqlCollector, mariadb_server: MariaDBServer, schema: str
):
    async with worker(mariadb_server, schema) as holder, worker(mariadb_server, schema) as waiter:
        async with holder.cursor() as cursor:  # an open transaction keeps its table's metadata lock
            await cursor.execute("BEGIN")
            await cursor.execute("SELECT * FROM items LIMIT 1")
        await _execute(waiter, "SET SESSION lock_wait_timeout = 60")
        alter = asyncio.ensure_future(_execute(waiter, "ALTER TABLE items ADD COLUMN note INT"))
        try:
            # its pending lock shows a moment before its wait does (the ALTER opens the table's files first)
            blocked = await _session(
                collector,
                str(waiter.thread_id()),
                lambda session: bool(session.blocked_by) and session.wait_event == "wait/lock/metadata/sql/mdl",
            )
            assert blocked.blocked_by == (str(holder.thread_id()),)
            assert blocked.wait_event_type == "Lock"
            assert blocked.state == "waiting"
        finally:
            await holder.rollback()
            await alter


async def test_consumer_off_is_reported_once_with_the_enabling_statement(
    collector: MysqlCollector, mariadb_server: MariaDBServer, schema: str
):
    async with worker(mariadb_server, schema) as holder:
        async with holder.cursor() as cursor:
            await cursor.execute("BEGIN")
            await cursor.execute("SELECT * FROM items WHERE id = 3 FOR UPDATE")
        with consumer_off(mariadb_server, "events_waits_current"):
            first = await collector.read_query_samples(100)
            (error,) = first.errors
            assert error.reason == "unsupported"
            assert (
                "UPDATE performance_schema.setup_consumers SET ENABLED='YES' WHERE NAME IN ('events_waits_current')"
                in error.message
            )
            # samples still flow (the transaction shows once InnoDB's INNODB_TRX cache has it), error once
            await _session(collector, str(holder.thread_id()), lambda session: session.state == "idle in transaction")
            top = await collector.read_statement_stats(100, None)
            assert top.errors == () and top.counters  # the other read is unaffected
        await holder.rollback()
        assert (await collector.read_query_samples(100)).errors == ()

    with consumer_off(mariadb_server, "statements_digest"):
        read = await collector.read_statement_stats(100, None)
        (error,) = read.errors
        assert "WHERE NAME IN ('statements_digest')" in error.message
        assert (await collector.read_statement_stats(100, None)).errors == ()
        assert (await collector.read_query_samples(100)).errors == ()
    assert (await collector.collect()).up


async def _execute(conn: aiomysql.Connection, sql: str) -> None:
    async with conn.cursor() as cursor:
        await cursor.execute(sql)


async def _session(
    collector: MysqlCollector, session_id: str, wanted: Callable[[ActiveSession], bool]
) -> ActiveSession:
    """Read samples until the session shows up as wanted (a lock wait starts a round trip after the
    UPDATE is sent). INNODB_TRX is a cache InnoDB refreshes only when it was last read over 0.1 s ago, so
    reads closer together than that would keep seeing the old transactions. Every read is clean."""
    deadline = time.monotonic() + 15
    while True:
        read = await collector.read_query_samples(100)
        assert read.errors == () and read.statements == 1
        for session in read.sessions:
            if session.session_id == session_id and wanted(session):
                return session
        assert time.monotonic() < deadline, f"session {session_id} never showed up as wanted: {read}"
        await asyncio.sleep(0.15)


async def test_samples_without_process_grant_name_it_once_and_top_queries_flow(
    mariadb_server: MariaDBServer, monkeypatch: pytest.MonkeyPatch
):
    user = "dbintel_qi_noprocess"
    mariadb_server.execute(
        f"CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY '{mariadb_server.monitor_password}';\n"
        f"GRANT SELECT ON performance_schema.* TO '{user}'@'%';"
    )
    collector = make_collector(mariadb_server, monkeypatch, user=user)
    try:
        first = await collector.read_query_samples(100)
        (error,) = first.errors
        assert error.reason == "permission" and f"GRANT PROCESS ON *.* TO '{user}'@'%'" in error.message
        assert (await collector.read_query_samples(100)).errors == ()  # once, then held back quietly
        top = await collector.read_statement_stats(100, None)
        assert top.errors == () and top.counters and top.statements == 1
    finally:
        await collector.close()
        mariadb_server.execute(f"DROP USER '{user}'@'%';")
