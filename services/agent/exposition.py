"""The agent's Prometheus exposition: the last snapshot of each held database, plus self-metrics.

Self-metrics live on the registry it is given (never the global one), through a custom collector.
Database series — the bulk — are rendered straight to the text format and cached per snapshot:
a snapshot is immutable, so each poll's samples are formatted once, on the first scrape after the
poll, however often Prometheus scrapes. A scrape only reads the scheduler's snapshots: no I/O and no
lock on the scrape path, and a database revoked from this agent disappears from the next scrape
because its snapshot is gone.

Every database series carries `dbintel_resource`, the database's configured `labels:` (dropped where
they collide with the metric's own label names: the metric wins) and the metric's attribute labels.

A database series is the database's, not this agent's: a scrape that asks for `?timestamps=poll` (the
shipped agent PodMonitor does, and removes the agent's `pod`/`instance` from these series) gets each
database sample stamped with the start of the poll that measured it. Prometheus then keeps one series
per database across a hand-off: the new owner's samples continue the old owner's (its first poll lands
one interval after the old owner's last), and Prometheus writes no staleness marker for a stamped
series, so the old owner dropping the database leaves no hole. The agent's own series (`dbintel_agent_*`,
by agent) are never stamped. docs/reliability.md, "One series per database across a hand-off", has the
trade-off: a stamped series that ends is not marked stale, it fades after the lookback delta (5 m).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from .collectors.metric_table import Sample
from .queries.metrics import session_samples, top_query_samples
from .scheduler import ResourceSnapshot

RESOURCE_LABEL = "dbintel_resource"
# `/metrics?timestamps=poll`: database samples carry their poll's start time (see the module docstring).
TIMESTAMPS_PARAMETER, POLL_TIMESTAMPS = "timestamps", "poll"
UP_NAME = "dbintel_database_up"
UP_HEADER = f"# HELP {UP_NAME} 1 if the last poll reached the database, else 0.\n# TYPE {UP_NAME} gauge\n"

# Poll durations span sub-millisecond Redis INFO to multi-second PostgreSQL catalog scans.
POLL_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

UTILIZATION_HELP = (
    "Share of this agent's poll capacity in use: the sum over held databases of last poll duration / "
    "interval (the mean number of polls in flight), divided by agent.max_concurrent_polls. "
    "1 means the poll slots are busy all the time; the agent HPA scales on it."
)


@dataclass(frozen=True)
class AgentStatus:
    """The agent-level numbers the exposition shows besides the databases."""

    assigned_databases: int
    assignment_epoch: int
    coordinator_degraded: bool
    coordinator_connected: bool


def utilization(snapshots: Iterable[ResourceSnapshot], max_concurrent_polls: int) -> float:
    """Σ(last poll duration / interval) over the databases ÷ max_concurrent_polls (see UTILIZATION_HELP)."""
    busy = sum((s.last_poll_duration or 0.0) / s.interval for s in snapshots if s.interval > 0)
    return busy / max_concurrent_polls


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


@dataclass(frozen=True)
class _RenderedFamily:
    header: str  # "# HELP …\n# TYPE …\n"
    lines: str  # this database's sample lines


def _attribute_values(attributes: tuple) -> tuple:
    """Label values as text, escaped only when they need it (rare): the per-sample hot path."""
    try:
        joined = "".join(attributes)
    except TypeError:  # a non-text attribute (a number): convert, then check
        attributes = tuple(str(a) for a in attributes)
        joined = "".join(attributes)
    if "\\" in joined or '"' in joined or "\n" in joined:
        return tuple(_escape_label(a) for a in attributes)
    return attributes


def render_snapshot(snapshot: ResourceSnapshot, *, poll_timestamps: bool = False) -> dict[str, _RenderedFamily]:
    """One database's series in the Prometheus text format, by family name: `dbintel_database_up` once
    polled, then the last poll's samples; each stamped with the poll's start (ms) if `poll_timestamps`."""
    out: dict[str, _RenderedFamily] = {}
    if not snapshot.polled:
        return out
    resource = f'{RESOURCE_LABEL}="{_escape_label(snapshot.resource_id)}"'
    stamp = f" {int(snapshot.last_poll_time * 1000)}" if poll_timestamps and snapshot.last_poll_time is not None else ""
    out[UP_NAME] = _RenderedFamily(
        UP_HEADER,
        f'{UP_NAME}{{{resource},type="{_escape_label(snapshot.db_type)}"}} {1.0 if snapshot.up else 0.0}{stamp}\n',
    )
    for samples in snapshot.samples_by_metric.values():
        _render_family(out, snapshot, resource, samples, stamp)
    activity = snapshot.activity
    if activity is not None:
        # Stamped with their own reads, not the poll's: a value that changes between two polls must
        # not reach Prometheus twice under one timestamp.
        for read, at in (
            (top_query_samples(activity), activity.top.interval_end if activity.top else None),
            (session_samples(activity), activity.sessions_at),
        ):
            own = f" {int(at * 1000)}" if poll_timestamps and at is not None else ""
            for family in _by_metric(read):
                _render_family(out, snapshot, resource, family, own)
    return out


def _by_metric(samples: list[Sample]) -> list[list[Sample]]:
    families: dict[str, list[Sample]] = {}
    for sample in samples:
        families.setdefault(sample.spec.name, []).append(sample)
    return list(families.values())


def _render_family(
    out: dict[str, _RenderedFamily],
    snapshot: ResourceSnapshot,
    resource: str,
    samples: Sequence[Sample],
    stamp: str,
) -> None:
    """Add one metric's samples of one database to `out` (all samples share `samples[0].spec`)."""
    spec = samples[0].spec
    name = spec.prometheus_name  # counters already end in _total, as the text format wants
    user = "".join(f',{k}="{_escape_label(v)}"' for k, v in snapshot.user_labels(spec).items())
    # One %-template per family: the labels' layout is fixed, only values change per sample.
    static = (name + "{" + resource + user).replace("%", "%%")  # a user label value may hold a %
    template = static + "".join(f',{n}="%s"' for n in spec.label_names) + "} %r" + stamp + "\n"
    width = len(spec.label_names)
    lines: list[str] = []
    append = lines.append
    for sample in samples:
        value = float(sample.value)
        if not math.isfinite(value):
            line = template.replace("%r", _format_value(value).replace("%", "%%"))
            append(line % _attribute_values(sample.attributes[:width]))
            continue
        append(template % (*_attribute_values(sample.attributes[:width]), value))
    out[name] = _RenderedFamily(
        f"# HELP {name} {_escape_help(spec.description)}\n# TYPE {name} {spec.prometheus_type}\n", "".join(lines)
    )


def _family(prometheus_name: str, documentation: str, typ: str) -> tuple[Metric, str]:
    """A metric family and the sample name its values take (counters: family name + _total)."""
    if typ == "counter":
        base = prometheus_name.removesuffix("_total")
        return Metric(base, documentation, "counter"), base + "_total"
    return Metric(prometheus_name, documentation, typ), prometheus_name


class AgentExposition(Collector):
    """Renders database snapshots and agent self-metrics on `registry`."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        snapshots: Callable[[], Mapping[str, ResourceSnapshot]],
        status: Callable[[], AgentStatus],
        max_concurrent_polls: int,
    ):
        self._snapshots = snapshots
        self._status = status
        self._registry = registry
        # resource id -> (the snapshot rendered, its renderings by poll_timestamps); replaced whole, so
        # scrapes never see it half-built (a rendering added to an entry is complete when it is added)
        self._rendered: dict[str, tuple[ResourceSnapshot, dict[bool, dict[str, _RenderedFamily]]]] = {}
        self._max_concurrent_polls = max_concurrent_polls
        # By type only (bounded cardinality), so a standard histogram that outlives revocations is right.
        self._poll_duration = Histogram(
            "dbintel_agent_poll_duration_seconds",
            "Duration of one poll (one collection) of a database, by type.",
            ["type"],
            registry=registry,
            buckets=POLL_DURATION_BUCKETS,
        )
        registry.register(self)

    def observe_poll(self, db_type: str, seconds: float) -> None:
        self._poll_duration.labels(type=db_type).observe(seconds)

    def describe(self) -> list[Metric]:
        return []  # the database families depend on what is held; nothing to pre-declare

    def collect(self) -> Iterable[Metric]:
        """The self-metrics (the registry's part of a scrape; database series come from render())."""
        yield from self._self_families(list(self._snapshots().values()))

    def render(self, *, poll_timestamps: bool = False) -> bytes:
        """The whole /metrics body: the registry's self-metrics, then every held database's series."""
        return generate_latest(self._registry) + self.render_databases(poll_timestamps=poll_timestamps).encode()

    def render_query(self, query: Mapping[str, list[str]]) -> bytes:
        """render() for a /metrics request with these query parameters (`?timestamps=poll`)."""
        return self.render(poll_timestamps=POLL_TIMESTAMPS in query.get(TIMESTAMPS_PARAMETER, ()))

    def render_databases(self, *, poll_timestamps: bool = False) -> str:
        previous, current = self._rendered, {}
        headers: dict[str, str] = {}
        bodies: dict[str, list[str]] = {}
        for resource_id, snapshot in self._snapshots().items():
            entry = previous.get(resource_id)
            if entry is None or entry[0] is not snapshot:
                entry = (snapshot, {})
            families = entry[1].get(poll_timestamps)
            if families is None:  # each snapshot is rendered once per variant a scraper asks for
                families = entry[1][poll_timestamps] = render_snapshot(snapshot, poll_timestamps=poll_timestamps)
            current[resource_id] = entry
            for name, family in families.items():
                headers.setdefault(name, family.header)
                bodies.setdefault(name, []).append(family.lines)
        self._rendered = current  # revoked databases' renderings go with their snapshots
        return "".join(headers[name] + "".join(bodies[name]) for name in headers)

    def _self_families(self, snapshots: list[ResourceSnapshot]) -> Iterable[Metric]:
        status = self._status()
        for name, help_text, value in (
            (
                "dbintel_agent_assigned_databases",
                "Databases assigned to this agent (its held assignment).",
                status.assigned_databases,
            ),
            (
                "dbintel_agent_assignment_epoch",
                "Epoch of the assignment this agent applied (0 before the first).",
                status.assignment_epoch,
            ),
            (
                "dbintel_agent_coordinator_degraded",
                "1 while the agent has no coordinator link or the coordinator reports its store unreachable; "
                "the agent keeps (or, with on_coordinator_loss: stop, drops) its assignment meanwhile.",
                int(status.coordinator_degraded),
            ),
            (
                "dbintel_agent_coordinator_connected",
                "1 while the Heartbeat stream to a coordinator is open.",
                int(status.coordinator_connected),
            ),
            ("dbintel_agent_utilization", UTILIZATION_HELP, utilization(snapshots, self._max_concurrent_polls)),
        ):
            family, sample_name = _family(name, help_text, "gauge")
            family.add_sample(sample_name, {}, float(value))
            yield family

        polled = [s for s in snapshots if s.polled]  # dbintel_database_up is a database series: render_snapshot
        polls, polls_name = _family(
            "dbintel_agent_polls_total", "Polls of the database since this agent took it.", "counter"
        )
        errors, errors_name = _family(
            "dbintel_agent_poll_errors_total",
            "Errors while polling the database since this agent took it, by reason (timeout, connection, "
            "permission, unsupported, server_error, bad_reply, secret, config, collector_error).",
            "counter",
        )
        statements, statements_name = _family(
            "dbintel_agent_statements_per_poll", "Statements (commands) the last poll sent to the database.", "gauge"
        )
        last, last_name = _family(
            "dbintel_agent_last_poll_timestamp_seconds", "Unix time at which this agent's last poll started.", "gauge"
        )
        for s in polled:
            resource = {RESOURCE_LABEL: s.resource_id}
            polls.add_sample(polls_name, resource, float(s.polls_total))
            for reason, count in sorted(s.error_counts.items()):
                errors.add_sample(errors_name, {**resource, "reason": reason}, float(count))
            statements.add_sample(statements_name, resource, float(s.statements))
            if s.last_poll_time is not None:
                last.add_sample(last_name, resource, s.last_poll_time)
        yield from (polls, errors, statements, last)
