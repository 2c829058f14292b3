"""The collector registry: database type -> collector class, imported lazily.

Each collector lives in its own package `dbintel.agent.collectors.<type>` and exports its class as
`COLLECTOR`. Importing lazily keeps an agent that monitors only Redis from loading (or needing) the
PostgreSQL, MySQL and MongoDB drivers.

Adding a fifth database (say `clickhouse`) touches these places and no others:

1. `dbintel.common.config`: add the type to DATABASE_TYPES and its port to DEFAULT_PORTS.
2. `collectors/clickhouse/metrics.py`: the metrics as data, one MetricSpec each, in a MetricTable.
3. `collectors/clickhouse/client.py`: every query, one method each, returning plain rows; the host and
   port come from `dbintel.common.endpoints.parse_host_port`, TLS from `..tls`.
4. `collectors/clickhouse/mapping.py`: pure functions, rows -> samples, built on `..samples`
   (`SampleEmitter`, `number`); no I/O, so they get unit and property tests.
5. `collectors/clickhouse/collector.py`: a DatabaseCollector that only orchestrates: each client call
   through a `..query_runner.QueryRunner` (one failing query costs only its own metrics, refusals are
   held back), expensive reads on a `..cadence.SlowRefresh`; export it as `COLLECTOR` from the package.
6. The reference TSV in tests/reference/metrics/ (the coverage contract), a golden series file under
   tests/golden/, and `python scripts/generate_metrics_doc.py` to regenerate docs/metrics.md;
   tests/unit/test_metric_tables.py then checks the table against both.
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


def collector_class(db_type: str) -> type[DatabaseCollector]:
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
        raise CollectorUnavailable(
            f"{module_name}.COLLECTOR declares type {getattr(cls, 'type', None)!r}, expected {db_type!r}"
        )
    return cls


def table_for(db_type: str) -> MetricTable:
    """The metric declarations of `db_type`'s collector."""
    return collector_class(db_type).table
