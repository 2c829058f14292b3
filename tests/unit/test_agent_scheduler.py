"""The agent's poll scheduler: schedule arithmetic (pure, property-tested) and the poll loop with
scripted in-process collectors (no network): timeouts, the concurrency bound, isolation of a hung
database, anchoring, first-poll placement after a hand-off, revocation and setup failures."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbintel.agent.collectors.base import DatabaseCollector
from dbintel.agent.collectors.metric_table import CollectionResult, MetricSpec, MetricTable, Sample
from dbintel.agent.runtime import make_collector
from dbintel.agent.scheduler import (
    CollectorSetupError,
    PollScheduler,
    first_poll_delay,
    next_slot,
)
from dbintel.common.config import DatabaseConfig

VALUE = MetricSpec("test.value", "gauge", "1", "A scripted value", "none")


# -- pure schedule arithmetic --------------------------------------------------------------------
def _close(a: float, b: float, scale: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(scale))


@given(interval=st.floats(0.01, 1e4), previous=st.floats(-1e6, 1e6), lag=st.floats(0, 1e3))
def test_next_slot_is_anchored_in_the_future_and_skips_missed_slots(interval, previous, lag):
    now = previous + lag * interval
    slot = next_slot(previous, interval, now)
    scale = max(abs(previous), abs(now), interval) * 1e3
    steps = (slot - previous) / interval
    assert steps >= 1 - 1e-6
    assert abs(steps - round(steps)) < 1e-6 * max(1.0, steps)  # phase kept: a whole number of intervals
    assert slot >= now or _close(slot, now, scale)  # never in the past
    # The slot before it is not in the future: missed slots are skipped, none is fired late in a burst.
    assert slot - interval <= now or round(steps) == 1


@given(interval=st.floats(0.01, 1e4), previous=st.floats(-1e6, 1e6), early=st.floats(0, 1))
def test_next_slot_is_previous_plus_interval_when_on_time(interval, previous, early):
    now = previous + early * interval
    assert next_slot(previous, interval, now) == previous + interval


def test_next_slot_after_an_overrun_skips_to_the_next_future_slot():
    assert next_slot(10.0, 1.0, 13.5) == 14.0
    assert next_slot(10.0, 1.0, 11.0) == 11.0


@given(interval=st.floats(1, 3600), now=st.floats(1e9, 2e9), since=st.floats(-7200, 7200))
def test_first_poll_continues_the_previous_owners_schedule(interval, now, since):
    last = now - since
    delay = first_poll_delay(interval, now, last, jitter=0.5)
    assert 0 <= delay <= interval
    due = last + interval
    if now <= due <= now + interval:
        assert math.isclose(now + delay, due, abs_tol=1e-6)  # where the next poll would have been
    elif due < now:
        assert delay == 0  # overdue: at once, so no gap grows
    else:
        assert delay == interval  # a last poll time in the future (skew) delays at most one interval


@given(interval=st.floats(1, 3600), jitter=st.floats(0, 1, exclude_max=True))
def test_first_poll_without_history_is_a_jittered_phase(interval, jitter):
    delay = first_poll_delay(interval, 1e9, None, jitter)
    assert delay == jitter * interval and 0 <= delay < interval


# -- scripted collectors -------------------------------------------------------------------------
def database(name: str, interval: float = 0.4, timeout: float | None = None) -> DatabaseConfig:
    """A database entry; intervals below the config minimum (1s) keep these tests fast."""
    base = DatabaseConfig(name=name, type="redis", endpoint="127.0.0.1:6379")
    return base.model_copy(
        update={
            "interval": timedelta(seconds=interval),
            "timeout": None if timeout is None else timedelta(seconds=timeout),
        }
    )


class Stage:
    """Shared observations of every scripted collector in one test."""

    def __init__(self) -> None:
        self.inflight = 0
        self.max_inflight = 0
        self.release = asyncio.Event()


class ScriptedCollector(DatabaseCollector):
    type = "redis"
    table = MetricTable([VALUE])

    def __init__(self, db: DatabaseConfig, stage: Stage, behaviour: Callable[[ScriptedCollector], Awaitable[None]]):
        super().__init__(db, password=None, enabled=frozenset({VALUE.name}))
        self.stage = stage
        self.behaviour = behaviour
        self.starts: list[float] = []
        self.cancellations = 0
        self.closed = 0

    async def collect(self) -> CollectionResult:
        self.starts.append(asyncio.get_running_loop().time())
        self.stage.inflight += 1
        self.stage.max_inflight = max(self.stage.max_inflight, self.stage.inflight)
        try:
            await self.behaviour(self)
        except asyncio.CancelledError:
            self.cancellations += 1
            raise
        finally:
            self.stage.inflight -= 1
        return CollectionResult(samples=[Sample(VALUE, float(len(self.starts)))], statements=1)

    async def close(self) -> None:
        self.closed += 1


async def fast(_: ScriptedCollector) -> None:
    return None


def taking(seconds: float) -> Callable[[ScriptedCollector], Awaitable[None]]:
    async def behaviour(_: ScriptedCollector) -> None:
        await asyncio.sleep(seconds)

    return behaviour


async def hang(collector: ScriptedCollector) -> None:
    await asyncio.Event().wait()  # a black-holed server: never answers


async def hang_ignoring_cancellation(collector: ScriptedCollector) -> None:
    while not collector.stage.release.is_set():
        try:
            await collector.stage.release.wait()
        except asyncio.CancelledError:
            collector.cancellations += 1  # a badly behaved driver swallows it and keeps waiting


class Harness:
    """A scheduler whose factory builds ScriptedCollectors by database name."""

    def __init__(self, behaviours: dict[str, Callable], *, max_concurrent_polls: int = 8, **kwargs) -> None:
        self.stage = Stage()
        self.behaviours = behaviours
        self.collectors: dict[str, ScriptedCollector] = {}
        self.durations: list[tuple[str, float]] = []
        self.scheduler = PollScheduler(
            self.factory,
            max_concurrent_polls=max_concurrent_polls,
            on_poll=lambda t, d: self.durations.append((t, d)),
            **kwargs,
        )

    def factory(self, resource_id: str, db: DatabaseConfig) -> ScriptedCollector:
        collector = ScriptedCollector(db, self.stage, self.behaviours[db.name])
        self.collectors[db.name] = collector
        return collector

    def add(self, db: DatabaseConfig, last_poll_time: float | None = None) -> str:
        resource_id = db.resource_id("db:")
        self.scheduler.add(resource_id, db, last_poll_time=last_poll_time)
        return resource_id

    def starts(self, name: str) -> list[float]:
        collector = self.collectors.get(name)
        return collector.starts if collector is not None else []

    def snapshot(self, name: str):
        return self.scheduler.snapshots().get(f"db:redis/{name}")

    async def close(self) -> None:
        self.stage.release.set()
        await self.scheduler.close()


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@pytest.fixture
async def harness_factory():
    made: list[Harness] = []

    def make(behaviours, **kwargs) -> Harness:
        made.append(Harness(behaviours, **kwargs))
        return made[-1]

    yield make
    for harness in made:
        await harness.close()


class _FixedRandom(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


# -- the poll loop --------------------------------------------------------------------------------
async def test_a_poll_that_times_out_marks_the_database_down_and_cancels_the_collection(harness_factory):
    harness = harness_factory({"slow": hang}, rng=_FixedRandom(0.0))
    harness.add(database("slow", interval=0.5, timeout=0.15))
    await eventually(lambda: harness.snapshot("slow").polls_total >= 1)
    snapshot = harness.snapshot("slow")
    assert not snapshot.up
    assert snapshot.errors_total == 1 and dict(snapshot.error_counts) == {"timeout": 1}
    assert snapshot.down_reason.startswith("timeout")
    assert snapshot.samples_by_metric == {}  # a down database shows no stale values
    await eventually(lambda: harness.collectors["slow"].cancellations == 1)
    assert harness.stage.inflight == 0


async def test_a_hung_poll_holds_the_semaphore_no_longer_than_its_timeout(harness_factory):
    # One poll slot only, and a collector that even swallows cancellation: the other database
    # still gets the slot as soon as the hung poll's timeout expires.
    harness = harness_factory(
        {"stuck": hang_ignoring_cancellation, "ok": fast}, max_concurrent_polls=1, rng=_FixedRandom(0.0)
    )
    harness.add(database("stuck", interval=0.6, timeout=0.2))
    await eventually(lambda: len(harness.starts("stuck")) == 1)
    harness.add(database("ok", interval=0.2))
    await eventually(
        lambda: harness.snapshot("ok").polls_total >= 4 and harness.snapshot("stuck").polls_total >= 2, timeout=10
    )
    stuck = harness.snapshot("stuck")
    assert not stuck.up and stuck.error_counts["timeout"] == stuck.polls_total
    # The stubborn collection still runs, so the collector is not entered a second time.
    assert len(harness.collectors["stuck"].starts) == 1
    assert "previous poll has not finished" in stuck.down_reason
    assert harness.snapshot("ok").up


async def test_concurrency_is_bounded_by_max_concurrent_polls(harness_factory):
    harness = harness_factory({f"db{i}": taking(0.15) for i in range(6)}, max_concurrent_polls=2, rng=_FixedRandom(0.0))
    for i in range(6):
        harness.add(database(f"db{i}", interval=0.5))
    await eventually(lambda: all((harness.snapshot(f"db{i}").polls_total >= 2) for i in range(6)), timeout=10)
    assert harness.stage.max_inflight == 2  # reached, never exceeded


async def test_one_hung_database_does_not_delay_the_others(harness_factory):
    harness = harness_factory({"hole": hang, "ok": fast}, max_concurrent_polls=4, rng=_FixedRandom(0.0))
    harness.add(database("hole", interval=0.3, timeout=0.25))
    harness.add(database("ok", interval=0.25))
    await eventually(lambda: len(harness.starts("ok")) >= 8, timeout=10)
    starts = harness.collectors["ok"].starts
    lateness = [start - (starts[0] + k * 0.25) for k, start in enumerate(starts)]
    assert all(-0.01 <= late < 0.15 for late in lateness), lateness  # every poll on its slot
    assert harness.snapshot("ok").up and harness.snapshot("ok").errors_total == 0
    assert not harness.snapshot("hole").up


async def test_the_schedule_is_anchored_not_drifting_by_the_poll_duration(harness_factory):
    harness = harness_factory({"db": taking(0.12)}, rng=_FixedRandom(0.0))
    harness.add(database("db", interval=0.3))
    await eventually(lambda: len(harness.starts("db")) >= 8, timeout=10)
    starts = harness.collectors["db"].starts
    # Anchored: 7 intervals = 2.1s. Re-arming after each poll would give 7 * 0.42 = 2.94s.
    assert abs((starts[7] - starts[0]) - 2.1) < 0.2
    assert [t for t, _ in harness.durations][:1] == ["redis"]
    assert all(d >= 0.12 for _, d in harness.durations)


async def test_first_poll_lands_where_the_previous_owner_would_have_polled(harness_factory):
    wall = 1_800_000_000.0
    harness = harness_factory(
        {"handed": fast, "overdue": fast, "fresh": fast}, wall_clock=lambda: wall, rng=_FixedRandom(0.9)
    )
    loop = asyncio.get_running_loop()
    added = loop.time()
    harness.add(database("handed", interval=5), last_poll_time=wall - 5 + 0.5)  # due in 0.5s
    harness.add(database("overdue", interval=5), last_poll_time=wall - 60)  # due long ago
    harness.add(database("fresh", interval=5))  # no history: jitter 0.9 -> 4.5s
    await eventually(lambda: harness.snapshot("handed").polled, timeout=3)
    handed_first = harness.collectors["handed"].starts[0] - added
    assert 0.45 <= handed_first < 2.0  # not at once: that would be a double sample
    assert harness.collectors["overdue"].starts[0] - added < handed_first  # at once: no gap
    assert "fresh" not in harness.collectors  # its phase is 4.5s away
    assert harness.snapshot("handed").inherited_last_poll_time == wall - 5 + 0.5
    assert harness.snapshot("handed").last_poll_time == wall  # this agent's own poll, by the wall clock


async def test_granting_a_held_database_again_keeps_its_schedule(harness_factory):
    harness = harness_factory({"db": fast}, rng=_FixedRandom(0.0))
    db = database("db", interval=0.3)
    harness.add(db)
    await eventually(lambda: len(harness.starts("db")) >= 2)
    collector = harness.collectors["db"]
    harness.add(db, last_poll_time=0.0)  # would mean "poll at once" for a new grant
    await eventually(lambda: len(collector.starts) >= 5, timeout=5)
    assert harness.collectors["db"] is collector  # the same collector (connection) throughout
    gaps = [b - a for a, b in zip(collector.starts, collector.starts[1:], strict=False)]
    assert all(gap > 0.2 for gap in gaps), gaps  # no extra poll was squeezed in


async def test_revoking_drops_the_snapshot_at_once_and_closes_the_collector(harness_factory):
    harness = harness_factory({"gone": fast, "busy": hang, "kept": fast}, rng=_FixedRandom(0.0))
    gone = harness.add(database("gone", interval=0.2))
    busy = harness.add(database("busy", interval=2, timeout=2))
    harness.add(database("kept", interval=0.2))
    await eventually(lambda: harness.snapshot("gone").polls_total >= 2 and harness.stage.inflight == 1)
    await harness.scheduler.remove({gone, busy})  # "busy" is mid-poll
    assert set(harness.scheduler.snapshots()) == {"db:redis/kept"}
    assert harness.scheduler.held == frozenset({"db:redis/kept"})
    await harness.scheduler.wait_closed()
    assert harness.collectors["gone"].closed == 1 and harness.collectors["busy"].closed == 1
    assert harness.collectors["busy"].cancellations == 1
    polls = len(harness.collectors["gone"].starts)
    await asyncio.sleep(0.5)
    assert len(harness.collectors["gone"].starts) == polls  # no poll after the revocation
    assert harness.snapshot("kept").polls_total >= 3


async def test_a_collector_that_cannot_be_set_up_marks_only_its_database_down_and_is_retried():
    attempts = []

    def factory(resource_id: str, db: DatabaseConfig) -> DatabaseCollector:
        attempts.append(resource_id)
        raise CollectorSetupError("secret", "password ${env:ORDERS_PW}: environment variable ORDERS_PW is not set")

    scheduler = PollScheduler(factory, max_concurrent_polls=2, rng=_FixedRandom(0.0))
    scheduler.add("db:redis/orders", database("orders", interval=0.2))
    try:
        await eventually(lambda: len(attempts) >= 2)
        snapshot = scheduler.snapshots()["db:redis/orders"]
        assert not snapshot.up and snapshot.polled and snapshot.error_counts["secret"] >= 1
        assert "${env:ORDERS_PW}" in snapshot.down_reason
    finally:
        await scheduler.close()


async def test_a_collector_that_raises_or_reports_down_is_counted_and_polled_again(harness_factory):
    async def boom(_: ScriptedCollector) -> None:
        raise RuntimeError("collector bug")

    harness = harness_factory({"buggy": boom}, rng=_FixedRandom(0.0))
    harness.add(database("buggy", interval=0.2))
    await eventually(lambda: harness.snapshot("buggy").polls_total >= 2)
    snapshot = harness.snapshot("buggy")
    assert snapshot.error_counts["collector_error"] == snapshot.polls_total == snapshot.errors_total
    assert not snapshot.up

    class Down(ScriptedCollector):
        async def collect(self) -> CollectionResult:
            return CollectionResult(up=False)

    scheduler = PollScheduler(lambda rid, db: Down(db, Stage(), fast), max_concurrent_polls=1, rng=_FixedRandom(0.0))
    scheduler.add("db:redis/down", database("down", interval=0.2))
    try:
        await eventually(lambda: scheduler.snapshots()["db:redis/down"].polled)
        assert dict(scheduler.snapshots()["db:redis/down"].error_counts) == {"connection": 1}
    finally:
        await scheduler.close()


async def test_changed_returns_at_each_grant_poll_and_revocation(harness_factory):
    harness = harness_factory({"a": fast}, rng=_FixedRandom(0.5))
    scheduler = harness.scheduler
    granted = asyncio.ensure_future(scheduler.changed())
    await asyncio.sleep(0)
    assert not granted.done()  # nothing has changed yet
    resource_id = harness.add(database("a", interval=0.4))  # first poll 0.2s later (jitter 0.5)
    await asyncio.wait_for(granted, 1)
    assert not scheduler.snapshots()[resource_id].polled
    await asyncio.wait_for(scheduler.changed(), 2)
    assert scheduler.snapshots()[resource_id].polls_total == 1
    revoked = asyncio.ensure_future(scheduler.changed())
    await asyncio.sleep(0)
    await scheduler.remove({resource_id})
    await asyncio.wait_for(revoked, 1)
    assert scheduler.snapshots() == {}


# -- building a collector: secrets and switches -------------------------------------------------------
def test_an_unresolvable_password_names_the_reference_never_a_value(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-secret"
    db = DatabaseConfig(name="cache", type="redis", endpoint="127.0.0.1:6379", password=f"${{file:{missing}}}")
    with pytest.raises(CollectorSetupError) as caught:
        make_collector("db:redis/cache", db)
    assert caught.value.reason == "secret" and f"${{file:{missing}}}" in str(caught.value)

    monkeypatch.setenv("CACHE_PW", "s3cr3t-value-never-shown")
    bad_switch = DatabaseConfig(
        name="cache",
        type="redis",
        endpoint="127.0.0.1:6379",
        password="${env:CACHE_PW}",
        metrics={"redis.no.such.metric": {"enabled": True}},
    )
    with pytest.raises(CollectorSetupError) as caught:
        make_collector("db:redis/cache", bad_switch)
    assert caught.value.reason == "config" and "redis.no.such.metric" in str(caught.value)
    assert "s3cr3t" not in str(caught.value)


def test_make_collector_resolves_the_password_and_applies_metric_switches(monkeypatch):
    monkeypatch.setenv("CACHE_PW", "pw-value")
    db = DatabaseConfig(
        name="cache",
        type="redis",
        endpoint="127.0.0.1:6379",
        password="${env:CACHE_PW}",
        metrics={"redis.uptime": {"enabled": False}},
    )
    collector = make_collector("db:redis/cache", db)
    assert collector.type == "redis" and collector.database is db
    assert "redis.uptime" not in collector.enabled and "redis.memory.used" in collector.enabled
    assert collector._password.get_secret_value() == "pw-value"


# -- the collector registry -------------------------------------------------------------------------
def test_the_registry_finds_collectors_by_type_and_names_what_is_missing(monkeypatch):
    from dbintel.agent.collectors import CollectorUnavailable, collector_class, table_for
    from dbintel.agent.collectors.redis import RedisCollector

    assert collector_class("redis") is RedisCollector and table_for("redis") is RedisCollector.table
    with pytest.raises(CollectorUnavailable, match="unknown database type 'oracle'"):
        collector_class("oracle")
    monkeypatch.delattr("dbintel.agent.collectors.redis.COLLECTOR")
    with pytest.raises(CollectorUnavailable, match="does not export COLLECTOR"):
        collector_class("redis")
    db = DatabaseConfig(name="cache", type="redis", endpoint="127.0.0.1:6379")
    with pytest.raises(CollectorSetupError) as caught:
        make_collector("db:redis/cache", db)
    assert caught.value.reason == "config"
