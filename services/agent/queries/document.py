"""The JSON document of one database's query activity, served by the agent at `GET /queries?resource=ID`
(read by `dbintel top`). Built from the scheduler's immutable snapshot: no I/O to any database."""

from __future__ import annotations

from typing import Any

from ..scheduler import ResourceSnapshot
from .model import ActiveSession, TopQuery

FORMAT_VERSION = 1


def _top_query(query: TopQuery, interval_time_s: float) -> dict[str, Any]:
    statement = query.statement
    text = query.text if query.text is not None else statement.text
    return {
        "query_id": statement.query_id,
        "summary": query.summary or statement.summary,
        "text": None if text is None else str(text),  # obfuscated by the source
        "namespace": statement.namespace,
        "calls": query.calls,
        "total_time_s": query.total_time_s,
        "mean_time_s": query.total_time_s / query.calls if query.calls else None,
        "rows": query.rows,
        "share": query.total_time_s / interval_time_s if interval_time_s > 0 else None,  # of the top N's time
        "extra": dict(query.extra),
    }


def _session(session: ActiveSession) -> dict[str, Any]:
    return {
        "session_id": session.session_id,
        "state": session.state,
        "wait_event_type": session.wait_event_type,
        "wait_event": session.wait_event,
        "duration_s": session.duration_s,
        "blocked_by": list(session.blocked_by),
        "query_id": session.query_id,
        "summary": session.summary,
        "text": None if session.text is None else str(session.text),
        "namespace": session.namespace,
        "user": session.user,
        "application": session.application,
    }


def activity_document(snapshot: ResourceSnapshot, agent_id: str) -> dict[str, Any]:
    """What `/queries` answers for a database this agent holds."""
    document: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "agent_id": agent_id,
        "resource_id": snapshot.resource_id,
        "db_system": snapshot.db_type,
        "up": snapshot.up,
        "top": None,
        "sessions": [],
        "sessions_at": None,
        "errors": [],
    }
    activity = snapshot.activity
    if activity is None:
        return document
    if activity.top is not None:
        top = activity.top
        spent = sum(q.total_time_s for q in top.queries)
        document["top"] = {
            "interval_start": top.interval_start,
            "interval_end": top.interval_end,
            "queries": [_top_query(q, spent) for q in top.queries],
        }
    document["sessions"] = [_session(s) for s in activity.sessions]
    document["sessions_at"] = activity.sessions_at
    document["errors"] = [{"query": e.query, "reason": e.reason, "message": e.message} for e in activity.errors]
    return document
