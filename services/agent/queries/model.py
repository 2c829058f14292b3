"""What the query-intelligence sources produce: statement counters and live sessions. Pure data.

A *source* is a database collector's pair of reads (`DatabaseCollector.read_statement_stats`,
`.read_query_samples`), sharing the collector's one connection. Every text in these records is an
`ObfuscatedText`: a source builds it with `obfuscation`'s functions, so no raw literal of a user's
query gets past the collector (design property 9).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..collectors.metric_table import QueryError
from .obfuscation import ObfuscatedText

AttributeValue = str | int | float | bool


@dataclass(frozen=True, slots=True)
class StatementCounters:
    """One statement (PostgreSQL queryid, MySQL digest, MongoDB shape, Redis command pattern) as the
    server counts it. Cumulative since the server created the entry, unless the read says otherwise."""

    query_id: str  # stable per statement on this server: queryid, digest, or a hash of the shape
    calls: float
    total_time_s: float  # execution time, seconds
    rows: float = 0.0  # rows returned or affected (0 where the server does not count them)
    # More cumulative counters, keyed by the OTel receiver's attribute name (postgresql.shared_blks_hit,
    # mysql.events_statements_summary_by_digest.sum_lock_time, ...). Deltas are exported under these names.
    extra: Mapping[str, float] = field(default_factory=dict)
    namespace: str = ""  # db.namespace: the database, schema or collection the statement ran in
    text: ObfuscatedText | None = None  # when the read carries it; else fetched once per id (fetch_statement_texts)
    summary: str = ""  # db.query.summary, low-cardinality ("SELECT orders"); "" until the text is known
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)  # constant per statement (userid, ...)
    first_seen: float | None = None  # unix seconds the server created the entry, where it says (MySQL FIRST_SEEN)


@dataclass(frozen=True, slots=True)
class StatementRead:
    """One read of a source's statement statistics."""

    counters: tuple[StatementCounters, ...] = ()
    # False for sources that report what happened since `cursor` (Redis SLOWLOG, the MongoDB profiler):
    # their counters are already this interval's amounts, and the tracker accumulates them.
    cumulative: bool = True
    cursor: str | None = None  # where the next read starts (the newest SLOWLOG id, profiler ts); None = no cursor
    reset_at: float | None = None  # unix seconds of the server's last statistics reset, where it says
    errors: tuple[QueryError, ...] = ()  # a refusal (missing extension, consumer off) names what enables it
    statements: int = 0  # statements sent to the server for this read


@dataclass(frozen=True, slots=True)
class ActiveSession:
    """One session or operation running (or waiting, or idle in a transaction) right now."""

    session_id: str  # PostgreSQL pid, MySQL processlist id, MongoDB opid, Redis client id
    state: str  # "active", "idle in transaction", "waiting", ... as the server names it (low-cardinality)
    wait_event_type: str = ""  # "Lock", "IO", "LWLock", ..., or "" when not waiting
    wait_event: str = ""  # "relation", "transactionid", "wait/io/table/sql/handler", ...
    duration_s: float | None = None  # since the current statement/operation started
    blocked_by: tuple[str, ...] = ()  # session ids holding what this one waits for
    query_id: str = ""  # the statement's id in StatementCounters, where the server gives it
    text: ObfuscatedText | None = None
    summary: str = ""
    namespace: str = ""
    user: str = ""  # user.name
    client_address: str = ""  # client.address
    client_port: int | None = None
    application: str = ""  # application_name / program_name / appName
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)  # e.g. postgresql.pid, mysql.thread_id


@dataclass(frozen=True, slots=True)
class SampleRead:
    """One read of what runs now."""

    sessions: tuple[ActiveSession, ...] = ()
    errors: tuple[QueryError, ...] = ()
    statements: int = 0


@dataclass(frozen=True, slots=True)
class TopQuery:
    """One statement of an interval's top N: what it cost in the interval, and its server totals."""

    statement: StatementCounters  # as read: cumulative totals (the Prometheus counters)
    calls: float  # in the interval
    total_time_s: float
    rows: float
    extra: Mapping[str, float] = field(default_factory=dict)  # the interval's deltas of statement.extra
    text: ObfuscatedText | None = None
    summary: str = ""


@dataclass(frozen=True, slots=True)
class TopQueryReport:
    """The top N statements of one interval, by time spent in it, heaviest first."""

    interval_start: float  # unix seconds: the previous read's time (this agent's or the previous owner's)
    interval_end: float  # unix seconds: this read's
    queries: tuple[TopQuery, ...] = ()


@dataclass(frozen=True, slots=True)
class QueryActivity:
    """The query intelligence of one database as of its last reads; carried by its ResourceSnapshot."""

    top: TopQueryReport | None = None  # None until two reads (or one after a hand-off) made an interval
    sessions: tuple[ActiveSession, ...] = ()
    sessions_at: float | None = None  # unix seconds of the sample read
    errors: tuple[QueryError, ...] = ()  # of the last reads; a refusal names what enables it
