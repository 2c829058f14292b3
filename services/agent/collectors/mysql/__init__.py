"""MySQL/MariaDB collector (aiomysql): see collector.py for the cost design."""

from ..cadence import SLOW_REFRESH
from .collector import MysqlCollector
from .metrics import TABLE

COLLECTOR = MysqlCollector

__all__ = ["COLLECTOR", "SLOW_REFRESH", "TABLE", "MysqlCollector"]
