"""The collector registry: database type -> collector class, imported lazily.

Each collector lives in its own package `dbintel.agent.collectors.<type>` and exports its class as
`COLLECTOR`. Importing lazily keeps an agent that monitors only Redis from loading (or needing) the
PostgreSQL, MySQL and MongoDB drivers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from dbintel.common.config import DATABASE_TYPES

if TYPE_CHECKING:  # base imports the config models; the registry itself stays import-light
    from .base import DatabaseCollector
    from .metric_table import MetricTable


class CollectorUnavailable(LookupError):
    """No collector can be loaded for a database type (unknown type, or its package is incomplete)."""


def collector_class(db_type: str) -> type["DatabaseCollector"]:
    """The collector class for `db_type` (postgresql, mysql, mongodb, redis)."""
    from .base import DatabaseCollector

    if db_type not in DATABASE_TYPES:
        raise CollectorUnavailable(f"unknown database type {db_type!r}; known types: {', '.join(DATABASE_TYPES)}")
    module_name = f"{__name__}.{db_type}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (exc.name == module_name or module_name.startswith(exc.name + ".")):
            raise CollectorUnavailable(f"no collector package {module_name} is installed") from None
        raise  # the package exists but one of its own imports (a driver) is missing: show that as is
    cls = getattr(module, "COLLECTOR", None)
    if cls is None:
        raise CollectorUnavailable(f"{module_name} does not export COLLECTOR (its collector class)")
    if not (isinstance(cls, type) and issubclass(cls, DatabaseCollector)):
        raise CollectorUnavailable(f"{module_name}.COLLECTOR is not a DatabaseCollector subclass")
    if getattr(cls, "type", None) != db_type:
        raise CollectorUnavailable(f"{module_name}.COLLECTOR declares type {getattr(cls, 'type', None)!r}, "
                                   f"expected {db_type!r}")
    return cls


def table_for(db_type: str) -> "MetricTable":
    """The metric declarations of `db_type`'s collector."""
    return collector_class(db_type).table
