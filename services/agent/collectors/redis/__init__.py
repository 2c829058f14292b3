"""The Redis collector (redis.asyncio). The package shares its name with the `redis` library:
modules here import the library absolutely (`import redis.asyncio`), never relative to this package."""

from ..cadence import SLOW_REFRESH
from .collector import RedisCollector
from .metrics import REDIS_METRICS

COLLECTOR = RedisCollector

__all__ = ["COLLECTOR", "REDIS_METRICS", "SLOW_REFRESH", "RedisCollector"]
