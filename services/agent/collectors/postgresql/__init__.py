"""PostgreSQL collector (asyncpg): see collector.py for the cost design."""

from .collector import SLOW_REFRESH, PostgresqlCollector
from .metrics import TABLE

COLLECTOR = PostgresqlCollector

__all__ = ["COLLECTOR", "PostgresqlCollector", "SLOW_REFRESH", "TABLE"]
