"""Polls the databases an agent holds: one task per database on an anchored, jittered schedule.

Every database has its own task, its own collector (one pooled connection, reused across polls) and
its own timeout, so a slow, refusing or black-holed database marks only itself down. Concurrency is
bounded by one semaphore; a poll holds it for at most its timeout, because the collection runs in a
child task that is abandoned (cancelled) when the timeout expires, even if it ignores cancellation.

The results are published as immutable `ResourceSnapshot`s in a dict that is replaced, never mutated
(copy-on-write), so the Prometheus scrape thread and the OTLP export thread read a consistent view
with no lock and no I/O on their path.

The schedule arithmetic is pure (`first_poll_delay`, `next_slot`) and unit-tested on its own.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace

from dbintel.common.config import DatabaseConfig, QuerySampleCollection, TopQueryCollection

from .collectors.base import DatabaseCollector
from .collectors.metric_table import CollectionResult, MetricSpec, QueryError, Sample
from .queries.model import QueryActivity, SampleRead, StatementRead, TopQueryReport
from .queries.tracker import HandoffStateError, StatementTexts, TopQueryTracker

log = logging.getLogger(__name__)

# A revoked database's collector gets this long to close its connection before it is abandoned.
CLOSE_TIMEOUT = 5.0
# Top-query states of released databases kept for the link to read (see PollScheduler.query_baseline).
RELEASED_BASELINES = 10_000

QuerySettings = Callable[[DatabaseConfig], tuple[TopQueryCollection, QuerySampleCollection]]
ActivityListener = Callable[["ResourceSnapshot | None", "ResourceSnapshot"], None]


def first_poll_delay(interval: float, now: float, last_poll_time: float | None, jitter: float) -> float:
    """Seconds from `now` (wall clock) until a newly granted database's first poll.

    With the previous owner's `last_poll_time`, the first poll lands where that owner's next one would
    have (no gap, no double sample); if that moment has passed, at once. A last poll time in the future
    (clock skew between hosts) never delays the first poll by more than one interval. Without one, a
    phase `jitter * interval` (jitter in [0, 1)) spreads databases granted together over the interval.
    """
    if last_poll_time is None:
        return jitter * interval
    return min(max(0.0, last_poll_time + interval - now), interval)


def next_slot(previous_slot: float, interval: float, now: float) -> float:
    """The slot after `previous_slot` that is not in the past: anchored, and missed slots are skipped.

    Anchoring on the scheduled slot (not on when the poll finished) keeps the phase fixed, so poll
    durations do not make the schedule drift; a poll that overran skips the slots it covered instead
    of firing them in a burst.
    """
    slot = previous_slot + interval
    if slot < now:
        slot += math.ceil((now - slot) / interval) * interval
    return slot


class CollectorSetupError(Exception):
    """A collector could not be created (secret unresolvable, unknown type, bad metric override).

    `reason` becomes the error counter label; the message names references, never secret values.
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


CollectorFactory = Callable[[str, DatabaseConfig], DatabaseCollector]


@dataclass(frozen=True)
class ResourceSnapshot:
    """What the agent knows about one database it polls, as of its last poll. Never mutated."""

    resource_id: str
    database: DatabaseConfig
    polls_total: int = 0
    errors_total: int = 0  # failed polls: unreachable, timed out, collector failure or not set up
    error_counts: Mapping[str, int] = field(default_factory=dict)  # by reason, polls and queries alike
    up: bool = False
    samples_by_metric: Mapping[str, tuple[Sample, ...]] = field(default_factory=dict, repr=False)  # by OTel name
    statements: int = 0  # statements the last poll sent
    last_poll_time: float | None = None  # wall clock, when this agent's last poll started
    last_poll_duration: float | None = None
    inherited_last_poll_time: float | None = None  # the previous owner's, until this agent polls
    down_reason: str = ""
    activity: QueryActivity | None = None  # top queries and live sessions, when query intelligence is on

    @property
    def db_type(self) -> str:
        return self.database.type

    @property
    def interval(self) -> float:
        return self.database.interval.total_seconds()

    @property
    def polled(self) -> bool:
        return self.polls_total > 0

    def user_labels(self, spec: MetricSpec) -> dict[str, str]:
        """The database's configured labels for `spec`'s series; the metric's own labels win a collision."""
        own = spec.label_names
        return {k: v for k, v in self.database.labels.items() if k not in own}

    def after_poll(
        self, *, started: float, duration: float, outcome: CollectionResult | tuple[str, str]
    ) -> ResourceSnapshot:
        """The snapshot after one poll: the collector's result, or (reason, message) when it gave none."""
        counts = dict(self.error_counts)
        by_metric: dict[str, list[Sample]] = {}
        if isinstance(outcome, CollectionResult):
            up, statements = outcome.up, outcome.statements
            reasons: list[str] = [e.reason for e in outcome.errors]
            if not up and not outcome.errors:
                reasons.append("connection")  # the collector said down without saying why
            down_reason = "" if up else "; ".join(f"{e.reason}: {e.message}" for e in outcome.errors) or "connection"
            for sample in outcome.samples:
                by_metric.setdefault(sample.spec.name, []).append(sample)
        else:
            reason, message = outcome
            up, statements, reasons, down_reason = False, 0, [reason], f"{reason}: {message}"
        for reason in reasons:
            counts[reason] = counts.get(reason, 0) + 1
        return ResourceSnapshot(
            resource_id=self.resource_id,
            database=self.database,
            polls_total=self.polls_total + 1,
            errors_total=self.errors_total + (0 if up else 1),
            error_counts=counts,
            up=up,
            samples_by_metric={name: tuple(samples) for name, samples in by_metric.items()},
            statements=statements,
            last_poll_time=started,
            last_poll_duration=duration,
            inherited_last_poll_time=self.inherited_last_poll_time,
            down_reason=down_reason,
            activity=self.activity,
        )


class _Poller:
    """The loop-side state of one held database."""

    def __init__(self, resource_id: str, database: DatabaseConfig, first_slot: float):
        self.resource_id = resource_id
        self.database = database
        self.first_slot = first_slot
        self.collector: DatabaseCollector | None = None
        self.task: asyncio.Task[None] | None = None
        self.inflight: asyncio.Task[CollectionResult] | None = None  # the running collect()
        # Query intelligence: its reads share the collector's connection, so they take turns with polls.
        self.turn = asyncio.Lock()
        self.query_tasks: list[asyncio.Task[None]] = []
        self.tracker: TopQueryTracker | None = None
        self.texts = StatementTexts()
        self.top_errors: tuple[QueryError, ...] = ()
        self.sample_errors: tuple[QueryError, ...] = ()
        self.reported: set[str] = set()  # query-intelligence error messages already logged

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        return ([self.task] if self.task is not None else []) + self.query_tasks


def _consume_outcome(task: asyncio.Task) -> None:
    """Retrieve an abandoned task's exception so asyncio does not report it as never retrieved."""
    if not task.cancelled():
        task.exception()


class PollScheduler:
    """Runs the polls of the held databases and publishes their snapshots."""

    def __init__(
        self,
        collector_factory: CollectorFactory,
        *,
        max_concurrent_polls: int,
        on_poll: Callable[[str, float], None] | None = None,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        query_settings: QuerySettings | None = None,
        on_activity: ActivityListener | None = None,
    ):
        self._factory = collector_factory
        self._query_settings = query_settings  # None: no query intelligence at all
        self._on_activity = on_activity  # (before, after) whenever a database's activity changes
        self._semaphore = asyncio.Semaphore(max_concurrent_polls)
        self.max_concurrent_polls = max_concurrent_polls
        self._on_poll = on_poll  # (db_type, seconds) for the poll-duration histogram
        self._wall = wall_clock
        self._rng = rng or random.Random()
        self._pollers: dict[str, _Poller] = {}
        self._snapshots: dict[str, ResourceSnapshot] = {}  # replaced on every change, never mutated
        self._retiring: set[asyncio.Task[None]] = set()
        self._released_baselines: dict[str, bytes] = {}
        self._changed = asyncio.Event()  # set whenever the snapshots are replaced; see changed()

    # -- views ----------------------------------------------------------------------------------
    @property
    def held(self) -> frozenset[str]:
        """Resource ids with a poll loop (granted and not revoked)."""
        return frozenset(self._pollers)

    def snapshots(self) -> Mapping[str, ResourceSnapshot]:
        """The current snapshots; safe to iterate from any thread (the dict is never mutated)."""
        return self._snapshots

    async def changed(self) -> None:
        """Return at the next change of the snapshots: a grant, a poll or a revocation."""
        # Callers look at snapshots() and call this with no await in between, so no change slips past.
        self._changed.clear()
        await self._changed.wait()

    def _replace(self, snapshots: dict[str, ResourceSnapshot]) -> None:
        self._snapshots = snapshots
        self._changed.set()

    def _publish(self, resource_id: str, snapshot: ResourceSnapshot | None) -> None:
        snapshots = dict(self._snapshots)
        if snapshot is None:
            snapshots.pop(resource_id, None)
        else:
            snapshots[resource_id] = snapshot
        self._replace(snapshots)

    # -- grants and revocations -----------------------------------------------------------------
    def add(
        self,
        resource_id: str,
        database: DatabaseConfig,
        *,
        last_poll_time: float | None = None,
        query_baseline: bytes | None = None,
    ) -> None:
        """Start polling a database; its first poll follows `first_poll_delay`. No-op if already held.

        `query_baseline` is the previous owner's `query_baseline()` for it, carried by the coordinator
        with the grant, so the first top-query interval here continues the previous owner's last."""
        if resource_id in self._pollers:
            return
        loop = asyncio.get_running_loop()
        interval = database.interval.total_seconds()
        delay = first_poll_delay(interval, self._wall(), last_poll_time, self._rng.random())
        poller = _Poller(resource_id, database, loop.time() + delay)
        self._pollers[resource_id] = poller
        self._released_baselines.pop(resource_id, None)
        self._publish(resource_id, ResourceSnapshot(resource_id, database, inherited_last_poll_time=last_poll_time))
        poller.task = loop.create_task(self._run(poller), name=f"poll {resource_id}")
        log.debug("polling %s every %ss, first poll in %.3fs", resource_id, interval, delay)
        if self._query_settings is not None:
            self._start_query_loops(poller, *self._query_settings(database), query_baseline)

    def query_baseline(self, resource_id: str) -> bytes | None:
        """The top-query state to hand to the next owner of a database held or just removed (bounded;
        see queries.tracker), or None when there is none. Read when the database is released, which is
        after `remove()`: the state of a removed database is kept until it is re-added."""
        poller = self._pollers.get(resource_id)
        if poller is not None:
            return poller.tracker.handoff_state() if poller.tracker is not None else None
        return self._released_baselines.get(resource_id)

    async def remove(self, resource_ids: set[str] | frozenset[str]) -> None:
        """Stop polling: the series vanish at once, the loops are cancelled before this returns, and the
        collectors close their connections in the background (bounded by CLOSE_TIMEOUT)."""
        pollers = [self._pollers.pop(rid) for rid in resource_ids if rid in self._pollers]
        if not pollers:
            return
        snapshots = dict(self._snapshots)
        for poller in pollers:
            snapshots.pop(poller.resource_id, None)
        self._replace(snapshots)
        await self._stop_loops(pollers)
        for poller in pollers:  # after the loops stopped: no read can move the state on any more
            state = poller.tracker.handoff_state() if poller.tracker is not None else None
            if state is not None:
                self._released_baselines[poller.resource_id] = state
        while len(self._released_baselines) > RELEASED_BASELINES:
            del self._released_baselines[next(iter(self._released_baselines))]
        for poller in pollers:
            task = asyncio.get_running_loop().create_task(self._retire(poller), name=f"close {poller.resource_id}")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def stop(self) -> None:
        """Stop every poll loop but keep the snapshots (for a final report); `close()` afterwards."""
        await self._stop_loops(list(self._pollers.values()))

    async def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop everything and close every collector, waiting at most `timeout` for the connections."""
        await self.remove(set(self._pollers))
        if self._retiring:
            await asyncio.wait(set(self._retiring), timeout=timeout)

    async def wait_closed(self) -> None:
        """Wait until the collectors of revoked databases have closed (tests, shutdown)."""
        while self._retiring:
            await asyncio.wait(set(self._retiring))

    @staticmethod
    async def _stop_loops(pollers: list[_Poller]) -> None:
        tasks = [t for p in pollers for t in p.tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            # The loops never block on the collector (see _poll), so this returns promptly.
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _retire(self, poller: _Poller) -> None:
        if poller.inflight is not None and not poller.inflight.done():
            await asyncio.wait({poller.inflight}, timeout=1.0)  # let the cancelled collect() unwind
        if poller.collector is None:
            return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await poller.collector.close()
        except TimeoutError:
            log.warning("closing the collector of %s timed out; abandoning its connection", poller.resource_id)
        except Exception as exc:  # a broken close must not break the agent
            log.warning("closing the collector of %s failed: %s", poller.resource_id, type(exc).__name__)

    # -- the poll loop --------------------------------------------------------------------------
    async def _run(self, poller: _Poller) -> None:
        loop = asyncio.get_running_loop()
        interval = poller.database.interval.total_seconds()
        slot = poller.first_slot
        while True:
            await asyncio.sleep(max(0.0, slot - loop.time()))
            try:
                await self._poll(poller)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not end the schedule of this database
                log.exception("poll of %s failed unexpectedly", poller.resource_id)
            slot = next_slot(slot, interval, loop.time())

    async def _poll(self, poller: _Poller) -> None:
        loop = asyncio.get_running_loop()
        timeout = poller.database.poll_timeout.total_seconds()
        async with self._semaphore, poller.turn:
            started_wall, started = self._wall(), loop.time()
            outcome: CollectionResult | tuple[str, str]
            if poller.inflight is not None and not poller.inflight.done():
                outcome = ("timeout", "the previous poll has not finished (its collector ignores cancellation)")
            else:
                try:
                    if poller.collector is None:
                        poller.collector = self._factory(poller.resource_id, poller.database)
                except CollectorSetupError as exc:
                    outcome = (exc.reason, str(exc))
                else:
                    outcome = await self._collect(poller, poller.collector, timeout)
            duration = loop.time() - started
        snapshot = self._snapshots.get(poller.resource_id)
        if snapshot is None or self._pollers.get(poller.resource_id) is not poller:
            return  # revoked while polling: publish nothing
        updated = snapshot.after_poll(started=started_wall, duration=duration, outcome=outcome)
        self._publish(poller.resource_id, updated)
        if not updated.up and (snapshot.up or not snapshot.polled or snapshot.down_reason != updated.down_reason):
            log.warning("%s is down: %s", poller.resource_id, updated.down_reason)  # once per change, not per poll
        elif updated.up and snapshot.polled and not snapshot.up:
            log.info("%s is up again", poller.resource_id)
        if self._on_poll is not None and poller.collector is not None:
            self._on_poll(poller.database.type, duration)

    async def _collect(
        self, poller: _Poller, collector: DatabaseCollector, timeout: float
    ) -> CollectionResult | tuple[str, str]:
        """The collector's result, or (reason, message) when it timed out or raised."""
        task = asyncio.get_running_loop().create_task(collector.collect())
        task.add_done_callback(_consume_outcome)
        poller.inflight = task
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
        except asyncio.CancelledError:
            task.cancel()  # revoked or shutting down
            raise
        if not done:
            task.cancel()  # the semaphore is released now, whether or not the collector unwinds
            return ("timeout", f"no answer within {timeout:g}s")
        if task.cancelled():
            return ("timeout", "the collection was cancelled")
        exc = task.exception()
        if exc is not None:
            log.error(
                "collector of %s raised %s",
                poller.resource_id,
                type(exc).__name__,
                exc_info=(type(exc), exc, exc.__traceback__),
            )
            return ("collector_error", type(exc).__name__)
        return task.result()

    # -- query intelligence ---------------------------------------------------------------------
    def _start_query_loops(
        self,
        poller: _Poller,
        top: TopQueryCollection,
        samples: QuerySampleCollection,
        query_baseline: bytes | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        if top.enabled:
            poller.tracker = self._tracker(poller, top, query_baseline)
            poller.query_tasks.append(loop.create_task(self._run_top(poller, top), name=f"top {poller.resource_id}"))
        if samples.enabled:
            poller.query_tasks.append(
                loop.create_task(self._run_samples(poller, samples), name=f"samples {poller.resource_id}")
            )

    @staticmethod
    def _tracker(poller: _Poller, top: TopQueryCollection, query_baseline: bytes | None) -> TopQueryTracker:
        if query_baseline:
            try:
                return TopQueryTracker.from_handoff_state(query_baseline, top.top_n_query)
            except HandoffStateError as exc:  # start afresh: one interval without top queries, no wrong one
                log.warning("%s: the previous owner's top-query state is unusable: %s", poller.resource_id, exc)
        return TopQueryTracker(top.top_n_query)

    async def _query_loop(
        self, poller: _Poller, interval: float, first_delay: float, read: Callable[[], Awaitable[bool]]
    ) -> None:
        """Run `read` on an anchored schedule until it says the database cannot do it (False)."""
        loop = asyncio.get_running_loop()
        slot = loop.time() + first_delay
        while True:
            await asyncio.sleep(max(0.0, slot - loop.time()))
            try:
                if not await read():
                    return
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not end the schedule, nor the polls
                log.exception("query read of %s failed unexpectedly", poller.resource_id)
            slot = next_slot(slot, interval, loop.time())

    async def _run_top(self, poller: _Poller, settings: TopQueryCollection) -> None:
        interval = settings.collection_interval.total_seconds()
        tracker = poller.tracker
        assert tracker is not None
        # After a hand-off the first read lands one interval after the previous owner's last.
        delay = first_poll_delay(interval, self._wall(), tracker.read_at, self._rng.random())
        await self._query_loop(poller, interval, delay, lambda: self._read_top(poller, settings))

    async def _run_samples(self, poller: _Poller, settings: QuerySampleCollection) -> None:
        interval = settings.collection_interval.total_seconds()
        delay = self._rng.random() * interval
        await self._query_loop(poller, interval, delay, lambda: self._read_samples(poller, settings))

    def _query_collector(self, poller: _Poller) -> DatabaseCollector | None:
        """The database's collector (created if the poll loop has not yet), or None if it cannot be."""
        try:
            if poller.collector is None:
                poller.collector = self._factory(poller.resource_id, poller.database)
        except CollectorSetupError:
            return None  # the poll loop reports it
        return poller.collector

    async def _read_top(self, poller: _Poller, settings: TopQueryCollection) -> bool:
        limit = settings.max_rows_per_query
        tracker = poller.tracker
        assert tracker is not None
        timeout = poller.database.poll_timeout.total_seconds()
        async with self._semaphore, poller.turn:
            collector = self._query_collector(poller)
            if collector is None:
                return True
            if not collector.supports_top_queries:
                log.info("%s: %s has no top queries; not collecting them", poller.resource_id, poller.database.type)
                return False
            now = self._wall()
            errors: list[QueryError] = []
            try:
                async with asyncio.timeout(timeout):
                    read = await collector.read_statement_stats(limit, tracker.cursor)
            except TimeoutError:
                read = StatementRead(errors=(_timed_out("read_statement_stats", timeout),))
            errors += read.errors
            report = tracker.observe(read, now, limit=limit)
            if report is not None:
                missing = poller.texts.missing(q.statement.query_id for q in report.queries if q.text is None)
                if missing:
                    try:
                        async with asyncio.timeout(timeout):
                            poller.texts.put(await collector.fetch_statement_texts(missing))
                    except TimeoutError:
                        errors.append(_timed_out("fetch_statement_texts", timeout))
                report = poller.texts.fill(report)
        poller.top_errors = tuple(errors)
        self._set_activity(poller, report=report)
        return True

    async def _read_samples(self, poller: _Poller, settings: QuerySampleCollection) -> bool:
        timeout = poller.database.poll_timeout.total_seconds()
        async with self._semaphore, poller.turn:
            collector = self._query_collector(poller)
            if collector is None:
                return True
            if not collector.supports_query_samples:
                log.info("%s: %s has no query samples; not collecting them", poller.resource_id, poller.database.type)
                return False
            now = self._wall()
            try:
                async with asyncio.timeout(timeout):
                    read = await collector.read_query_samples(settings.max_rows_per_query)
            except TimeoutError:
                read = SampleRead(errors=(_timed_out("read_query_samples", timeout),))
        poller.sample_errors = read.errors
        failed = bool(read.errors) and not read.sessions
        self._set_activity(poller, sessions=None if failed else read, sessions_at=now)
        return True

    def _set_activity(
        self,
        poller: _Poller,
        *,
        report: TopQueryReport | None = None,
        sessions: SampleRead | None = None,
        sessions_at: float | None = None,
    ) -> None:
        """Publish what a read brought (a None report or sessions keep the previous ones)."""
        snapshot = self._snapshots.get(poller.resource_id)
        if snapshot is None or self._pollers.get(poller.resource_id) is not poller:
            return  # revoked meanwhile
        errors = poller.top_errors + poller.sample_errors
        for error in errors:  # each distinct problem once, not every interval
            if error.message not in poller.reported:
                poller.reported.add(error.message)
                log.warning("%s: %s (%s): %s", poller.resource_id, error.query, error.reason, error.message)
        activity = snapshot.activity or QueryActivity()
        activity = QueryActivity(
            top=report if report is not None else activity.top,
            sessions=sessions.sessions if sessions is not None else activity.sessions,
            sessions_at=sessions_at if sessions is not None else activity.sessions_at,
            errors=errors,
        )
        updated = replace(snapshot, activity=activity)
        self._publish(poller.resource_id, updated)
        if self._on_activity is not None:
            self._on_activity(snapshot, updated)


def _timed_out(query: str, timeout: float) -> QueryError:
    return QueryError(query, "timeout", f"no answer within {timeout:g}s")
