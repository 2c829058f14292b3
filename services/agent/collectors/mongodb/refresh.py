"""The slow schedule: which per-database / per-collection command to send next, within a command budget.

Pure bookkeeping (time comes in as an argument). A task is one command identified by a key tuple
whose first element is its kind, e.g. ("dbStats", "app") or ("indexStats", "app", "orders"). Each
task is refreshed at most once per `interval`; due tasks go oldest first (never-run ones first of
all), ties broken by kind so that the lists that reveal other tasks (databases, then collections)
run before the tasks they reveal.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from ..cadence import SlowRefresh

Key = tuple[str, ...]  # (kind, database?, collection?)

# Lists first: they discover the other tasks.
KIND_ORDER = ("listDatabases", "listCollections", "dbStats", "oplogStats", "oplogOldest", "indexStats", "collStats")


class RefreshQueue:
    """Tasks wanted right now, and when each last ran."""

    def __init__(self, interval: float):
        self._wanted: list[Key] = []
        self._runs = SlowRefresh[Key](interval)

    @property
    def interval(self) -> float:
        return self._runs.interval

    @property
    def wanted(self) -> tuple[Key, ...]:
        return tuple(self._wanted)

    def want(self, keys: Iterable[Key]) -> list[Key]:
        """Replace the wanted tasks; returns the tasks that are no longer wanted (their caches can go)."""
        self._wanted = list(dict.fromkeys(keys))
        return self._runs.keep_only(set(self._wanted))

    def _rank(self, key: Key) -> tuple[float, int]:
        kind = key[0]
        order = KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
        last = self._runs.last(key)
        return -math.inf if last is None else last, order

    def due(self, now: float) -> list[Key]:
        """Wanted tasks whose last run is at least `interval` ago, in the order they should run."""
        return sorted((key for key in self._wanted if self._runs.due(key, now)), key=self._rank)

    def next(self, now: float) -> Key | None:
        ready = self.due(now)
        return ready[0] if ready else None

    def done(self, key: Key, now: float) -> None:
        """The task ran (or failed: a failure also waits a full interval, so nothing is hammered)."""
        self._runs.refreshed(key, now)

    def last_run(self, key: Key) -> float | None:
        return self._runs.last(key)
