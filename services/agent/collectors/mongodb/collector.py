"""The MongoDB collector: at most MAX_COMMANDS (4) commands per collection over one reused client.

Design (cost to the monitored server first):

- One AsyncMongoClient per monitored server (client.py): one pooled connection, direct to the
  configured endpoint, plus the driver's monitor socket. Everything it sends is counted, the
  connection handshake and the monitor's hellos included; `statements` of a collection is all of it
  since the previous collection, so the figures add up to what the server received.
- Every collection spends a budget of MAX_COMMANDS, in this order:
    1. serverStatus (always; most metrics, the role, the rates). Sections no enabled metric reads
       are excluded from the reply.
    2. replSetGetStatus, only on a replica-set member and only when a replica metric is enabled.
    3. top, when mongodb.operation.time is enabled (its counters move every collection; mongod only).
    4. the slow schedule with what is left (one command at least: 1-3 cost at most three):
       listDatabases (with sizes), then per database dbStats and listCollections, per collection
       $indexStats (and $collStats when the per-collection metrics are enabled), and on replica
       members the oplog's $collStats and oldest entry. Each of these runs at most once per
       SLOW_REFRESH seconds; between runs their cached samples are re-emitted. Bounds: the
       MAX_DATABASES largest databases (listDatabases sizeOnDisk) and, across them, the first
       MAX_COLLECTIONS collections (by database size, then name). A full pass therefore takes
       max(SLOW_REFRESH, ceil(tasks / budget) × interval): with the defaults (30 s interval,
       serverStatus + top, so 2 slow commands a collection) a server with 4 databases and 20
       collections (1 + 4 + 4 + 20 = 29 tasks) is fully refreshed every 7.5 minutes.
       No slow command starts once half of the poll timeout is spent.
  A collection that opens the connection also pays its handshake (the pool's hello, the SCRAM
  saslContinue, the monitor's first hello) out of the same budget, so it sends serverStatus and
  whatever still fits. serverStatus always goes, even if the handshake alone took 4 (SCRAM without
  speculative authentication on a pre-4.4 server).
- Role: serverStatus.repl on every collection (MongoDB reports it on replica-set members), else the
  driver's view of the server's hello (SecantusDB omits the section). replSetGetStatus and the oplog
  commands are sent to members only; lag and headroom come from the primary only; an arbiter gets
  serverStatus and replSetGetStatus, nothing that reads data.
- Privileges: a command the user may not run (Unauthorized) is reported ONCE as a permission
  QueryError naming the grant to add, then left alone for SLOW_REFRESH seconds and retried quietly;
  the rest of the collection flows. It is reported again only after it has worked in between.
  A command the server does not have (CommandNotFound, …) is handled the same way.
- Up: the server is down for us when it cannot be reached or authentication fails; a command that
  fails otherwise only costs its own metrics.

Query intelligence (same client, own intervals, never during collect(); pure mapping in activity.py):
- read_query_samples    ONE command: currentOp on admin filtered to active, non-hello operations
                        (clusterMonitor's inprog). The command rather than the $currentOp stage: both
                        work on MongoDB 4.0+, and SecantusDB answers only the command.
- read_statement_stats  ONE command: with the profiler on for the entry's `database`, a find on its
                        system.profile for the entries after the cursor (ts-ordered, projected to the
                        fields mapped, at most `limit`; dbAdmin on that database); otherwise `top`
                        (clusterMonitor), per namespace and operation kind. The profiler's level comes
                        from `profile: -1`, sent on the first read and then every SLOW_REFRESH s (so a
                        profiler turned on or off is followed within that). The profiler off (or no
                        `database` in the entry) is said ONCE, with the setProfilingLevel that turns it on.
                        A failed profile read counts nothing and keeps the cursor; a refused one (no
                        dbAdmin) is reported once and top is read until its retry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from bson.timestamp import Timestamp
from pydantic import SecretStr

from dbintel.common.config import DatabaseConfig

from ...queries.model import SampleRead, StatementRead
from ..base import DatabaseCollector
from ..cadence import SLOW_REFRESH, SlowRefresh
from ..errors import secret_values
from ..metric_table import CollectionResult, QueryError, Sample
from ..query_runner import ConnectionLost, QueryRunner, unreachable
from ..refusals import RefusedQueries
from . import activity, mapping
from .client import (
    APP_NAME,
    CURRENT_OP,
    PROFILE,
    PROFILING_LEVEL,
    MongodbClient,
    describe_error,
    is_stale_connection,
    is_unreachable,
)
from .metrics import (
    COLLECTION_STATS,
    COLLECTIONS,
    DATABASES,
    DB_STATS,
    INDEX_STATS,
    METRICS_BY_QUERY,
    OPLOG_OLDEST,
    OPLOG_STATS,
    REPL_STATUS,
    SERVER_STATUS,
    TABLE,
    TOP,
)
from .refresh import Key, RefreshQueue

MAX_COMMANDS = 4
MAX_DATABASES = 32
MAX_COLLECTIONS = 100
SLOW_TIME_SHARE = 0.5  # no slow command starts after this share of the poll timeout

_RATE_METRICS = frozenset(mapping.RATES.values())


def slow_tasks(
    queries: frozenset[str], role: str, databases: list[str], collections: Mapping[str, list[str]]
) -> list[Key]:
    """The slow-schedule tasks wanted, in priority order within a kind.

    `queries`: the client methods some enabled metric needs; `databases`: names from the last
    listDatabases, largest first; `collections`: names per database from the last listCollections."""
    if role == "arbiter":  # holds no data and no oplog
        return []
    keys: list[Key] = []
    databases = databases[:MAX_DATABASES]
    if DATABASES in queries:
        keys.append(("listDatabases",))
    if DB_STATS in queries:
        keys.extend(("dbStats", db) for db in databases)
    if COLLECTIONS in queries:
        keys.extend(("listCollections", db) for db in databases)
        pairs = [(db, coll) for db in databases for coll in collections.get(db, ())][:MAX_COLLECTIONS]
        if INDEX_STATS in queries:
            keys.extend(("indexStats", db, coll) for db, coll in pairs)
        if COLLECTION_STATS in queries:
            keys.extend(("collStats", db, coll) for db, coll in pairs)
    if role in mapping.REPLICA_ROLES:
        if OPLOG_STATS in queries:
            keys.append(("oplogStats",))
        if OPLOG_OLDEST in queries:
            keys.append(("oplogOldest",))
    return keys


def profiler_off_message(database: str | None) -> str:
    """What to say once when top queries come from `top` rather than the profiler."""
    if not database:
        return (
            "top queries come per namespace from top: set the entry's database to the one to profile and turn "
            'its profiler on, db.getSiblingDB("<db>").setProfilingLevel(1, {slowms: 100}), for per-shape top queries'
        )
    return (
        f"the profiler is off on {database}: top queries come per namespace from top; for per-shape top queries "
        f'turn it on: db.getSiblingDB("{database}").setProfilingLevel(1, {{slowms: 100}})'
    )


class MongodbCollector(DatabaseCollector):
    type = "mongodb"
    table = TABLE
    supports_top_queries = True
    supports_query_samples = True

    def __init__(
        self,
        database: DatabaseConfig,
        *,
        password: SecretStr | None,
        enabled: frozenset[str],
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(database, password=password, enabled=enabled)
        self.client = MongodbClient(database, password)
        self._clock = clock
        self._refresh = RefreshQueue(SLOW_REFRESH)
        self._cache: dict[Key, list[Sample]] = {}  # slow task -> its samples, re-emitted between runs
        self._databases: list[str] = []  # largest first, from the last listDatabases
        self._collections: dict[str, list[str]] = {}  # database -> collection names, from listCollections
        self._oplog_oldest: Timestamp | None = None
        self._counters: mapping.Counters | None = None
        # Refusals held per (command, target), reported once per command; the server unreachable stops a collection.
        self._runner = QueryRunner(self._error, lost=lambda error, exc: is_unreachable(exc))
        self._accounted = 0  # client.sent when the previous collection ended
        self._queries = frozenset(query for query, metrics in METRICS_BY_QUERY.items() if metrics & enabled)
        self.role = "unknown"
        self._profiling: int | None = None  # the profiler's level on database.database, from PROFILING_LEVEL
        self._profiling_refresh = SlowRefresh[str]()
        self._profiler_notice = RefusedQueries(SLOW_REFRESH)  # "the profiler is off": said once

    @property
    def slow_backlog(self) -> int:
        """Slow-schedule commands due now and waiting for budget (0 once a full pass is done)."""
        return len(self._refresh.due(self._clock()))

    def _wanted(self, query: str) -> bool:
        return query in self._queries

    # --- one collection ----------------------------------------------------------------------------
    async def collect(self) -> CollectionResult:
        result = CollectionResult()
        start = self._accounted
        if self.client.config_error:
            return unreachable(self.client.config_error)
        try:
            await self._collect(result, start, self._clock())
        except ConnectionLost:
            result.up = False
        finally:
            self._accounted = self.client.sent
            result.statements = self.client.sent - start
        return result

    async def _collect(self, result: CollectionResult, start: int, now: float) -> None:
        status = await self._server_status(result, now)
        if status is not None:
            try:
                samples = mapping.server_status_samples(status, self.enabled)
                counters = mapping.rate_counters(status, now)
                if _RATE_METRICS & self.enabled:
                    samples += mapping.rate_samples(self._counters, counters, self.enabled)
                self._counters = counters
                result.samples.extend(samples)
            except Exception as exc:  # a reply we cannot read: bad_reply, the rest goes on
                self._runner.record(result, SERVER_STATUS, exc, now)
        self.role = mapping.role_of(status, self.client.server_type())

        def budget_left() -> bool:
            return self.client.sent - start < MAX_COMMANDS

        repl_status = None
        if self.role in mapping.REPLICA_ROLES and self._wanted(REPL_STATUS) and budget_left():
            repl_status = await self._runner.run(result, now, REPL_STATUS, self.client.fetch_repl_status)
        if self.role not in ("arbiter", "mongos") and self._wanted(TOP) and budget_left():  # top: data, mongod
            await self._runner.emit(
                result, now, TOP, self.client.fetch_top, lambda top: mapping.top_samples(top, self.enabled)
            )

        self._plan()
        slow_deadline = now + SLOW_TIME_SHARE * self.database.poll_timeout.total_seconds()
        while budget_left() and self._clock() < slow_deadline:
            key = self._refresh.next(now)
            if key is None:
                break
            await self._run_task(result, key, now)
            self._plan()  # a list just fetched may have revealed tasks
        for key in self._refresh.wanted:
            result.samples.extend(self._cache.get(key, ()))
        if repl_status is not None:  # after the slow tasks: the oplog's oldest entry may be fresh
            try:
                result.samples.extend(
                    mapping.repl_status_samples(repl_status, self.enabled, oplog_oldest=self._oplog_oldest)
                )
            except Exception as exc:
                self._runner.record(result, REPL_STATUS, exc, now)

    async def _server_status(self, result: CollectionResult, now: float) -> dict[str, Any] | None:
        if not self._runner.allowed(SERVER_STATUS, now):
            return None
        unread = mapping.unread_sections(self.enabled)
        try:
            try:
                status = await self.client.fetch_server_status(unread)
            except Exception as exc:
                if not is_stale_connection(exc):
                    raise
                status = await self.client.fetch_server_status(unread)  # once, on a fresh connection
        except Exception as exc:
            result.samples.extend(mapping.health_sample(self.enabled))
            self._runner.record(result, SERVER_STATUS, exc, now)
            return None
        self._runner.succeeded(SERVER_STATUS)
        return status

    # --- the slow schedule ---------------------------------------------------------------------------
    def _plan(self) -> None:
        """Which slow tasks are wanted now, from the enabled metrics, the role and the lists known so far."""
        keys = slow_tasks(self._queries, self.role, self._databases, self._collections)
        for key in self._refresh.want(keys):
            self._cache.pop(key, None)
        listed = {key[1] for key in keys if key[0] == "listCollections"}
        for db in set(self._collections) - listed:
            del self._collections[db]
        if ("oplogOldest",) not in self._refresh.wanted:
            self._oplog_oldest = None

    async def _run_task(self, result: CollectionResult, key: Key, now: float) -> None:
        self._refresh.done(key, now)  # a failure also waits a full SLOW_REFRESH
        kind, *args = key
        client, enabled, run = self.client, self.enabled, self._runner.run
        samples: list[Sample] | None = None
        if kind == "listDatabases":
            listed = await run(
                result,
                now,
                DATABASES,
                client.fetch_databases,
                lambda dbs: (mapping.ranked_databases(dbs), mapping.database_samples(dbs, enabled)),
            )
            if listed is not None:
                self._databases, samples = listed
        elif kind == "dbStats":
            db = args[0]
            samples = await run(
                result,
                now,
                DB_STATS,
                lambda: client.fetch_db_stats(db),
                lambda stats: mapping.db_stats_samples(db, stats, enabled),
                target=db,
            )
        elif kind == "listCollections":
            db = args[0]
            names = await run(
                result, now, COLLECTIONS, lambda: client.fetch_collections(db), mapping.collection_names, target=db
            )
            if names is not None:
                self._collections[db] = names
        elif kind == "indexStats":
            db, coll = args
            samples = await run(
                result,
                now,
                INDEX_STATS,
                lambda: client.fetch_index_stats(db, coll),
                lambda indexes: mapping.index_access_samples(db, coll, indexes, enabled),
                target=f"{db}.{coll}",
            )
        elif kind == "collStats":
            db, coll = args
            samples = await run(
                result,
                now,
                COLLECTION_STATS,
                lambda: client.fetch_collection_stats(db, coll),
                lambda stats: mapping.collection_stats_samples(db, coll, stats, enabled),
                target=f"{db}.{coll}",
            )
        elif kind == "oplogStats":
            samples = await run(
                result,
                now,
                OPLOG_STATS,
                client.fetch_oplog_stats,
                lambda stats: mapping.oplog_stats_samples(stats, enabled),
            )
        elif kind == "oplogOldest":
            self._oplog_oldest = await run(result, now, OPLOG_OLDEST, client.fetch_oplog_oldest)
        if samples is None:
            self._cache.pop(key, None)  # failed: no stale values
        else:
            self._cache[key] = samples

    # --- query intelligence ----------------------------------------------------------------------------
    async def read_statement_stats(self, limit: int, cursor: str | None) -> StatementRead:
        start, result, now = self.client.sent, CollectionResult(), self._clock()
        try:
            if await self._profiler_on(result, now):
                read = await self._profile_read(result, now, limit, cursor)
            else:
                counters = await self._runner.run(
                    result, now, TOP, self.client.fetch_top, lambda top: activity.top_counters(top, limit)
                )
                read = StatementRead(counters=counters or (), cumulative=True)
        except ConnectionLost:
            read = StatementRead(cursor=cursor, cumulative=cursor is None)
        return StatementRead(
            counters=read.counters,
            cumulative=read.cumulative,
            cursor=read.cursor,
            errors=tuple(result.errors),
            statements=self._account(start),
        )

    async def _profiler_on(self, result: CollectionResult, now: float) -> bool:
        """Whether the profiler of database.database is on (its level read every SLOW_REFRESH s); when it
        is not, say so once."""
        db = self.database.database
        if db and self._profiling_refresh.due(PROFILING_LEVEL, now):
            self._profiling_refresh.refreshed(PROFILING_LEVEL, now)  # a failure also waits: it is a refusal
            level = await self._runner.run(result, now, PROFILING_LEVEL, lambda: self.client.fetch_profiling_level(db))
            self._profiling = level
        if db and self._profiling:
            self._profiler_notice.succeeded(PROFILE)
            # system.profile refused (reported once by the runner): top until its retry is due
            return self._runner.allowed(PROFILE, now, db)
        if db and self._profiling is None:  # level unknown (its refusal is reported): top, nothing more to say
            return False
        notice = QueryError(PROFILE, "unsupported", profiler_off_message(db))
        if self._profiler_notice.refuse(notice, now):
            result.errors.append(notice)
        return False

    async def _profile_read(
        self, result: CollectionResult, now: float, limit: int, cursor: str | None
    ) -> StatementRead:
        """The profile entries after `cursor`. A failed read counts nothing and keeps the cursor (no switch
        to top for one failure: the next read picks up where this one should have)."""
        db, after = self.database.database or "", activity.parse_cursor(cursor)
        entries = await self._runner.run(
            result, now, PROFILE, lambda: self.client.fetch_profile(db, after, limit), target=db
        )
        if entries is None:
            return StatementRead(cumulative=False, cursor=cursor)
        if after is None:  # no cursor: the profile is history, counted by nobody
            return StatementRead(cumulative=False, cursor=activity.profile_cursor(entries, None))
        return StatementRead(
            counters=activity.profile_counters(entries, limit),
            cumulative=False,
            cursor=activity.profile_cursor(entries, cursor),
        )

    async def read_query_samples(self, limit: int) -> SampleRead:
        start, result = self.client.sent, CollectionResult()
        try:
            sessions = await self._runner.run(
                result,
                self._clock(),
                CURRENT_OP,
                self.client.fetch_current_op,
                lambda reply: activity.operation_sessions(reply, APP_NAME, limit),
            )
        except ConnectionLost:
            sessions = None
        return SampleRead(sessions=sessions or (), errors=tuple(result.errors), statements=self._account(start))

    def _account(self, start: int) -> int:
        """Commands sent since `start`, taken out of the next collection's count (they are this read's)."""
        sent = self.client.sent - start
        self._accounted += sent
        return sent

    # --- errors and privileges -----------------------------------------------------------------------
    def _error(self, query: str, exc: BaseException, target: str | None) -> QueryError:
        reason, message = describe_error(
            exc, query=query, user=self.database.username, target=target, secrets=secret_values(self._password)
        )
        return QueryError(query, reason, message)

    async def close(self) -> None:
        await self.client.close()
        self._accounted = self.client.sent  # closing (endSessions) belongs to no collection
