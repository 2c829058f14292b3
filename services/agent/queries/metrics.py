"""The Prometheus series of query intelligence, declared once (docs/metrics.md is generated from this).

Per database, only the top N statements of the last interval get series, keyed by the statement's id
and its low-cardinality summary (`SELECT orders`) — never its text. Their values are the server's
totals (counters), so `rate()` over them is right across intervals, hand-offs and agents (the series
belongs to the database, not the agent). A statement that leaves the top N leaves the exposition and
its series goes stale; one that comes back continues its counter. Series per database are therefore at
most `top_n_query` × 3 for statements plus one per (state, wait event) seen in the last sample, and
the bound for an agent is that times the databases it holds.
"""

from __future__ import annotations

import functools

from ..collectors.metric_table import MetricTable, Sample, metric_spec
from .model import QueryActivity

_spec = functools.partial(
    metric_spec,
    tier="beyond",
    verified=("PostgreSQL 15", "MariaDB 10.11", "SecantusDB", "Redis 7"),
)
_STATEMENT = ("db.query.id", "db.query.summary")

QUERY_TABLE = MetricTable(
    [
        _spec(
            "dbintel.query.calls",
            "sum",
            "{calls}",
            "Calls of one of the database's top statements of the last interval, as the server counts them.",
            "top_query_collection",
            monotonic=True,
            attributes=_STATEMENT,
        ),
        _spec(
            "dbintel.query.time",
            "sum",
            "s",
            "Execution time of one of the database's top statements of the last interval, server total.",
            "top_query_collection",
            monotonic=True,
            attributes=_STATEMENT,
        ),
        _spec(
            "dbintel.query.rows",
            "sum",
            "{rows}",
            "Rows returned or affected by one of the database's top statements of the last interval.",
            "top_query_collection",
            monotonic=True,
            attributes=_STATEMENT,
        ),
        _spec(
            "dbintel.sessions",
            "gauge",
            "{sessions}",
            "Sessions (operations, clients) not idle at the last sample, by state and wait event.",
            "query_sample_collection",
            attributes=("state", "wait_event_type", "wait_event"),
        ),
        _spec(
            "dbintel.sessions.longest",
            "gauge",
            "s",
            "How long the longest-running statement of each state had run at the last sample.",
            "query_sample_collection",
            attributes=("state",),
        ),
    ]
)

_CALLS, _TIME, _ROWS, _SESSIONS, _LONGEST = QUERY_TABLE.specs


def top_query_samples(activity: QueryActivity) -> list[Sample]:
    """The counters of the last interval's top statements."""
    if activity.top is None:
        return []
    samples = []
    for query in activity.top.queries:
        labels = (query.statement.query_id, query.summary or query.statement.summary)
        statement = query.statement
        samples += [
            Sample(_CALLS, statement.calls, labels),
            Sample(_TIME, statement.total_time_s, labels),
            Sample(_ROWS, statement.rows, labels),
        ]
    return samples


def session_samples(activity: QueryActivity) -> list[Sample]:
    """Sessions by state and wait event, and the longest-running per state, at the last sample."""
    if activity.sessions_at is None:
        return []
    counts: dict[tuple[str, str, str], int] = {}
    longest: dict[str, float] = {}
    for session in activity.sessions:
        key = (session.state, session.wait_event_type, session.wait_event)
        counts[key] = counts.get(key, 0) + 1
        if session.duration_s is not None:
            longest[session.state] = max(longest.get(session.state, 0.0), session.duration_s)
    return [Sample(_SESSIONS, float(n), key) for key, n in sorted(counts.items())] + [
        Sample(_LONGEST, seconds, (state,)) for state, seconds in sorted(longest.items())
    ]
