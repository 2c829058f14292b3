"""OTLP log events of query intelligence: `db.server.top_query` and `db.server.query_sample`.

The OpenTelemetry Collector's postgresql, mysql and mongodb receivers emit these two events (their
metadata.yaml `events:` sections, "development" stability); dbintel emits them with the same event
names and attribute names, so a pipeline built for those receivers works unchanged:

- `db.server.top_query`: one per statement of each new TopQueryReport (its interval deltas), at the
  interval's end. Common attributes `db.system.name`, `db.namespace`, `db.query.text`, plus the
  receiver's names for the id, calls, time and rows (`postgresql.queryid`, `postgresql.calls`,
  `postgresql.total_exec_time` in ms, `postgresql.rows`; `mysql.events_statements_summary_by_digest.
  digest`, `.count_star`, `.sum_timer_wait` in s). MongoDB and Redis have no receiver top-query
  names for these four: `mongodb.`/`redis.` + `query_id`, `calls`, `total_time` (s), `rows`.
- `db.server.query_sample`: one per session of each new sample read, at the read's time, with
  `user.name`, `client.address`/`client.port`, `network.peer.address`/`network.peer.port` and the
  receiver's per-system names (`postgresql.pid`, `postgresql.state`, `postgresql.wait_event`, ...;
  `mysql.session.id`, `mysql.threads.processlist_state`, `mysql.wait_type`, ...;
  `mongodb.operation.id`, `mongodb.operation.status`, `mongodb.operation.duration`, ...). Where a
  receiver has no name for a field (MongoDB's wait event, anything of Redis) it is `<system>.<field>`.

A source's own `extra` deltas and `attributes` already carry the receivers' names and go out as-is
(they win over the generic ones above). Every event carries `dbintel_resource`; `db.query.summary`
(semantic conventions) when known. Texts are `ObfuscatedText` from the sources: no literal leaves here.

Resources: an event's Resource is its database's (`otlp.database_resource`, as for the metrics), not
the agent's: each record is built as a ReadWriteLogRecord with that resource, which the SDK's
Logger.emit keeps, and the OTLP encoder groups records by resource.

`publish` runs on the agent's event loop: it only builds records and hands them to the SDK's
BatchLogRecordProcessor, whose bounded deque drops the oldest when full; the export runs on its thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from opentelemetry._logs import LogRecord
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider, ReadWriteLogRecord
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from dbintel import __version__
from dbintel.common.config import DatabaseConfig, OTLPSettings

from .exposition import RESOURCE_LABEL
from .otlp import SERVICE_NAME, database_resource
from .queries.model import ActiveSession, AttributeValue, TopQuery
from .scheduler import ResourceSnapshot

log = logging.getLogger(__name__)

TOP_QUERY_EVENT = "db.server.top_query"
QUERY_SAMPLE_EVENT = "db.server.query_sample"
SCOPE = InstrumentationScope("dbintel.agent.query_events", __version__)

# Records waiting for export: a burst beyond this drops the oldest (never blocks the event loop).
MAX_QUEUE = 8192
MAX_BATCH = 512


class _TopQueryNames:
    """The receiver's attribute names of a statement's id, calls, time and rows, and the time's unit."""

    def __init__(self, query_id: str, calls: str, total_time: str, rows: str | None, time_scale: float):
        self.query_id, self.calls, self.total_time, self.rows, self.time_scale = (
            query_id,
            calls,
            total_time,
            rows,
            time_scale,
        )


_DIGEST = "mysql.events_statements_summary_by_digest"
TOP_QUERY_NAMES: Mapping[str, _TopQueryNames] = {
    # postgresqlreceiver metadata.yaml: total_exec_time "in delta milliseconds"
    "postgresql": _TopQueryNames(
        "postgresql.queryid", "postgresql.calls", "postgresql.total_exec_time", "postgresql.rows", 1000.0
    ),
    # mysqlreceiver: sum_timer_wait in seconds (converted from picoseconds); rows come as the source's extra
    "mysql": _TopQueryNames(f"{_DIGEST}.digest", f"{_DIGEST}.count_star", f"{_DIGEST}.sum_timer_wait", None, 1.0),
    "mongodb": _TopQueryNames("mongodb.query_id", "mongodb.calls", "mongodb.total_time", "mongodb.rows", 1.0),
    "redis": _TopQueryNames("redis.query_id", "redis.calls", "redis.total_time", None, 1.0),
}


class _SampleNames:
    def __init__(
        self, session_id: str, state: str, wait_event: str, wait_event_type: str | None, query_id: str, duration: str
    ):
        self.session_id, self.state, self.wait_event, self.wait_event_type, self.query_id, self.duration = (
            session_id,
            state,
            wait_event,
            wait_event_type,
            query_id,
            duration,
        )


SAMPLE_NAMES: Mapping[str, tuple[_SampleNames, float, str]] = {
    # (names, duration scale, application attribute)
    "postgresql": (
        _SampleNames(
            "postgresql.pid",
            "postgresql.state",
            "postgresql.wait_event",
            "postgresql.wait_event_type",
            "postgresql.query_id",
            "postgresql.total_exec_time",
        ),
        1000.0,
        "postgresql.application_name",
    ),
    "mysql": (
        _SampleNames(
            "mysql.session.id",  # the processlist id; the source adds mysql.threads.thread_id
            "mysql.threads.processlist_state",
            "mysql.wait_type",
            None,
            "mysql.events_statements_current.digest",
            "mysql.events_statements_current.timer_wait",
        ),
        1.0,
        "mysql.threads.processlist_program_name",
    ),
    "mongodb": (
        _SampleNames(
            "mongodb.operation.id",
            "mongodb.operation.status",
            "mongodb.wait_event",
            "mongodb.wait_event_type",
            "mongodb.query.signature",
            "mongodb.operation.duration",
        ),
        1.0,
        "mongodb.application.name",
    ),
    "redis": (
        _SampleNames(
            "redis.client.id", "redis.client.state", "redis.wait_event", None, "redis.query_id", "redis.duration"
        ),
        1.0,
        "redis.client.name",
    ),
}


def _session_id(value: str) -> AttributeValue:
    return int(value) if value.isdigit() else value


def top_query_attributes(snapshot: ResourceSnapshot, query: TopQuery) -> dict[str, AttributeValue]:
    """One `db.server.top_query` event's attributes."""
    statement = query.statement
    names = TOP_QUERY_NAMES.get(snapshot.db_type) or TOP_QUERY_NAMES["redis"]
    attributes: dict[str, AttributeValue] = {
        "db.system.name": snapshot.db_type,
        RESOURCE_LABEL: snapshot.resource_id,
        names.query_id: statement.query_id,
        names.calls: int(query.calls) if float(query.calls).is_integer() else query.calls,
        names.total_time: query.total_time_s * names.time_scale,
    }
    if names.rows is not None:
        attributes[names.rows] = int(query.rows) if float(query.rows).is_integer() else query.rows
    if statement.namespace:
        attributes["db.namespace"] = statement.namespace
    text = query.text if query.text is not None else statement.text
    if text is not None:
        attributes["db.query.text"] = str(text)
    summary = query.summary or statement.summary
    if summary:
        attributes["db.query.summary"] = summary
    attributes.update(statement.attributes)
    attributes.update(query.extra)  # the interval's deltas, already under the receiver's names
    return attributes


def query_sample_attributes(snapshot: ResourceSnapshot, session: ActiveSession) -> dict[str, AttributeValue]:
    """One `db.server.query_sample` event's attributes."""
    names, duration_scale, application = SAMPLE_NAMES.get(snapshot.db_type) or SAMPLE_NAMES["redis"]
    attributes: dict[str, AttributeValue] = {
        "db.system.name": snapshot.db_type,
        RESOURCE_LABEL: snapshot.resource_id,
        # the receivers send pids and thread ids as ints, MongoDB's operation id as a string
        names.session_id: session.session_id if snapshot.db_type == "mongodb" else _session_id(session.session_id),
        names.state: session.state,
        names.wait_event: session.wait_event,
    }
    if names.wait_event_type is not None:
        attributes[names.wait_event_type] = session.wait_event_type
    if session.query_id:
        attributes[names.query_id] = session.query_id
    if session.duration_s is not None:
        attributes[names.duration] = session.duration_s * duration_scale
    if snapshot.db_type == "postgresql":  # the receiver's format of pg_blocking_pids(): '{1,2}'
        attributes["postgresql.blocking.pids"] = "{" + ",".join(session.blocked_by) + "}"
    elif session.blocked_by:
        attributes["dbintel.session.blocked_by"] = ",".join(session.blocked_by)
    if session.namespace:
        attributes["db.namespace"] = session.namespace
    if session.text is not None:
        attributes["db.query.text"] = str(session.text)
    if session.summary:
        attributes["db.query.summary"] = session.summary
    if session.user:
        attributes["user.name"] = session.user
    if session.client_address:
        attributes["client.address"] = attributes["network.peer.address"] = session.client_address
    if session.client_port is not None:
        attributes["client.port"] = attributes["network.peer.port"] = session.client_port
    if session.application:
        attributes[application] = session.application
    attributes.update(session.attributes)
    return attributes


def _nanos(seconds: float) -> int:
    return int(seconds * 1e9)


class QueryEventExporter:
    """Emits the two events over OTLP/gRPC for every new top-query interval and sample read.

    `start()` returns at once (the SDK's export thread does the I/O); `publish()` is called on the
    event loop and only queues; `shutdown()` flushes what is queued, is idempotent and safe without start.
    """

    def __init__(
        self,
        settings: OTLPSettings,
        *,
        agent_id: str,
        exporter: LogRecordExporter | None = None,
        schedule_delay_s: float = 1.0,
    ):
        self._settings, self._agent_id, self._exporter = settings, agent_id, exporter
        self._schedule_delay_ms = schedule_delay_s * 1000
        self._provider: LoggerProvider | None = None
        self._processor: BatchLogRecordProcessor | None = None
        # resource id -> (its config, its Resource); bounded by the databases of the config
        self._resources: dict[str, tuple[DatabaseConfig, Resource]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> None:
        with self._lock:
            if self._provider is not None or self._closed:
                return
            exporter = self._exporter or OTLPLogExporter(
                endpoint=self._settings.endpoint,
                insecure=self._settings.insecure,
                headers=dict(self._settings.headers) or None,
                timeout=10,
            )
            self._processor = BatchLogRecordProcessor(
                exporter,
                schedule_delay_millis=self._schedule_delay_ms,
                max_export_batch_size=MAX_BATCH,
                max_queue_size=MAX_QUEUE,
                export_timeout_millis=10_000,
            )
            self._provider = LoggerProvider(
                resource=Resource.create(  # the agent's; each record carries its database's instead
                    {
                        "service.name": SERVICE_NAME,
                        "service.instance.id": self._agent_id,
                        "service.version": __version__,
                    }
                ),
                shutdown_on_exit=False,
            )
            self._provider.add_log_record_processor(self._processor)
            self._logger = self._provider.get_logger(SCOPE.name, SCOPE.version)

    def publish(self, previous: ResourceSnapshot | None, current: ResourceSnapshot) -> None:
        """Emit what `current`'s activity has that `previous`'s had not: a report with a later interval
        end, a sample read with a later time. Never blocks."""
        if self._provider is None or self._closed:
            return
        activity = current.activity
        if activity is None:
            return
        before = previous.activity if previous is not None else None
        resource: Resource | None = None
        top = activity.top
        if top is not None and (before is None or before.top is None or top.interval_end > before.top.interval_end):
            resource = self._resource(current)
            for query in top.queries:
                self._emit(TOP_QUERY_EVENT, top.interval_end, top_query_attributes(current, query), resource)
        at = activity.sessions_at
        if at is not None and (before is None or before.sessions_at is None or at > before.sessions_at):
            resource = resource or self._resource(current)
            for session in activity.sessions:
                self._emit(QUERY_SAMPLE_EVENT, at, query_sample_attributes(current, session), resource)

    def _emit(self, name: str, at: float, attributes: dict[str, AttributeValue], resource: Resource) -> None:
        record = ReadWriteLogRecord(
            LogRecord(timestamp=_nanos(at), event_name=name, attributes=attributes),
            resource=resource,
            instrumentation_scope=SCOPE,
        )
        self._logger.emit(record)  # type: ignore[call-overload]  # the SDK keeps a ReadWriteLogRecord as is (its resource)

    def _resource(self, snapshot: ResourceSnapshot) -> Resource:
        known = self._resources.get(snapshot.resource_id)
        if known is None or known[0] is not snapshot.database:
            known = snapshot.database, database_resource(snapshot.resource_id, snapshot.database)
            self._resources[snapshot.resource_id] = known
        return known[1]

    def flush(self, timeout: float) -> bool:
        """Export what is queued (blocking; call from a thread)."""
        provider = self._provider
        return provider.force_flush(timeout_millis=int(timeout * 1000)) if provider is not None else True

    def shutdown(self, timeout: float = 5.0) -> None:
        """Export what is queued, then stop the export thread (blocking; call from a thread). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            provider = self._provider
        if provider is not None:
            provider.force_flush(timeout_millis=int(timeout * 1000))
            provider.shutdown()
