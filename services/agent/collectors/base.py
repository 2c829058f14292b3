"""What every database collector is: one per monitored database, holding one pooled connection.

A collector turns server answers into samples. It knows nothing of scheduling, leases or
exposition: the agent's scheduler calls `collect()` on the database's interval, with a timeout
around it, and hands the result to the exposition. Its queries live in its client (one method per
query); its metrics in a `MetricTable`.
"""

from __future__ import annotations

import abc
from typing import ClassVar

from pydantic import SecretStr

from dbintel.common.config import DatabaseConfig

from .metric_table import CollectionResult, MetricTable


class DatabaseCollector(abc.ABC):
    """Base of the per-database collectors (postgresql, mysql, mongodb, redis)."""

    type: ClassVar[str]
    table: ClassVar[MetricTable]

    def __init__(self, database: DatabaseConfig, *, password: SecretStr | None, enabled: frozenset[str]):
        self.database = database
        self._password = password
        self.enabled = enabled  # OTel metric names to emit (table defaults + per-database overrides)

    @abc.abstractmethod
    async def collect(self) -> CollectionResult:
        """One collection. Opens the pooled connection lazily and reuses it across calls.

        Never raises for server trouble: an unreachable server gives `up=False` and a QueryError with
        reason "connection"; a failing query gives a QueryError and the other queries still run.
        Cancellation (the scheduler's timeout) must leave the collector usable for the next call.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection. Idempotent; safe before any collect()."""
