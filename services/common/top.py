"""`dbintel top RESOURCE`: a database's top queries and live sessions, from the agent that owns it.

The coordinator (OperatorService ListResources, ListAgents) says which agent holds the database and
where that agent's HTTP endpoint is (`AgentInfo.http_address`, which the agent registered); the
agent answers `GET /queries?resource=ID` from its last reads (no I/O to the database on that path).
The owner is looked up again on every refresh, so a database that moved is followed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import grpc
from pydantic import SecretStr

from dbintel.common.config import TLSSettings
from dbintel.common.grpc_security import bearer_metadata, describe_rpc_error, open_channel
from dbintel.v1 import operator_service_pb2 as pb
from dbintel.v1 import operator_service_pb2_grpc

MAX_REPLY_BYTES = 16 * 1024 * 1024  # a top N and a sample read: far below this


class TopError(Exception):
    """Why the view cannot be shown (unknown database, not assigned, agent unreachable, ...)."""


async def locate_owner(
    coordinator: str,
    resource_id: str,
    *,
    timeout: float = 5.0,
    tls: TLSSettings | None = None,
    token: SecretStr | None = None,
) -> tuple[str, str]:
    """(owner agent id, its HTTP address) of `resource_id`, from the coordinator."""
    async with open_channel(coordinator, tls) as channel:
        stub = operator_service_pb2_grpc.OperatorServiceStub(channel)
        call = {"timeout": timeout, "metadata": bearer_metadata(token)}
        try:
            resources = await stub.ListResources(pb.ListResourcesRequest(), **call)
            agents = await stub.ListAgents(pb.ListAgentsRequest(), **call)
        except grpc.aio.AioRpcError as exc:
            raise TopError(f"{coordinator}: {describe_rpc_error(exc, coordinator, tls)}") from None
    resource = next((r for r in resources.resources if r.resource_id == resource_id), None)
    if resource is None:
        raise TopError(f"unknown resource {resource_id!r}: not in the coordinator's inventory (see dbintel status)")
    owner = resource.owner_agent_id
    if not owner:
        raise TopError(f"{resource_id} is not assigned to any agent right now (moving, or no agent live)")
    agent = next((a for a in agents.agents if a.agent_id == owner), None)
    if agent is None or not agent.http_address:
        raise TopError(
            f"agent {owner} holds {resource_id} but does not advertise an HTTP address "
            "(an older agent version, or agent.advertise_address unset behind a proxy)"
        )
    return owner, agent.http_address


def fetch_activity(http_address: str, resource_id: str, *, timeout: float = 5.0) -> dict[str, Any]:
    """The agent's `/queries` answer for `resource_id` (blocking)."""
    url = f"http://{http_address}/queries?" + urllib.parse.urlencode({"resource": resource_id})
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            body = reply.read(MAX_REPLY_BYTES)
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read(64 * 1024)).get("error", "")
        except ValueError:
            detail = ""
        raise TopError(f"agent at {http_address} answered {exc.code}: {detail or exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TopError(f"agent at {http_address} is unreachable: {reason}") from None
    try:
        return json.loads(body)
    except ValueError:
        raise TopError(f"agent at {http_address} did not answer JSON on /queries") from None


async def fetch_top(
    coordinator: str,
    resource_id: str,
    *,
    timeout: float = 5.0,
    tls: TLSSettings | None = None,
    token: SecretStr | None = None,
) -> dict[str, Any]:
    """The owner's activity document, with `owner_agent_id` and `agent_http_address` added."""
    owner, address = await locate_owner(coordinator, resource_id, timeout=timeout, tls=tls, token=token)
    document = await asyncio.to_thread(fetch_activity, address, resource_id, timeout=timeout)
    document["owner_agent_id"] = owner
    document["agent_http_address"] = address
    return document


# -- rendering --------------------------------------------------------------------------------------------
def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.1f}ms"
    return f"{value:.2f}s" if value < 120 else f"{value / 60:.1f}m"


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"


def _clock(unix: float | None) -> str:
    if unix is None:
        return "-"
    return dt.datetime.fromtimestamp(unix, dt.UTC).strftime("%H:%M:%S UTC")


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())  # one line per row
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def render_top(document: dict[str, Any], *, text_width: int = 60) -> str:
    head = (
        f"{document['resource_id']} ({document.get('db_system', '?')}, {'up' if document.get('up') else 'down'})"
        f" on agent {document.get('owner_agent_id', document.get('agent_id', '?'))}"
        f" ({document.get('agent_http_address', '-')})"
    )
    parts = [head, ""]
    top = document.get("top")
    if top is None:
        parts.append("top queries: none yet (query intelligence off, or the first interval not complete)")
    else:
        spent = top["interval_end"] - top["interval_start"]
        parts.append(f"top queries, {_clock(top['interval_start'])} - {_clock(top['interval_end'])} ({spent:.0f}s)")
        parts.append(
            _table(
                ["QUERY", "CALLS", "TOTAL", "MEAN", "ROWS", "SHARE", "ID"],
                [
                    [
                        _cut(q.get("summary") or q.get("text") or "?", text_width),
                        _number(q["calls"]),
                        _seconds(q["total_time_s"]),
                        _seconds(q.get("mean_time_s")),
                        _number(q["rows"]),
                        "-" if q.get("share") is None else f"{q['share'] * 100:.1f}%",
                        q["query_id"],
                    ]
                    for q in top["queries"]
                ],
            )
        )
    parts.append("")
    sessions = document.get("sessions") or []
    if document.get("sessions_at") is None:
        parts.append("sessions: no sample read yet")
    else:
        parts.append(f"sessions at {_clock(document['sessions_at'])}: {len(sessions)}")
        parts.append(
            _table(
                ["SESSION", "STATE", "WAIT", "DURATION", "BLOCKED BY", "QUERY"],
                [
                    [
                        s["session_id"],
                        s["state"] or "-",
                        "/".join(p for p in (s.get("wait_event_type"), s.get("wait_event")) if p) or "-",
                        _seconds(s.get("duration_s")),
                        ",".join(s.get("blocked_by") or []) or "-",
                        _cut(s.get("text") or s.get("summary") or "", text_width) or "-",
                    ]
                    for s in sessions
                ],
            )
        )
    for error in document.get("errors") or []:
        parts.append(f"note: {error.get('reason')}: {error.get('message')}")
    return "\n".join(parts)
