"""The PostgreSQL collector against the real PostgreSQL 15 of the `postgres_server` fixture."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from dbintel.agent.collectors.metric_table import CollectionResult
from dbintel.agent.collectors.postgresql import SLOW_REFRESH, TABLE, PostgresqlCollector
from dbintel.common.config import DatabaseConfig
from dbintel.common.secrets import resolve_secret
from tests.servers import PostgresServer

pytestmark = pytest.mark.integration

TESTS = Path(__file__).resolve().parents[1]
REFERENCE = TESTS / "reference" / "metrics" / "postgresql.tsv"
GOLDEN = TESTS / "golden" / "postgresql_series.txt"
PASSWORD_ENV = "DBINTEL_TEST_PG_PASSWORD"
SIZE_QUERIES = {"pg_database_size": 1, "pg_relation_size": 2}  # text marker -> statements carrying it per slow round


def default_reference_rows() -> list[dict[str, str]]:
    with REFERENCE.open(newline="") as handle:
        return [row for row in csv.DictReader(handle, delimiter="\t") if row["enabled_by_default"] == "true"]


def make_collector(server: PostgresServer, monkeypatch: pytest.MonkeyPatch, *, database: str = "dbintel_app",
                   user: str | None = None, password: str | None = None, enabled: frozenset[str] | None = None,
                   clock=time.monotonic) -> PostgresqlCollector:
    """A collector configured as a user would: the password is an ${env:…} reference resolved on the agent."""
    monkeypatch.setenv(PASSWORD_ENV, server.monitor_password if password is None else password)
    config = DatabaseConfig(name="pg-test", type="postgresql", endpoint=server.address,
                            username=user or server.monitor_user, password=f"${{env:{PASSWORD_ENV}}}",
                            database=database)
    return PostgresqlCollector(config, password=resolve_secret(config.password),
                               enabled=TABLE.enabled() if enabled is None else enabled, clock=clock)


@pytest.fixture
async def collector(postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch):
    collector = make_collector(postgres_server, monkeypatch)
    yield collector
    await collector.close()


def monitor_calls(server: PostgresServer, marker: str = "") -> int:
    """Statements the monitoring role executed, from pg_stat_statements (optionally those containing `marker`)."""
    rows = server.execute(
        "SELECT coalesce(sum(s.calls), 0) FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid "
        f"WHERE r.rolname = '{server.monitor_user}' AND s.query LIKE '%{marker}%'")
    return int(rows[0][0])


def series(result: CollectionResult) -> dict[str, list]:
    found: dict[str, list] = {}
    for sample in result.samples:
        found.setdefault(sample.spec.name, []).append(sample)
    return found


@contextlib.contextmanager
def wal_receiver(server: PostgresServer, directory: Path) -> Iterator[None]:
    """pg_receivewal streaming from the server over TCP: a walsender in pg_stat_replication (no replay)."""
    env = {**os.environ, "PGPASSWORD": server.superuser_password}
    process = subprocess.Popen(
        [str(server.bin_dir / "pg_receivewal"), "-h", server.host, "-p", str(server.port), "-U", server.superuser,
         "-D", str(directory), "--synchronous", "-s", "1", "-n", "-w"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while True:  # commit something, so the walsender measures write/flush lag from the receiver's replies
            rows = server.execute("SELECT txid_current();\n"
                                  "SELECT count(*) FROM pg_stat_replication "
                                  "WHERE client_addr IS NOT NULL AND write_lag IS NOT NULL AND flush_lag IS NOT NULL;")
            if int(rows[-1][0]) > 0:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"pg_receivewal did not stream: {process.stderr.read().decode()[-500:]}")
            time.sleep(0.2)
        yield
    finally:
        process.terminate()
        process.wait(timeout=10)


async def collect_with_a_wal_receiver(collector: PostgresqlCollector, server: PostgresServer,
                                      tmp_path: Path) -> CollectionResult:
    with wal_receiver(server, tmp_path):
        return await collector.collect()


# --- coverage -----------------------------------------------------------------------------------
async def test_every_default_metric_is_emitted_as_declared(postgres_server: PostgresServer,
                                                           collector: PostgresqlCollector, tmp_path: Path) -> None:
    result = await collect_with_a_wal_receiver(collector, postgres_server, tmp_path)
    assert result.up and result.errors == []
    found = series(result)
    archived = postgres_server.execute("SELECT last_archived_time IS NOT NULL FROM pg_stat_archiver")[0][0] == "t"
    replayed = postgres_server.execute("SELECT count(*) FROM pg_stat_replication WHERE replay_lsn IS NOT NULL")
    conditional = {"postgresql.wal.age": archived,  # the fixture does not archive WAL
                   "postgresql.replication.data_delay": int(replayed[0][0]) > 0}  # pg_receivewal never replays
    for row in default_reference_rows():
        name = row["metric_name"]
        assert bool(found.get(name)) == conditional.get(name, True), name
        for sample in found.get(name, []):
            spec = sample.spec
            assert spec is TABLE[name]
            assert (spec.type, spec.unit, spec.monotonic) == (row["type"], row["unit"], row["monotonic"] == "true")
            assert len(sample.attributes) == len(spec.attributes)
            assert all(isinstance(value, str) and value for value in sample.attributes), sample
    for beyond in ("postgresql.connection.count", "postgresql.transaction.oldest_age",
                   "postgresql.recovery.active", "postgresql.database.frozen_xid_age"):
        assert found[beyond], beyond


async def test_values_match_the_server(postgres_server: PostgresServer, collector: PostgresqlCollector,
                                       tmp_path: Path) -> None:
    result = await collect_with_a_wal_receiver(collector, postgres_server, tmp_path)
    values = {(s.spec.name, s.attributes): s.value for s in result.samples}
    app = ("dbintel_app", "dbintel_app")
    orders = ("dbintel_app|public", "orders", "dbintel_app", "public", "public.orders")
    live, dead, inserted, deleted, vacuums = postgres_server.execute(
        "SELECT n_live_tup, n_dead_tup, n_tup_ins, n_tup_del, vacuum_count FROM pg_stat_user_tables "
        "WHERE relname = 'orders'", database="dbintel_app")[0]
    assert values[("postgresql.rows", ("live",) + orders)] == int(live) > 0
    assert values[("postgresql.rows", ("dead",) + orders)] == int(dead)
    assert values[("postgresql.operations", ("ins",) + orders)] == int(inserted) >= 500
    assert values[("postgresql.operations", ("del",) + orders)] == int(deleted) >= 50
    assert values[("postgresql.table.vacuum.count", orders)] == int(vacuums) >= 1
    tables = postgres_server.execute("SELECT count(*) FROM pg_stat_user_tables", database="dbintel_app")[0][0]
    assert values[("postgresql.table.count", app)] == int(tables)
    assert values[("postgresql.index.scans", ("dbintel_app|public", "orders", "orders_customer_id_idx",
                                               "dbintel_app", "public", "orders"))] >= 1
    assert values[("postgresql.index.size", ("dbintel_app|public", "customers", "customers_pkey",
                                              "dbintel_app", "public", "customers"))] >= 8192
    size = postgres_server.execute("SELECT pg_database_size('dbintel_app')")[0][0]
    assert abs(values[("postgresql.db_size", app)] - int(size)) <= 1 << 20
    databases = postgres_server.execute("SELECT count(*) FROM pg_database WHERE NOT datistemplate")[0][0]
    assert values[("postgresql.database.count", ())] == int(databases)
    assert values[("postgresql.connection.max", ())] == 100
    assert values[("postgresql.recovery.active", ())] == 0
    assert values[("postgresql.backends", app)] >= 1  # our own connection
    assert values[("postgresql.connection.count", ("active",))] >= 1
    assert ("postgresql.wal.lag", ("write", "127.0.0.1/32")) in values
    assert ("postgresql.wal.lag", ("flush", "127.0.0.1/32")) in values


# --- cost ---------------------------------------------------------------------------------------
async def test_at_most_five_statements_on_one_connection(postgres_server: PostgresServer,
                                                         collector: PostgresqlCollector) -> None:
    before = monitor_calls(postgres_server)
    first = await collector.collect()  # connects, slow round (sizes)
    after_first = monitor_calls(postgres_server)
    pid = collector.client.backend_pid
    second = await collector.collect()
    after_second = monitor_calls(postgres_server)
    assert first.up and second.up
    assert first.statements == after_first - before <= 5  # the server saw exactly what we counted
    assert second.statements == after_second - after_first <= 5
    assert pid is not None and collector.client.backend_pid == pid
    pids = postgres_server.execute(
        f"SELECT pid FROM pg_stat_activity WHERE usename = '{postgres_server.monitor_user}' "
        "AND application_name = 'dbintel'")
    assert (str(pid),) in pids


async def test_queries_of_disabled_metrics_are_not_sent(postgres_server: PostgresServer,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    collector = make_collector(postgres_server, monkeypatch, enabled=frozenset({"postgresql.connection.max"}))
    try:
        result = await collector.collect()
    finally:
        await collector.close()
    assert result.statements == 1
    assert [(s.spec.name, s.value) for s in result.samples] == [("postgresql.connection.max", 100)]


async def test_sizes_refresh_on_the_slow_schedule(postgres_server: PostgresServer,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    collector = make_collector(postgres_server, monkeypatch, clock=lambda: now[0])

    def size_calls() -> dict[str, int]:
        return {marker: monitor_calls(postgres_server, marker) for marker in SIZE_QUERIES}

    def sizes(result: CollectionResult) -> dict:
        return {(s.spec.name, s.attributes): s.value for s in result.samples
                if s.spec.name in ("postgresql.db_size", "postgresql.table.size", "postgresql.index.size")}

    try:
        start = size_calls()
        first = await collector.collect()
        assert size_calls() == {m: start[m] + n for m, n in SIZE_QUERIES.items()}
        now[0] += SLOW_REFRESH - 1
        cached = await collector.collect()
        assert size_calls() == {m: start[m] + n for m, n in SIZE_QUERIES.items()}  # no size query
        assert sizes(cached) == sizes(first) and len(sizes(first)) >= 5  # re-emitted from the cache
        assert first.statements == cached.statements == 5
        now[0] += 1
        refreshed = await collector.collect()
        assert size_calls() == {m: start[m] + 2 * n for m, n in SIZE_QUERIES.items()}
        assert sizes(refreshed).keys() == sizes(first).keys()
    finally:
        await collector.close()


# --- failures -----------------------------------------------------------------------------------
async def test_wrong_password_is_down_and_never_shows_a_password(postgres_server: PostgresServer,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = "wrong-" + secrets.token_hex(8)
    collector = make_collector(postgres_server, monkeypatch, password=wrong)
    try:
        result = await collector.collect()
    finally:
        await collector.close()
    assert not result.up and result.samples == [] and result.statements == 0
    [error] = result.errors
    assert error.reason == "connection" and "authentication failed" in error.message
    assert wrong not in error.message and postgres_server.monitor_password not in error.message


async def test_unreadable_view_is_a_permission_error_and_the_rest_flows(postgres_server: PostgresServer,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    database = "dbintel_pg_noperm"
    postgres_server.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE);\nCREATE DATABASE {database};")
    postgres_server.execute("CREATE TABLE notes (id int PRIMARY KEY, body text);\n"
                            "REVOKE SELECT ON pg_catalog.pg_statio_user_tables FROM PUBLIC;", database=database)
    collector = make_collector(postgres_server, monkeypatch, database=database)
    try:
        result = await collector.collect()
    finally:
        await collector.close()
        postgres_server.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE);")
    assert result.up and result.statements == 5
    [error] = result.errors
    assert error.query == "fetch_table_stats" and error.reason == "permission"
    assert "pg_statio_user_tables" in error.message
    assert f"grant pg_monitor to {postgres_server.monitor_user}" in error.message
    found = series(result)
    assert "postgresql.rows" not in found and "postgresql.table.count" not in found
    assert ("dbintel_pg_noperm|public", "notes", "notes_pkey", database, "public", "notes") in \
        {s.attributes for s in found["postgresql.index.scans"]}
    assert found["postgresql.commits"] and found["postgresql.bgwriter.checkpoint.count"]


async def test_withheld_database_size_is_reported_and_other_sizes_flow(postgres_server: PostgresServer,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    role, password, private = "dbintel_pg_plain", secrets.token_hex(12), "dbintel_pg_private"
    postgres_server.execute(
        f"DROP DATABASE IF EXISTS {private} WITH (FORCE);\nDROP ROLE IF EXISTS {role};\n"
        f"CREATE ROLE {role} LOGIN PASSWORD '{password}';\nCREATE DATABASE {private};\n"
        f"REVOKE CONNECT ON DATABASE {private} FROM PUBLIC;")
    collector = make_collector(postgres_server, monkeypatch, database="postgres", user=role, password=password)
    try:
        result = await collector.collect()
    finally:
        await collector.close()
        postgres_server.execute(f"DROP DATABASE IF EXISTS {private} WITH (FORCE);\nDROP ROLE IF EXISTS {role};")
    assert result.up
    [error] = result.errors
    assert error.query == "fetch_database_stats" and error.reason == "permission"
    assert private in error.message and role in error.message and password not in error.message
    sized = {s.attributes[0] for s in series(result)["postgresql.db_size"]}
    assert "dbintel_app" in sized and "postgres" in sized and private not in sized
    assert private in {s.attributes[0] for s in series(result)["postgresql.commits"]}


async def test_a_terminated_backend_is_replaced(postgres_server: PostgresServer,
                                                collector: PostgresqlCollector) -> None:
    assert (await collector.collect()).up
    old_pid = collector.client.backend_pid
    postgres_server.execute(f"SELECT pg_terminate_backend({old_pid});")
    result = await collector.collect()
    if not result.up:  # the loss was noticed mid-collection: reported as a connection error
        assert result.errors[-1].reason == "connection"
        result = await collector.collect()
    assert result.up and result.errors == [] and result.statements == 5
    assert collector.client.backend_pid not in (None, old_pid)


async def test_a_cancelled_collection_leaves_the_collector_usable(postgres_server: PostgresServer,
                                                                  collector: PostgresqlCollector) -> None:
    assert (await collector.collect()).up
    locker = await asyncpg.connect(host=postgres_server.host, port=postgres_server.port,
                                   user=postgres_server.superuser, password=postgres_server.superuser_password,
                                   database="dbintel_app")
    try:
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("LOCK TABLE pg_catalog.pg_class IN ACCESS EXCLUSIVE MODE")  # the table query waits
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(collector.collect(), timeout=1.0)  # the scheduler's timeout
        await transaction.rollback()
    finally:
        await locker.close()
    result = await collector.collect()
    assert result.up and result.errors == [] and result.statements == 5


# --- golden -------------------------------------------------------------------------------------
async def test_golden_series(postgres_server: PostgresServer, collector: PostgresqlCollector, tmp_path: Path) -> None:
    result = await collect_with_a_wal_receiver(collector, postgres_server, tmp_path)
    lines = sorted({f"{s.spec.prometheus_name}{{{','.join(s.spec.label_names)}}}" for s in result.samples
                    if s.spec.enabled_by_default})
    text = "\n".join(lines) + "\n"
    if os.environ.get("DBINTEL_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert GOLDEN.read_text() == text
