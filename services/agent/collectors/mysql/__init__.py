"""MySQL/MariaDB collector (aiomysql): see collector.py for the cost design."""

from .collector import SLOW_REFRESH, MysqlCollector
from .metrics import TABLE

COLLECTOR = MysqlCollector

__all__ = ["COLLECTOR", "MysqlCollector", "SLOW_REFRESH", "TABLE"]
