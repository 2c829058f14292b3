"""The MongoDB collector against real SecantusDB 0.7 servers (tests/servers.py via tests/conftest.py).

`secantus_server` is a one-member replica set (`secantus`, the member is primary);
SecantusServer(standalone=True) a standalone. What SecantusDB does not serve (wiredTiger, locks,
globalLock, opLatencies, repl sections, a secondary) is covered by tests/unit/test_mongodb_mapping.py
with MongoDB's documented reply shapes. The server is the judge of cost: network.numRequests
(every message it received) and connections.totalCreated, read by a separate client.
"""

from __future__ import annotations

import asyncio
import csv
import os
import time
from pathlib import Path

import pytest

from dbintel.agent.collectors.metric_table import CollectionResult
from dbintel.agent.collectors.mongodb import MAX_COMMANDS, SLOW_REFRESH, TABLE, MongodbCollector
from dbintel.agent.collectors.mongodb.metrics import SECANTUS
from dbintel.common.config import DatabaseConfig
from dbintel.common.secrets import resolve_secret
from tests.servers import SecantusServer, free_port

pytestmark = pytest.mark.integration

TESTS = Path(__file__).resolve().parents[1]
REFERENCE = TESTS / "reference" / "metrics" / "mongodb.tsv"
GOLDEN = TESTS / "golden" / "mongodb_series.txt"
PASSWORD_ENV = "DBINTEL_TEST_MONGODB_PASSWORD"
DEFAULT = TABLE.enabled()
ALL = frozenset(TABLE.by_name)
APP_DB = "dbintel_app"
# Default metrics whose serverStatus sections SecantusDB does not have (unit-tested on documented shapes),
# and numExtents, which no server reports since MongoDB 4.4.
SECANTUS_LACKS = {
    "mongodb.cache.operations",
    "mongodb.cursor.timeout.count",
    "mongodb.document.operation.count",
    "mongodb.global_lock.time",
    "mongodb.session.count",
    "mongodb.extent.count",
}


def default_reference_rows() -> list[dict[str, str]]:
    with REFERENCE.open(newline="") as handle:
        return [row for row in csv.DictReader(handle, delimiter="\t") if row["enabled_by_default"] == "true"]


def make_collector(
    endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    *,
    username: str | None = None,
    password: str | None = None,
    enabled: frozenset[str] = DEFAULT,
    clock=time.monotonic,
    **fields: object,
) -> MongodbCollector:
    """A collector configured as a user would: a password is an ${env:…} reference resolved on the agent."""
    if password is not None:
        monkeypatch.setenv(PASSWORD_ENV, password)
    config = DatabaseConfig(
        name="mongo-test",
        type="mongodb",
        endpoint=endpoint,
        username=username,
        password=f"${{env:{PASSWORD_ENV}}}" if password is not None else None,
        **fields,
    )
    secret = resolve_secret(config.password) if config.password else None
    return MongodbCollector(config, password=secret, enabled=enabled, clock=clock)


def seed(server: SecantusServer) -> None:
    """dbintel_app.orders (100 documents, an index used by a query) and dbintel_app.customers."""
    with server.client() as client:
        client.drop_database(APP_DB)
        db = client[APP_DB]
        db.orders.insert_many([{"n": i, "customer": i % 10, "total": i * 3} for i in range(100)])
        db.orders.create_index("customer")
        list(db.orders.find({"customer": 3}))
        db.customers.insert_many([{"_id": i, "name": f"c{i}"} for i in range(10)])


def admin_client(server: SecantusServer):
    """A second client that stays quiet between its own commands (no background hellos)."""
    return server.client(serverMonitoringMode="poll", heartbeatFrequencyMS=3_600_000)


async def drain(collector: MongodbCollector, max_rounds: int = 40) -> list[CollectionResult]:
    """Collect until a full pass of the slow schedule is done; every collection within the budget."""
    results = []
    for _ in range(max_rounds):
        result = await collector.collect()
        results.append(result)
        assert result.up and result.errors == [], result.errors
        assert result.statements <= MAX_COMMANDS, result.statements
        if collector.slow_backlog == 0:
            return results
    raise AssertionError(f"slow schedule not done after {max_rounds} collections")


def series(result: CollectionResult) -> dict[str, list]:
    found: dict[str, list] = {}
    for sample in result.samples:
        found.setdefault(sample.spec.name, []).append(sample)
    return found


def values(result: CollectionResult) -> dict[tuple[str, tuple[str, ...]], float]:
    return {(s.spec.name, s.attributes): s.value for s in result.samples}


class AuthSecantusServer(SecantusServer):
    """SecantusDB enforcing authentication and roles (--auth). Users are created before auth is switched on,
    as SecantusDB requires."""

    def __init__(self, users: dict[str, tuple[str, list]]) -> None:
        super().__init__(standalone=True)
        self.users = users  # name -> (password, roles)
        self.auth = False

    def _command(self) -> list[str]:
        return super()._command() + (["--auth"] if self.auth else [])

    def _provision(self) -> None:
        if self.auth:  # the restart below
            return
        seed(self)
        with self.client() as client:
            for user, (password, roles) in self.users.items():
                client.admin.command("createUser", user, pwd=password, roles=roles)
        self.stop()  # graceful: a killed SecantusDB loses what it had not flushed (the users)
        self.auth = True
        self.start()

    def _secrets(self) -> tuple[str, ...]:
        return tuple(password for password, _ in self.users.values())


# --- coverage -----------------------------------------------------------------------------------
async def test_every_default_metric_secantus_serves_is_emitted_as_declared(secantus_server, monkeypatch) -> None:
    seed(secantus_server)
    collector = make_collector(secantus_server.address, monkeypatch)
    try:
        last = (await drain(collector))[-1]
    finally:
        await collector.close()
    found = series(last)
    rows = default_reference_rows()
    assert len(rows) == 22
    for row in rows:
        name = row["metric_name"]
        assert bool(found.get(name)) == (name not in SECANTUS_LACKS), name
        for sample in found.get(name, []):
            spec = sample.spec
            assert spec is TABLE[name]
            assert (spec.type, spec.unit, spec.monotonic) == (row["type"], row["unit"], row["monotonic"] == "true")
            names = tuple(part.split("=", 1)[0] for part in row["attributes"].split(",") if part)
            assert spec.attributes == names and len(sample.attributes) == len(names), name
            assert all(isinstance(value, str) and value for value in sample.attributes), sample
    assert collector.role == "primary"
    assert not {name for name in found if not TABLE[name].enabled_by_default}  # optional ones stay off


async def test_verified_on_says_exactly_what_secantus_serves(secantus_server, monkeypatch) -> None:
    seed(secantus_server)
    collector = make_collector(secantus_server.address, monkeypatch, enabled=ALL)
    try:
        results = await drain(collector)
        with secantus_server.client() as client:
            client[APP_DB].orders.insert_one({"n": -1})  # so that the rates have something to measure
        results.append(await collector.collect())
    finally:
        await collector.close()
    emitted = set(series(results[-1]))
    claimed = {spec.name for spec in TABLE if SECANTUS in spec.verified_on}
    assert emitted == claimed, (sorted(emitted - claimed), sorted(claimed - emitted))


async def test_values_match_the_server(secantus_server, monkeypatch) -> None:
    seed(secantus_server)
    collector = make_collector(
        secantus_server.address, monkeypatch, enabled=DEFAULT | {"mongodb.collection.document.count"}
    )
    try:
        last = (await drain(collector))[-1]
    finally:
        await collector.close()
    got = values(last)
    with secantus_server.client() as client:
        stats = client[APP_DB].command("dbStats")
        databases = client.admin.command("listDatabases")["databases"]
    app = (APP_DB,)
    assert got[("mongodb.object.count", app)] == stats["objects"] == 110
    assert got[("mongodb.collection.count", app)] == stats["collections"] == 2
    assert got[("mongodb.index.count", app)] == stats["indexes"]
    assert got[("mongodb.data.size", app)] == stats["dataSize"]
    assert got[("mongodb.database.count", ())] == len(databases)
    assert got[("mongodb.collection.document.count", ("orders", APP_DB))] == 100
    assert got[("mongodb.collection.document.count", ("customers", APP_DB))] == 10
    assert ("mongodb.index.access.count", ("orders", APP_DB)) in got
    assert got[("mongodb.connection.count", ("current", "admin"))] >= 1  # ours at least
    assert got[("mongodb.operation.count", ("insert",))] >= 2
    assert got[("mongodb.operation.time", ("insert",))] > 0  # top: microseconds turned into ms


# --- cost ---------------------------------------------------------------------------------------
async def test_commands_per_collection_are_counted_as_the_server_counts_them(secantus_server, monkeypatch) -> None:
    seed(secantus_server)
    collector = make_collector(secantus_server.address, monkeypatch)
    with admin_client(secantus_server) as admin:
        try:
            before = admin.admin.command("serverStatus")
            results = await drain(collector)
            opened = admin.admin.command("serverStatus")["connections"]["totalCreated"]
            results += [await collector.collect() for _ in range(3)]
            after = admin.admin.command("serverStatus")
        finally:
            await collector.close()
    received = after["network"]["numRequests"] - before["network"]["numRequests"] - 2  # minus our two snapshots
    assert sum(r.statements for r in results) == received
    assert max(r.statements for r in results) <= MAX_COMMANDS
    # The first collection pays the handshake (monitor hello, pool hello) out of its budget.
    assert results[0].statements == MAX_COMMANDS
    assert collector.client.connections_opened == 1
    assert after["connections"]["totalCreated"] == opened  # no new connection once the pass was done
    steady = results[-3:]  # slow schedule done: serverStatus and top only
    assert [r.statements for r in steady] == [2, 2, 2]
    assert all(r.up and r.errors == [] for r in results)


async def test_disabled_metrics_send_no_commands_and_optional_ones_appear_only_when_enabled(
    secantus_server, monkeypatch
) -> None:
    seed(secantus_server)
    lean = make_collector(secantus_server.address, monkeypatch, enabled=frozenset({"mongodb.connection.count"}))
    rich = make_collector(
        secantus_server.address, monkeypatch, enabled=DEFAULT | {"mongodb.collection.storage.size", "mongodb.uptime"}
    )
    try:
        lean_results = [await lean.collect() for _ in range(3)]
        rich_last = (await drain(rich))[-1]
    finally:
        await lean.close()
        await rich.close()
    assert [r.statements for r in lean_results[1:]] == [1, 1]  # serverStatus only
    assert {s.spec.name for r in lean_results for s in r.samples} == {"mongodb.connection.count"}
    rich_names = set(series(rich_last))
    assert {"mongodb.collection.storage.size", "mongodb.uptime"} <= rich_names
    assert not rich_names & {"mongodb.collection.document.count", "mongodb.replica.status", "mongodb.oplog.usage"}


async def test_slow_schedule_reemits_cached_values_and_refreshes_after_slow_refresh(
    secantus_server, monkeypatch
) -> None:
    seed(secantus_server)
    now = [1000.0]
    collector = make_collector(secantus_server.address, monkeypatch, clock=lambda: now[0])
    try:
        await drain(collector)
        with secantus_server.client() as client:
            client[APP_DB].orders.insert_many([{"n": 1000 + i} for i in range(5)])
        now[0] += SLOW_REFRESH - 1
        cached = await collector.collect()
        assert cached.statements == 2 and collector.slow_backlog == 0  # serverStatus, top
        assert values(cached)[("mongodb.object.count", (APP_DB,))] == 110  # the cached dbStats
        now[0] += 1
        assert collector.slow_backlog > 0
        refreshed = (await drain(collector))[-1]
    finally:
        await collector.close()
    assert values(refreshed)[("mongodb.object.count", (APP_DB,))] == 115


# --- roles --------------------------------------------------------------------------------------
REPLICA_METRICS = frozenset(
    {
        "mongodb.replica.status",
        "mongodb.replica_set.member.count",
        "mongodb.replica_set.lag",
        "mongodb.replica_set.headroom",
        "mongodb.oplog.window",
        "mongodb.oplog.limit",
        "mongodb.oplog.usage",
    }
)


async def test_replica_set_primary_reports_its_state_and_the_oplog(secantus_server, monkeypatch) -> None:
    seed(secantus_server)
    collector = make_collector(secantus_server.address, monkeypatch, enabled=DEFAULT | REPLICA_METRICS)
    try:
        last = (await drain(collector))[-1]
    finally:
        await collector.close()
    got = values(last)
    assert collector.role == "primary"
    assert got[("mongodb.replica.status", ("primary",))] == 1
    assert sum(v for (name, _), v in got.items() if name == "mongodb.replica.status") == 1
    assert got[("mongodb.replica_set.member.count", ("primary",))] == 1
    assert got[("mongodb.oplog.window", ())] >= 0
    assert got[("mongodb.oplog.limit", ())] > 0 and ("mongodb.oplog.usage", ()) in got
    assert not {name for name, _ in got} & {"mongodb.replica_set.lag", "mongodb.replica_set.headroom"}  # no secondary


async def test_standalone_gets_no_replica_commands(monkeypatch) -> None:
    with SecantusServer(standalone=True) as server:
        seed(server)
        collector = make_collector(server.address, monkeypatch, enabled=DEFAULT | REPLICA_METRICS)
        try:
            results = await drain(collector)
            steady = await collector.collect()
        finally:
            await collector.close()
    assert collector.role == "standalone"
    assert steady.statements == 2  # serverStatus, top: no replSetGetStatus, no oplog commands
    assert not {s.spec.name for r in results + [steady] for s in r.samples} & REPLICA_METRICS
    assert "mongodb.database.count" in series(steady)


# --- failures -----------------------------------------------------------------------------------
async def test_wrong_password_is_down_and_never_shows_a_password(secantus_server, monkeypatch) -> None:
    right, wrong = "right-" + os.urandom(6).hex(), "wrong-" + os.urandom(6).hex()
    with secantus_server.client() as client:
        client.admin.command("createUser", f"monitor_{right[-6:]}", pwd=right, roles=["clusterMonitor"])
    collector = make_collector(secantus_server.address, monkeypatch, username=f"monitor_{right[-6:]}", password=wrong)
    try:
        result = await collector.collect()
    finally:
        await collector.close()
    assert not result.up and result.samples == []
    [error] = result.errors
    assert (error.query, error.reason) == ("fetch_server_status", "permission")
    assert "authentication failed" in error.message.lower() and "authSource" in error.message
    assert wrong not in repr(result) and right not in repr(result)
    good = make_collector(secantus_server.address, monkeypatch, username=f"monitor_{right[-6:]}", password=right)
    try:
        ok = await good.collect()
    finally:
        await good.close()
    assert ok.up and ok.errors == []
    assert ok.statements == MAX_COMMANDS  # monitor hello, pool hello, saslContinue, serverStatus


async def test_unreachable_server_is_down_and_the_collector_recovers(monkeypatch) -> None:
    password = "pw-" + os.urandom(6).hex()
    nowhere = make_collector(
        f"127.0.0.1:{free_port()}", monkeypatch, username="monitor", password=password, interval="5s", timeout="2s"
    )
    try:
        down = await nowhere.collect()
    finally:
        await nowhere.close()
    assert not down.up and [e.reason for e in down.errors] == ["connection"]
    assert password not in repr(down) and "Topology Description" not in down.errors[0].message
    with SecantusServer(standalone=True) as server:
        collector = make_collector(server.address, monkeypatch, interval="5s", timeout="2s")
        try:
            assert (await collector.collect()).up
            server.kill()
            gone = await collector.collect()
            assert not gone.up and gone.errors[0].reason == "connection"
            server.start()
            back = await collector.collect()
            assert back.up and back.errors == [], back.errors
            server.kill()
            server.start()  # between two collections: the pooled connection is dead, one retry hides it
            again = await collector.collect()
            assert again.up and again.errors == [], again.errors
        finally:
            await collector.close()
        await collector.close()  # idempotent


async def test_hung_server_times_out_and_a_cancelled_collection_leaves_the_collector_usable(monkeypatch) -> None:
    with SecantusServer(standalone=True) as server:
        collector = make_collector(server.address, monkeypatch, interval="5s", timeout="1s")
        try:
            assert (await collector.collect()).up
            server.pause()
            try:
                slow = await collector.collect()
                assert not slow.up and [e.reason for e in slow.errors] == ["timeout"], slow.errors
                with pytest.raises(asyncio.TimeoutError):  # the scheduler's own deadline cancels us
                    await asyncio.wait_for(collector.collect(), 0.2)
            finally:
                server.resume()
            result = await collector.collect()
            assert result.up and result.errors == [], result.errors
            assert {"mongodb.connection.count", "mongodb.operation.count"} <= set(series(result))
        finally:
            await collector.close()


async def test_missing_privileges_are_reported_once_with_the_grant_and_the_rest_flows(monkeypatch) -> None:
    users = {
        "monitor": ("monitor-" + os.urandom(6).hex(), ["clusterMonitor"]),
        "appreader": ("reader-" + os.urandom(6).hex(), [{"role": "read", "db": APP_DB}]),
    }
    with AuthSecantusServer(users) as server:
        now = [1000.0]
        # SecantusDB's clusterMonitor does not grant dbStats/listCollections/$indexStats on user databases
        # (MongoDB's does): those are denied, serverStatus and top flow.
        monitor = make_collector(
            server.address, monkeypatch, username="monitor", password=users["monitor"][0], clock=lambda: now[0]
        )
        try:
            first_pass = [await monitor.collect() for _ in range(12)]
            now[0] += SLOW_REFRESH
            second_pass = [await monitor.collect() for _ in range(12)]
        finally:
            await monitor.close()
        # A user without clusterMonitor: serverStatus, top and listDatabases are denied.
        reader = make_collector(
            server.address, monkeypatch, username="appreader", password=users["appreader"][0], clock=lambda: now[0]
        )
        try:
            reader_results = [await reader.collect() for _ in range(3)]
        finally:
            await reader.close()
    errors = [e for r in first_pass for e in r.errors]
    assert errors and {e.reason for e in errors} == {"permission"}
    queries = [e.query for e in errors]
    assert len(queries) == len(set(queries)), queries  # once per command, however many databases it is denied on
    assert "fetch_db_stats" in queries and "fetch_server_status" not in queries
    for error in errors:
        assert 'grantRolesToUser("monitor"' in error.message and users["monitor"][0] not in error.message
    assert [e for r in second_pass for e in r.errors] == []  # retried quietly after SLOW_REFRESH
    assert all(r.up for r in first_pass + second_pass)
    assert all("mongodb.operation.count" in series(r) for r in first_pass)  # the rest flows
    assert all(r.statements <= MAX_COMMANDS for r in first_pass + second_pass)

    reader_errors = [e for r in reader_results for e in r.errors]
    assert {e.query for e in reader_errors} == {"fetch_server_status", "fetch_top", "fetch_databases"}
    assert len(reader_errors) == 3 and reader_results[2].errors == []  # each reported once
    # The first collection's budget went to the handshake (2 hellos, saslContinue) and serverStatus; top
    # and listDatabases were tried on the second. Denied commands then wait SLOW_REFRESH: nothing is sent.
    assert [r.statements for r in reader_results] == [MAX_COMMANDS, 2, 0]
    assert all(r.up for r in reader_results)
    assert all(e.reason == "permission" and "clusterMonitor" in e.message for e in reader_errors)


async def test_golden_series(secantus_server, monkeypatch) -> None:
    seed(secantus_server)
    collector = make_collector(secantus_server.address, monkeypatch)
    try:
        last = (await drain(collector))[-1]
    finally:
        await collector.close()
    emitted = sorted(
        {
            f"{s.spec.prometheus_name}{{{','.join(s.spec.label_names)}}}"
            if s.spec.label_names
            else s.spec.prometheus_name
            for s in last.samples
            if s.spec.enabled_by_default
        }
    )
    if os.environ.get("DBINTEL_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text("\n".join(emitted) + "\n")
    assert emitted == GOLDEN.read_text().split(), "run with DBINTEL_UPDATE_GOLDEN=1 to accept the change"
