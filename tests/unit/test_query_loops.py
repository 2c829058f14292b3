"""The scheduler's query-intelligence loops with a scripted in-process collector (no network): reads
take turns with polls, texts are fetched once per statement, a released database's state continues the
interval on its next owner, and the exposition stamps the series with their own reads."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

from dbintel.agent.collectors.base import DatabaseCollector
from dbintel.agent.collectors.metric_table import CollectionResult, MetricTable
from dbintel.agent.exposition import render_snapshot
from dbintel.agent.queries.model import ActiveSession, SampleRead, StatementCounters, StatementRead
from dbintel.agent.queries.obfuscation import ObfuscatedText
from dbintel.agent.scheduler import PollScheduler, ResourceSnapshot
from dbintel.common.config import DatabaseConfig, QuerySampleCollection, TopQueryCollection

RID = "db:postgresql/orders"
DB = DatabaseConfig(name="orders", type="postgresql", endpoint="127.0.0.1:5432", interval=timedelta(seconds=1))


class ScriptedServer:
    """What a database would answer: statements that grow by a fixed step per read."""

    def __init__(self) -> None:
        self.calls = {"heavy": 0.0, "light": 0.0}
        self.text_fetches: list[list[str]] = []
        self.busy = False  # a read or poll is using the one connection
        self.overlaps = 0

    def advance(self) -> None:
        self.calls["heavy"] += 2
        self.calls["light"] += 10


class ScriptedCollector(DatabaseCollector):
    type = "postgresql"
    table = MetricTable([])
    supports_top_queries = True
    supports_query_samples = True

    def __init__(self, server: ScriptedServer):
        super().__init__(DB, password=None, enabled=frozenset())
        self.server = server

    async def _use(self) -> None:
        if self.server.busy:
            self.server.overlaps += 1
        self.server.busy = True
        await asyncio.sleep(0.01)
        self.server.busy = False

    async def collect(self) -> CollectionResult:
        await self._use()
        return CollectionResult()

    async def read_statement_stats(self, limit: int, cursor: str | None) -> StatementRead:
        await self._use()
        self.server.advance()
        heavy, light = self.server.calls["heavy"], self.server.calls["light"]
        return StatementRead(
            counters=(
                StatementCounters("heavy", heavy, heavy * 0.5, heavy),
                StatementCounters("light", light, light * 0.001, light),
            ),
            statements=1,
        )

    async def fetch_statement_texts(self, query_ids: Sequence[str]) -> dict[str, tuple[ObfuscatedText, str]]:
        self.server.text_fetches.append(list(query_ids))
        return {q: (ObfuscatedText(f"SELECT * FROM {q} WHERE id = ?"), f"SELECT {q}") for q in query_ids}

    async def read_query_samples(self, limit: int) -> SampleRead:
        await self._use()
        return SampleRead(
            sessions=(
                ActiveSession("17", "active", "Lock", "transactionid", 3.5, blocked_by=("12",)),
                ActiveSession("12", "idle in transaction", duration_s=9.0),
            ),
            statements=1,
        )

    async def close(self) -> None:
        pass


def settings(_: DatabaseConfig) -> tuple[TopQueryCollection, QuerySampleCollection]:
    return (
        TopQueryCollection(enabled=True, top_n_query=1, collection_interval=timedelta(seconds=1)),
        QuerySampleCollection(enabled=True, collection_interval=timedelta(seconds=1)),
    )


async def wait_for_activity(scheduler: PollScheduler, done) -> ResourceSnapshot:
    async with asyncio.timeout(10):
        while True:
            snapshot = scheduler.snapshots().get(RID)
            if snapshot is not None and snapshot.activity is not None and done(snapshot.activity):
                return snapshot
            await scheduler.changed()


async def test_reports_the_heaviest_statement_with_its_text_fetched_once_and_samples():
    server = ScriptedServer()
    scheduler = PollScheduler(
        lambda rid, db: ScriptedCollector(server), max_concurrent_polls=4, query_settings=settings
    )
    scheduler.add(RID, DB)
    try:
        snapshot = await wait_for_activity(
            scheduler, lambda a: a.top is not None and a.sessions_at is not None and len(server.text_fetches) >= 1
        )
        first = snapshot.activity.top
        assert [q.statement.query_id for q in first.queries] == ["heavy"]  # by time, not calls; top_n 1
        assert first.queries[0].calls == 2 and first.queries[0].text == "SELECT * FROM heavy WHERE id = ?"
        assert first.queries[0].summary == "SELECT heavy"
        assert {s.session_id for s in snapshot.activity.sessions} == {"17", "12"}
        # two more intervals: no new text fetch for a statement already known
        await wait_for_activity(scheduler, lambda a: a.top is not None and a.top.interval_start > first.interval_end)
        assert server.text_fetches == [["heavy"]]
        assert server.overlaps == 0  # polls and reads took turns on the one connection
    finally:
        await scheduler.close()


async def test_a_released_database_continues_its_interval_on_the_next_owner():
    server = ScriptedServer()
    old = PollScheduler(lambda rid, db: ScriptedCollector(server), max_concurrent_polls=4, query_settings=settings)
    old.add(RID, DB)
    try:
        snapshot = await wait_for_activity(old, lambda a: a.top is not None)
        last_end = snapshot.activity.top.interval_end
        await old.remove({RID})
        state = old.query_baseline(RID)  # kept after the removal, for the release report
        assert state is not None
    finally:
        await old.close()
    heavy_at_release = server.calls["heavy"]
    new = PollScheduler(lambda rid, db: ScriptedCollector(server), max_concurrent_polls=4, query_settings=settings)
    new.add(RID, DB, query_baseline=state)
    try:
        snapshot = await wait_for_activity(new, lambda a: a.top is not None)
        report = snapshot.activity.top
        assert report.interval_start == last_end  # continues where the old owner stopped
        assert report.queries[0].calls == server.calls["heavy"] - heavy_at_release  # no spike, no gap
    finally:
        await new.close()


async def test_the_series_carry_their_own_read_time_and_no_text():
    server = ScriptedServer()
    scheduler = PollScheduler(
        lambda rid, db: ScriptedCollector(server), max_concurrent_polls=4, query_settings=settings
    )
    scheduler.add(RID, DB)
    try:
        snapshot = await wait_for_activity(scheduler, lambda a: a.top is not None and a.sessions_at is not None)
        while not snapshot.polled:  # the series render once the database was polled
            await scheduler.changed()
            snapshot = scheduler.snapshots()[RID]
        families = render_snapshot(snapshot, poll_timestamps=True)
        calls = families["dbintel_query_calls_total"].lines
        stamp = int(snapshot.activity.top.interval_end * 1000)
        assert (
            f'db_query_id="heavy",db_query_summary="SELECT heavy"}} {snapshot.activity.top.queries[0].statement.calls!r} {stamp}'
            in calls
        )
        sessions = families["dbintel_sessions"].lines
        assert 'state="active",wait_event_type="Lock",wait_event="transactionid"} 1.0' in sessions
        assert "WHERE" not in "".join(f.lines for f in families.values())  # never the text
    finally:
        await scheduler.close()


async def test_no_query_loops_without_query_settings():
    server = ScriptedServer()
    scheduler = PollScheduler(lambda rid, db: ScriptedCollector(server), max_concurrent_polls=4)
    scheduler.add(RID, DB)
    try:
        async with asyncio.timeout(10):
            while not scheduler.snapshots()[RID].polled:
                await scheduler.changed()
        assert scheduler.snapshots()[RID].activity is None and server.calls["heavy"] == 0
    finally:
        await scheduler.close()
