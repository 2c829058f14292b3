"""What every database collector is: one per monitored database, holding one pooled connection.

A collector turns server answers into samples. It knows nothing of scheduling, leases or
exposition: the agent's scheduler calls `collect()` on the database's interval, with a timeout
around it, and hands the result to the exposition. Its queries live in its client (one method per
query); its metrics in a `MetricTable`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from pydantic import SecretStr

from dbintel.common.config import DatabaseConfig

from .metric_table import CollectionResult, MetricTable

if TYPE_CHECKING:  # the query-intelligence records; collectors without those reads never load them
    from ..queries.model import SampleRead, StatementRead
    from ..queries.obfuscation import ObfuscatedText


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

    # -- query intelligence (optional; on the collector's own connection) -------------------------
    # The agent calls these on their own intervals (`top_query_collection`, `query_sample_collection`),
    # never at the same time as collect() or each other on one collector. Like collect(), they never
    # raise for server trouble: a refusal comes back in `errors`, naming what enables it.
    supports_top_queries: ClassVar[bool] = False
    supports_query_samples: ClassVar[bool] = False

    async def read_statement_stats(self, limit: int, cursor: str | None) -> StatementRead:
        """The server's statement statistics, at most `limit` rows (the heaviest by total time first),
        numbers only where texts cost bytes (PostgreSQL: pg_stat_statements(showtext := false)).
        `cursor` is the previous read's (or the previous owner's), for sources that read incrementally."""
        raise NotImplementedError(f"{self.type} has no statement statistics")

    async def fetch_statement_texts(self, query_ids: Sequence[str]) -> dict[str, tuple[ObfuscatedText, str]]:
        """Obfuscated text and summary of statements the agent has not seen yet (one statement for all
        of them). Sources whose reads carry texts already return {}."""
        return {}

    async def read_query_samples(self, limit: int) -> SampleRead:
        """What runs now: at most `limit` sessions/operations, the longest-running first, our own excluded."""
        raise NotImplementedError(f"{self.type} has no query samples")

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection. Idempotent; safe before any collect()."""
