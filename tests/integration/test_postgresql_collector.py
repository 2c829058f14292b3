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


def make_collector(
    server: PostgresServer,
    monkeypatch: pytest.MonkeyPatch,
    *,
    database: str = "dbintel_app",
    user: str | None = None,
    password: str | None = None,
    enabled: frozenset[str] | None = None,
    clock=time.monotonic,
) -> PostgresqlCollector:
    """A collector configured as a user would: the password is an ${env:…} reference resolved on the agent."""
    monkeypatch.setenv(PASSWORD_ENV, server.monitor_password if password is None else password)
    config = DatabaseConfig(
        name="pg-test",
        type="postgresql",
        endpoint=server.address,
        username=user or server.monitor_user,
        password=f"${{env:{PASSWORD_ENV}}}",
        database=database,
    )
    return PostgresqlCollector(
        config,
        password=resolve_secret(config.password),
        enabled=TABLE.enabled() if enabled is None else enabled,
        clock=clock,
    )


@pytest.fixture
async def collector(postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch):
    collector = make_collector(postgres_server, monkeypatch)
    yield collector
    await collector.close()


def monitor_calls(server: PostgresServer, marker: str = "") -> int:
    """Statements the monitoring role executed, from pg_stat_statements (optionally those containing `marker`)."""
    rows = server.execute(
        "SELECT coalesce(sum(s.calls), 0) FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid "
        f"WHERE r.rolname = '{server.monitor_user}' AND s.query LIKE '%{marker}%'"
    )
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
        [
            str(server.bin_dir / "pg_receivewal"),
            "-h",
            server.host,
            "-p",
            str(server.port),
            "-U",
            server.superuser,
            "-D",
            str(directory),
            "--synchronous",
            "-s",
            "1",
            "-n",
            "-w",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while True:  # commit something, so the walsender measures write/flush lag from the receiver's replies
            rows = server.execute(
                "SELECT txid_current();\n"
                "SELECT count(*) FROM pg_stat_replication "
                "WHERE client_addr IS NOT NULL AND write_lag IS NOT NULL AND flush_lag IS NOT NULL;"
            )
            if int(rows[-1][0]) > 0:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"pg_receivewal did not stream: {process.stderr.read().decode()[-500:]}")
            time.sleep(0.2)
        yield
    finally:
        process.terminate()
        process.wait(timeout=10)


async def collect_with_a_wal_receiver(
    collector: PostgresqlCollector, server: PostgresServer, tmp_path: Path
) -> CollectionResult:
    with wal_receiver(server, tmp_path):
        return await collector.collect()


@contextlib.contextmanager
def replication_slot(server: PostgresServer, name: str) -> Iterator[None]:
    """A physical slot that reserves WAL at once (so its retained WAL is measurable), dropped afterwards."""
    server.execute(f"SELECT pg_create_physical_replication_slot('{name}', true);")
    try:
        yield
    finally:
        server.execute(f"SELECT pg_drop_replication_slot('{name}');")


# --- coverage -----------------------------------------------------------------------------------
async def test_every_default_metric_is_emitted_as_declared(
    postgres_server: PostgresServer, collector: PostgresqlCollector, tmp_path: Path
) -> None:
    result = await collect_with_a_wal_receiver(collector, postgres_server, tmp_path)
    assert result.up and result.errors == []
    found = series(result)
    archived = postgres_server.execute("SELECT last_archived_time IS NOT NULL FROM pg_stat_archiver")[0][0] == "t"
    replayed = postgres_server.execute("SELECT count(*) FROM pg_stat_replication WHERE replay_lsn IS NOT NULL")
    conditional = {
        "postgresql.wal.age": archived,  # the fixture does not archive WAL
        "postgresql.replication.data_delay": int(replayed[0][0]) > 0,
    }  # pg_receivewal never replays
    for row in default_reference_rows():
        name = row["metric_name"]
        assert bool(found.get(name)) == conditional.get(name, True), name
        for sample in found.get(name, []):
            spec = sample.spec
            assert spec is TABLE[name]
            assert (spec.type, spec.unit, spec.monotonic) == (row["type"], row["unit"], row["monotonic"] == "true")
            assert len(sample.attributes) == len(spec.attributes)
            assert all(isinstance(value, str) and value for value in sample.attributes), sample
    for beyond in (
        "postgresql.connection.count",
        "postgresql.transaction.oldest_age",
        "postgresql.recovery.active",
        "postgresql.database.frozen_xid_age",
        "postgresql.table.autovacuum.count",
        "postgresql.table.autoanalyze.count",
    ):
        assert found[beyond], beyond


async def test_values_match_the_server(
    postgres_server: PostgresServer, collector: PostgresqlCollector, tmp_path: Path
) -> None:
    result = await collect_with_a_wal_receiver(collector, postgres_server, tmp_path)
    values = {(s.spec.name, s.attributes): s.value for s in result.samples}
    app = ("dbintel_app", "dbintel_app")
    orders = ("dbintel_app|public", "orders", "dbintel_app", "public", "public.orders")
    live, dead, inserted, deleted, vacuums = postgres_server.execute(
        "SELECT n_live_tup, n_dead_tup, n_tup_ins, n_tup_del, vacuum_count FROM pg_stat_user_tables "
        "WHERE relname = 'orders'",
        database="dbintel_app",
    )[0]
    assert values[("postgresql.rows", ("live",) + orders)] == int(live) > 0
    assert values[("postgresql.rows", ("dead",) + orders)] == int(dead)
    assert values[("postgresql.operations", ("ins",) + orders)] == int(inserted) >= 500
    assert values[("postgresql.operations", ("del",) + orders)] == int(deleted) >= 50
    assert values[("postgresql.table.vacuum.count", orders)] == int(vacuums) >= 1
    tables = postgres_server.execute("SELECT count(*) FROM pg_stat_user_tables", database="dbintel_app")[0][0]
    assert values[("postgresql.table.count", app)] == int(tables)
    assert (
        values[
            (
                "postgresql.index.scans",
                ("dbintel_app|public", "orders", "orders_customer_id_idx", "dbintel_app", "public", "orders"),
            )
        ]
        >= 1
    )
    assert (
        values[
            (
                "postgresql.index.size",
                ("dbintel_app|public", "customers", "customers_pkey", "dbintel_app", "public", "customers"),
            )
        ]
        >= 8192
    )
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
async def test_at_most_five_statements_on_one_connection(
    postgres_server: PostgresServer, collector: PostgresqlCollector
) -> None:
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
        "AND application_name = 'dbintel'"
    )
    assert (str(pid),) in pids


async def test_queries_of_disabled_metrics_are_not_sent(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector = make_collector(postgres_server, monkeypatch, enabled=frozenset({"postgresql.connection.max"}))
    try:
        result = await collector.collect()
    finally:
        await collector.close()
    assert result.statements == 1
    assert [(s.spec.name, s.value) for s in result.samples] == [("postgresql.connection.max", 100)]


async def test_sizes_refresh_on_the_slow_schedule(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    collector = make_collector(postgres_server, monkeypatch, clock=lambda: now[0])

    def size_calls() -> dict[str, int]:
        return {marker: monitor_calls(postgres_server, marker) for marker in SIZE_QUERIES}

    def sizes(result: CollectionResult) -> dict:
        return {
            (s.spec.name, s.attributes): s.value
            for s in result.samples
            if s.spec.name in ("postgresql.db_size", "postgresql.table.size", "postgresql.index.size")
        }

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
async def test_wrong_password_is_down_and_never_shows_a_password(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
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


async def test_unreadable_view_is_reported_once_with_the_grant_retried_and_recovers(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    database, view = "dbintel_pg_noperm", "pg_catalog.pg_statio_user_tables"
    postgres_server.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE);\nCREATE DATABASE {database};")
    postgres_server.execute(
        f"CREATE TABLE notes (id int PRIMARY KEY, body text);\nREVOKE SELECT ON {view} FROM PUBLIC;", database=database
    )
    now = [1000.0]
    collector = make_collector(postgres_server, monkeypatch, database=database, clock=lambda: now[0])
    try:
        first = await collector.collect()
        pid = collector.client.backend_pid
        now[0] += 1
        held = await collector.collect()
        now[0] += SLOW_REFRESH - 1
        retried = await collector.collect()
        [error] = first.errors
        postgres_server.execute(error.message.rpartition("run: ")[2] + ";", database=database)  # the hint, as given
        now[0] += 1
        still_held = await collector.collect()
        now[0] += SLOW_REFRESH
        recovered = await collector.collect()
        postgres_server.execute(f"REVOKE SELECT ON {view} FROM {postgres_server.monitor_user};", database=database)
        now[0] += 1
        refused_again = await collector.collect()
        same_connection = collector.client.backend_pid == pid
    finally:
        await collector.close()
        postgres_server.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE);")
    # Reported once, with the GRANT to run; the rest flows.
    assert first.up and first.statements == 5
    assert error.query == "fetch_table_stats" and error.reason == "permission"
    assert error.message.endswith(f"— run: GRANT SELECT ON pg_statio_user_tables TO {postgres_server.monitor_user}")
    assert postgres_server.monitor_password not in error.message
    found = series(first)
    assert "postgresql.rows" not in found and "postgresql.table.count" not in found
    assert ("dbintel_pg_noperm|public", "notes", "notes_pkey", database, "public", "notes") in {
        s.attributes for s in found["postgresql.index.scans"]
    }
    assert found["postgresql.commits"] and found["postgresql.bgwriter.checkpoint.count"]
    # Then left out, quietly, until SLOW_REFRESH has passed; retried then, still quietly while refused.
    for result in (held, still_held):
        assert result.up and result.errors == [] and result.statements == 4
        assert "postgresql.rows" not in series(result) and series(result)["postgresql.index.scans"]
    assert retried.up and retried.errors == [] and retried.statements == 5
    assert "postgresql.rows" not in series(retried)
    # Granted: back at the next retry, on the same connection (privileges are checked per statement).
    assert recovered.up and recovered.errors == [] and recovered.statements == 5
    assert {s.attributes[0] for s in series(recovered)["postgresql.rows"] if s.attributes[-1] == "public.notes"} == {
        "live",
        "dead",
    }
    assert same_connection
    # It worked in between, so a new refusal is news again.
    assert [(e.query, e.reason) for e in refused_again.errors] == [("fetch_table_stats", "permission")]


async def test_withheld_database_size_is_reported_and_other_sizes_flow(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    role, password, private = "dbintel_pg_plain", secrets.token_hex(12), "dbintel_pg_private"
    postgres_server.execute(
        f"DROP DATABASE IF EXISTS {private} WITH (FORCE);\nDROP ROLE IF EXISTS {role};\n"
        f"CREATE ROLE {role} LOGIN PASSWORD '{password}';\nCREATE DATABASE {private};\n"
        f"REVOKE CONNECT ON DATABASE {private} FROM PUBLIC;"
    )
    now = [1000.0]
    collector = make_collector(
        postgres_server, monkeypatch, database="postgres", user=role, password=password, clock=lambda: now[0]
    )
    try:
        result = await collector.collect()
        now[0] += SLOW_REFRESH
        next_slow_round = await collector.collect()
    finally:
        await collector.close()
        postgres_server.execute(f"DROP DATABASE IF EXISTS {private} WITH (FORCE);\nDROP ROLE IF EXISTS {role};")
    assert result.up
    [error] = result.errors
    assert error.query == "fetch_database_stats" and error.reason == "permission"
    assert private in error.message and role in error.message and password not in error.message
    assert error.message.endswith(f"run: GRANT pg_read_all_stats TO {role}")
    sized = {s.attributes[0] for s in series(result)["postgresql.db_size"]}
    assert "dbintel_app" in sized and "postgres" in sized and private not in sized
    assert private in {s.attributes[0] for s in series(result)["postgresql.commits"]}
    # Reported once: the next slow round withholds the same size again, quietly.
    assert next_slow_round.errors == [] and private not in {
        s.attributes[0] for s in series(next_slow_round)["postgresql.db_size"]
    }


async def test_a_terminated_backend_is_replaced(
    postgres_server: PostgresServer, collector: PostgresqlCollector
) -> None:
    assert (await collector.collect()).up
    old_pid = collector.client.backend_pid
    postgres_server.execute(f"SELECT pg_terminate_backend({old_pid});")
    result = await collector.collect()
    if not result.up:  # the loss was noticed mid-collection: reported as a connection error
        assert result.errors[-1].reason == "connection"
        result = await collector.collect()
    assert result.up and result.errors == [] and result.statements == 5
    assert collector.client.backend_pid not in (None, old_pid)


async def test_a_cancelled_collection_leaves_the_collector_usable(
    postgres_server: PostgresServer, collector: PostgresqlCollector
) -> None:
    assert (await collector.collect()).up
    locker = await asyncpg.connect(
        host=postgres_server.host,
        port=postgres_server.port,
        user=postgres_server.superuser,
        password=postgres_server.superuser_password,
        database="dbintel_app",
    )
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
# Series that exist only after something that a test cannot make happen in seconds (an autovacuum
# run): left out of the golden file, checked from documented row shapes in the unit tests.
HISTORY_DEPENDENT = {"postgresql.table.last_autovacuum.age", "postgresql.table.last_autoanalyze.age"}


async def test_golden_series(postgres_server: PostgresServer, collector: PostgresqlCollector, tmp_path: Path) -> None:
    with replication_slot(postgres_server, "dbintel_golden"):  # slot series exist only while a slot does
        result = await collect_with_a_wal_receiver(collector, postgres_server, tmp_path)
    lines = sorted(
        {
            f"{s.spec.prometheus_name}{{{','.join(s.spec.label_names)}}}"
            for s in result.samples
            if s.spec.enabled_by_default and s.spec.name not in HISTORY_DEPENDENT
        }
    )
    text = "\n".join(lines) + "\n"
    if os.environ.get("DBINTEL_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert GOLDEN.read_text() == text


# --- optional metrics: present only when enabled -------------------------------------------------
OPTIONAL = frozenset(s.name for s in TABLE if not s.enabled_by_default)


async def collect_once(server: PostgresServer, monkeypatch: pytest.MonkeyPatch, **options) -> CollectionResult:
    collector = make_collector(server, monkeypatch, **options)
    try:
        return await collector.collect()
    finally:
        await collector.close()


async def test_optional_metrics_appear_only_when_enabled(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen = {
        "postgresql.database.locks",
        "postgresql.query.execution.time",
        "postgresql.deadlocks",
        "postgresql.blks_hit",
        "postgresql.sequential_scans",
    }
    before = monitor_calls(postgres_server)
    default = await collect_once(postgres_server, monkeypatch)
    middle = monitor_calls(postgres_server)
    switched = await collect_once(postgres_server, monkeypatch, enabled=TABLE.enabled(dict.fromkeys(chosen, True)))
    after = monitor_calls(postgres_server)
    assert default.up and switched.up and default.errors == switched.errors == []
    assert not OPTIONAL & set(series(default))
    assert OPTIONAL & set(series(switched)) == chosen
    # each optional statement is sent only while one of its metrics is on: locks and pg_stat_statements here
    assert default.statements == middle - before == 5
    assert switched.statements == after - middle == 7


# Claimed verified on PostgreSQL 15 but emitted only in a particular state, which other tests set up:
# a replication client (the pg_receivewal tests), a slot (the golden test), tracked functions (their
# own test). What only a standby or its primary shows is claimed on "PostgreSQL 15 primary + streaming
# standby" instead, and seen in tests/integration/test_replication.py.
SEEN_ELSEWHERE = {
    "postgresql.wal.lag",
    "postgresql.wal.delay",
    "postgresql.replication.slot.retained_wal",
    "postgresql.replication.slot.active",
    "postgresql.function.calls",
}


async def test_every_metric_enabled_costs_nine_statements_and_shows_what_is_claimed(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    everything = TABLE.enabled(dict.fromkeys(TABLE.by_name, True))
    before = monitor_calls(postgres_server)
    result = await collect_once(postgres_server, monkeypatch, enabled=everything)
    assert result.up and result.errors == []
    assert result.statements == monitor_calls(postgres_server) - before == 9
    claimed = {s.name for s in TABLE if "PostgreSQL 15" in s.verified_on}
    seen = set(series(result))
    assert claimed - SEEN_ELSEWHERE <= seen, sorted(claimed - SEEN_ELSEWHERE - seen)
    assert seen - {"postgresql.table.last_autovacuum.age", "postgresql.table.last_autoanalyze.age"} <= claimed


async def test_locks_held_by_another_session_are_counted(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    holder = await asyncpg.connect(
        host=postgres_server.host,
        port=postgres_server.port,
        user=postgres_server.superuser,
        password=postgres_server.superuser_password,
        database="dbintel_app",
    )
    try:
        async with holder.transaction():
            await holder.execute("LOCK TABLE customers IN SHARE MODE")
            result = await collect_once(postgres_server, monkeypatch, enabled=frozenset({"postgresql.database.locks"}))
    finally:
        await holder.close()
    locks = {s.attributes: s.value for s in result.samples}
    assert locks[("customers", "ShareLock", "relation", "dbintel_app", "dbintel_app")] == 1
    assert result.statements == 1
    # the transaction's own id lock belongs to no single database
    assert any(attributes[2] == "virtualxid" and attributes[3] == "" for attributes in locks)


async def test_function_calls_of_tracked_functions(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    postgres_server.execute(
        "CREATE OR REPLACE FUNCTION dbintel_touch(n int) RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN n + 1; END $$;\n"
        "SET track_functions = 'pl';\n"  # this session only: the server default tracks none
        "SELECT dbintel_touch(1);\nSELECT dbintel_touch(2);\nSELECT dbintel_touch(3);\n"
        "SELECT pg_stat_force_next_flush();",
        database="dbintel_app",
    )
    result = await collect_once(postgres_server, monkeypatch, enabled=frozenset({"postgresql.function.calls"}))
    calls = postgres_server.execute(
        "SELECT calls FROM pg_stat_user_functions WHERE funcname = 'dbintel_touch'", database="dbintel_app"
    )
    got = {s.attributes: s.value for s in result.samples}
    assert got[("dbintel_touch", "dbintel_app|public", "dbintel_app", "public")] == int(calls[0][0]) >= 3


async def test_execution_time_is_pg_stat_statements_per_database(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def server_seconds() -> float:
        rows = postgres_server.execute(
            "SELECT sum(total_exec_time) / 1000 FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
            "WHERE d.datname = 'dbintel_app'"
        )
        return float(rows[0][0])

    low = server_seconds()
    result = await collect_once(postgres_server, monkeypatch, enabled=frozenset({"postgresql.query.execution.time"}))
    high = server_seconds()
    got = {s.attributes: s.value for s in result.samples}
    assert 0 < low <= got[("dbintel_app", "dbintel_app")] <= high
    assert ("postgres", "postgres") in got and result.statements == 1


async def test_vector_search_and_insert_statements(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = "dbintel_pg_vector"
    postgres_server.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE);\nCREATE DATABASE {database};")
    # pgvector is not installed here: a domain named `vector` and the built-in point <-> operator give
    # statements of exactly the shapes the receiver's classification reads (a type named vector, an
    # operator or a *_distance function in the statement text).
    postgres_server.execute(
        """
        SET pg_stat_statements.track_utility = off;
        CREATE EXTENSION pg_stat_statements;
        CREATE DOMAIN vector AS float8[];
        CREATE TABLE items (id int, embedding vector);
        CREATE TABLE places (id int, location point);
        CREATE FUNCTION cosine_distance(a float8[], b float8[]) RETURNS float8 LANGUAGE sql AS $$ SELECT 0.5 $$;
        INSERT INTO places SELECT g, point(g, g) FROM generate_series(1, 10) g;
        INSERT INTO items VALUES (1, '{1,2,3}'), (2, '{4,5,6}');
        INSERT INTO items VALUES (3, '{1,1,1}');
        SELECT id FROM places ORDER BY location <-> point(0, 0) LIMIT 3;
        SELECT id FROM places ORDER BY location <-> point(0, 0) LIMIT 3;
        SELECT cosine_distance(embedding, '{1,0,0}') FROM items;
        """,
        database=database,
    )
    vector_metrics = {s.name for s in TABLE if s.name.startswith("postgresql.vector.")}
    try:
        result = await collect_once(
            postgres_server,
            monkeypatch,
            database=database,
            enabled=TABLE.enabled(dict.fromkeys(vector_metrics, True)),
        )
        default = await collect_once(postgres_server, monkeypatch, database=database)
    finally:
        postgres_server.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE);")
    assert result.up and result.errors == []
    got = {(s.spec.name, s.attributes): s.value for s in result.samples if s.spec.name in vector_metrics}
    db = (database, database)
    assert got[("postgresql.vector.search.calls", ("l2",) + db)] == 2
    assert got[("postgresql.vector.search.rows_returned", ("l2",) + db)] == 6
    assert got[("postgresql.vector.search.calls", ("cosine",) + db)] == 1
    assert got[("postgresql.vector.search.rows_returned", ("cosine",) + db)] == 3
    assert got[("postgresql.vector.insert.rows", db)] == 3  # into items; places has no vector column
    assert got[("postgresql.vector.search.duration", ("l2",) + db)] > 0
    assert got[("postgresql.vector.insert.duration", db)] > 0
    assert len(got) == 8
    assert not vector_metrics & set(series(default))


async def test_missing_pg_stat_statements_is_unsupported_with_the_fix_and_the_rest_flows(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = "dbintel_pg_nostatements"
    postgres_server.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE);\nCREATE DATABASE {database};")
    try:
        result = await collect_once(
            postgres_server,
            monkeypatch,
            database=database,
            enabled=TABLE.enabled({"postgresql.query.execution.time": True}),
        )
    finally:
        postgres_server.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE);")
    assert result.up
    [error] = result.errors
    assert (error.query, error.reason) == ("fetch_execution_time", "unsupported")
    assert "CREATE EXTENSION pg_stat_statements" in error.message
    assert "postgresql.commits" in series(result) and "postgresql.query.execution.time" not in series(result)


# --- beyond: autovacuum activity (a standby's replay: tests/integration/test_replication.py) ----------
async def test_autovacuum_counts_match_the_server(
    postgres_server: PostgresServer, collector: PostgresqlCollector
) -> None:
    result = await collector.collect()
    values = {(s.spec.name, s.attributes): s.value for s in result.samples}
    orders = ("dbintel_app|public", "orders", "dbintel_app", "public", "public.orders")
    autovacuums, autoanalyzes, vacuumed = postgres_server.execute(
        "SELECT autovacuum_count, autoanalyze_count, last_autovacuum IS NOT NULL FROM pg_stat_user_tables "
        "WHERE relname = 'orders'",
        database="dbintel_app",
    )[0]
    assert values[("postgresql.table.autovacuum.count", orders)] == int(autovacuums)
    assert values[("postgresql.table.autoanalyze.count", orders)] == int(autoanalyzes)
    assert (("postgresql.table.last_autovacuum.age", orders) in values) == (vacuumed == "t")
