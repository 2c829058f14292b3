"""Replication metrics from both ends of real replication links (tests/replication.py).

A PostgreSQL streaming hot standby, a MariaDB replica and a Redis replica, each linked to its
primary through a fault proxy; the real collectors poll both servers of a pair with every metric
enabled, and must answer without a single query error on either side. For each pair: the healthy
link, a replica that falls behind (replay paused, a configured delay or a stopped SQL thread, a
frozen process) and a link that breaks on the wire and is mended. Every wait polls the collector
until its samples show the state, within a deadline; none sleeps a fixed time.

The topologies are module-scoped (each started once, by the first test that asks for it) and every
test leaves its pair linked and caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator

import asyncpg
import pytest

from dbintel.agent.collectors import collector_class
from dbintel.agent.collectors.base import DatabaseCollector
from dbintel.agent.collectors.mysql.metrics import MARIADB_PAIR
from dbintel.agent.collectors.postgresql.metrics import PG15_PAIR
from dbintel.agent.collectors.redis.metrics import PAIR as REDIS_PAIR
from dbintel.common.config import DatabaseConfig
from dbintel.common.secrets import resolve_secret
from tests.faultproxy import ProxyLoop
from tests.replication import MariaDBReplication, PostgresReplication, RedisReplication
from tests.servers import ManagedServer, MariaDBServer, PostgresServer, RedisServer

pytestmark = pytest.mark.integration

Values = dict[tuple[str, tuple[str, ...]], float]
DEADLINE = 20.0  # seconds any one state may take to show


# --- topologies, one per module ------------------------------------------------------------------
@pytest.fixture(scope="module")
def links() -> Iterator[ProxyLoop]:
    with ProxyLoop() as loop:
        yield loop


@pytest.fixture(scope="module")
def pg(links: ProxyLoop) -> Iterator[PostgresReplication]:
    with PostgresReplication(links) as topology:
        yield topology


@pytest.fixture(scope="module")
def maria(links: ProxyLoop) -> Iterator[MariaDBReplication]:
    with MariaDBReplication(links) as topology:
        yield topology


@pytest.fixture(scope="module")
def rd(links: ProxyLoop) -> Iterator[RedisReplication]:
    with RedisReplication(links) as topology:
        yield topology


# --- the real collectors, with every metric on -----------------------------------------------------
class Watch:
    """One real collector of one server, with every metric enabled, polled until its samples show a state."""

    def __init__(self, server: ManagedServer) -> None:
        if isinstance(server, PostgresServer):
            db_type, user, password, database = (
                "postgresql",
                server.monitor_user,
                server.monitor_password,
                "dbintel_app",
            )
        elif isinstance(server, MariaDBServer):
            db_type, user, password, database = "mysql", server.monitor_user, server.monitor_password, None
        elif isinstance(server, RedisServer):
            db_type, user, password, database = "redis", None, server.password, None
        else:
            raise TypeError(f"no collector for {server!r}")
        cls = collector_class(db_type)
        config = DatabaseConfig(
            name=server.kind,
            type=db_type,
            endpoint=server.address,
            username=user,
            password="${env:DBINTEL_TEST_REPLICATION_PASSWORD}",
            database=database,
            timeout="5s",
        )
        self.server = server
        self.collector: DatabaseCollector = cls(
            config,
            password=resolve_secret(config.password, {"DBINTEL_TEST_REPLICATION_PASSWORD": password}),
            enabled=cls.table.enabled(dict.fromkeys(cls.table.by_name, True)),
        )

    async def values(self) -> Values:
        """One collection, which must reach the server and fail no query."""
        result = await self.collector.collect()
        assert result.up and result.errors == [], (self.server.kind, result.errors)
        return {(s.spec.name, s.attributes): s.value for s in result.samples}

    async def until(
        self, predicate: Callable[[Values], bool], what: str, *, during: Callable[[], object] | None = None
    ) -> Values:
        """Collect until `predicate` holds for the samples, calling `during` (say, a write on the primary)
        before each collection; AssertionError after DEADLINE seconds, with the last replication samples."""
        deadline = time.monotonic() + DEADLINE
        while True:
            if during is not None:
                during()
            values = await self.values()
            if predicate(values):
                return values
            if time.monotonic() > deadline:
                shown = {key: value for key, value in values.items() if _replication_metric(key[0])}
                raise AssertionError(f"{self.server.kind}: not within {DEADLINE} s: {what}; last samples: {shown}")
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        await self.collector.close()


def _replication_metric(name: str) -> bool:
    return any(part in name for part in ("repl", "wal", "recovery", "replica", "slave", "binlog", "conflict"))


@contextlib.asynccontextmanager
async def watching(*servers: ManagedServer) -> AsyncIterator[tuple[Watch, ...]]:
    watches = tuple(Watch(server) for server in servers)
    try:
        yield watches
    finally:
        for watch in watches:
            await watch.close()


def names(values: Values) -> set[str]:
    return {name for name, _ in values}


def claimed_on(db_type: str, claim: str) -> set[str]:
    """The metrics whose declaration says they were verified on `claim` (a pair of these tests)."""
    return {spec.name for spec in collector_class(db_type).table if claim in spec.verified_on}


# --- PostgreSQL ----------------------------------------------------------------------------------
CLIENT = ("127.0.0.1/32",)  # pg_stat_replication.client_addr as the receiver casts it (inet::varchar)
SLOT = (PostgresReplication.slot, "physical")
STANDBY_ONLY = {
    "postgresql.recovery.replay_lag",
    "postgresql.recovery.unreplayed_wal",
    "postgresql.wal_receiver.connected",
    "postgresql.wal_receiver.last_msg_receipt_age",
}
FEEDS_A_STANDBY = {"postgresql.replication.data_delay", "postgresql.wal.lag", "postgresql.wal.delay"}


def pg_write(server: PostgresServer, rows: int = 200) -> Callable[[], object]:
    """A write of `rows` rows into a scratch table on the primary (WAL for the standby to receive)."""
    server.execute("CREATE TABLE IF NOT EXISTS replication_scratch (id bigserial, pad text)", database="dbintel_app")
    sql = f"INSERT INTO replication_scratch (pad) SELECT repeat('x', 100) FROM generate_series(1, {rows})"
    return lambda: server.execute(sql, database="dbintel_app")


async def test_postgresql_streaming_standby_from_both_ends(pg: PostgresReplication) -> None:
    write = pg_write(pg.primary)
    pg.primary.execute("SELECT pg_switch_wal()")  # a finished segment for the archiver: postgresql.wal.age
    async with watching(pg.primary, pg.standby) as (primary, standby):
        on_primary = await primary.until(
            lambda v: (
                all(("postgresql.wal.lag", (op, *CLIENT)) in v for op in ("write", "flush", "replay"))
                and v.get(("postgresql.wal.age", ()), 99) < 10
            ),
            "the standby's write/flush/replay lag measured, a WAL segment archived",
            during=write,
        )
        archived_age = float(
            pg.primary.execute("SELECT extract(epoch FROM now() - last_archived_time) FROM pg_stat_archiver")[0][0]
        )
        on_standby = await standby.until(
            lambda v: v.get(("postgresql.recovery.unreplayed_wal", ())) == 0, "the standby replayed all it received"
        )
    # The primary: one standby, streaming and replaying, through its slot; its WAL archived.
    assert on_primary[("postgresql.recovery.active", ())] == 0
    assert 0 <= on_primary[("postgresql.replication.data_delay", CLIENT)] < 16 * 2**20
    for op in ("write", "flush", "replay"):
        delay = on_primary[("postgresql.wal.delay", (op, *CLIENT))]
        assert 0 <= delay < 5 and on_primary[("postgresql.wal.lag", (op, *CLIENT))] == int(delay + 0.5)
    assert on_primary[("postgresql.replication.slot.active", SLOT)] == 1
    assert 0 <= on_primary[("postgresql.replication.slot.retained_wal", SLOT)] < 64 * 2**20
    assert abs(on_primary[("postgresql.wal.age", ())] - archived_age) <= 2
    assert not STANDBY_ONLY & names(on_primary)
    # The standby: in recovery, its WAL receiver streaming and hearing from the primary, nothing left to
    # replay; it feeds no one and archives nothing (archive_mode=on archives on the primary only).
    assert on_standby[("postgresql.recovery.active", ())] == 1
    assert on_standby[("postgresql.wal_receiver.connected", ())] == 1
    assert 0 <= on_standby[("postgresql.wal_receiver.last_msg_receipt_age", ())] < 35
    assert on_standby[("postgresql.recovery.replay_lag", ())] == 0
    assert on_standby[("postgresql.query.conflicts", ("snapshot", "dbintel_app", "dbintel_app"))] >= 0
    assert not (FEEDS_A_STANDBY | {"postgresql.wal.age"}) & names(on_standby)
    assert not [name for name in names(on_standby) if name.startswith("postgresql.replication.")]
    # Every metric declared as verified on this pair is seen here, on one end or the other.
    assert claimed_on("postgresql", PG15_PAIR) <= names(on_primary) | names(on_standby)


async def test_postgresql_standby_that_falls_behind(pg: PostgresReplication) -> None:
    write = pg_write(pg.primary)
    pg.standby.execute("SELECT pg_wal_replay_pause()")
    try:
        async with watching(pg.primary, pg.standby) as (primary, standby):
            # The standby still receives and acknowledges WAL but replays none of it: the primary sees the
            # replay lag and the unreplayed bytes grow while write and flush lag stay small.
            behind = await primary.until(
                lambda v: (
                    v.get(("postgresql.wal.delay", ("replay", *CLIENT)), 0) >= 1.0
                    and v.get(("postgresql.replication.data_delay", CLIENT), 0) > 64 * 1024
                ),
                "replay lag of a second and 64 KiB of WAL not replayed",
                during=write,
            )
            assert behind[("postgresql.wal.lag", ("replay", *CLIENT))] >= 1
            assert (
                behind[("postgresql.wal.delay", ("flush", *CLIENT))]
                < behind[("postgresql.wal.delay", ("replay", *CLIENT))]
            )
            lagging = await standby.until(
                lambda v: (
                    v[("postgresql.recovery.replay_lag", ())] >= 1
                    and v[("postgresql.recovery.unreplayed_wal", ())] > 64 * 1024
                ),
                "the standby a second and 64 KiB behind in replay",
                during=write,
            )
            assert lagging[("postgresql.wal_receiver.connected", ())] == 1  # the link is fine: only replay stopped
            pg.standby.execute("SELECT pg_wal_replay_resume()")
            caught_up = await standby.until(
                lambda v: v[("postgresql.recovery.unreplayed_wal", ())] == 0, "the standby caught up after resuming"
            )
            assert caught_up[("postgresql.recovery.replay_lag", ())] == 0
            await primary.until(
                lambda v: v.get(("postgresql.replication.data_delay", CLIENT)) == 0, "the primary sees it caught up"
            )
    finally:
        pg.standby.execute("SELECT pg_wal_replay_resume()")


async def test_postgresql_standby_whose_link_breaks(pg: PostgresReplication) -> None:
    write = pg_write(pg.primary, rows=2000)
    pg.link.reset()  # RST on the replication connection, and on every reconnection
    try:
        async with watching(pg.primary, pg.standby) as (primary, standby):
            # The primary lists the standby no more; its slot, inactive, keeps the WAL the standby misses.
            cut = await primary.until(
                lambda v: not FEEDS_A_STANDBY & names(v) and v[("postgresql.replication.slot.active", SLOT)] == 0,
                "the standby gone from pg_stat_replication, its slot inactive",
            )
            retained = cut[("postgresql.replication.slot.retained_wal", SLOT)]
            await primary.until(
                lambda v: v[("postgresql.replication.slot.retained_wal", SLOT)] > retained + 256 * 1024,
                "the slot retaining the WAL written since",
                during=write,
            )
            # The standby: no WAL receiver streams. It has replayed all it received, so its replay lag reads 0:
            # only postgresql.wal_receiver.connected shows the broken link.
            alone = await standby.until(
                lambda v: v[("postgresql.wal_receiver.connected", ())] == 0, "the WAL receiver down"
            )
            assert alone[("postgresql.recovery.active", ())] == 1
            assert alone[("postgresql.recovery.replay_lag", ())] == 0
            pg.link.pass_through()
            await standby.until(lambda v: v[("postgresql.wal_receiver.connected", ())] == 1, "streaming again")
            back = await primary.until(
                lambda v: (
                    ("postgresql.replication.data_delay", CLIENT) in v
                    and v[("postgresql.replication.slot.active", SLOT)] == 1
                ),
                "the standby listed again, its slot active",
            )
            assert back[("postgresql.replication.slot.retained_wal", SLOT)] >= 0
    finally:
        pg.link.pass_through()
    pg.wait_streaming()


async def test_postgresql_standby_query_cancelled_by_a_replay_conflict(pg: PostgresReplication) -> None:
    """A standby query whose snapshot still sees rows that VACUUM on the primary removed is cancelled when
    the cleanup is replayed (max_standby_streaming_delay = 0): postgresql.query.conflicts counts it."""
    snapshot = ("snapshot", "dbintel_app", "dbintel_app")
    async with watching(pg.standby) as (standby,):
        before = (await standby.values())[("postgresql.query.conflicts", snapshot)]
        conn = await asyncpg.connect(
            host=pg.standby.host,
            port=pg.standby.port,
            user=pg.standby.superuser,
            password=pg.standby.superuser_password,
            database="dbintel_app",
        )
        try:
            reader = conn.transaction(isolation="repeatable_read")
            await reader.start()
            await conn.fetchval("SELECT count(*) FROM orders")  # the snapshot that still sees every row
            pg.primary.execute("DELETE FROM orders WHERE id % 7 = 0;\nVACUUM orders;", database="dbintel_app")
            with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError)):  # cancelled, connection ended
                deadline = time.monotonic() + DEADLINE
                while time.monotonic() < deadline:
                    await conn.fetchval("SELECT count(*) FROM orders")
                    await asyncio.sleep(0.1)
        finally:
            if not conn.is_closed():
                conn.terminate()
        await standby.until(
            lambda v: v[("postgresql.query.conflicts", snapshot)] >= before + 1, "the cancelled query counted"
        )


# --- MariaDB ---------------------------------------------------------------------------------------
IO, SQL = ("io", ""), ("sql", "")  # the default (unnamed) replication connection
REPLICA_METRICS = {
    "mysql.replica.thread.running",
    "mysql.replica.thread.last_error",
    "mysql.replica.time_behind_source",
    "mysql.replica.sql_delay",
}


def maria_write(server: MariaDBServer) -> Callable[[], object]:
    return lambda: server.execute("INSERT INTO orders (customer_id, amount) VALUES (3, 9.5)", database="dbintel_app")


async def test_mariadb_replica_from_both_ends(maria: MariaDBReplication) -> None:
    assert maria.replica is not None
    maria_write(maria.primary)()
    maria.wait_replicating()
    async with watching(maria.primary, maria.replica) as (primary, replica):
        on_primary, on_replica = await primary.values(), await replica.values()
    # The source: one replica connected, a binary log in use; it is nobody's replica.
    assert on_primary[("mysql.replicas.connected", ())] == 1
    assert on_primary[("mysql.binlog.cache.use", ("transaction",))] > 0
    assert not REPLICA_METRICS & names(on_primary)
    # The replica: both threads running, no error, no lag, no configured delay.
    assert on_replica[("mysql.replica.thread.running", IO)] == on_replica[("mysql.replica.thread.running", SQL)] == 1
    assert (
        on_replica[("mysql.replica.thread.last_error", IO)] == on_replica[("mysql.replica.thread.last_error", SQL)] == 0
    )
    assert on_replica[("mysql.replica.time_behind_source", ())] == 0
    assert on_replica[("mysql.replica.sql_delay", ())] == 0
    assert on_replica[("mysql.replica.temp_table.open", ())] == 0
    assert on_replica[("mysql.replicas.connected", ())] == 0
    assert claimed_on("mysql", MARIADB_PAIR) <= names(on_primary) | names(on_replica)


async def test_mariadb_replica_that_falls_behind(maria: MariaDBReplication) -> None:
    assert maria.replica is not None
    write = maria_write(maria.primary)
    maria.replica.execute("STOP SLAVE;\nCHANGE MASTER TO MASTER_DELAY = 3;\nSTART SLAVE;")
    try:
        async with watching(maria.replica) as (replica,):
            # A delayed replica: each event waits until it is 3 s old, so Seconds_Behind_Master climbs to it.
            write()
            delayed = await replica.until(
                lambda v: v.get(("mysql.replica.time_behind_source", ()), 0) >= 2, "two seconds behind the source"
            )
            assert delayed[("mysql.replica.sql_delay", ())] == 3
            assert delayed[("mysql.replica.thread.running", SQL)] == 1
            maria.replica.execute("STOP SLAVE;\nCHANGE MASTER TO MASTER_DELAY = 0;\nSTART SLAVE;")
            maria.wait_replicating()
            # A replica whose SQL thread stopped: it receives but applies nothing; its lag is unknown (NULL).
            maria.replica.execute("STOP SLAVE SQL_THREAD")
            write()
            stopped = await replica.until(
                lambda v: v[("mysql.replica.thread.running", SQL)] == 0, "the SQL thread stopped"
            )
            assert stopped[("mysql.replica.thread.running", IO)] == 1
            assert ("mysql.replica.time_behind_source", ()) not in stopped
            maria.replica.execute("START SLAVE SQL_THREAD")
            maria.wait_replicating()
            caught_up = await replica.values()
            assert caught_up[("mysql.replica.time_behind_source", ())] == 0
            assert caught_up[("mysql.replica.sql_delay", ())] == 0
    finally:
        maria.replica.execute("STOP SLAVE;\nCHANGE MASTER TO MASTER_DELAY = 0;\nSTART SLAVE;")
    maria.wait_replicating()


async def test_mariadb_replica_whose_link_breaks(maria: MariaDBReplication) -> None:
    assert maria.replica is not None
    write = maria_write(maria.primary)
    maria.link.reset()
    try:
        async with watching(maria.primary, maria.replica) as (primary, replica):
            # The replica's IO thread loses the source and keeps failing to reconnect; its SQL thread idles.
            cut = await replica.until(
                lambda v: (
                    v[("mysql.replica.thread.running", IO)] == 0 and v[("mysql.replica.thread.last_error", IO)] != 0
                ),
                "the IO thread down with an error",
            )
            assert cut[("mysql.replica.thread.last_error", IO)] in {2003, 2013}  # can't connect / lost connection
            assert cut[("mysql.replica.thread.running", SQL)] == 1
            assert ("mysql.replica.time_behind_source", ()) not in cut  # unknown while the IO thread is down
            # The source notices once it writes to the dead link.
            await primary.until(
                lambda v: v[("mysql.replicas.connected", ())] == 0, "no replica connected", during=write
            )
            maria.link.pass_through()
            maria.wait_replicating()
            back = await replica.until(
                lambda v: v[("mysql.replica.thread.running", IO)] == 1, "the IO thread running again"
            )
            assert back[("mysql.replica.time_behind_source", ())] == 0
            assert back[("mysql.replica.thread.last_error", IO)] == 0  # cleared by the reconnection
            assert (await primary.values())[("mysql.replicas.connected", ())] == 1
    finally:
        maria.link.pass_through()
    maria.wait_replicating()


# --- Redis ---------------------------------------------------------------------------------------
LINK_METRICS = {
    "redis.replication.link.up",
    "redis.replication.link.last_io",
    "redis.replication.link.down_duration",
    "redis.replication.replica_offset",
}


def redis_write(server: RedisServer) -> Callable[[], object]:
    def write() -> None:
        with server.client() as client:
            client.incr("replication:counter")
            client.set("replication:pad", "x" * 4096)

    return write


def replica_of(rd: RedisReplication) -> tuple[str]:
    assert rd.replica is not None
    return (f"{rd.replica.host}:{rd.replica.port}",)  # slaveN ip (as the primary sees it) : listening port


async def test_redis_replica_from_both_ends(rd: RedisReplication) -> None:
    assert rd.replica is not None
    replica_key = replica_of(rd)
    redis_write(rd.primary)()
    async with watching(rd.primary, rd.replica) as (primary, replica):
        on_primary = await primary.until(
            lambda v: (
                v.get(("redis.replication.replica.offset_lag", replica_key)) == 0
                and v[("redis.replication.offset", ())] > 0
            ),
            "the replica acknowledging the primary's offset",
        )
        on_replica = await replica.until(
            lambda v: v.get(("redis.replication.replica_offset", ())) == on_primary[("redis.replication.offset", ())],
            "the replica at the primary's offset",
        )
    assert on_primary[("redis.slaves.connected", ())] == 1
    assert on_primary[("redis.role", ("primary",))] == 1
    assert 0 <= on_primary[("redis.replication.replica.lag", replica_key)] <= 2  # it acknowledges every second
    assert (
        1
        <= on_primary[("redis.replication.backlog_first_byte_offset", ())]
        <= on_primary[("redis.replication.offset", ())]
    )
    assert not LINK_METRICS & names(on_primary)
    assert on_replica[("redis.role", ("replica",))] == 1
    assert on_replica[("redis.replication.link.up", ())] == 1
    assert 0 <= on_replica[("redis.replication.link.last_io", ())] <= 2  # the primary pings every second
    assert on_replica[("redis.replication.offset", ())] == on_replica[("redis.replication.replica_offset", ())]
    assert on_replica[("redis.slaves.connected", ())] == 0
    assert ("redis.replication.link.down_duration", ()) not in on_replica
    assert not [name for name in names(on_replica) if name.startswith("redis.replication.replica.")]
    # Every metric declared as verified on this pair is seen here, but for the broken link's (below).
    seen = names(on_primary) | names(on_replica) | {"redis.replication.link.down_duration"}
    assert claimed_on("redis", REDIS_PAIR) <= seen


async def test_redis_replica_that_falls_behind(rd: RedisReplication) -> None:
    assert rd.replica is not None
    replica_key = replica_of(rd)
    write = redis_write(rd.primary)
    async with watching(rd.primary) as (primary,):
        write()
        await primary.until(
            lambda v: v.get(("redis.replication.replica.offset_lag", replica_key)) == 0, "the replica caught up"
        )
        rd.replica.pause()  # SIGSTOP: the replica neither reads nor acknowledges; its link stays open
        try:
            behind = await primary.until(
                lambda v: (
                    v[("redis.replication.replica.lag", replica_key)] >= 2
                    and v[("redis.replication.replica.offset_lag", replica_key)] > 8 * 4096
                ),
                "two seconds without an acknowledgement, the replica 32 KiB behind",
                during=write,
            )
            assert behind[("redis.slaves.connected", ())] == 1  # still connected: only behind
        finally:
            rd.replica.resume()
        caught_up = await primary.until(
            lambda v: (
                v.get(("redis.replication.replica.offset_lag", replica_key)) == 0
                and v[("redis.replication.replica.lag", replica_key)] <= 1
            ),
            "the replica caught up after resuming",
        )
        assert caught_up[("redis.slaves.connected", ())] == 1


async def test_redis_replica_whose_link_breaks(rd: RedisReplication) -> None:
    assert rd.replica is not None
    write = redis_write(rd.primary)
    rd.link.reset()
    try:
        async with watching(rd.primary, rd.replica) as (primary, replica):
            down = await replica.until(
                lambda v: (
                    v[("redis.replication.link.up", ())] == 0
                    and v.get(("redis.replication.link.down_duration", ()), 0) >= 1
                ),
                "the link down for a second",
            )
            assert ("redis.replication.link.last_io", ()) not in down  # -1: no interaction on the current link
            stale_offset = down[("redis.replication.replica_offset", ())]
            gone = await primary.until(
                lambda v: v[("redis.slaves.connected", ())] == 0, "the primary without a replica", during=write
            )
            assert not [name for name, _ in gone if name.startswith("redis.replication.replica.")]
            assert gone[("redis.replication.offset", ())] > stale_offset  # written while the link was down
            rd.link.pass_through()
            back = await replica.until(
                lambda v: (
                    v[("redis.replication.link.up", ())] == 1
                    and v[("redis.replication.replica_offset", ())] >= gone[("redis.replication.offset", ())]
                ),
                "the link up again and the missed writes replicated",
            )
            assert ("redis.replication.link.down_duration", ()) not in back
    finally:
        rd.link.pass_through()
    rd.wait_linked()
