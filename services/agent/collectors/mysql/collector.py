"""The MySQL/MariaDB collector: at most five statements per collection over one reused connection.

Design (cost to the monitored server first):

- One aiomysql connection (no pool), opened lazily, reused by every collection, replaced only
  after it broke or a collection was cancelled mid-query. Server flavour and version come from
  the connection handshake, at no statement's cost.
- Statements per collection, each a single round trip, skipped when all its metrics are disabled:
    1. fetch_catalog             slow schedule (every SLOW_REFRESH s, and after a reconnect):
                                 @@global max_connections, innodb_buffer_pool_size, redo log
                                 capacity, performance_schema, CURRENT_USER(); UNION ALL
                                 information_schema.TABLES sizes when a table metric is enabled.
                                 Cached values are re-emitted in between.
    2. fetch_global_status       SHOW GLOBAL STATUS: the bulk of the metrics.
    3. fetch_innodb              INNODB_METRICS counters the status lacked (MySQL: deadlocks,
                                 history list, pre-8.0.30 checkpoint age) UNION ALL INNODB_TRX
                                 aggregates. Not sent on MariaDB unless a transaction metric is on.
    4. fetch_performance_schema  table/index I/O waits, table lock waits, statement digests:
                                 one UNION ALL of the enabled parts.
    5. fetch_replica_status      SHOW REPLICA STATUS / SHOW SLAVE STATUS / SHOW ALL SLAVES STATUS.
  With the defaults on MariaDB that is 3 statements, 4 on slow rounds.
- Grants: 3 needs PROCESS, 4 SELECT on performance_schema, 5 REPLICATION CLIENT (MySQL) or
  SLAVE MONITOR (MariaDB 10.5.9+). A query refused for lack of a grant — or unsupported by the
  server — is reported ONCE, with the GRANT to run; it is then left out and retried quietly
  every SLOW_REFRESH s on a fresh connection (global privileges are read at login), and its
  metrics come back on their own once the grant is in place. The rest flows meanwhile.

Query intelligence (on the same connection, on its own intervals, never during collect()):
- read_statement_stats   ONE statement: the top `limit` rows of events_statements_summary_by_digest by
                         SUM_TIMER_WAIT, numbers only (~25 numeric columns a row, no DIGEST_TEXT),
                         UNION ALL a setup row (performance_schema on? consumers enabled?).
- fetch_statement_texts  ONE statement per batch of digests the agent has not seen:
                         `... WHERE DIGEST IN (...)`, obfuscated here; never sent for known digests.
- read_query_samples     ONE statement: threads ⨝ events_statements_current ⨝ events_waits_current ⨝
                         INNODB_TRX, row-lock blockers from INNODB_LOCK_WAITS (MariaDB, MySQL 5.7) or
                         data_lock_waits (MySQL 8), metadata-lock blockers from metadata_locks, our own
                         session excluded; UNION ALL the setup row.
  Grants: SELECT on performance_schema; samples also PROCESS (INNODB_TRX). A consumer that is off is
  reported ONCE with the UPDATE performance_schema.setup_consumers statement that enables it; the read
  still returns what the enabled consumers give. A statistics reset (TRUNCATE ...by_digest) is not
  announced by the server: the counters simply restart, with a new FIRST_SEEN (the tracker's cue).
  INNODB_TRX is InnoDB's cache, refreshed only when it was last read over 0.1 s ago: a transaction
  shows up to 0.1 s late, and samples read more often than every 0.1 s would keep seeing old ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import SecretStr

from dbintel.common.config import DatabaseConfig

from ...queries.model import SampleRead, StatementRead
from ...queries.obfuscation import ObfuscatedText
from ..base import DatabaseCollector
from ..cadence import SLOW_REFRESH, SlowRefresh
from ..errors import secret_values
from ..metric_table import CollectionResult, QueryError, Sample
from ..query_runner import ConnectionLost, QueryRunner, unreachable
from ..refusals import RefusedQueries
from ..samples import number
from . import activity, mapping
from .client import (
    DIGEST_TEXTS,
    DIGESTS,
    SAMPLES,
    MysqlClient,
    describe_error,
    has_cpu_time,
    quote_account,
    required_grant,
)
from .metrics import (
    CATALOG,
    INNODB,
    METRICS_BY_QUERY,
    PERF,
    REPLICA,
    STATUS,
    TABLE,
    TABLE_METRICS,
    TRX_METRICS,
)

# performance_schema part -> the metrics it feeds
_PERF_PARTS = {
    "table_io": frozenset({"mysql.table.io.wait.count", "mysql.table.io.wait.time"}),
    "index_io": frozenset({"mysql.index.io.wait.count", "mysql.index.io.wait.time"}),
    "table_lock": frozenset(
        {
            "mysql.table.lock_wait.read.count",
            "mysql.table.lock_wait.read.time",
            "mysql.table.lock_wait.write.count",
            "mysql.table.lock_wait.write.time",
        }
    ),
    "digest": frozenset({"mysql.statement_event.count", "mysql.statement_event.wait.time"}),
}


class MysqlCollector(DatabaseCollector):
    type = "mysql"
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
        self.client = MysqlClient(database, password)
        self._clock = clock
        self._catalog_refresh = SlowRefresh[str]()
        self._catalog_connection: int | None = None  # connection id the catalog was read on
        self._variables: dict[str, Any] | None = None
        self._account: str | None = None  # CURRENT_USER(), for GRANT hints
        self._table_samples: list[Sample] = []
        self._runner = QueryRunner(self._error, lost=self._lost)
        # performance_schema off / consumers off: reported once per read, until the setup is back
        self._setup_refusals = RefusedQueries(SLOW_REFRESH)
        self._text_errors: list[QueryError] = []  # fetch_statement_texts' errors, reported by the next read

    # --- helpers --------------------------------------------------------------------------------

    def _wanted(self, query: str) -> frozenset[str]:
        return METRICS_BY_QUERY[query] & self.enabled

    def _error(self, query: str, exc: BaseException, target: str | None = None) -> QueryError:
        reason, message = describe_error(exc, secrets=secret_values(self._password))
        if reason == "permission":
            account = quote_account(self._account, self.database.username)
            grant = required_grant(query, self.client.version, account)
            if grant:
                message = f"{message} — run: {grant}"
        return QueryError(query, reason, message)

    def _lost(self, error: QueryError, exc: BaseException) -> bool:
        return error.reason == "connection" and not self.client.connected

    def _catalog_due(self, now: float) -> bool:
        if not (self._wanted(CATALOG) or self._perf_sources()):  # perf: is performance_schema ON?
            return False
        return (
            self._catalog_refresh.due(CATALOG, now) or self._catalog_connection != self.client.connection_id
        )  # reconnected: maybe restarted

    def _perf_sources(self) -> list[str]:
        return [source for source, metrics in _PERF_PARTS.items() if metrics & self.enabled]

    # --- collection -----------------------------------------------------------------------------

    async def collect(self) -> CollectionResult:
        result = CollectionResult()
        before = self.client.statements
        now = self._clock()
        if self._runner.refused.retry_due(now, "permission"):
            await self.client.close()  # global privileges are read at login: retry on a fresh session
        try:
            await self.client.connect()
        except Exception as exc:  # any failure to connect: the database is down for us this round
            return unreachable(self._error("connect", exc).message, statements=self.client.statements - before)
        runner = self._runner
        try:
            if self._catalog_due(now):
                await runner.run(
                    result, now, CATALOG, self._fetch_catalog, lambda catalog: self._remember_catalog(catalog, now)
                )
            status = None
            if self._wanted(STATUS):
                status = await runner.emit(
                    result,
                    now,
                    STATUS,
                    self.client.fetch_global_status,
                    lambda reply: mapping.status_samples(reply, self.enabled),
                )
            result.samples.extend(mapping.variable_samples(self._variables, status, self.enabled))
            result.samples.extend(self._table_samples)
            if mapping.innodb_needed(status, self.enabled):
                counters = mapping.innodb_metric_names(status, self.enabled)
                await runner.emit(
                    result,
                    now,
                    INNODB,
                    lambda: self.client.fetch_innodb(counters, transactions=bool(TRX_METRICS & self.enabled)),
                    lambda reply: mapping.innodb_samples(reply, self.enabled),
                )
            await self._performance_schema(result, now)
            if self._wanted(REPLICA):
                await runner.emit(
                    result,
                    now,
                    REPLICA,
                    self.client.fetch_replica_status,
                    lambda rows: mapping.replica_samples(rows, self.enabled),
                )
        except ConnectionLost:
            result.up = False
        result.statements = self.client.statements - before
        return result

    async def _fetch_catalog(self) -> dict[str, Any]:
        return await self.client.fetch_catalog(tables=bool(TABLE_METRICS & self.enabled))

    def _remember_catalog(self, catalog: dict[str, Any], now: float) -> None:
        """Variable and table samples are emitted every round from this cache."""
        self._account = catalog["account"]
        self._variables = catalog["variables"]
        self._table_samples = mapping.table_samples(catalog["tables"], self.enabled)
        self._catalog_refresh.refreshed(CATALOG, now)  # only once it came: a failed read is tried again next round
        self._catalog_connection = self.client.connection_id

    async def _performance_schema(self, result: CollectionResult, now: float) -> None:
        sources = self._perf_sources()
        if not sources:
            return
        if self._variables is not None and number(self._variables.get("performance_schema")) == 0:
            self._runner.hold(
                result,
                QueryError(
                    PERF,
                    "unsupported",
                    (
                        "performance_schema is OFF on the server: start it with performance_schema=ON for the table/index "
                        "I/O wait metrics"
                    ),
                ),
                now,
            )
            return
        await self._runner.emit(
            result,
            now,
            PERF,
            lambda: self.client.fetch_performance_schema(sources),
            lambda parts: mapping.performance_schema_samples(parts, self.enabled),
        )

    # --- query intelligence ----------------------------------------------------------------------

    async def read_statement_stats(self, limit: int, cursor: str | None) -> StatementRead:
        before = self.client.statements
        result = CollectionResult(errors=self._text_errors)
        self._text_errors = []
        version = self.client.version
        read = await self._read(
            result,
            DIGESTS,
            lambda: self.client.fetch_statement_digests(limit),
            lambda reply: (
                _setup_row(reply),
                activity.digest_counters(reply["digest"], cpu_time=version is not None and has_cpu_time(version)),
            ),
        )
        counters: tuple[Any, ...] = ()
        if read is not None and self._setup_ok(result, DIGESTS, read[0], activity.DIGEST_CONSUMERS, "top queries"):
            counters = read[1]
        return StatementRead(counters=counters, errors=tuple(result.errors), statements=self.client.statements - before)

    async def fetch_statement_texts(self, query_ids: Sequence[str]) -> dict[str, tuple[ObfuscatedText, str]]:
        ids = [query_id for query_id in dict.fromkeys(query_ids) if activity.split_query_id(query_id)]
        digests = sorted({activity.split_query_id(query_id)[1] for query_id in ids})  # type: ignore[index]
        if not digests:
            return {}
        result = CollectionResult()
        texts = await self._read(
            result,
            DIGEST_TEXTS,
            lambda: self.client.fetch_digest_texts(digests),
            lambda rows: activity.digest_texts(rows, ids),
        )
        self._text_errors.extend(result.errors)
        return texts or {}

    async def read_query_samples(self, limit: int) -> SampleRead:
        before = self.client.statements
        result = CollectionResult()
        read = await self._read(
            result,
            SAMPLES,
            lambda: self.client.fetch_query_samples(limit),
            lambda reply: (_setup_row(reply), activity.sessions(_longest_first(reply["session"]))),
        )
        sessions: tuple[Any, ...] = ()
        needed = activity.SAMPLE_CONSUMERS + activity.SAMPLE_INSTRUMENTS
        if read is not None and self._setup_ok(result, SAMPLES, read[0], needed, "query samples"):
            sessions = read[1]
        return SampleRead(sessions=sessions, errors=tuple(result.errors), statements=self.client.statements - before)

    async def _read(
        self,
        result: CollectionResult,
        query: str,
        fetch: Callable[[], Any],
        read: Callable[[Any], Any] | None = None,
    ) -> Any:
        """One query-intelligence statement through the collector's runner (held refusals, errors once);
        None when it failed or is held back, the failure in `result`."""
        try:
            await self.client.connect()
        except Exception as exc:
            result.errors.append(self._error("connect", exc))
            return None
        try:
            if read is None:
                return await self._runner.run(result, self._clock(), query, fetch)
            return await self._runner.run(result, self._clock(), query, fetch, read)
        except ConnectionLost:
            return None

    def _setup_ok(
        self, result: CollectionResult, query: str, setup: dict[str, Any] | None, needed: Sequence[str], what: str
    ) -> bool:
        """Report (once) performance_schema or consumers/instruments being off; False when there is
        nothing to use (performance_schema off)."""
        on, missing = activity.missing_setup(setup, needed)
        now = self._clock()
        if not on:
            error = QueryError(query, "unsupported", activity.performance_schema_off_message(what))
        elif missing:
            error = QueryError(query, "unsupported", activity.setup_off_message(what, missing))
        else:
            self._setup_refusals.succeeded(query)
            return True
        if self._setup_refusals.refuse(error, now):
            result.errors.append(error)
        return on

    async def close(self) -> None:
        await self.client.close()


def _setup_row(reply: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    return reply["setup"][0] if reply.get("setup") else None


def _longest_first(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # the statement orders its own part; a UNION ALL does not promise to keep that order
    return sorted(rows, key=lambda row: number(row.get("duration")) or 0, reverse=True)
