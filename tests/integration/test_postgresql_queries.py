"""PostgreSQL query intelligence against the real PostgreSQL 15 of the `postgres_server` fixture
(pg_stat_statements preloaded): top statements, their texts, live sessions and lock waits, a database
without the extension; one statement per read, on the collector's one connection."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time

import asyncpg
import pytest

from dbintel.agent.collectors.postgresql import TABLE, PostgresqlCollector
from dbintel.agent.queries.model import ActiveSession, StatementCounters
from dbintel.common.config import DatabaseConfig
from dbintel.common.secrets import resolve_secret
from tests.servers import PostgresServer

pytestmark = pytest.mark.integration

PASSWORD_ENV = "DBINTEL_TEST_PG_QI_PASSWORD"
SECRET_LITERAL = "jane.doe@example.com"  # a literal of the workload: must never come back


def make_collector(server: PostgresServer, monkeypatch: pytest.MonkeyPatch, database: str) -> PostgresqlCollector:
    monkeypatch.setenv(PASSWORD_ENV, server.monitor_password)
    config = DatabaseConfig(
        name="pg-qi",
        type="postgresql",
        endpoint=server.address,
        username=server.monitor_user,
        password=f"${{env:{PASSWORD_ENV}}}",
        database=database,
    )
    return PostgresqlCollector(config, password=resolve_secret(config.password), enabled=TABLE.enabled())


@pytest.fixture
async def collector(postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch):
    collector = make_collector(postgres_server, monkeypatch, postgres_server.app_database)
    yield collector
    await collector.close()


async def superuser(server: PostgresServer, database: str) -> asyncpg.Connection:
    return await asyncpg.connect(server.dsn(server.superuser, server.superuser_password, database))


def dbintel_connections(server: PostgresServer) -> int:
    rows = server.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dbintel'")
    return int(rows[0][0])


def monitor_calls(server: PostgresServer) -> int:
    """Every statement the monitoring role ran, as pg_stat_statements counts them (asyncpg's own included)."""
    rows = server.execute(
        "SELECT coalesce(sum(s.calls), 0) FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid "
        f"WHERE r.rolname = '{server.monitor_user}'"
    )
    return int(rows[0][0])


def by_id(counters: tuple[StatementCounters, ...]) -> dict[str, StatementCounters]:
    return {c.query_id: c for c in counters}


async def test_the_heaviest_statement_of_a_workload_leads_and_its_text_comes_back_obfuscated(
    postgres_server: PostgresServer, collector: PostgresqlCollector
):
    marker = secrets.token_hex(4)
    table = f"qi_work_{marker}"  # a table of its own: the workload's statements get queryids of their own
    workload = await superuser(postgres_server, postgres_server.app_database)
    try:
        await workload.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, note text)")
        await workload.execute(f"INSERT INTO {table} VALUES (1, '{SECRET_LITERAL}')")
        before = await collector.read_statement_stats(1000, None)
        assert before.errors == () and before.statements == 1
        connection_pid = collector.client.backend_pid
        for _ in range(3):  # heavy: 3 calls of ~0.2 s
            await workload.execute(f"SELECT pg_sleep(0.2) FROM {table} WHERE note = '{SECRET_LITERAL}'")
        for i in range(20):  # light: 20 calls of an index lookup
            await workload.execute(f"SELECT note FROM {table} WHERE id = {i}")
        after = await collector.read_statement_stats(1000, None)
    finally:
        await workload.execute(f"DROP TABLE IF EXISTS {table}")
        await workload.close()

    assert after.errors == () and after.statements == 1
    assert after.reset_at is not None and after.reset_at < time.time()  # PG 14+: pg_stat_statements_info
    ids = [c.query_id for c in after.counters]
    assert len(ids) == len(set(ids))  # one row per queryid
    earlier = by_id(before.counters)
    deltas = {
        c.query_id: (c.total_time_s - (earlier[c.query_id].total_time_s if c.query_id in earlier else 0.0), c)
        for c in after.counters
    }
    heaviest_id, (heaviest_time, heaviest) = max(deltas.items(), key=lambda item: item[1][0])
    assert heaviest_time >= 0.6
    assert heaviest.calls - (earlier[heaviest_id].calls if heaviest_id in earlier else 0) == 3
    assert heaviest.namespace == postgres_server.app_database
    assert heaviest.attributes["postgresql.rolname"] == postgres_server.superuser
    assert heaviest.attributes["postgresql.queryid"] == heaviest_id
    assert heaviest.extra["postgresql.shared_blks_hit"] >= 3  # it read the table's page each time
    # The read is ordered by total time: the heavy statement comes before every lighter newcomer.
    assert ids.index(heaviest_id) < min(ids.index(q) for q in deltas if q not in earlier and q != heaviest_id)

    texts = await collector.fetch_statement_texts(list(deltas))
    assert collector.client.backend_pid == connection_pid  # the same connection all along
    heavy_text, heavy_summary = texts[heaviest_id]
    assert heavy_text == f"SELECT pg_sleep(?) FROM {table} WHERE note = ?"
    assert heavy_summary == f"SELECT {table}"
    light = [q for q, (text, _) in texts.items() if text == f"SELECT note FROM {table} WHERE id = ?"]
    assert len(light) == 1 and deltas[light[0]][1].calls == 20
    assert all(SECRET_LITERAL not in text and "0.2" not in text for text, _ in texts.values())


async def test_statement_reads_cost_one_statement_each_on_the_collectors_only_connection(
    postgres_server: PostgresServer, collector: PostgresqlCollector
):
    await collector.collect()
    connections = dbintel_connections(postgres_server)
    pid = collector.client.backend_pid
    calls = monitor_calls(postgres_server)
    read = await collector.read_statement_stats(10, None)
    assert read.statements == 1 and len(read.counters) == 10
    before = collector.client.statements
    texts = await collector.fetch_statement_texts([c.query_id for c in read.counters])
    assert collector.client.statements - before == 1 and set(texts) == {c.query_id for c in read.counters}
    samples = await collector.read_query_samples(10)
    assert samples.statements == 1 and samples.errors == ()
    assert collector.client.backend_pid == pid
    assert dbintel_connections(postgres_server) == connections
    assert monitor_calls(postgres_server) - calls == 3  # nothing behind the count (no asyncpg type introspection)
    assert str(pid) not in {s.session_id for s in samples.sessions}  # our own backend is left out
    assert await collector.fetch_statement_texts([]) == {}
    assert collector.client.statements - before == 2  # no statement for no ids


async def wait_for_lock_wait(collector: PostgresqlCollector, pid: int) -> tuple[ActiveSession, ...]:
    """Samples until session `pid` waits on a lock (bounded: the wait is an event the server shows)."""
    deadline = time.monotonic() + 10
    while True:
        read = await collector.read_query_samples(100)
        assert read.errors == ()
        if any(s.session_id == str(pid) and s.wait_event_type == "Lock" for s in read.sessions):
            return read.sessions
        assert time.monotonic() < deadline, f"session {pid} never waited on a lock"
        await asyncio.sleep(0.05)


async def test_a_session_blocked_on_a_row_lock_shows_its_wait_and_its_blocker(
    postgres_server: PostgresServer, collector: PostgresqlCollector
):
    database = postgres_server.app_database
    holder, waiter = await superuser(postgres_server, database), await superuser(postgres_server, database)
    blocked: asyncio.Task | None = None
    try:
        await holder.execute("BEGIN")
        await holder.execute(f"UPDATE customers SET email = '{SECRET_LITERAL}' WHERE id = 1")
        blocked = asyncio.create_task(waiter.execute(f"UPDATE customers SET name = 'x {SECRET_LITERAL}' WHERE id = 1"))
        sessions = {s.session_id: s for s in await wait_for_lock_wait(collector, waiter.get_server_pid())}
    finally:
        await holder.execute("ROLLBACK")
        if blocked is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(blocked, 10)
        await holder.close()
        await waiter.close()

    waiting = sessions[str(waiter.get_server_pid())]
    assert (waiting.state, waiting.wait_event_type, waiting.wait_event) == ("active", "Lock", "transactionid")
    assert waiting.blocked_by == (str(holder.get_server_pid()),)
    assert waiting.text == "UPDATE customers SET name = ? WHERE id = ?"
    assert waiting.summary == "UPDATE customers"
    assert waiting.query_id  # compute_query_id = auto: pg_stat_statements is loaded
    assert (waiting.namespace, waiting.user) == (database, postgres_server.superuser)
    assert waiting.client_address == "127.0.0.1" and waiting.client_port
    assert waiting.duration_s is not None and waiting.duration_s >= 0
    holding = sessions[str(holder.get_server_pid())]
    assert holding.state == "idle in transaction"
    assert holding.blocked_by == ()  # not waiting on a lock: pg_blocking_pids() not called
    assert holding.text == "UPDATE customers SET email = ? WHERE id = ?"
    ordered = [s.duration_s or 0.0 for s in sessions.values()]
    assert ordered == sorted(ordered, reverse=True)  # longest-running first
    assert all(SECRET_LITERAL not in (s.text or "") for s in sessions.values())


async def test_without_the_extension_top_queries_say_once_how_to_enable_it_and_samples_flow(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
):
    database = f"qi_noext_{secrets.token_hex(3)}"
    postgres_server.execute(f"CREATE DATABASE {database} TEMPLATE template0")
    collector = make_collector(postgres_server, monkeypatch, database)
    try:
        first = await collector.read_statement_stats(10, None)
        assert first.counters == () and first.statements == 1
        (error,) = first.errors
        assert (error.query, error.reason) == ("read_statement_stats", "unsupported")
        assert "shared_preload_libraries = 'pg_stat_statements'" in error.message
        assert "CREATE EXTENSION pg_stat_statements" in error.message
        second = await collector.read_statement_stats(10, None)
        assert second.errors == () and second.statements == 0  # reported once, then held back quietly
        samples = await collector.read_query_samples(10)
        assert samples.errors == () and samples.statements == 1
        assert collector.client.connected
    finally:
        await collector.close()
        postgres_server.execute(f"DROP DATABASE {database} WITH (FORCE)")


class UnloadedStatementsServer(PostgresServer):
    """The test PostgreSQL with pg_stat_statements created (CREATE EXTENSION works) but not preloaded."""

    def _command(self) -> list[str]:
        command = super()._command()
        at = command.index("shared_preload_libraries=pg_stat_statements")
        return command[: at - 1] + command[at + 1 :]  # without that "-c setting" pair


async def test_an_extension_created_but_not_preloaded_is_a_refusal_that_names_the_setting(
    monkeypatch: pytest.MonkeyPatch,
):
    with UnloadedStatementsServer() as server:
        collector = make_collector(server, monkeypatch, server.app_database)
        try:
            first = await collector.read_statement_stats(10, None)
            (error,) = first.errors
            assert (error.query, error.reason) == ("read_statement_stats", "unsupported")
            assert error.message.startswith("ObjectNotInPrerequisiteStateError: pg_stat_statements must be loaded")
            assert "shared_preload_libraries = 'pg_stat_statements'" in error.message
            assert await collector.fetch_statement_texts(["1"]) == {}
            assert (await collector.read_statement_stats(10, None)).errors == ()  # once
            samples = await collector.read_query_samples(10)
            assert samples.errors == () and samples.statements == 1
        finally:
            await collector.close()
