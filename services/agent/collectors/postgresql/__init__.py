"""PostgreSQL collector (asyncpg): see collector.py for the cost design."""

from ..cadence import SLOW_REFRESH
from .collector import PostgresqlCollector
from .metrics import TABLE

COLLECTOR = PostgresqlCollector

__all__ = ["COLLECTOR", "SLOW_REFRESH", "TABLE", "PostgresqlCollector"]
