"""PostgreSQL query intelligence, pure: pg_stat_statements and pg_stat_activity rows -> records.

No I/O. Rows come from the client (`fetch_statement_stats`, `fetch_statement_texts`,
`fetch_query_samples`) keyed by column name. Every query text goes through `obfuscate_sql` before it
is kept, and nothing here logs or raises with a text in it.

Statements: one row per queryid (the client sums pg_stat_statements' entries of several users,
databases and toplevel flags), so `query_id` is `str(queryid)`, stable per statement on the server and
unique in a read. Execution time arrives in milliseconds and is kept in seconds (`total_time_s`); the
other counters go into `extra` under the OTel receiver's attribute names, in the server's units.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final

from ...queries.model import ActiveSession, AttributeValue, StatementCounters
from ...queries.obfuscation import ObfuscatedText, obfuscate_sql, query_summary
from .client import PLAN_TIME_COLUMN, STATEMENT_EXTRA_COLUMNS

DIALECT: Final = "postgresql"
EXTRA_COLUMNS = (*STATEMENT_EXTRA_COLUMNS, PLAN_TIME_COLUMN)


def _number(value: Any) -> float:
    return float(value) if value is not None else 0.0


def statement_counters(rows: Iterable[Mapping[str, Any]]) -> tuple[StatementCounters, ...]:
    """The statements of one read, in the order read (heaviest first). The all-NULL row the client
    returns for an empty view (to carry stats_reset) is skipped."""
    counters = []
    for row in rows:
        queryid = row.get("queryid")
        if queryid is None:
            continue
        attributes: dict[str, AttributeValue] = {"postgresql.queryid": str(queryid)}
        if row.get("rolname"):
            attributes["postgresql.rolname"] = str(row["rolname"])
        counters.append(
            StatementCounters(
                query_id=str(queryid),
                calls=_number(row.get("calls")),
                total_time_s=_number(row.get("total_exec_time")) / 1000.0,
                rows=_number(row.get("rows")),
                extra={f"postgresql.{c}": _number(row[c]) for c in EXTRA_COLUMNS if c in row},  # NULL: zero
                namespace=str(row["datname"]) if row.get("datname") else "",
                attributes=attributes,
            )
        )
    return tuple(counters)


def stats_reset(rows: Iterable[Mapping[str, Any]]) -> float | None:
    """Unix seconds of pg_stat_statements' last full reset (PG 14+; None before, or when unknown).
    The client sends it on the first row only."""
    for row in rows:
        reset = row.get("stats_reset")
        if isinstance(reset, datetime):
            return reset.timestamp()
        return None
    return None


def obfuscated(text: str | None) -> tuple[ObfuscatedText, str]:
    """(obfuscated text, summary) of a query text as the server shows it ('' text: the placeholder)."""
    text = text or ""
    return obfuscate_sql(text, DIALECT), query_summary(text, DIALECT)


def statement_texts(rows: Iterable[Mapping[str, Any]]) -> dict[str, tuple[ObfuscatedText, str]]:
    """query_id -> (obfuscated text, summary); never the raw text."""
    return {str(row["queryid"]): obfuscated(row.get("query")) for row in rows if row.get("queryid") is not None}


def active_sessions(rows: Iterable[Mapping[str, Any]]) -> tuple[ActiveSession, ...]:
    """Live sessions from pg_stat_activity rows, in the order read (longest-running first)."""
    sessions = []
    for row in rows:
        text, summary = obfuscated(row.get("query"))
        query_id = row.get("query_id")
        attributes: dict[str, AttributeValue] = {"postgresql.pid": int(row["pid"])}
        if row.get("backend_type"):
            attributes["postgresql.backend_type"] = str(row["backend_type"])
        sessions.append(
            ActiveSession(
                session_id=str(row["pid"]),
                state=str(row.get("state") or ""),
                wait_event_type=str(row.get("wait_event_type") or ""),
                wait_event=str(row.get("wait_event") or ""),
                duration_s=float(row["duration"]) if row.get("duration") is not None else None,
                blocked_by=tuple((row.get("blocked_by") or "").split()),
                query_id=str(query_id) if query_id else "",  # 0/NULL: no query id computed
                text=text,
                summary=summary,
                namespace=str(row.get("datname") or ""),
                user=str(row.get("usename") or ""),
                client_address=str(row.get("client_addr") or ""),
                client_port=int(row["client_port"]) if row.get("client_port") not in (None, -1) else None,
                application=str(row.get("application_name") or ""),
                attributes=attributes,
            )
        )
    return tuple(sessions)
