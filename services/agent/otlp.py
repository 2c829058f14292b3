"""Optional OTLP push of the same database snapshots the Prometheus exposition renders.

An OpenTelemetry SDK MeterProvider with a PeriodicExportingMetricReader and the gRPC OTLP exporter.
Each declared metric becomes an observable instrument whose callback reads the scheduler's immutable
snapshots (from the reader's thread; no I/O, no lock). Instruments are created per database type the
first time that type is granted, from its collector's MetricTable. Data points carry the OTel
attribute names (`redis.db`), plus `dbintel_resource` and the database's configured labels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider, ObservableCounter, ObservableGauge, ObservableUpDownCounter
from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from dbintel import __version__
from dbintel.common.config import OTLPSettings

from .collectors.metric_table import MetricSpec, MetricTable
from .exposition import RESOURCE_LABEL
from .scheduler import ResourceSnapshot

log = logging.getLogger(__name__)

# One series per table/index is normal for a large PostgreSQL; the SDK's default limit (2000 attribute
# sets per instrument) would fold the rest into an overflow point.
CARDINALITY_LIMIT = 200_000

Snapshots = Callable[[], Mapping[str, ResourceSnapshot]]


class OTLPPush:
    """Pushes database metrics over OTLP/gRPC every `settings.interval`."""

    def __init__(
        self, settings: OTLPSettings, *, snapshots: Snapshots, agent_id: str, exporter: MetricExporter | None = None
    ):
        self._snapshots = snapshots
        exporter = exporter or OTLPMetricExporter(
            endpoint=settings.endpoint,
            insecure=settings.insecure,
            headers=dict(settings.headers) or None,
            timeout=min(10.0, settings.interval.total_seconds()),
        )
        interval_ms = settings.interval.total_seconds() * 1000
        self._reader = PeriodicExportingMetricReader(
            exporter,
            export_interval_millis=interval_ms,
            export_timeout_millis=min(interval_ms, 10_000),
            cardinality_limits=dict.fromkeys(
                (ObservableCounter, ObservableUpDownCounter, ObservableGauge), CARDINALITY_LIMIT
            ),
        )
        self._provider = MeterProvider(
            metric_readers=[self._reader],
            shutdown_on_exit=False,
            resource=Resource.create(
                {"service.name": "dbintel-agent", "service.instance.id": agent_id, "service.version": __version__}
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
        for snapshot in self._snapshots().values():
            if snapshot.polled:
                yield Observation(
                    1 if snapshot.up else 0, {RESOURCE_LABEL: snapshot.resource_id, "type": snapshot.db_type}
                )

    def flush(self, timeout: float) -> bool:
        """Export now (blocking; call from a thread)."""
        return self._provider.force_flush(timeout_millis=timeout * 1000)

    def shutdown(self, timeout: float) -> None:
        """Final export, then stop the reader thread (blocking; call from a thread). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._provider.shutdown(timeout_millis=timeout * 1000)  # the reader exports once more on shutdown
