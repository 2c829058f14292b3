"""Queries the server refuses for a reason the next collection would only repeat, shared by the collectors.

A query refused for a missing grant ("permission") or a feature the server lacks ("unsupported") is
reported ONCE (its QueryError names the fix), then held back and retried quietly every
`retry_after` seconds; the rest of the collection flows meanwhile. Once it works again it is
released, and a later refusal is news again. A query may be held per target (e.g. one MongoDB
database); it is reported once per query however many targets refuse it, and reported again only
after it has worked on every target.

Pure bookkeeping: time comes in as an argument.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

from .metric_table import QueryError

# Reasons retrying next round would only repeat.
HELD_REASONS = frozenset({"permission", "unsupported"})


class RefusedQueries:
    def __init__(self, retry_after: float):
        self.retry_after = retry_after
        self._held: dict[tuple[str, Hashable], tuple[float, str]] = {}  # (query, target) -> (retry at, reason)
        self._reported: set[str] = set()  # queries whose refusal has been reported

    @staticmethod
    def holds(error: QueryError) -> bool:
        """Whether `error` is a refusal to hold (rather than a failure to report every time)."""
        return error.reason in HELD_REASONS

    def allowed(self, query: str, now: float, target: Hashable = None) -> bool:
        """False while `query` on `target` is held back and its retry is not due."""
        return self._held.get((query, target), (-math.inf, ""))[0] <= now

    def refuse(self, error: QueryError, now: float, target: Hashable = None) -> bool:
        """Hold `error.query` on `target` back for `retry_after`; True when the error is news (report it),
        False when this query's refusal was reported already."""
        self._held[(error.query, target)] = (now + self.retry_after, error.reason)
        if error.query in self._reported:
            return False
        self._reported.add(error.query)
        return True

    def succeeded(self, query: str, target: Hashable = None) -> None:
        """`query` on `target` worked: no longer held; once it works everywhere, a new refusal is news."""
        self._held.pop((query, target), None)
        if not any(held_query == query for held_query, _ in self._held):
            self._reported.discard(query)

    def retry_due(self, now: float, reason: str) -> bool:
        """Some query held for `reason` is due for its retry."""
        return any(held_reason == reason and now >= at for at, held_reason in self._held.values())

    def held(self) -> frozenset[str]:
        """The queries held back on some target (due for retry or not)."""
        return frozenset(query for query, _ in self._held)
