"""RedisCollector: one INFO per collection (plus SLOWLOG LEN), over one reused connection.

Commands per collection in steady state: INFO (only the sections the enabled metrics need) and
SLOWLOG LEN = 2. CLUSTER INFO is added only on a cluster node with a cluster metric enabled, and
LATENCY LATEST only while a latency-spike metric is enabled (off by default): at most 4.
CONFIG GET maxclients only runs on servers whose INFO lacks maxclients (before 6.2), and then at
most every SLOW_REFRESH seconds. Connecting adds the handshake (AUTH, CLIENT SETNAME, SELECT).

Query intelligence (same connection, own intervals, never during collect(); pure mapping in activity.py):
- read_statement_stats  ONE command: SLOWLOG GET <limit>, the entries logged since the cursor grouped
                        by command pattern (cumulative=False: the interval's amounts). The server's cost
                        is a copy of at most slowlog-max-len (128 by default) entries of at most 32
                        arguments x 128 bytes each. Only commands slower than slowlog-log-slower-than
                        (10 ms by default) are logged: that is what Redis's "top queries" are.
- read_query_samples    ONE command: CLIENT LIST (O(clients)), plus CLIENT ID once per new connection
                        to leave our own client out.
  ACL: +slowlog|get, +client|list, +client|id (a refusal is reported ONCE with the ACL SETUSER to run,
  then retried quietly every SLOW_REFRESH s). Sentinel has neither: reported once as unsupported.
  LATENCY LATEST is not a query source: its events (command, fast-command, expire-cycle, fork ...) name
  no command or key, so they are neither statements nor sessions; they stay the redis.latency.spike.*
  metrics of collect() (off by default), and query intelligence does not send it again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import redis.exceptions as redis_errors
from pydantic import SecretStr

from dbintel.common.config import DatabaseConfig
from dbintel.common.endpoints import parse_host_port

from ...queries.model import SampleRead, StatementRead
from ..base import DatabaseCollector
from ..cadence import SlowRefresh
from ..errors import error_message, secret_values
from ..metric_table import CollectionResult, QueryError, Reason, Sample
from ..query_runner import QueryRunner
from . import activity
from .client import RedisClient
from .mapping import (
    CLUSTER_INFO_METRICS,
    LATENCY_METRICS,
    cluster_info_samples,
    info_samples,
    info_sections,
    latency_samples,
    parse_info,
    server_clock,
    server_version,
    single_sample,
)
from .metrics import REDIS_METRICS

_MAX_MESSAGE = 300
SLOWLOG = "fetch_slowlog"  # SLOWLOG GET: top queries
CLIENT_LIST = "fetch_client_list"  # CLIENT LIST: query samples
CLIENT_ID = "fetch_client_id"  # CLIENT ID, once per connection: our own client, left out of the samples
_ACL = {SLOWLOG: "+slowlog|get", CLIENT_LIST: "+client|list", CLIENT_ID: "+client|id"}
MAXCLIENTS = "fetch_maxclients"  # CONFIG GET maxclients: only for servers whose INFO lacks it, on the slow schedule


def error_reason(exc: BaseException) -> Reason:
    """The QueryError reason for a failed command."""
    if isinstance(
        exc, (redis_errors.AuthenticationError, redis_errors.AuthorizationError, redis_errors.NoPermissionError)
    ):
        return "permission"
    if isinstance(exc, (redis_errors.TimeoutError, asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(exc, (redis_errors.ConnectionError, OSError)):
        return "connection"
    if isinstance(exc, redis_errors.ResponseError):
        text = str(exc).lower()
        return "unsupported" if "unknown command" in text or "unknown subcommand" in text else "server_error"
    return "bad_reply"  # InvalidResponse, a reply of the wrong shape, undecodable text


class RedisCollector(DatabaseCollector):
    type = "redis"
    table = REDIS_METRICS
    supports_top_queries = True
    supports_query_samples = True

    def __init__(
        self,
        database: DatabaseConfig,
        *,
        password: SecretStr | None,
        enabled: frozenset[str],
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ):
        super().__init__(database, password=password, enabled=enabled)
        host, port = parse_host_port(database.endpoint)
        self.client = RedisClient(
            host,
            port,
            db=int(database.database or 0),
            username=database.username,
            password=password,
            tls=database.tls,
            timeout=database.poll_timeout.total_seconds(),
        )
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        self._version: tuple[int, ...] | None = None
        self._mode: str | None = None
        self._maxclients: int | None = None
        self._maxclients_refresh = SlowRefresh[str]()
        # Every failure is reported every time: no command here is worth holding back.
        self._runner = QueryRunner(self._error, hold_refusals=False)
        # Query intelligence's refusals (ACL, Sentinel) would repeat every interval: reported once, held.
        self._query_runner = QueryRunner(self._error)
        self._own_id: tuple[int, int] | None = None  # (client.connections when read, CLIENT ID)
        self.slowlog_lost = 0  # slowlog entries that fell off between two reads (activity.NewEntries.lost_entries)

    async def collect(self) -> CollectionResult:
        start = self.client.statements
        result = CollectionResult()
        try:
            info = parse_info(await self.client.fetch_info(info_sections(self.enabled, self._version, self._mode)))
            if "redis_version" not in info:
                raise redis_errors.InvalidResponse("INFO reply has no redis_version: not a Redis server?")
        except Exception as exc:
            result.up = False
            result.errors.append(self._error("fetch_info", exc))
            result.statements = self.client.statements - start
            return result
        self._version, self._mode = server_version(info), info.get("redis_mode")
        result.samples.extend(info_samples(info, self.enabled, now=self._wall_clock()))

        now, runner = self._monotonic(), self._runner
        if "redis.clients.max" in self.enabled and "maxclients" not in info:
            result.samples.extend(await self._maxclients_from_config(result, now))
        if "redis.slowlog.length" in self.enabled and self._mode != "sentinel":  # Sentinel has no SLOWLOG
            await runner.emit(
                result,
                now,
                "fetch_slowlog_len",
                self.client.fetch_slowlog_len,
                lambda length: single_sample("redis.slowlog.length", length, self.enabled),
            )
        if LATENCY_METRICS & self.enabled and self._mode != "sentinel":  # Sentinel has no LATENCY
            server_now = server_clock(info, self._wall_clock())
            await runner.emit(
                result,
                now,
                "fetch_latency_latest",
                self.client.fetch_latency_latest,
                lambda reply: latency_samples(reply, self.enabled, now=server_now),
            )
        if info.get("cluster_enabled") == "1" and CLUSTER_INFO_METRICS & self.enabled:
            await runner.emit(
                result,
                now,
                "fetch_cluster_info",
                self.client.fetch_cluster_info,
                lambda text: cluster_info_samples(parse_info(text), self.enabled),
            )
        result.statements = self.client.statements - start
        return result

    async def close(self) -> None:
        await self.client.close()

    # --- query intelligence ----------------------------------------------------------------------

    async def read_statement_stats(self, limit: int, cursor: str | None) -> StatementRead:
        start, result = self.client.statements, CollectionResult()
        read = await self._query_runner.run(
            result,
            self._monotonic(),
            SLOWLOG,
            lambda: self.client.fetch_slowlog(max(limit, 1)),
            lambda reply: activity.new_entries(activity.slowlog_entries(reply), cursor),
        )
        counters: tuple = ()
        if read is not None:
            self.slowlog_lost += read.lost_entries
            counters = activity.slowlog_counters(read.entries, limit)
        return StatementRead(
            counters=counters,
            cumulative=False,
            cursor=read.cursor if read is not None else cursor,  # a failed read keeps the old place
            errors=tuple(result.errors),
            statements=self.client.statements - start,
        )

    async def read_query_samples(self, limit: int) -> SampleRead:
        start, result, now = self.client.statements, CollectionResult(), self._monotonic()
        if self._own_id is None or self._own_id[0] != self.client.connections or not self.client.connected:
            own = await self._query_runner.run(result, now, CLIENT_ID, self.client.fetch_client_id)
            self._own_id = (self.client.connections, own) if own is not None else None
        sessions: tuple = ()
        if self._own_id is not None:
            own_id = self._own_id[1]
            read = await self._query_runner.run(
                result,
                now,
                CLIENT_LIST,
                self.client.fetch_client_list,
                lambda reply: activity.client_sessions(reply, own_id, limit),
            )
            sessions = read or ()
        return SampleRead(sessions=sessions, errors=tuple(result.errors), statements=self.client.statements - start)

    async def _maxclients_from_config(self, result: CollectionResult, now: float) -> list[Sample]:
        if self._maxclients_refresh.due(MAXCLIENTS, now):
            self._maxclients_refresh.refreshed(MAXCLIENTS, now)  # a failure also waits: CONFIG is often denied
            self._maxclients = await self._runner.run(result, now, MAXCLIENTS, self.client.fetch_maxclients)
        return single_sample("redis.clients.max", self._maxclients, self.enabled)

    def _error(self, query: str, exc: BaseException, target: str | None = None) -> QueryError:
        reason = error_reason(exc)
        message = error_message(exc, str(exc).strip(), reason=reason, secrets=secret_values(self._password))
        if reason == "permission" and query in _ACL:
            user = self.database.username or "default"
            message = f"{message[: _MAX_MESSAGE - 80]} (grant it: ACL SETUSER {user} {_ACL[query]})"
        return QueryError(query, reason, message[:_MAX_MESSAGE])
