"""The slow schedule every collector keeps for what is expensive to read or seldom changes (sizes, catalogs,
per-collection statistics, CONFIG): refreshed at most once per SLOW_REFRESH seconds, cached in between.

Pure bookkeeping: time comes in as an argument.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable
from typing import Generic, TypeVar

SLOW_REFRESH = 300.0  # seconds between two refreshes of one slow value, and between retries of a refused query

K = TypeVar("K", bound=Hashable)


class SlowRefresh(Generic[K]):
    """When each slow value is due: at once the first time, then `interval` seconds after its last refresh.

    Values are told apart by a key (the query name, or e.g. a (command, database) tuple). The caller says
    when a value counts as refreshed: before the attempt, so that a failure also waits a full interval
    (a denied command would only be denied again), or after it succeeded, so that a failure is retried
    next round."""

    def __init__(self, interval: float = SLOW_REFRESH):
        self.interval = interval
        self._last: dict[K, float] = {}

    def due(self, key: K, now: float) -> bool:
        last = self._last.get(key)
        return last is None or now - last >= self.interval

    def refreshed(self, key: K, now: float) -> None:
        self._last[key] = now

    def last(self, key: K) -> float | None:
        """When `key` was last refreshed; None if never (or forgotten since)."""
        return self._last.get(key)

    def keep_only(self, keys: Collection[K]) -> list[K]:
        """Forget every key not in `keys` (it is due at once if it comes back); returns the forgotten ones."""
        dropped = [key for key in self._last if key not in keys]
        for key in dropped:
            del self._last[key]
        return dropped
