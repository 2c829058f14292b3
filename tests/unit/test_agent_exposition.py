"""The agent's Prometheus exposition: labels, naming, self-metrics, vanishing on revoke, and a
scrape path that does no I/O (it never waits for a collection)."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dbintel.agent.collectors.base import DatabaseCollector
from dbintel.agent.collectors.metric_table import CollectionResult, MetricSpec, MetricTable, QueryError, Sample
from dbintel.agent.exposition import AgentExposition, AgentStatus, utilization
from dbintel.agent.scheduler import PollScheduler, ResourceSnapshot
from dbintel.common.config import DatabaseConfig

CPU = MetricSpec("redis.cpu.time", "sum", "s", "CPU time", "INFO cpu", monotonic=True, attributes=("state",))
KEYS = MetricSpec("redis.db.keys", "sum", "{key}", "Keys", "INFO keyspace", attributes=("db",))
MEMORY = MetricSpec("redis.memory.used", "gauge", "By", "Memory used", "INFO memory")

STATUS = AgentStatus(assigned_databases=2, assignment_epoch=7, coordinator_degraded=False, coordinator_connected=True)


def db(name: str, labels: dict[str, str] | None = None, interval: float = 10.0) -> DatabaseConfig:
    base = DatabaseConfig(name=name, type="redis", endpoint="127.0.0.1:6379", labels=labels or {})
    return base.model_copy(update={"interval": timedelta(seconds=interval)})


def polled(
    name: str,
    samples: list[Sample],
    *,
    labels=None,
    up=True,
    errors=(),
    duration=0.5,
    interval=10.0,
    statements=2,
    at=1_700_000_000.0,
) -> ResourceSnapshot:
    start = ResourceSnapshot(f"db:redis/{name}", db(name, labels, interval))
    result = CollectionResult(samples=samples, errors=list(errors), statements=statements, up=up)
    return start.after_poll(started=at, duration=duration, outcome=result)


def scrape(target) -> dict[str, list]:
    """{family name: [(sample name, labels, value)]} from what /metrics serves, as Prometheus parses it."""
    text = (target.render() if isinstance(target, AgentExposition) else generate_latest(target)).decode()
    return {
        f.name: [(s.name, s.labels, s.value) for s in f.samples] for f in text_string_to_metric_families(text)
    }, text


def exposition(snapshots: dict[str, ResourceSnapshot], status: AgentStatus = STATUS, max_concurrent_polls: int = 4):
    registry = CollectorRegistry()
    expo = AgentExposition(
        registry, snapshots=lambda: snapshots, status=lambda: status, max_concurrent_polls=max_concurrent_polls
    )
    return registry, expo


def test_database_series_carry_the_resource_user_labels_and_metric_labels():
    cache = polled(
        "cache",
        [Sample(CPU, 1.5, ("user",)), Sample(CPU, 0.5, ("sys",)), Sample(MEMORY, 1024.0), Sample(KEYS, 3, ("0",))],
        labels={"team": "payments", "state": "prod"},
    )  # "state" collides with redis.cpu.time's label
    other = polled("other", [Sample(MEMORY, 2048.0)])
    _, expo = exposition({cache.resource_id: cache, other.resource_id: other})
    families, text = scrape(expo)

    assert sorted(families["redis_cpu_time_seconds"], key=lambda s: s[2]) == [
        (
            "redis_cpu_time_seconds_total",
            {"dbintel_resource": "db:redis/cache", "team": "payments", "state": "sys"},
            0.5,
        ),
        (
            "redis_cpu_time_seconds_total",
            {"dbintel_resource": "db:redis/cache", "team": "payments", "state": "user"},
            1.5,
        ),
    ]  # the metric's own "state" wins over the user label of the same name
    assert "# TYPE redis_cpu_time_seconds_total counter" in text
    assert sorted(families["redis_memory_used_bytes"], key=lambda s: s[2]) == [
        (
            "redis_memory_used_bytes",
            {"dbintel_resource": "db:redis/cache", "team": "payments", "state": "prod"},
            1024.0,
        ),
        ("redis_memory_used_bytes", {"dbintel_resource": "db:redis/other"}, 2048.0),
    ]  # where nothing collides, the user's "state" label stays
    assert "# TYPE redis_memory_used_bytes gauge" in text
    assert families["redis_db_keys"] == [
        ("redis_db_keys", {"dbintel_resource": "db:redis/cache", "team": "payments", "state": "prod", "db": "0"}, 3.0)
    ]
    assert "# HELP redis_memory_used_bytes Memory used" in text


def test_self_metrics_describe_polls_errors_and_the_agent():
    ok = polled("ok", [Sample(MEMORY, 1.0)], duration=2.0, interval=10.0, statements=2, at=1_700_000_100.25)
    down = polled(
        "down",
        [],
        up=False,
        duration=1.0,
        interval=4.0,
        statements=0,
        errors=[QueryError("fetch_info", "connection", "refused")],
    )
    down = down.after_poll(started=1_700_000_104.0, duration=1.0, outcome=("timeout", "no answer"))
    never = ResourceSnapshot("db:redis/never", db("never"))  # granted, first poll not due yet
    status = AgentStatus(
        assigned_databases=3, assignment_epoch=42, coordinator_degraded=True, coordinator_connected=False
    )
    registry, expo = exposition({s.resource_id: s for s in (ok, down, never)}, status, max_concurrent_polls=2)
    expo.observe_poll("redis", 0.003)
    families, text = scrape(expo)
    assert "dbintel_database_up" not in scrape(registry)[0]  # a database series, rendered with the others

    def values(family: str) -> dict:
        return {tuple(sorted(labels.items())): value for _, labels, value in families[family]}

    assert values("dbintel_database_up") == {
        (("dbintel_resource", "db:redis/ok"), ("type", "redis")): 1.0,
        (("dbintel_resource", "db:redis/down"), ("type", "redis")): 0.0,
    }  # nothing for a not yet polled one
    assert values("dbintel_agent_poll_errors") == {
        (("dbintel_resource", "db:redis/down"), ("reason", "connection")): 1.0,
        (("dbintel_resource", "db:redis/down"), ("reason", "timeout")): 1.0,
    }
    assert values("dbintel_agent_polls") == {
        (("dbintel_resource", "db:redis/ok"),): 1.0,
        (("dbintel_resource", "db:redis/down"),): 2.0,
    }
    assert values("dbintel_agent_statements_per_poll")[(("dbintel_resource", "db:redis/ok"),)] == 2.0
    assert (
        values("dbintel_agent_last_poll_timestamp_seconds")[(("dbintel_resource", "db:redis/ok"),)] == 1_700_000_100.25
    )
    assert values("dbintel_agent_assigned_databases") == {(): 3.0}
    assert values("dbintel_agent_assignment_epoch") == {(): 42.0}
    assert values("dbintel_agent_coordinator_degraded") == {(): 1.0}
    assert values("dbintel_agent_coordinator_connected") == {(): 0.0}
    # (2/10 + 1/4) / 2 slots
    assert abs(values("dbintel_agent_utilization")[()] - 0.225) < 1e-9
    assert "max_concurrent_polls" in text.split("# HELP dbintel_agent_utilization", 1)[1].split("\n", 1)[0]
    assert ("dbintel_agent_poll_duration_seconds_count", {"type": "redis"}, 1.0) in families[
        "dbintel_agent_poll_duration_seconds"
    ]


def test_utilization_is_the_mean_number_of_polls_in_flight_over_the_slots():
    snaps = [
        polled("a", [], duration=5.0, interval=10.0),
        polled("b", [], duration=5.0, interval=10.0),
        ResourceSnapshot("db:redis/c", db("c")),
    ]
    assert utilization(snaps, 1) == 1.0
    assert utilization(snaps, 4) == 0.25
    assert utilization([], 4) == 0.0


def test_the_exposition_uses_only_the_registry_it_is_given():
    from prometheus_client import REGISTRY

    before = set(REGISTRY._collector_to_names)
    exposition({})
    assert set(REGISTRY._collector_to_names) == before


# -- with the scheduler: vanish on revoke, no I/O on the scrape path ------------------------------
class Scripted(DatabaseCollector):
    type = "redis"
    table = MetricTable([MEMORY])

    def __init__(self, database: DatabaseConfig, gate: asyncio.Event):
        super().__init__(database, password=None, enabled=frozenset({MEMORY.name}))
        self.gate = gate
        self.collections = 0

    async def collect(self) -> CollectionResult:
        self.collections += 1
        if self.collections > 1:
            await self.gate.wait()  # from the second poll on, the "server" hangs until the test opens the gate
        return CollectionResult(samples=[Sample(MEMORY, 100.0 * self.collections)], statements=1)

    async def close(self) -> None:
        pass


async def _until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_scrapes_read_the_last_snapshot_without_waiting_for_a_poll_and_revoked_series_vanish():
    gate = asyncio.Event()
    collectors: dict[str, Scripted] = {}

    def factory(resource_id: str, database: DatabaseConfig) -> Scripted:
        collectors[resource_id] = Scripted(database, gate)
        return collectors[resource_id]

    scheduler = PollScheduler(factory, max_concurrent_polls=4)
    expo = AgentExposition(
        CollectorRegistry(), snapshots=scheduler.snapshots, status=lambda: STATUS, max_concurrent_polls=4
    )
    fast = db("a", interval=0.2).model_copy(update={"timeout": timedelta(seconds=5)})
    for name in ("a", "b"):
        scheduler.add(f"db:redis/{name}", fast.model_copy(update={"name": name}), last_poll_time=0.0)
    try:
        await _until(lambda: len(collectors) == 2 and all(c.collections == 2 for c in collectors.values()))
        # Both second polls hang now; scraping must not wait for them (a scrape is a plain read).
        for _ in range(3):
            families, _ = await asyncio.wait_for(asyncio.to_thread(scrape, expo), timeout=5)
        assert sorted(
            (labels["dbintel_resource"], value) for _, labels, value in families["redis_memory_used_bytes"]
        ) == [("db:redis/a", 100.0), ("db:redis/b", 100.0)]  # the last finished poll's values
        assert all(c.collections == 2 for c in collectors.values())  # scrapes triggered no collection

        await scheduler.remove({"db:redis/a"})
        families, _ = scrape(expo)
        resources = {labels.get("dbintel_resource") for f in families.values() for _, labels, _ in f}
        assert "db:redis/a" not in resources and "db:redis/b" in resources
        gate.set()
        await _until(lambda: collectors["db:redis/b"].collections >= 3)
        await _until(lambda: scrape(expo)[0]["redis_memory_used_bytes"][0][2] >= 200.0)
    finally:
        gate.set()
        await scheduler.close()


def test_each_snapshot_is_rendered_once_however_often_it_is_scraped(monkeypatch):
    import dbintel.agent.exposition as module

    calls = []
    real = module.render_snapshot
    monkeypatch.setattr(
        module,
        "render_snapshot",
        lambda snapshot, **options: calls.append((snapshot.resource_id, options)) or real(snapshot, **options),
    )
    first = polled("a", [Sample(MEMORY, 1.0)])
    snapshots = {first.resource_id: first}
    _, expo = exposition(snapshots)
    texts = {expo.render() for _ in range(5)}
    assert len(texts) == 1 and calls == [("db:redis/a", {"poll_timestamps": False})]
    stamped = {expo.render(poll_timestamps=True) for _ in range(3)} | {expo.render_query({"timestamps": ["poll"]})}
    assert len(stamped) == 1 and calls[1:] == [("db:redis/a", {"poll_timestamps": True})]  # once per variant
    assert {expo.render() for _ in range(2)} == texts and len(calls) == 2
    snapshots[first.resource_id] = polled("a", [Sample(MEMORY, 2.0)], at=1_700_000_010.0)  # a new poll
    families, _ = scrape(expo)
    assert calls[2:] == [("db:redis/a", {"poll_timestamps": False})]
    assert [value for _, _, value in families["redis_memory_used_bytes"]] == [2.0]


def test_rendering_escapes_what_the_text_format_requires():
    odd = polled(
        "odd",
        [Sample(CPU, float("inf"), ('us"er\\n',)), Sample(CPU, 2.0, ("50%",)), Sample(MEMORY, float("nan"))],
        labels={"team": '100% "ops"\nnight'},
    )
    _, expo = exposition({odd.resource_id: odd})
    families, _text = scrape(expo)
    values = {labels["state"]: value for _, labels, value in families["redis_cpu_time_seconds"]}
    assert values['us"er\\n'] == float("inf") and values["50%"] == 2.0
    assert all(labels["team"] == '100% "ops"\nnight' for _, labels, _ in families["redis_cpu_time_seconds"])
    assert [v != v for _, _, v in families["redis_memory_used_bytes"]] == [True]  # NaN


def test_database_samples_carry_their_poll_time_only_when_the_scrape_asks():
    """`?timestamps=poll` (the shipped PodMonitor): every database sample, `dbintel_database_up` included,
    is stamped with its poll's start in ms, so Prometheus keeps one series across a hand-off; the agent's
    own series never are, and a plain /metrics scrape gets no timestamps at all."""
    cache = polled(
        "cache",
        [Sample(CPU, 1.5, ("user",)), Sample(MEMORY, float("nan"))],
        labels={"team": "a"},
        at=1_700_000_123.4567,
    )
    down = polled("down", [], up=False, at=1_700_000_200.0)
    never = ResourceSnapshot("db:redis/never", db("never"))
    _, expo = exposition({s.resource_id: s for s in (cache, down, never)})
    text = expo.render_query({"timestamps": ["poll"]}).decode()
    stamped = {
        (sample.name, sample.labels.get("dbintel_resource")): sample.timestamp
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    database = {key: ts for key, ts in stamped.items() if not key[0].startswith("dbintel_agent_") and key[1]}
    assert database == {
        ("dbintel_database_up", "db:redis/cache"): 1_700_000_123.456,
        ("redis_cpu_time_seconds_total", "db:redis/cache"): 1_700_000_123.456,
        ("redis_memory_used_bytes", "db:redis/cache"): 1_700_000_123.456,
        ("dbintel_database_up", "db:redis/down"): 1_700_000_200.0,
    }
    assert 'redis_memory_used_bytes{dbintel_resource="db:redis/cache",team="a"} NaN 1700000123456\n' in text
    own = {key: ts for key, ts in stamped.items() if key not in database}
    assert own and all(ts is None for ts in own.values())  # dbintel_agent_*, process and python series
    for query in ({}, {"timestamps": ["server"]}):
        plain = expo.render_query(query).decode()
        assert all(s.timestamp is None for f in text_string_to_metric_families(plain) for s in f.samples)
        assert plain == expo.render().decode()
