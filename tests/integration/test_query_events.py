"""The query-intelligence OTLP log events against a real OTLP/gRPC LogsService (a grpc.aio server in
this test): event names and the OpenTelemetry receivers' attribute names, the database's Resource,
`dbintel_resource` on every event, nothing emitted twice for an unchanged report, flush on shutdown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as logs_grpc

from dbintel.agent.queries.model import ActiveSession, QueryActivity, StatementCounters, TopQuery, TopQueryReport
from dbintel.agent.queries.obfuscation import ObfuscatedText
from dbintel.agent.query_events import QueryEventExporter
from dbintel.agent.scheduler import ResourceSnapshot
from dbintel.common.config import OTLPSettings, parse_config

pytestmark = pytest.mark.integration


class LogsReceiver(logs_grpc.LogsServiceServicer):
    def __init__(self) -> None:
        self.requests: list[logs_pb.ExportLogsServiceRequest] = []
        self.metadata: list[dict[str, str]] = []
        self.arrived = asyncio.Event()

    async def Export(self, request, context):
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata()))
        self.arrived.set()
        return logs_pb.ExportLogsServiceResponse()

    def events(self) -> list[dict]:
        found = []
        for request in self.requests:
            for resource_logs in request.resource_logs:
                resource = {a.key: _value(a.value) for a in resource_logs.resource.attributes}
                for scope in resource_logs.scope_logs:
                    for record in scope.log_records:
                        found.append(
                            {
                                "name": record.event_name,
                                "time": record.time_unix_nano,
                                "attributes": {a.key: _value(a.value) for a in record.attributes},
                                "resource": resource,
                                "scope": scope.scope.name,
                            }
                        )
        return found


def _value(any_value) -> object:
    return getattr(any_value, any_value.WhichOneof("value"))


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[LogsReceiver, int]]:
    state = LogsReceiver()
    server = grpc.aio.server()
    logs_grpc.add_LogsServiceServicer_to_server(state, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield state, port
    await server.stop(grace=None)


CONFIG = """
databases:
  - {name: orders, type: postgresql, endpoint: "pg.example:5433", database: shop}
  - {name: catalog, type: mysql, endpoint: "my.example:3306"}
"""


def databases():
    config = parse_config(CONFIG)
    return config.resources()


def pg_report(end: float) -> TopQueryReport:
    statement = StatementCounters(
        query_id="-4711",
        calls=40,
        total_time_s=2.0,
        rows=400,
        extra={"postgresql.shared_blks_hit": 900.0},
        namespace="shop",
        text=ObfuscatedText("SELECT * FROM orders WHERE id = $1"),
        summary="SELECT orders",
        attributes={"postgresql.rolname": "app"},
    )
    query = TopQuery(
        statement=statement,
        calls=4,
        total_time_s=0.25,
        rows=40,
        extra={"postgresql.shared_blks_hit": 90.0},
        text=statement.text,
        summary=statement.summary,
    )
    return TopQueryReport(interval_start=end - 10, interval_end=end, queries=(query,))


def pg_sessions() -> tuple[ActiveSession, ...]:
    return (
        ActiveSession(
            session_id="1234",
            state="active",
            wait_event_type="Lock",
            wait_event="transactionid",
            duration_s=1.5,
            blocked_by=("1200",),
            query_id="-4711",
            text=ObfuscatedText("UPDATE orders SET total = $1 WHERE id = $2"),
            summary="UPDATE orders",
            namespace="shop",
            user="app",
            client_address="10.0.0.7",
            client_port=50123,
            application="billing",
        ),
    )


async def wait_for_events(state: LogsReceiver, count: int, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while len(state.events()) < count:
        state.arrived.clear()
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{count} events not received; got {state.events()}"
        try:
            await asyncio.wait_for(state.arrived.wait(), remaining)
        except TimeoutError:
            pass
    return state.events()


async def test_top_query_and_sample_events_with_the_receivers_names_and_the_databases_resource(receiver):
    state, port = receiver
    settings = OTLPSettings(enabled=True, endpoint=f"127.0.0.1:{port}", headers={"x-tenant": "t7"})
    exporter = QueryEventExporter(settings, agent_id="agent-1", schedule_delay_s=0.05)
    exporter.start()
    try:
        pg = databases()["db:postgresql/orders"]
        empty = ResourceSnapshot(resource_id="db:postgresql/orders", database=pg)
        now = time.time()
        first = ResourceSnapshot(
            resource_id="db:postgresql/orders",
            database=pg,
            activity=QueryActivity(top=pg_report(now), sessions=pg_sessions(), sessions_at=now + 1),
        )
        exporter.publish(empty, first)
        events = await wait_for_events(state, 2)
        by_name = {e["name"]: e for e in events}
        assert set(by_name) == {"db.server.top_query", "db.server.query_sample"}
        top = by_name["db.server.top_query"]
        assert top["attributes"] == {
            "db.system.name": "postgresql",
            "dbintel_resource": "db:postgresql/orders",
            "db.namespace": "shop",
            "db.query.text": "SELECT * FROM orders WHERE id = $1",
            "db.query.summary": "SELECT orders",
            "postgresql.queryid": "-4711",
            "postgresql.calls": 4,
            "postgresql.total_exec_time": 250.0,  # the receiver's unit: milliseconds
            "postgresql.rows": 40,
            "postgresql.shared_blks_hit": 90.0,  # the interval's delta, under the source's name
            "postgresql.rolname": "app",
        }
        assert top["time"] == int(now * 1e9)
        sample = by_name["db.server.query_sample"]["attributes"]
        assert sample == {
            "db.system.name": "postgresql",
            "dbintel_resource": "db:postgresql/orders",
            "postgresql.pid": 1234,
            "postgresql.state": "active",
            "postgresql.wait_event": "transactionid",
            "postgresql.wait_event_type": "Lock",
            "postgresql.query_id": "-4711",
            "postgresql.total_exec_time": 1500.0,
            "postgresql.blocking.pids": "{1200}",
            "postgresql.application_name": "billing",
            "db.namespace": "shop",
            "db.query.text": "UPDATE orders SET total = $1 WHERE id = $2",
            "db.query.summary": "UPDATE orders",
            "user.name": "app",
            "client.address": "10.0.0.7",
            "network.peer.address": "10.0.0.7",
            "client.port": 50123,
            "network.peer.port": 50123,
        }
        resource = {
            "service.name": "dbintel-agent",
            "service.instance.id": "db:postgresql/orders",
            "dbintel_resource": "db:postgresql/orders",
            "db.system": "postgresql",
            "server.address": "pg.example",
            "server.port": 5433,
        }
        assert all(e["resource"] == resource for e in events)  # the database's, nothing of the agent
        assert state.metadata[-1].get("x-tenant") == "t7"

        # Unchanged activity (a poll replaced the snapshot): nothing new. A new sample read only: samples only.
        polled = ResourceSnapshot(
            resource_id="db:postgresql/orders", database=pg, polls_total=1, activity=first.activity
        )
        exporter.publish(first, polled)
        assert first.activity is not None
        resampled = ResourceSnapshot(
            resource_id="db:postgresql/orders",
            database=pg,
            activity=QueryActivity(top=first.activity.top, sessions=pg_sessions(), sessions_at=now + 2),
        )
        exporter.publish(polled, resampled)
        # A MySQL database's report: its own resource, the digest names.
        my = databases()["db:mysql/catalog"]
        digest = StatementCounters(
            query_id="c16f24f9",
            calls=5,
            total_time_s=1.0,
            namespace="catalog",
            text=ObfuscatedText("SELECT * FROM items WHERE sku = ?"),
        )
        mysql = ResourceSnapshot(
            resource_id="db:mysql/catalog",
            database=my,
            activity=QueryActivity(
                top=TopQueryReport(
                    interval_start=now - 1,
                    interval_end=now,
                    queries=(
                        TopQuery(
                            statement=digest,
                            calls=5,
                            total_time_s=0.001,
                            rows=0,
                            extra={"mysql.events_statements_summary_by_digest.sum_rows_sent": 12.0},
                            text=digest.text,
                        ),
                    ),
                )
            ),
        )
        exporter.publish(None, mysql)
    finally:
        await asyncio.to_thread(exporter.shutdown, 5.0)
    await asyncio.to_thread(exporter.shutdown, 5.0)  # idempotent
    events = state.events()
    names = [(e["name"], e["attributes"]["dbintel_resource"]) for e in events]
    assert names.count(("db.server.top_query", "db:postgresql/orders")) == 1  # not re-emitted
    assert names.count(("db.server.query_sample", "db:postgresql/orders")) == 2  # the second read
    mysql_events = [e for e in events if e["attributes"]["dbintel_resource"] == "db:mysql/catalog"]
    assert len(mysql_events) == 1
    assert mysql_events[0]["attributes"] == {
        "db.system.name": "mysql",
        "dbintel_resource": "db:mysql/catalog",
        "db.namespace": "catalog",
        "db.query.text": "SELECT * FROM items WHERE sku = ?",
        "mysql.events_statements_summary_by_digest.digest": "c16f24f9",
        "mysql.events_statements_summary_by_digest.count_star": 5,
        "mysql.events_statements_summary_by_digest.sum_timer_wait": 0.001,
        "mysql.events_statements_summary_by_digest.sum_rows_sent": 12.0,
    }
    assert mysql_events[0]["resource"]["server.address"] == "my.example"
    assert mysql_events[0]["resource"]["db.system"] == "mysql"


def test_shutdown_without_start_and_publish_after_shutdown_are_harmless():
    exporter = QueryEventExporter(OTLPSettings(enabled=True, endpoint="127.0.0.1:1"), agent_id="a")
    exporter.shutdown()
    exporter.shutdown()
    exporter.start()  # after shutdown: stays closed
    snapshot = ResourceSnapshot(
        resource_id="db:postgresql/orders",
        database=databases()["db:postgresql/orders"],
        activity=QueryActivity(top=pg_report(time.time())),
    )
    exporter.publish(None, snapshot)


async def test_shutdown_flushes_what_is_queued(receiver):
    state, port = receiver
    # A schedule delay far beyond the test: only the shutdown's flush can send the events.
    exporter = QueryEventExporter(
        OTLPSettings(enabled=True, endpoint=f"127.0.0.1:{port}"), agent_id="a", schedule_delay_s=600
    )
    exporter.start()
    pg = databases()["db:postgresql/orders"]
    now = time.time()
    exporter.publish(
        None,
        ResourceSnapshot(resource_id="db:postgresql/orders", database=pg, activity=QueryActivity(top=pg_report(now))),
    )
    assert state.events() == []
    await asyncio.to_thread(exporter.shutdown, 5.0)
    assert [e["name"] for e in state.events()] == ["db.server.top_query"]


async def test_the_agent_emits_the_events_of_its_databases_activity(receiver, redis_server, monkeypatch):
    """The wiring: an agent with `agent.otlp.enabled` sends an event for the activity its scheduler
    publishes (seeded here as the query loops publish it), on the database's resource."""
    from dbintel.agent.queries.model import SampleRead
    from dbintel.agent.runtime import Agent

    state, port = receiver
    monkeypatch.setenv("EVENTS_REDIS_PW", redis_server.password)
    config = parse_config(f"""
scaling: {{receiver_scaling: {{ignore_assignments: true}}}}
agent:
  shutdown_grace: 5s
  otlp: {{enabled: true, endpoint: "127.0.0.1:{port}", insecure: true, interval: 1h}}
databases:
  - {{name: cache, type: redis, endpoint: "{redis_server.address}", password: "${{env:EVENTS_REDIS_PW}}"}}
""")
    agent = Agent(config, agent_id="events-agent", metrics_listen="127.0.0.1:0", health_listen="127.0.0.1:0")
    await agent.start()
    try:
        scheduler = agent.scheduler
        session = ActiveSession(session_id="5", state="blocked", text=ObfuscatedText("BLPOP ? ?"), user="app")
        scheduler._set_activity(
            scheduler._pollers["db:redis/cache"], sessions=SampleRead(sessions=(session,)), sessions_at=time.time()
        )
    finally:
        await agent.shutdown()  # flushes the events (the metrics' interval is an hour)
    [event] = [e for e in state.events() if e["name"] == "db.server.query_sample"]
    assert event["attributes"]["dbintel_resource"] == "db:redis/cache"
    assert event["attributes"]["db.query.text"] == "BLPOP ? ?" and event["attributes"]["user.name"] == "app"
    assert event["resource"]["service.instance.id"] == "db:redis/cache"
    assert event["resource"]["server.port"] == redis_server.port
