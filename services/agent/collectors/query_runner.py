"""How a collector sends its queries: one failing query costs only its own metrics.

`QueryRunner` runs one client method at a time. A failure becomes a QueryError in the collection's
result (worded by the collector's `describe`, which knows its driver's errors and the grants to
suggest); a refusal the next collection would only repeat (permission, unsupported) is reported once
and the query held back, retried quietly every SLOW_REFRESH seconds (RefusedQueries); a failure that
shows the server gone (`lost`) stops the collection with ConnectionLost, which `collect()` turns into
up=False. A reply the mapping cannot read fails the same way (a bad_reply), inside the same attempt.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar, overload

from .cadence import SLOW_REFRESH
from .metric_table import CollectionResult, QueryError, Sample
from .refusals import RefusedQueries

R = TypeVar("R")
T = TypeVar("T")

# (query, exception, target) -> the QueryError to report; target is None for a database-wide query.
Describe = Callable[[str, BaseException, str | None], QueryError]


class ConnectionLost(Exception):
    """Raised by QueryRunner.record when a failure shows the server gone: the collection stops there."""


def unreachable(message: str, *, statements: int = 0) -> CollectionResult:
    """The result of a collection that could not reach the server at all."""
    return CollectionResult(up=False, errors=[QueryError("connect", "connection", message)], statements=statements)


def _never_lost(error: QueryError, exc: BaseException) -> bool:
    return False


class QueryRunner:
    """Sends a collector's queries and records what went wrong; see the module docstring.

    `hold_refusals=False` reports every failure every time (a collector whose refusals are cheap to repeat)."""

    def __init__(
        self,
        describe: Describe,
        *,
        lost: Callable[[QueryError, BaseException], bool] = _never_lost,
        hold_refusals: bool = True,
        retry_after: float = SLOW_REFRESH,
    ):
        self._describe = describe
        self._lost = lost
        self._hold_refusals = hold_refusals
        self.refused = RefusedQueries(retry_after)

    def allowed(self, query: str, now: float, target: str | None = None) -> bool:
        """False while `query` (on `target`) is held back after a refusal and its retry is not due."""
        return self.refused.allowed(query, now, target)

    def succeeded(self, query: str, target: str | None = None) -> None:
        self.refused.succeeded(query, target)

    @overload
    async def run(
        self,
        result: CollectionResult,
        now: float,
        query: str,
        fetch: Callable[[], Awaitable[R]],
        *,
        target: str | None = None,
    ) -> R | None: ...

    @overload
    async def run(
        self,
        result: CollectionResult,
        now: float,
        query: str,
        fetch: Callable[[], Awaitable[R]],
        read: Callable[[R], T],
        *,
        target: str | None = None,
    ) -> T | None: ...

    async def run(
        self,
        result: CollectionResult,
        now: float,
        query: str,
        fetch: Callable[[], Awaitable[Any]],
        read: Callable[[Any], Any] | None = None,
        *,
        target: str | None = None,
    ) -> Any:
        """One query: its reply (through `read`, when given), or None when it is held back or failed (the
        failure recorded in `result`)."""
        if not self.allowed(query, now, target):
            return None
        try:
            reply = await fetch()
            value = reply if read is None else read(reply)
        except Exception as exc:
            self.record(result, query, exc, now, target)
            return None
        self.succeeded(query, target)
        return value

    async def emit(
        self,
        result: CollectionResult,
        now: float,
        query: str,
        fetch: Callable[[], Awaitable[R]],
        to_samples: Callable[[R], Iterable[Sample]],
        *,
        target: str | None = None,
    ) -> R | None:
        """One query whose samples go straight into `result`; returns its reply (None as for run)."""
        done = await self.run(result, now, query, fetch, lambda reply: (reply, list(to_samples(reply))), target=target)
        if done is None:
            return None
        reply, samples = done
        result.samples.extend(samples)
        return reply

    def record(
        self, result: CollectionResult, query: str, exc: BaseException, now: float, target: str | None = None
    ) -> None:
        """`exc` failed `query`: its QueryError into `result` (once, for a refusal), ConnectionLost if the
        server is gone."""
        error = self._describe(query, exc, target)
        lost = self._lost(error, exc)
        if not lost and self._hold_refusals and self.refused.holds(error):
            self.hold(result, error, now, target)
            return
        result.errors.append(error)
        if lost:
            raise ConnectionLost from None

    def hold(self, result: CollectionResult, error: QueryError, now: float, target: str | None = None) -> None:
        """Hold a refused query back; its error goes into `result` only when the refusal is news."""
        if self.refused.refuse(error, now, target):
            result.errors.append(error)
