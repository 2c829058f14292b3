"""Tracks whether this replica reaches its store, and marks the recovery after a long outage.

While the store is unreachable no heartbeat is recorded; an outage at least one heartbeat interval
long therefore ends with `mark_recovered()`, which gives every agent a fresh node_timeout.
"""

from __future__ import annotations

import logging
import time

from ..model import StoreUnavailable
from .base import ScalingStore

log = logging.getLogger(__name__)


class StoreHealth:
    def __init__(self, store: ScalingStore, heartbeat_interval_s: float, metrics=None):
        self._store = store
        self._interval = heartbeat_interval_s
        self._metrics = metrics
        self.failing_since: float | None = None

    @property
    def healthy(self) -> bool:
        return self.failing_since is None

    def failed(self, operation: str) -> None:
        if self.failing_since is None:
            self.failing_since = time.monotonic()
            log.warning("store unreachable (%s); serving agents as degraded", operation)
        if self._metrics is not None:
            self._metrics.store_errors.labels(operation).inc()
            self._metrics.store_up.set(0)

    async def succeeded(self) -> None:
        if self.failing_since is None:
            return
        outage = time.monotonic() - self.failing_since
        self.failing_since = None
        if self._metrics is not None:
            self._metrics.store_up.set(1)
        log.info("store reachable again after %.1fs", outage)
        if outage >= self._interval:
            try:
                await self._store.mark_recovered()
            except StoreUnavailable:
                self.failing_since = time.monotonic() - outage  # still failing; keep the outage length
