"""The MongoDB collector (PyMongo's AsyncMongoClient): see collector.py for the cost design."""

from ..cadence import SLOW_REFRESH
from .collector import MAX_COLLECTIONS, MAX_COMMANDS, MAX_DATABASES, MongodbCollector
from .metrics import TABLE

COLLECTOR = MongodbCollector

__all__ = ["COLLECTOR", "MAX_COLLECTIONS", "MAX_COMMANDS", "MAX_DATABASES", "SLOW_REFRESH", "TABLE", "MongodbCollector"]
