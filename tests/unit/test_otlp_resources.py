"""OTLP resources: a database's points leave the agent's resource for their database's own, which is
the same whichever agent polls it; everything else stays where the SDK put it."""

from __future__ import annotations

from datetime import timedelta

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExporter, MetricExportResult
from opentelemetry.sdk.resources import Resource

from dbintel.agent.collectors.metric_table import CollectionResult, MetricSpec, Sample
from dbintel.agent.otlp import OTLPPush, database_resource, split_by_database
from dbintel.agent.scheduler import ResourceSnapshot
from dbintel.common.config import DatabaseConfig, OTLPSettings

MEMORY = MetricSpec("redis.memory.used", "gauge", "By", "Memory used", "INFO memory")
AGENT = Resource({"service.name": "dbintel-agent", "service.instance.id": "agent-1"})


def database(name: str, endpoint: str = "10.0.0.5:6379") -> DatabaseConfig:
    return DatabaseConfig(name=name, type="redis", endpoint=endpoint, interval=timedelta(seconds=10))


def points_by_resource(data) -> dict[tuple, set[tuple]]:
    """{resource attributes: {(metric, point attributes)}}."""
    out: dict[tuple, set[tuple]] = {}
    for rm in data.resource_metrics:
        key = tuple(sorted(rm.resource.attributes.items()))
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    out.setdefault(key, set()).add((metric.name, tuple(sorted(point.attributes.items()))))
    return out


def collected(points: dict[str, list[dict]]):
    """MetricsData as the SDK makes it: everything under the agent's resource."""
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader], resource=AGENT).get_meter("test")
    for name, attribute_sets in points.items():
        gauge = meter.create_gauge(name)
        for attributes in attribute_sets:
            gauge.set(1, attributes)
    return reader.get_metrics_data()


def test_database_resource_is_the_database_only():
    resource = database_resource("db:redis/cache", database("cache", "[fd00::5]:6380"))
    assert dict(resource.attributes) == {
        "service.name": "dbintel-agent",
        "service.instance.id": "db:redis/cache",
        "dbintel_resource": "db:redis/cache",
        "db.system": "redis",
        "server.address": "fd00::5",
        "server.port": 6380,
    }


def test_points_move_to_their_database_and_the_rest_stays_with_the_agent():
    known = {rid: database_resource(rid, database(rid.rsplit("/", 1)[1])) for rid in ("db:redis/a", "db:redis/b")}
    data = collected(
        {
            "redis.memory.used": [
                {"dbintel_resource": "db:redis/a", "team": "x"},
                {"dbintel_resource": "db:redis/b"},
                {"dbintel_resource": "db:redis/gone"},  # not known (any more): left where it was
            ],
            "dbintel.database.up": [{"dbintel_resource": "db:redis/a", "type": "redis"}],
            "dbintel.agent.something": [{"kind": "self"}],
        }
    )
    split = points_by_resource(split_by_database(data, known.get))
    agent_key = tuple(sorted(AGENT.attributes.items()))
    assert split == {
        agent_key: {
            ("redis.memory.used", (("dbintel_resource", "db:redis/gone"),)),
            ("dbintel.agent.something", (("kind", "self"),)),
        },
        tuple(sorted(known["db:redis/a"].attributes.items())): {
            ("redis.memory.used", (("dbintel_resource", "db:redis/a"), ("team", "x"))),
            ("dbintel.database.up", (("dbintel_resource", "db:redis/a"), ("type", "redis"))),
        },
        tuple(sorted(known["db:redis/b"].attributes.items())): {
            ("redis.memory.used", (("dbintel_resource", "db:redis/b"),)),
        },
    }
    # Nothing but database points: no empty agent ResourceMetrics is sent.
    only_databases = split_by_database(collected({"x": [{"dbintel_resource": "db:redis/a"}]}), known.get)
    assert [dict(rm.resource.attributes) for rm in only_databases.resource_metrics] == [
        dict(known["db:redis/a"].attributes)
    ]


class Captured(MetricExporter):
    def __init__(self):
        super().__init__()
        self.exports = []

    def export(self, metrics_data, timeout_millis: float = 10_000, **kwargs):
        self.exports.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:
        pass


def snapshot(resource_id: str, config: DatabaseConfig) -> ResourceSnapshot:
    result = CollectionResult(samples=[Sample(MEMORY, 5.0)], statements=1)
    return ResourceSnapshot(resource_id, config).after_poll(started=1_700_000_000.0, duration=0.1, outcome=result)


def test_two_agents_push_one_database_under_one_resource():
    """What each agent's OTLPPush exports for the same database: the same resource, no agent in it."""
    config = database("cache")
    resources = []
    for agent_id in ("agent-1", "agent-2"):
        exporter = Captured()
        snapshots = {"db:redis/cache": snapshot("db:redis/cache", config)}
        push = OTLPPush(
            OTLPSettings(enabled=True, interval="1h"),
            snapshots=lambda s=snapshots: s,
            agent_id=agent_id,
            exporter=exporter,
        )
        push.add_table("redis", [MEMORY])
        assert push.flush(5)
        push.shutdown(5)
        resources += [
            dict(rm.resource.attributes)
            for data in exporter.exports
            for rm in data.resource_metrics
            if rm.scope_metrics
        ]
    assert resources and all(r == dict(database_resource("db:redis/cache", config).attributes) for r in resources)
