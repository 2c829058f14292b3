"""The MongoDB collector (PyMongo's AsyncMongoClient): see collector.py for the cost design."""

from .collector import MAX_COLLECTIONS, MAX_COMMANDS, MAX_DATABASES, SLOW_REFRESH, MongodbCollector
from .metrics import TABLE

COLLECTOR = MongodbCollector

__all__ = ["COLLECTOR", "MAX_COLLECTIONS", "MAX_COMMANDS", "MAX_DATABASES", "MongodbCollector", "SLOW_REFRESH",
           "TABLE"]
