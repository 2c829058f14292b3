"""The MySQL collector against the real MariaDB 10.11 of the `mariadb_server` fixture.

A replica is simulated by pointing a named replication connection of the fixture server at a
closed port: SHOW ALL SLAVES STATUS then lists a real channel whose IO thread fails to connect
(Last_IO_Errno 2003) while its SQL thread runs — the replica error state, end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import secrets
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiomysql
import pytest

from dbintel.agent.collectors.metric_table import CollectionResult
from dbintel.agent.collectors.mysql import SLOW_REFRESH, TABLE, MysqlCollector
from dbintel.agent.collectors.mysql.mapping import STATUS_VARIABLES
from dbintel.agent.collectors.mysql.metrics import MARIADB
from dbintel.common.config import DatabaseConfig
from dbintel.common.secrets import resolve_secret
from tests.servers import MariaDBServer, free_port

pytestmark = pytest.mark.integration

TESTS = Path(__file__).resolve().parents[1]
REFERENCE = TESTS / "reference" / "metrics" / "mysql.tsv"
GOLDEN = TESTS / "golden" / "mysql_series.txt"
CAPTURED_STATUS = TESTS / "unit" / "data" / "mysql_mariadb_10_11_global_status.tsv"
CAPTURED_REPLIES = TESTS / "unit" / "data" / "mysql_mariadb_10_11_replies.json"
PASSWORD_ENV = "DBINTEL_TEST_MYSQL_PASSWORD"
ALL = TABLE.enabled(dict.fromkeys(TABLE.by_name, True))
CHANNEL = "dbintel_probe"
ON_MARIADB = {spec.name for spec in TABLE if MARIADB in spec.verified_on}


def default_reference_rows() -> list[dict[str, str]]:
    with REFERENCE.open(newline="") as handle:
        return [row for row in csv.DictReader(handle, delimiter="\t") if row["enabled_by_default"] == "true"]


def make_collector(
    server: MariaDBServer,
    monkeypatch: pytest.MonkeyPatch,
    *,
    user: str | None = None,
    password: str | None = None,
    enabled: frozenset[str] | None = None,
    clock=time.monotonic,
) -> MysqlCollector:
    """A collector configured as a user would: the password is an ${env:…} reference resolved on the agent."""
    monkeypatch.setenv(PASSWORD_ENV, server.monitor_password if password is None else password)
    config = DatabaseConfig(
        name="mysql-test",
        type="mysql",
        endpoint=server.address,
        username=user or server.monitor_user,
        password=f"${{env:{PASSWORD_ENV}}}",
    )
    return MysqlCollector(
        config,
        password=resolve_secret(config.password),
        enabled=TABLE.enabled() if enabled is None else enabled,
        clock=clock,
    )


@pytest.fixture
async def collector(mariadb_server: MariaDBServer, monkeypatch: pytest.MonkeyPatch):
    collector = make_collector(mariadb_server, monkeypatch)
    yield collector
    await collector.close()


def series(result: CollectionResult) -> dict[str, list]:
    found: dict[str, list] = {}
    for sample in result.samples:
        found.setdefault(sample.spec.name, []).append(sample)
    return found


def values(result: CollectionResult) -> dict[tuple[str, tuple[str, ...]], float]:
    return {(s.spec.name, s.attributes): s.value for s in result.samples}


def workload(server: MariaDBServer) -> None:
    """Row traffic on dbintel_app.orders, so performance_schema has I/O waits and digests (also after a restart)."""
    server.execute(
        "INSERT INTO orders (customer_id, amount) VALUES (7, 1.5), (8, 2.5);\n"
        "UPDATE orders SET status = 'shipped' WHERE customer_id = 8;\n"
        "SELECT count(*) FROM orders WHERE customer_id = 7;\n"
        "DELETE FROM orders WHERE customer_id = 8 AND status = 'shipped';",
        database="dbintel_app",
    )


async def monitor_rows(server: MariaDBServer, sql: str) -> list[dict[str, Any]]:
    conn = await aiomysql.connect(
        host=server.host, port=server.port, user=server.monitor_user, password=server.monitor_password, autocommit=True
    )
    try:
        async with conn.cursor(aiomysql.DictCursor) as cursor:
            await cursor.execute(sql)
            return list(await cursor.fetchall())
    finally:
        conn.close()


@contextlib.asynccontextmanager
async def fake_replica(server: MariaDBServer) -> AsyncIterator[None]:
    """A named replication connection to a closed port: its IO thread fails (2003), its SQL thread runs."""
    server.execute(
        f"CHANGE MASTER '{CHANNEL}' TO MASTER_HOST='127.0.0.1', MASTER_PORT={free_port()}, "
        f"MASTER_USER='dbintel_nobody', MASTER_CONNECT_RETRY=1;\nSTART SLAVE '{CHANNEL}';"
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            rows = await monitor_rows(server, "SHOW ALL SLAVES STATUS")
            if any(r["Connection_name"] == CHANNEL and r["Last_IO_Errno"] for r in rows):
                break
            assert time.monotonic() < deadline, f"replica IO thread never failed: {rows}"
            await asyncio.sleep(0.2)
        yield
    finally:
        server.execute(f"STOP SLAVE '{CHANNEL}';\nRESET SLAVE '{CHANNEL}' ALL;")


def thread_statements(server: MariaDBServer, connection_id: int) -> int:
    """Statements the server executed for one connection, from performance_schema (counted from outside)."""
    rows = server.execute(
        "SELECT COALESCE(SUM(s.COUNT_STAR), 0) "
        "FROM performance_schema.events_statements_summary_by_thread_by_event_name s "
        f"JOIN performance_schema.threads t USING (THREAD_ID) WHERE t.PROCESSLIST_ID = {connection_id}"
    )
    return int(rows[0][0])


def global_status(server: MariaDBServer, name: str) -> int:
    return int(server.execute(f"SHOW GLOBAL STATUS LIKE '{name}'")[0][1])


# --- coverage -----------------------------------------------------------------------------------
async def test_every_default_metric_is_emitted_as_declared(
    mariadb_server: MariaDBServer, collector: MysqlCollector
) -> None:
    workload(mariadb_server)
    async with fake_replica(mariadb_server):
        result = await collector.collect()
    assert result.up and result.errors == []
    found = series(result)
    rows = default_reference_rows()
    assert len(rows) == 25
    for row in rows:
        name = row["metric_name"]
        # Mysqlx_* (no X Plugin) and Innodb_rows_* are not exported by MariaDB: absent, and no error.
        assert bool(found.get(name)) == (name in ON_MARIADB), name
        for sample in found.get(name, []):
            spec = sample.spec
            assert spec is TABLE[name]
            assert (spec.type, spec.unit, spec.monotonic) == (row["type"], row["unit"], row["monotonic"] == "true")
            assert len(sample.attributes) == len(spec.attributes)
            assert all(isinstance(value, str) and value for value in sample.attributes), sample
    for beyond in (s.name for s in TABLE if s.tier == "beyond"):
        assert found[beyond], beyond
    assert all(TABLE[name].enabled_by_default for name in found)  # optional metrics only when enabled


async def test_every_metric_verified_on_mariadb_is_emitted_when_enabled(
    mariadb_server: MariaDBServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    workload(mariadb_server)
    collector = make_collector(mariadb_server, monkeypatch, enabled=ALL)
    try:
        async with fake_replica(mariadb_server):
            result = await collector.collect()
    finally:
        await collector.close()
    assert result.up and result.errors == [] and result.statements == 5
    assert set(series(result)) == ON_MARIADB
    for sample in result.samples:
        assert len(sample.attributes) == len(sample.spec.attributes), sample


async def test_values_match_the_server(mariadb_server: MariaDBServer, monkeypatch: pytest.MonkeyPatch) -> None:
    workload(mariadb_server)
    collector = make_collector(mariadb_server, monkeypatch, enabled=ALL)
    try:
        async with fake_replica(mariadb_server):
            result = await collector.collect()
    finally:
        await collector.close()
    found = values(result)
    pool, max_connections, log_file = mariadb_server.execute(
        "SELECT @@innodb_buffer_pool_size, @@max_connections, @@innodb_log_file_size"
    )[0]
    assert found[("mysql.buffer_pool.limit", ())] == int(pool)
    assert found[("mysql.connection.max", ())] == int(max_connections)
    assert found[("mysql.innodb.redo_log.capacity", ())] == int(log_file)
    assert (
        0
        < found[("mysql.connection.utilization", ())]
        == found[("mysql.threads", ("connected",))] / int(max_connections)
    )
    inserted, fetched_by_index = mariadb_server.execute(
        "SELECT t.COUNT_INSERT, i.COUNT_FETCH FROM performance_schema.table_io_waits_summary_by_table t "
        "JOIN performance_schema.table_io_waits_summary_by_index_usage i USING (OBJECT_SCHEMA, OBJECT_NAME) "
        "WHERE OBJECT_SCHEMA = 'dbintel_app' AND OBJECT_NAME = 'orders' AND i.INDEX_NAME = 'orders_customer_id_idx'"
    )[0]
    assert found[("mysql.table.io.wait.count", ("insert", "orders", "dbintel_app"))] == int(inserted) >= 2
    assert (
        found[("mysql.index.io.wait.count", ("fetch", "orders", "dbintel_app", "orders_customer_id_idx"))]
        == int(fetched_by_index)
        >= 1
    )
    assert found[("mysql.table.io.wait.time", ("insert", "orders", "dbintel_app"))] > 0
    assert ("mysql.index.io.wait.count", ("insert", "orders", "dbintel_app", "NONE")) in found
    table_rows = mariadb_server.execute(
        "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'dbintel_app' AND TABLE_NAME = 'orders'"
    )[0][0]
    assert found[("mysql.table.rows", ("orders", "dbintel_app"))] == int(table_rows) > 0
    assert found[("mysql.table.size", ("orders", "dbintel_app", "data"))] >= 16384
    assert found[("mysql.replica.thread.running", ("io", CHANNEL))] == 0  # Connecting
    assert found[("mysql.replica.thread.running", ("sql", CHANNEL))] == 1
    assert found[("mysql.replica.thread.last_error", ("io", CHANNEL))] == 2003  # can't connect to the source
    assert found[("mysql.replica.thread.last_error", ("sql", CHANNEL))] == 0
    assert found[("mysql.replica.sql_delay", ())] == 0
    assert ("mysql.replica.time_behind_source", ()) not in found  # NULL while the IO thread is not running
    digests = {s.attributes[2]: s.value for s in series(result)["mysql.statement_event.wait.time"]}
    assert digests["UPDATE `orders` SET STATUS = ? WHERE `customer_id` = ? "] > 0  # the workload's, normalised
    assert found[("mysql.innodb.transaction.active.count", ())] == 0


# --- cost ---------------------------------------------------------------------------------------
async def test_at_most_five_statements_on_one_reused_connection(
    mariadb_server: MariaDBServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector = make_collector(mariadb_server, monkeypatch, enabled=ALL)  # every query, the worst case
    try:
        assert (await collector.collect()).up
        connection_id = collector.client.connection_id
        assert connection_id is not None
        seen = thread_statements(mariadb_server, connection_id)
        threads = global_status(mariadb_server, "Threads_connected")
        connections = global_status(mariadb_server, "Connections")
        counted = []
        for _ in range(3):
            result = await collector.collect()
            assert result.up and result.errors == []
            counted.append(result.statements)
        # Each reading is a mariadb client connection of its own: the next one counts itself, nothing else.
        assert global_status(mariadb_server, "Connections") - connections == 1
        assert global_status(mariadb_server, "Threads_connected") == threads
        assert thread_statements(mariadb_server, connection_id) - seen == sum(counted)  # the server saw what we counted
        assert all(n <= 5 for n in counted) and counted == [4, 4, 4]  # the catalog waits for its slow round
        assert collector.client.connection_id == connection_id
    finally:
        await collector.close()


async def test_default_collection_sends_four_then_three_statements(collector: MysqlCollector) -> None:
    first, second = await collector.collect(), await collector.collect()
    assert (first.statements, second.statements) == (4, 3)  # catalog, status, performance_schema, replica


async def test_queries_of_disabled_metrics_are_not_sent(
    mariadb_server: MariaDBServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector = make_collector(mariadb_server, monkeypatch, enabled=frozenset({"mysql.uptime"}))
    try:
        result = await collector.collect()
    finally:
        await collector.close()
    assert result.statements == 1
    assert [s.spec.name for s in result.samples] == ["mysql.uptime"]


async def test_catalog_refreshes_on_the_slow_schedule(
    mariadb_server: MariaDBServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    enabled = frozenset({"mysql.uptime", "mysql.buffer_pool.limit", "mysql.table.size"})
    collector = make_collector(mariadb_server, monkeypatch, enabled=enabled, clock=lambda: now[0])

    def cached(result: CollectionResult) -> dict:
        return {k: v for k, v in values(result).items() if k[0] != "mysql.uptime"}

    try:
        first = await collector.collect()
        now[0] += SLOW_REFRESH - 1
        between = await collector.collect()
        now[0] += 1
        refreshed = await collector.collect()
    finally:
        await collector.close()
    assert (first.statements, between.statements, refreshed.statements) == (2, 1, 2)
    assert cached(between) == cached(first)  # re-emitted from the cache
    assert ("mysql.table.size", ("orders", "dbintel_app", "index")) in cached(first)
    assert cached(refreshed).keys() == cached(first).keys()


# --- failures -----------------------------------------------------------------------------------
async def test_wrong_password_is_down_and_never_shows_a_password(
    mariadb_server: MariaDBServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "wrong-" + secrets.token_hex(8)
    collector = make_collector(mariadb_server, monkeypatch, password=wrong)
    try:
        result = await collector.collect()
    finally:
        await collector.close()
    assert not result.up and result.samples == [] and result.statements == 0
    [error] = result.errors
    assert error.reason == "connection" and "1045 Access denied" in error.message
    assert wrong not in error.message and mariadb_server.monitor_password not in error.message


async def test_tls_is_never_silently_dropped(mariadb_server: MariaDBServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, mariadb_server.monitor_password)
    config = DatabaseConfig(
        name="mysql-tls",
        type="mysql",
        endpoint=mariadb_server.address,
        username=mariadb_server.monitor_user,
        password=f"${{env:{PASSWORD_ENV}}}",
        tls={"enabled": True, "insecure_skip_verify": True},
    )
    collector = MysqlCollector(config, password=resolve_secret(config.password), enabled=TABLE.enabled())
    logins = (
        f"SELECT COALESCE(SUM(TOTAL_CONNECTIONS), 0) FROM performance_schema.accounts "
        f"WHERE USER = '{mariadb_server.monitor_user}'"
    )
    before = mariadb_server.execute(logins)
    try:
        result = await collector.collect()  # the fixture server has no certificate (have_ssl DISABLED)
    finally:
        await collector.close()
    assert not result.up and result.statements == 0
    [error] = result.errors
    assert error.reason == "connection" and "does not offer TLS" in error.message
    assert mariadb_server.execute(logins) == before  # hung up before authenticating: no session was opened


async def test_missing_grants_are_reported_once_with_the_grant_and_the_rest_flows(
    mariadb_server: MariaDBServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, password = "dbintel_lowpriv", secrets.token_hex(12)
    account = f"'{user}'@'%'"
    mariadb_server.execute(f"DROP USER IF EXISTS {account};\nCREATE USER {account} IDENTIFIED BY '{password}';")
    now = [1000.0]
    collector = make_collector(
        mariadb_server, monkeypatch, user=user, password=password, enabled=ALL, clock=lambda: now[0]
    )
    try:
        first = await collector.collect()
        second = await collector.collect()
        mariadb_server.execute(f"GRANT PROCESS ON *.* TO {account};")
        old_connection = collector.client.connection_id
        now[0] += SLOW_REFRESH
        after_grant = await collector.collect()
        new_connection = collector.client.connection_id
    finally:
        await collector.close()
        mariadb_server.execute(f"DROP USER IF EXISTS {account};")
    assert first.up and first.statements == 5
    grants = {error.query: error.message for error in first.errors}
    assert {error.reason for error in first.errors} == {"permission"}
    assert grants.keys() == {"fetch_innodb", "fetch_performance_schema", "fetch_replica_status"}
    assert grants["fetch_innodb"].endswith(f"run: GRANT PROCESS ON *.* TO {account}")
    assert grants["fetch_performance_schema"].endswith(f"run: GRANT SELECT ON performance_schema.* TO {account}")
    assert grants["fetch_replica_status"].endswith(f"run: GRANT SLAVE MONITOR ON *.* TO {account}")
    assert all(password not in message for message in grants.values())
    assert {"mysql.threads", "mysql.uptime", "mysql.buffer_pool.limit"} <= series(first).keys()
    assert not {"mysql.table.io.wait.count", "mysql.innodb.transaction.active.count"} & series(first).keys()
    # Reported once: the refused queries are left out until their retry is due.
    assert second.up and second.errors == [] and second.statements == 1
    # The retry runs on a fresh session (global grants are read at login) and picks up PROCESS; still quiet.
    assert after_grant.errors == [] and new_connection != old_connection
    assert after_grant.statements == 5  # catalog (new connection) + status + the three retried
    assert "mysql.innodb.transaction.active.count" in series(after_grant)
    assert "mysql.table.io.wait.count" not in series(after_grant)


async def test_a_server_restart_is_survived(mariadb_server: MariaDBServer, collector: MysqlCollector) -> None:
    assert (await collector.collect()).up
    old_connection = collector.client.connection_id
    mariadb_server.restart()
    result = await collector.collect()  # the dead connection is noticed at the first statement and replaced
    assert result.up and result.errors == [], result.errors
    assert collector.client.connection_id != old_connection
    assert values(result)[("mysql.uptime", ())] < 60
    mariadb_server.stop()
    try:
        down = await collector.collect()
    finally:
        mariadb_server.start()
    assert not down.up and [e.reason for e in down.errors] == ["connection"]
    back = await collector.collect()
    assert back.up and back.errors == [] and "mysql.buffer_pool.pages" in series(back)


async def test_a_cancelled_collection_leaves_the_collector_usable(collector: MysqlCollector) -> None:
    for delay in (0.0, 0.001, 0.003, 0.01):
        task = asyncio.ensure_future(collector.collect())
        await asyncio.sleep(delay)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        result = await collector.collect()
        assert result.up and result.errors == [], (delay, result.errors)
        assert "mysql.uptime" in series(result)


# --- golden and captured shapes -----------------------------------------------------------------
async def test_golden_series(mariadb_server: MariaDBServer, collector: MysqlCollector) -> None:
    workload(mariadb_server)
    async with fake_replica(mariadb_server):
        result = await collector.collect()
    lines = sorted(
        {
            f"{s.spec.prometheus_name}{{{','.join(s.spec.label_names)}}}"
            for s in result.samples
            if s.spec.enabled_by_default
        }
    )
    text = "\n".join(lines) + "\n"
    if os.environ.get("DBINTEL_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert GOLDEN.read_text() == text


def _json_value(value: Any) -> Any:
    if isinstance(value, Decimal):  # DECIMAL columns (UNION type merging): stored as JSON numbers
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"cannot store {type(value).__name__}")


async def test_captured_replies_still_match_the_server(
    mariadb_server: MariaDBServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tests/unit/data/mysql_mariadb_10_11_* are this server's replies; DBINTEL_UPDATE_GOLDEN=1 recaptures them."""
    workload(mariadb_server)
    collector = make_collector(mariadb_server, monkeypatch, enabled=ALL)
    client = collector.client
    try:
        await client.connect()
        async with fake_replica(mariadb_server):
            replies = {
                "server_version": client._conn.get_server_info(),  # the handshake's, as the client parses it
                "catalog": await client.fetch_catalog(tables=True),
                "innodb": await client.fetch_innodb(
                    ("lock_deadlocks", "trx_rseg_history_len", "log_lsn_checkpoint_age"), transactions=True
                ),
                "performance_schema": await client.fetch_performance_schema(
                    ["table_io", "index_io", "table_lock", "digest"]
                ),
                "replica_status": await client.fetch_replica_status(),
            }
        status = await client.fetch_global_status()
    finally:
        await collector.close()
    full_status = {
        row["Variable_name"]: row["Value"] for row in await monitor_rows(mariadb_server, "SHOW GLOBAL STATUS")
    }
    assert status.keys() == STATUS_VARIABLES & full_status.keys()  # the client's WHERE filter loses nothing
    if os.environ.get("DBINTEL_UPDATE_GOLDEN") == "1":
        CAPTURED_STATUS.write_text("".join(f"{name}\t{value}\n" for name, value in full_status.items()))
        CAPTURED_REPLIES.write_text(json.dumps(replies, indent=1, default=_json_value) + "\n")
    captured_status = dict(line.split("\t", 1) for line in CAPTURED_STATUS.read_text().splitlines())
    captured = json.loads(CAPTURED_REPLIES.read_text())
    assert STATUS_VARIABLES & captured_status.keys() == status.keys()
    assert captured["server_version"] == replies["server_version"]
    assert captured["catalog"]["variables"].keys() == replies["catalog"]["variables"].keys()
    assert [row.keys() for row in captured["replica_status"]] == [row.keys() for row in replies["replica_status"]]
    for source, rows in replies["performance_schema"].items():
        assert captured["performance_schema"][source] and rows, source
        assert captured["performance_schema"][source][0].keys() == rows[0].keys()
