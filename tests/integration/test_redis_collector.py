"""RedisCollector against real redis-server processes (tests/servers.py via tests/conftest.py).

What the server itself says is the judge: commands per collection from INFO commandstats deltas,
connection reuse from CLIENT LIST ids and total_connections_received, taken by a separate client.
"""

from __future__ import annotations

import asyncio
import csv
import os
import time
from pathlib import Path

import pytest

from dbintel.agent.collectors.redis import REDIS_METRICS, RedisCollector
from dbintel.agent.collectors.redis.client import CLIENT_NAME
from dbintel.common.config import DatabaseConfig
from dbintel.common.secrets import resolve_secret
from tests.servers import RedisServer

pytestmark = pytest.mark.integration

PASSWORD_ENV = "DBINTEL_TEST_REDIS_PASSWORD"
TSV = Path(__file__).resolve().parents[1] / "reference" / "metrics" / "redis.tsv"
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "redis_series.txt"
DEFAULT = REDIS_METRICS.enabled()


def make_collector(
    server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    *,
    password: str | None = None,
    enabled: frozenset[str] = DEFAULT,
    **fields: object,
) -> RedisCollector:
    """A collector whose password reaches it as ${env:…}, as the agent resolves it."""
    monkeypatch.setenv(PASSWORD_ENV, server.password if password is None else password)
    database = DatabaseConfig(
        name="cache", type="redis", endpoint=server.address, password=f"${{env:{PASSWORD_ENV}}}", **fields
    )
    return RedisCollector(database, password=resolve_secret(database.password), enabled=enabled)


def commandstats(admin) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): stats["calls"] for name, stats in admin.info("commandstats").items()}


def our_connections(server: RedisServer) -> list[dict]:
    with server.client() as admin:
        return [c for c in admin.client_list() if c.get("name") == CLIENT_NAME]


def series(samples) -> list[str]:
    lines = {
        f"{s.spec.prometheus_name}{{{','.join(s.spec.label_names)}}}" if s.spec.label_names else s.spec.prometheus_name
        for s in samples
        if s.spec.enabled_by_default
    }
    return sorted(lines)


def prepare_keys_and_an_error(server: RedisServer) -> None:
    """Keys in db 0 (so keyspace series exist) and one error reply (so errorstats has a line)."""
    with server.client() as admin:
        admin.set("collector:key", "v")
        admin.set("collector:ttl", "v", ex=600)
        try:
            admin.lpush("collector:key", "x")  # WRONGTYPE
        except Exception:
            pass


async def wait_for(predicate, timeout: float = 15.0, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step)


# --- coverage ----------------------------------------------------------------------------------
async def test_every_default_metric_is_emitted_with_its_declared_shape(redis_server, monkeypatch) -> None:
    prepare_keys_and_an_error(redis_server)
    collector = make_collector(redis_server, monkeypatch)
    try:
        result = await collector.collect()
    finally:
        await collector.close()
    assert result.up and result.errors == []
    by_name: dict[str, list] = {}
    for sample in result.samples:
        by_name.setdefault(sample.spec.name, []).append(sample)
    with TSV.open(newline="") as handle:
        defaults = [row for row in csv.DictReader(handle, delimiter="\t") if row["enabled_by_default"] == "true"]
    assert len(defaults) == 29
    for row in defaults:
        name = row["metric_name"]
        assert name in by_name, f"{name} not emitted"
        for sample in by_name[name]:
            assert sample.spec.type == row["type"] and sample.spec.unit == row["unit"], name
            assert sample.spec.monotonic == (row["monotonic"] == "true"), name
            names = tuple(part.split("=", 1)[0] for part in row["attributes"].split(",") if part)
            assert sample.spec.attributes == names and len(sample.attributes) == len(names), name
            assert all(sample.attributes), name
    assert {s.attributes[0] for s in by_name["redis.cpu.time"]} == {
        "sys",
        "sys_children",
        "sys_main_thread",
        "user",
        "user_children",
        "user_main_thread",
    }
    assert ("0",) in {s.attributes for s in by_name["redis.db.keys"]}
    # beyond the receiver, on a standalone primary
    for name in (
        "redis.clients.max",
        "redis.rdb.last_bgsave.ok",
        "redis.rdb.last_save.age",
        "redis.aof.last_write.ok",
        "redis.slowlog.length",
        "redis.error_replies",
        "redis.errors",
    ):
        assert name in by_name, name
    assert ("WRONGTYPE",) in {s.attributes for s in by_name["redis.errors"]}
    with redis_server.client() as admin:  # Redis lowers maxclients to fit the file-descriptor limit
        assert by_name["redis.clients.max"][0].value == int(admin.config_get("maxclients")["maxclients"])
    assert not any(name.startswith("redis.cmd.") for name in by_name)  # optional, off by default


async def test_golden_series(fresh_redis, monkeypatch) -> None:
    prepare_keys_and_an_error(fresh_redis)
    collector = make_collector(fresh_redis, monkeypatch)
    try:
        await collector.collect()  # the first INFO asks for everything; the steady state is what counts
        result = await collector.collect()
    finally:
        await collector.close()
    assert result.up
    emitted = series(result.samples)
    if os.environ.get("DBINTEL_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text("\n".join(emitted) + "\n")
    assert emitted == GOLDEN.read_text().split(), "run with DBINTEL_UPDATE_GOLDEN=1 to accept the change"


# --- cost --------------------------------------------------------------------------------------
async def test_at_most_three_commands_per_collection_counted_by_the_server(fresh_redis, monkeypatch) -> None:
    # A server of its own: nobody else's commands in the deltas.
    collector = make_collector(fresh_redis, monkeypatch)
    try:
        first = await collector.collect()  # connects: AUTH, CLIENT SETNAME, INFO, SLOWLOG LEN
        assert first.up and first.statements == 4
        with fresh_redis.client() as admin:  # one connection for both snapshots: its AUTH is before
            before = commandstats(admin)
            results = [await collector.collect() for _ in range(5)]
            after = commandstats(admin)
    finally:
        await collector.close()
    delta = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    delta["info"] -= 1  # the first snapshot's own INFO is counted once it has replied
    sent = sum(delta.values())
    assert sent == sum(r.statements for r in results) == 10
    assert max(r.statements for r in results) <= 3
    assert delta["info"] == 5 and delta["slowlog|len"] == 5
    assert not {"auth", "hello", "client|setname"} & {name for name, calls in delta.items() if calls}  # no reconnects


async def test_disabling_metrics_drops_commands_and_enabling_commandstats_adds_a_section(
    redis_server, monkeypatch
) -> None:
    lean = make_collector(redis_server, monkeypatch, enabled=DEFAULT - {"redis.slowlog.length"})
    rich = make_collector(redis_server, monkeypatch, enabled=DEFAULT | {"redis.cmd.calls"})
    try:
        await lean.collect()
        assert (await lean.collect()).statements == 1
        await rich.collect()
        result = await rich.collect()
    finally:
        await lean.close()
        await rich.close()
    calls = {s.attributes[0]: s.value for s in result.samples if s.spec.name == "redis.cmd.calls"}
    assert calls["info"] >= 2 and "slowlog|len" in calls


async def test_one_connection_is_reused_on_the_configured_db(fresh_redis, monkeypatch) -> None:
    collector = make_collector(fresh_redis, monkeypatch, database="3")
    with fresh_redis.client() as admin:  # held open: its own connection counts once, before
        try:
            await collector.collect()
            [connection] = our_connections(fresh_redis)
            received = admin.info("stats")["total_connections_received"]
            for _ in range(5):
                assert (await collector.collect()).up
            assert admin.info("stats")["total_connections_received"] == received
            assert [c["id"] for c in our_connections(fresh_redis)] == [connection["id"]]
            assert connection["db"] == "3"
        finally:
            await collector.close()
        assert our_connections(fresh_redis) == []  # close() really closes
        await collector.close()  # idempotent


# --- failures ----------------------------------------------------------------------------------
async def test_wrong_password_is_down_with_no_password_in_the_error(redis_server, monkeypatch) -> None:
    wrong = "definitely-not-" + redis_server.password[:8]
    collector = make_collector(redis_server, monkeypatch, password=wrong)
    try:
        result = await collector.collect()
    finally:
        await collector.close()
    assert not result.up and result.samples == []
    [error] = result.errors
    assert (error.query, error.reason) == ("fetch_info", "permission")
    text = repr(result)
    assert wrong not in text and redis_server.password not in text


async def test_server_stopped_then_started_goes_down_and_recovers(fresh_redis, monkeypatch) -> None:
    collector = make_collector(fresh_redis, monkeypatch)
    try:
        assert (await collector.collect()).up
        fresh_redis.stop()
        down = await collector.collect()
        assert not down.up and [e.reason for e in down.errors] == ["connection"]
        assert fresh_redis.password not in repr(down)
        fresh_redis.start()
        back = await collector.collect()
        assert back.up and back.errors == []
        assert len(our_connections(fresh_redis)) == 1
    finally:
        await collector.close()


async def test_restart_between_collections_is_not_seen_as_down(fresh_redis, monkeypatch) -> None:
    collector = make_collector(fresh_redis, monkeypatch)
    try:
        assert (await collector.collect()).up
        fresh_redis.restart()  # our idle connection is now dead; the next command finds out
        result = await collector.collect()
        assert result.up and result.errors == []
        # INFO written to the dead socket, then a fresh connection: AUTH, CLIENT SETNAME, INFO, SLOWLOG LEN
        assert result.statements == 5
    finally:
        await collector.close()


async def test_hung_server_times_out_and_a_cancelled_collection_leaves_the_collector_usable(
    fresh_redis, monkeypatch
) -> None:
    collector = make_collector(fresh_redis, monkeypatch, interval="5s", timeout="1s")
    try:
        assert (await collector.collect()).up
        fresh_redis.pause()
        try:
            slow = await collector.collect()
            assert not slow.up and [e.reason for e in slow.errors] == ["timeout"]
            with pytest.raises(asyncio.TimeoutError):  # the scheduler's own deadline cancels us
                await asyncio.wait_for(collector.collect(), 0.2)
        finally:
            fresh_redis.resume()
        result = await collector.collect()
        assert result.up and result.errors == []
        assert {s.spec.name for s in result.samples} >= {"redis.uptime", "redis.memory.used"}
        assert len(our_connections(fresh_redis)) == 1
    finally:
        await collector.close()


# --- optional metrics: present only when enabled -------------------------------------------------
OPTIONAL = frozenset(s.name for s in REDIS_METRICS if not s.enabled_by_default)


def latency_spike(server: RedisServer) -> None:
    """Switch the latency monitor on and make a command take well over its 1 ms threshold."""
    with server.client() as admin:
        admin.config_set("latency-monitor-threshold", 1)
        admin.eval("local i = 0 while i < 3000000 do i = i + 1 end return i", 0)  # a busy script: ~10+ ms
        assert admin.execute_command("LATENCY", "LATEST"), "no latency spike recorded"


async def test_optional_metrics_appear_only_when_enabled(fresh_redis, monkeypatch) -> None:
    latency_spike(fresh_redis)
    chosen = {
        "redis.maxmemory",
        "redis.role",
        "redis.cmd.usec",
        "redis.latency.spike.duration",
        "redis.latency.spike.age",
    }
    default = make_collector(fresh_redis, monkeypatch)
    switched = make_collector(fresh_redis, monkeypatch, enabled=REDIS_METRICS.enabled(dict.fromkeys(chosen, True)))
    try:
        await default.collect()  # the first INFO asks for every section: the steady state is what counts
        await switched.collect()
        with fresh_redis.client() as admin:
            before = commandstats(admin)
            plain = await default.collect()
            between = commandstats(admin)
            rich = await switched.collect()
            after = commandstats(admin)
    finally:
        await default.close()
        await switched.close()
    assert plain.up and rich.up and plain.errors == rich.errors == []
    assert not OPTIONAL & {s.spec.name for s in plain.samples}
    assert OPTIONAL & {s.spec.name for s in rich.samples} == chosen
    spikes = {s.spec.name: s for s in rich.samples if s.spec.name.startswith("redis.latency.")}
    assert spikes["redis.latency.spike.duration"].attributes == ("command",)
    assert spikes["redis.latency.spike.duration"].value >= 0.001 and spikes["redis.latency.spike.age"].value >= 0
    # LATENCY LATEST is sent only while a latency metric is on: one command more, and only there
    assert rich.statements == plain.statements + 1 == 3
    assert between.get("latency|latest", 0) - before.get("latency|latest", 0) == 0
    assert after.get("latency|latest", 0) - between.get("latency|latest", 0) == 1


async def test_every_metric_claimed_verified_on_redis_7_0_is_seen_live(fresh_redis, monkeypatch) -> None:
    prepare_keys_and_an_error(fresh_redis)
    latency_spike(fresh_redis)
    collector = make_collector(
        fresh_redis, monkeypatch, enabled=REDIS_METRICS.enabled(dict.fromkeys(REDIS_METRICS.by_name, True))
    )
    try:
        result = await collector.collect()
    finally:
        await collector.close()
    assert result.up and result.errors == []
    claimed = {s.name for s in REDIS_METRICS if "Redis 7.0" in s.verified_on}
    seen = {s.spec.name for s in result.samples}
    assert claimed <= seen, sorted(claimed - seen)
    assert seen <= claimed  # nothing seen live goes unclaimed
