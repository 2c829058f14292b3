"""Optional OTLP push of the same database snapshots the Prometheus exposition renders.

An OpenTelemetry SDK MeterProvider with a PeriodicExportingMetricReader and the gRPC OTLP exporter.
Each declared metric becomes an observable instrument whose callback reads the scheduler's immutable
snapshots (from the reader's thread; no I/O, no lock). Instruments are created per database type the
first time that type is granted, from its collector's MetricTable. Data points carry the OTel
attribute names (`redis.db`), plus `dbintel_resource` and the database's configured labels.

A database's points are the database's, not this agent's (design property 8): the SDK's MeterProvider
has one Resource (the agent's), so `PerDatabaseResources` wraps the exporter and moves each point that
carries `dbintel_resource` into a ResourceMetrics of its database (`database_resource`: the resource
id, `db.system`, `server.address`/`server.port`, `service.instance.id` = the resource id; nothing of the
agent). A database handed to another agent keeps its resource, so a backend that keys series on the
resource (Prometheus' OTLP receiver: `job`/`instance` from `service.name`/`service.instance.id`) keeps
one series. Points without a database stay with the agent's resource.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider, ObservableCounter, ObservableGauge, ObservableUpDownCounter
from opentelemetry.sdk.metrics.export import (
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource

from dbintel import __version__
from dbintel.common.config import DatabaseConfig, OTLPSettings
from dbintel.common.endpoints import parse_host_port

from .collectors.metric_table import MetricSpec, MetricTable
from .exposition import RESOURCE_LABEL
from .scheduler import ResourceSnapshot

log = logging.getLogger(__name__)

# One series per table/index is normal for a large PostgreSQL; the SDK's default limit (2000 attribute
# sets per instrument) would fold the rest into an overflow point.
CARDINALITY_LIMIT = 200_000

Snapshots = Callable[[], Mapping[str, ResourceSnapshot]]
SERVICE_NAME = "dbintel-agent"


def database_resource(resource_id: str, database: DatabaseConfig) -> Resource:
    """The OTLP resource of a database's points: the database's identity only, the same on every agent
    (no agent id, version or SDK attributes, and not OTEL_RESOURCE_ATTRIBUTES, which describe the agent)."""
    host, port = parse_host_port(database.endpoint)
    return Resource(
        {
            "service.name": SERVICE_NAME,
            "service.instance.id": resource_id,
            RESOURCE_LABEL: resource_id,
            "db.system": database.type,
            "server.address": host,
            "server.port": port,
        }
    )


def split_by_database(data: MetricsData, resource_of: Callable[[str], Resource | None]) -> MetricsData:
    """`data` with every point that carries a known `dbintel_resource` moved, with its metric and scope,
    into one ResourceMetrics per database; the rest stays under the resource it came with."""
    out: list[ResourceMetrics] = []
    resources: dict[str, Resource | None] = {}  # resource id -> its Resource (None: unknown)
    for resource_metrics in data.resource_metrics:
        own_scopes: list[ScopeMetrics] = []
        database_scopes: dict[str, list[ScopeMetrics]] = {}
        for scope_metrics in resource_metrics.scope_metrics:
            own: list[Metric] = []
            by_database: dict[str, list[Metric]] = {}
            for metric in scope_metrics.metrics:
                groups: dict[str | None, list[Any]] = {}
                for point in metric.data.data_points:
                    value = (point.attributes or {}).get(RESOURCE_LABEL)
                    resource_id = None if value is None else str(value)
                    if resource_id is not None and resource_id not in resources:
                        resources[resource_id] = resource_of(resource_id)
                    if resource_id is not None and resources[resource_id] is None:
                        resource_id = None  # not a database this agent knows: left where it was
                    groups.setdefault(resource_id, []).append(point)
                for resource_id, points in groups.items():
                    part_data: Any = dataclasses.replace(metric.data, data_points=points)  # type: ignore[arg-type]
                    part = dataclasses.replace(metric, data=part_data)
                    (own if resource_id is None else by_database.setdefault(resource_id, [])).append(part)
            if own:
                own_scopes.append(dataclasses.replace(scope_metrics, metrics=own))
            for resource_id, metrics in by_database.items():
                database_scopes.setdefault(resource_id, []).append(dataclasses.replace(scope_metrics, metrics=metrics))
        if own_scopes:
            out.append(dataclasses.replace(resource_metrics, scope_metrics=own_scopes))
        for resource_id, scopes in database_scopes.items():
            resource = resources[resource_id]
            assert resource is not None  # only known databases were grouped apart
            out.append(ResourceMetrics(resource, scopes, resource_metrics.schema_url))
    return MetricsData(resource_metrics=out)


class PerDatabaseResources(MetricExporter):
    """Wraps an exporter: each export goes through `split_by_database` first (see the module docstring)."""

    def __init__(self, exporter: MetricExporter, resource_of: Callable[[str], Resource | None]):
        super().__init__(
            preferred_temporality=exporter._preferred_temporality,
            preferred_aggregation=exporter._preferred_aggregation,
        )
        self._exporter, self._resource_of = exporter, resource_of

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs) -> MetricExportResult:
        split = split_by_database(metrics_data, self._resource_of)
        return self._exporter.export(split, timeout_millis=timeout_millis, **kwargs)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._exporter.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:
        self._exporter.shutdown(timeout_millis=timeout_millis, **kwargs)


class OTLPPush:
    """Pushes database metrics over OTLP/gRPC every `settings.interval`."""

    def __init__(
        self, settings: OTLPSettings, *, snapshots: Snapshots, agent_id: str, exporter: MetricExporter | None = None
    ):
        self._snapshots = snapshots
        # resource id -> (its DatabaseConfig, its Resource), for the databases of the last collection
        self._resources: dict[str, tuple[DatabaseConfig, Resource]] = {}
        exporter = exporter or OTLPMetricExporter(
            endpoint=settings.endpoint,
            insecure=settings.insecure,
            headers=dict(settings.headers) or None,
            timeout=min(10.0, settings.interval.total_seconds()),
        )
        interval_ms = settings.interval.total_seconds() * 1000
        self._reader = PeriodicExportingMetricReader(
            PerDatabaseResources(exporter, self._resource_of),
            export_interval_millis=interval_ms,
            export_timeout_millis=min(interval_ms, 10_000),
            cardinality_limits=dict.fromkeys(
                (ObservableCounter, ObservableUpDownCounter, ObservableGauge), CARDINALITY_LIMIT
            ),
        )
        self._provider = MeterProvider(
            metric_readers=[self._reader],
            shutdown_on_exit=False,
            resource=Resource.create(  # the agent's; database points get their database's (PerDatabaseResources)
                {"service.name": SERVICE_NAME, "service.instance.id": agent_id, "service.version": __version__}
            ),
        )
        self._meter = self._provider.get_meter("dbintel.agent", __version__)
        self._types: set[str] = set()
        self._closed = False
        self._meter.create_observable_gauge(
            "dbintel.database.up",
            callbacks=[self._observe_up],
            unit="1",
            description="1 if the last poll reached the database, else 0.",
        )

    def add_table(self, db_type: str, table: MetricTable) -> None:
        """Create the instruments of a database type (once per type)."""
        if db_type in self._types:
            return
        self._types.add(db_type)
        for spec in table:
            create = (
                self._meter.create_observable_counter
                if spec.is_counter
                else self._meter.create_observable_up_down_counter
                if spec.type == "sum"
                else self._meter.create_observable_gauge
            )
            create(spec.name, callbacks=[self._observer(spec)], unit=spec.unit, description=spec.description)

    def _observer(self, spec: MetricSpec) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            for snapshot in self._snapshots().values():
                samples = snapshot.samples_by_metric.get(spec.name)
                if not samples:
                    continue
                base = {RESOURCE_LABEL: snapshot.resource_id, **snapshot.user_labels(spec)}
                for sample in samples:
                    yield Observation(
                        sample.value, {**base, **dict(zip(spec.attributes, sample.attributes, strict=False))}
                    )

        return observe

    def _observe_up(self, _options: CallbackOptions) -> Iterable[Observation]:
        resources = {}  # once per collection: the databases it exports, so revoked ones drop out
        for snapshot in self._snapshots().values():
            if snapshot.polled:
                resources[snapshot.resource_id] = self._database_resource(snapshot)
                yield Observation(
                    1 if snapshot.up else 0, {RESOURCE_LABEL: snapshot.resource_id, "type": snapshot.db_type}
                )
        self._resources = resources

    def _database_resource(self, snapshot: ResourceSnapshot) -> tuple[DatabaseConfig, Resource]:
        known = self._resources.get(snapshot.resource_id)
        if known is not None and known[0] is snapshot.database:
            return known
        return snapshot.database, database_resource(snapshot.resource_id, snapshot.database)

    def _resource_of(self, resource_id: str) -> Resource | None:
        """The Resource of a database's points (from the export thread, after the collection's callbacks)."""
        known = self._resources.get(resource_id)
        if known is None:  # polled for the first time after the up callback ran
            snapshot = self._snapshots().get(resource_id)
            if snapshot is None:
                return None
            known = self._database_resource(snapshot)
        return known[1]

    def flush(self, timeout: float) -> bool:
        """Export now (blocking; call from a thread)."""
        return self._provider.force_flush(timeout_millis=timeout * 1000)

    def shutdown(self, timeout: float) -> None:
        """Final export, then stop the reader thread (blocking; call from a thread). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._provider.shutdown(timeout_millis=timeout * 1000)  # the reader exports once more on shutdown
