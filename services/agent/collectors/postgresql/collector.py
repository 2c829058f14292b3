"""The PostgreSQL collector: five statements per collection with the default metrics, one reused connection.

Design (cost to the monitored server first):

- One asyncpg connection to the configured `database` (default "postgres"), opened lazily, reused
  by every collection, replaced only after it broke or a collection was cancelled mid-query.
- Database-level statistics (pg_stat_database, backends, XID age, sizes) cover *all* non-template
  databases: those views are cluster-wide, readable from any one connection. Table and index
  statistics (pg_stat_user_tables / _indexes are per database) cover the configured database
  only: the OTel receiver opens one connection per database for them, which would multiply
  connections and statements by the number of databases. To watch tables of several databases,
  configure one entry per database.
- Statements per collection, each a single round trip, skipped when all its metrics are disabled:
    1. fetch_database_stats     pg_stat_database ⋈ pg_database ⋈ (pg_stat_activity per datid)
    2. fetch_server_stats       pg_stat_bgwriter (+ pg_stat_checkpointer, 17+), pg_stat_archiver,
                                max_connections, recovery state and standby replay position,
                                pg_replication_slots (as one JSON array), pg_stat_activity by state
    3. fetch_table_stats        pg_stat_user_tables ⋈ pg_statio_user_tables (autovacuum/analyze too)
    4. fetch_index_stats        pg_stat_user_indexes
    5. fetch_replication_stats  pg_stat_replication
  and one more each, only while one of its (optional, off by default) metrics is enabled:
    6. fetch_locks              pg_locks ⋈ pg_class                 postgresql.database.locks
    7. fetch_function_stats     pg_stat_user_functions ⋈ pg_proc    postgresql.function.calls
    8. fetch_execution_time     pg_stat_statements(false)           postgresql.query.execution.time
    9. fetch_vector_stats       pg_stat_statements (texts)          postgresql.vector.*
  so 5 statements with the defaults, at most 9 with every metric enabled.
  Sizes (pg_database_size, pg_relation_size: one stat() per file) are folded into statements 1, 3
  and 4 on slow rounds, at most every SLOW_REFRESH seconds, and the cached size samples are
  re-emitted in between; so slow rounds also send five statements. Sizes of relations under an
  ACCESS EXCLUSIVE lock are skipped that round rather than queueing behind the lock.
- The server version (for the PostgreSQL 17 pg_stat_checkpointer split) comes from the startup
  parameters of the connection, read once per connection at no statement's cost.
- Privileges: pg_monitor (or pg_read_all_stats) shows other users' activity states and lets
  pg_database_size() read databases the user may not CONNECT to; without it, those sizes are
  withheld and reported as a permission error (again only when the set of withheld databases
  changes) while everything else flows. A statement the server refuses for lack of a grant (a
  view revoked from PUBLIC, say) — or for a missing feature (pg_stat_statements not installed) — is
  reported ONCE, with the GRANT to run; it is then left out and retried quietly every SLOW_REFRESH
  seconds on the same connection (PostgreSQL checks privileges per statement), and its metrics come
  back on their own once the grant is in place. The rest flows meanwhile.

Query intelligence (`read_statement_stats`, `fetch_statement_texts`, `read_query_samples`), on the
same connection (opened by whichever call comes first), one statement per call (client docstrings
give each one's cost):
- read_statement_stats   pg_stat_statements(false) summed per queryid, top `limit` by execution time,
                         ⋈ pg_database/pg_roles for the rows returned, + pg_stat_statements_info
- fetch_statement_texts  pg_stat_statements(true) for the queryids new to the agent (a read of the
                         server's query-text file, once per batch of new statements)
- read_query_samples     pg_stat_activity, pg_blocking_pids() only for sessions waiting on a lock
  Without pg_stat_statements (not preloaded, or no CREATE EXTENSION) the first two report ONCE an
  "unsupported" error naming the settings and the statement that enable it, and are retried quietly
  every SLOW_REFRESH seconds; samples do not need it. Privileges: pg_monitor (pg_read_all_stats) to see
  other users' statements and sessions; without it only the monitoring user's own show.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg
from pydantic import SecretStr

from dbintel.common.config import DatabaseConfig

from ...queries.model import SampleRead, StatementRead
from ...queries.obfuscation import ObfuscatedText
from ..base import DatabaseCollector
from ..cadence import SlowRefresh
from ..errors import error_message, first_line, secret_values
from ..metric_table import CollectionResult, QueryError, Sample
from ..query_runner import ConnectionLost, QueryRunner, unreachable
from . import activity, mapping
from .client import REQUIREMENTS, PostgresqlClient, describe_error, quote_identifier
from .metrics import METRICS_BY_QUERY, SIZE_METRICS, TABLE

Rows = TypeVar("Rows")
T = TypeVar("T")

# Queries that need pg_stat_statements loaded: "must be loaded via shared_preload_libraries" (the
# extension created but not preloaded) is a refusal like a missing extension, not a server error.
_NEEDS_PRELOAD = frozenset({"read_statement_stats", "fetch_statement_texts"})


class PostgresqlCollector(DatabaseCollector):
    type = "postgresql"
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
        self.client = PostgresqlClient(database, password)
        self._clock = clock
        self._sizes = SlowRefresh[str]()  # per query: when its size columns were last fetched
        self._size_samples: dict[str, list[Sample]] = {}  # query -> size samples re-emitted between refreshes
        self._runner = QueryRunner(self._error, lost=self._lost)
        self._withheld_sizes: list[str] = []  # databases whose size was withheld, as last reported

    def _error(self, query: str, exc: BaseException, target: str | None = None) -> QueryError:
        reason, message = describe_error(exc, user=self.database.username, secrets=secret_values(self._password))
        if query in _NEEDS_PRELOAD and isinstance(exc, asyncpg.ObjectNotInPrerequisiteStateError):
            reason = "unsupported"
            message = error_message(exc, first_line(str(exc)), reason=reason, secrets=secret_values(self._password))
        if reason == "unsupported" and query in REQUIREMENTS:
            message = f"{message} ({REQUIREMENTS[query]})"
        return QueryError(query, reason, message)

    def _lost(self, error: QueryError, exc: BaseException) -> bool:
        return error.reason == "connection" and not self.client.connected

    def _wanted(self, query: str) -> frozenset[str]:
        return METRICS_BY_QUERY[query] & self.enabled

    def _sizes_due(self, query: str, now: float) -> bool:
        return bool(self._wanted(query) & SIZE_METRICS) and self._sizes.due(query, now)

    async def collect(self) -> CollectionResult:
        result = CollectionResult()
        before = self.client.statements
        try:
            await self.client.connect()
        except Exception as exc:  # any failure to connect: the database is down for us this round
            return unreachable(self._error("connect", exc).message)
        now = self._clock()
        database = self.client.database_name
        try:
            await self._sized(
                result,
                now,
                "fetch_database_stats",
                lambda sizes: self.client.fetch_database_stats(
                    sizes=sizes, conflicts="postgresql.query.conflicts" in self.enabled
                ),
                lambda rows: mapping.database_samples(rows, self.enabled),
                withheld=mapping.unsized_databases,
            )
            await self._plain(
                result,
                now,
                "fetch_server_stats",
                self.client.fetch_server_stats,
                lambda row: mapping.server_samples(row, self.enabled),
            )
            await self._sized(
                result,
                now,
                "fetch_table_stats",
                lambda sizes: self.client.fetch_table_stats(sizes=sizes),
                lambda rows: mapping.table_samples(rows, database, self.enabled),
            )
            await self._sized(
                result,
                now,
                "fetch_index_stats",
                lambda sizes: self.client.fetch_index_stats(sizes=sizes),
                lambda rows: mapping.index_samples(rows, database, self.enabled),
            )
            await self._plain(
                result,
                now,
                "fetch_replication_stats",
                self.client.fetch_replication_stats,
                lambda rows: mapping.replication_samples(rows, self.enabled),
            )
            await self._plain(
                result,
                now,
                "fetch_locks",
                self.client.fetch_locks,
                lambda rows: mapping.lock_samples(rows, database, self.enabled),
            )
            await self._plain(
                result,
                now,
                "fetch_function_stats",
                self.client.fetch_function_stats,
                lambda rows: mapping.function_samples(rows, database, self.enabled),
            )
            await self._plain(
                result,
                now,
                "fetch_execution_time",
                self.client.fetch_execution_time,
                lambda rows: mapping.execution_time_samples(rows, self.enabled),
            )
            await self._plain(
                result,
                now,
                "fetch_vector_stats",
                self.client.fetch_vector_stats,
                lambda rows: mapping.vector_samples(rows, database, self.enabled),
            )
        except ConnectionLost:
            result.up = False
        result.statements = self.client.statements - before
        return result

    def _skipped(self, query: str, now: float) -> bool:
        """Not sent this round: all its metrics are disabled, or it was refused and its retry is not due."""
        return not self._wanted(query) or not self._runner.allowed(query, now)

    async def _plain(
        self,
        result: CollectionResult,
        now: float,
        query: str,
        fetch: Callable[[], Awaitable[Rows]],
        to_samples: Callable[[Rows], list[Sample]],
    ) -> None:
        if not self._skipped(query, now):
            await self._runner.emit(result, now, query, fetch, to_samples)

    async def _sized(
        self,
        result: CollectionResult,
        now: float,
        query: str,
        fetch: Callable[[bool], Awaitable[list[dict[str, Any]]]],
        to_samples: Callable[[list[dict[str, Any]]], list[Sample]],
        withheld: Callable[[list[dict[str, Any]]], list[str]] | None = None,
    ) -> None:
        """A query whose size columns are fetched on slow rounds only; cached size samples fill the others."""
        if self._skipped(query, now):
            return
        sizes = self._sizes_due(query, now)
        done = await self._runner.run(result, now, query, lambda: fetch(sizes), lambda rows: (rows, to_samples(rows)))
        if done is None:
            return
        rows, samples = done
        if sizes:
            self._size_samples[query] = [s for s in samples if s.spec.name in SIZE_METRICS]
            self._sizes.refreshed(query, now)  # only once they came: a failed refresh is tried again next round
            if withheld:
                self._report_withheld_sizes(result, query, withheld(rows))
        else:
            samples = samples + self._size_samples.get(query, [])
        result.samples.extend(samples)

    def _report_withheld_sizes(self, result: CollectionResult, query: str, missing: list[str]) -> None:
        """Databases whose size needs a grant: reported when that set changes, not every slow round."""
        if missing and missing != self._withheld_sizes:
            grantee = quote_identifier(self.database.username) if self.database.username else "<user>"
            result.errors.append(
                QueryError(
                    query,
                    "permission",
                    (
                        f"size withheld for {', '.join(missing)}: no CONNECT privilege — run: "
                        f"GRANT pg_read_all_stats TO {grantee}"
                    ),
                )
            )
        self._withheld_sizes = missing

    # -- query intelligence ----------------------------------------------------------------------

    async def _read(
        self, query: str, fetch: Callable[[], Awaitable[Rows]], read: Callable[[Rows], T]
    ) -> tuple[T | None, tuple[QueryError, ...], int]:
        """One statement on the collector's connection: (value or None, errors, statements sent).
        A refusal is reported once and held back like collect()'s queries; never raises for server trouble."""
        result = CollectionResult()
        before = self.client.statements
        value: T | None = None
        try:
            await self.client.connect()
        except Exception as exc:
            result.errors.append(self._error("connect", exc))
        else:
            try:
                value = await self._runner.run(result, self._clock(), query, fetch, read)
            except ConnectionLost:
                pass  # the error is in result; the next call reconnects
        return value, tuple(result.errors), self.client.statements - before

    async def read_statement_stats(self, limit: int, cursor: str | None) -> StatementRead:
        rows, errors, statements = await self._read(
            "read_statement_stats",
            lambda: self.client.fetch_statement_stats(limit),
            lambda rows: (activity.statement_counters(rows), activity.stats_reset(rows)),
        )
        if rows is None:
            return StatementRead(errors=errors, statements=statements)
        counters, reset_at = rows
        return StatementRead(counters=counters, reset_at=reset_at, errors=errors, statements=statements)

    async def fetch_statement_texts(self, query_ids: Sequence[str]) -> dict[str, tuple[ObfuscatedText, str]]:
        ids = sorted({int(q) for q in query_ids if q.lstrip("-").isdigit()})
        if not ids:
            return {}
        texts, _, _ = await self._read(
            "fetch_statement_texts", lambda: self.client.fetch_statement_texts(ids), activity.statement_texts
        )
        return texts or {}  # a failure leaves the ids unknown: the agent asks again later

    async def read_query_samples(self, limit: int) -> SampleRead:
        sessions, errors, statements = await self._read(
            "read_query_samples", lambda: self.client.fetch_query_samples(limit), activity.active_sessions
        )
        return SampleRead(sessions=sessions or (), errors=errors, statements=statements)

    async def close(self) -> None:
        await self.client.close()
