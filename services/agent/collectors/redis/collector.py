"""RedisCollector: one INFO per collection (plus SLOWLOG LEN), over one reused connection.

Commands per collection in steady state: INFO (only the sections the enabled metrics need) and
SLOWLOG LEN = 2. CLUSTER INFO is added only on a cluster node with a cluster metric enabled, and
LATENCY LATEST only while a latency-spike metric is enabled (off by default): at most 4.
CONFIG GET maxclients only runs on servers whose INFO lacks maxclients (before 6.2), and then at
most every SLOW_REFRESH seconds. Connecting adds the handshake (AUTH, CLIENT SETNAME, SELECT).
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

import redis.exceptions as redis_errors
from pydantic import SecretStr

from dbintel.common.config import DatabaseConfig

from ..base import DatabaseCollector
from ..metric_table import CollectionResult, QueryError, Sample
from .client import RedisClient
from .mapping import (
    CLUSTER_INFO_METRICS,
    LATENCY_METRICS,
    cluster_info_samples,
    info_sections,
    info_samples,
    latency_samples,
    parse_info,
    server_clock,
    server_version,
    single_sample,
)
from .metrics import REDIS_METRICS

SLOW_REFRESH = 300.0  # seconds between CONFIG GET maxclients on servers whose INFO lacks it
_MAX_MESSAGE = 300


def error_reason(exc: BaseException) -> str:
    """The QueryError reason for a failed command."""
    if isinstance(exc, (redis_errors.AuthenticationError, redis_errors.AuthorizationError,
                        redis_errors.NoPermissionError)):
        return "permission"
    if isinstance(exc, (redis_errors.TimeoutError, asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(exc, (redis_errors.ConnectionError, OSError)):
        return "connection"
    if isinstance(exc, redis_errors.ResponseError):
        text = str(exc).lower()
        return "unsupported" if "unknown command" in text or "unknown subcommand" in text else "server_error"
    return "bad_reply"  # InvalidResponse, a reply of the wrong shape, undecodable text


class SlowRefresh:
    """Says when a slowly changing value is due for a refresh: first use, then every `interval` s."""

    def __init__(self, interval: float, monotonic: Callable[[], float]):
        self.interval = interval
        self._monotonic = monotonic
        self._last: float | None = None

    def due(self) -> bool:
        """True (and the clock restarts) if the value should be fetched now."""
        now = self._monotonic()
        if self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        return True


class RedisCollector(DatabaseCollector):
    type = "redis"
    table = REDIS_METRICS

    def __init__(self, database: DatabaseConfig, *, password: SecretStr | None, enabled: frozenset[str],
                 monotonic: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time):
        super().__init__(database, password=password, enabled=enabled)
        host, _, port = database.endpoint.rpartition(":")
        self.client = RedisClient(
            host.strip("[]"), int(port),  # [::1]:6379 -> ::1
            db=int(database.database or 0), username=database.username, password=password,
            tls=database.tls, timeout=database.poll_timeout.total_seconds(),
        )
        self._wall_clock = wall_clock
        self._version: tuple[int, ...] | None = None
        self._mode: str | None = None
        self._maxclients: int | None = None
        self._maxclients_refresh = SlowRefresh(SLOW_REFRESH, monotonic)

    async def collect(self) -> CollectionResult:
        start = self.client.statements
        result = CollectionResult()
        try:
            info = parse_info(await self.client.fetch_info(info_sections(self.enabled, self._version, self._mode)))
            if "redis_version" not in info:
                raise redis_errors.InvalidResponse("INFO reply has no redis_version: not a Redis server?")
        except Exception as exc:  # noqa: BLE001 - every failure becomes a QueryError
            result.up = False
            result.errors.append(self._error("fetch_info", exc))
            result.statements = self.client.statements - start
            return result
        self._version, self._mode = server_version(info), info.get("redis_mode")
        result.samples.extend(info_samples(info, self.enabled, now=self._wall_clock()))

        if "redis.clients.max" in self.enabled and "maxclients" not in info:
            result.samples.extend(await self._maxclients_from_config(result))
        if "redis.slowlog.length" in self.enabled and self._mode != "sentinel":  # Sentinel has no SLOWLOG
            result.samples.extend(await self._run(result, "fetch_slowlog_len", self.client.fetch_slowlog_len,
                                                  lambda length: single_sample("redis.slowlog.length", length,
                                                                               self.enabled)))
        if LATENCY_METRICS & self.enabled and self._mode != "sentinel":  # Sentinel has no LATENCY
            now = server_clock(info, self._wall_clock())
            result.samples.extend(await self._run(result, "fetch_latency_latest", self.client.fetch_latency_latest,
                                                  lambda reply: latency_samples(reply, self.enabled, now=now)))
        if info.get("cluster_enabled") == "1" and CLUSTER_INFO_METRICS & self.enabled:
            result.samples.extend(await self._run(result, "fetch_cluster_info", self.client.fetch_cluster_info,
                                                  lambda text: cluster_info_samples(parse_info(text), self.enabled)))
        result.statements = self.client.statements - start
        return result

    async def close(self) -> None:
        await self.client.close()

    async def _maxclients_from_config(self, result: CollectionResult) -> list[Sample]:
        if self._maxclients_refresh.due():  # a failure also waits for the next refresh: CONFIG is often denied
            self._maxclients = None

            def remember(value: int | None) -> list[Sample]:
                self._maxclients = value
                return []

            await self._run(result, "fetch_maxclients", self.client.fetch_maxclients, remember)
        return single_sample("redis.clients.max", self._maxclients, self.enabled)

    async def _run(self, result: CollectionResult, query: str, command, to_samples) -> list[Sample]:
        """One optional command: its samples, or a QueryError while the rest goes on."""
        try:
            return to_samples(await command())
        except Exception as exc:  # noqa: BLE001
            result.errors.append(self._error(query, exc))
            return []

    def _error(self, query: str, exc: BaseException) -> QueryError:
        message = self.client.scrub(f"{type(exc).__name__}: {exc}".strip())
        return QueryError(query=query, reason=error_reason(exc), message=message[:_MAX_MESSAGE])
