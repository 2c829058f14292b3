"""`dbintel status`: reads the operator RPCs and renders them as tables (or JSON)."""

from __future__ import annotations

import datetime as dt

import grpc
from google.protobuf.json_format import MessageToDict
from pydantic import SecretStr

from dbintel.common.config import TLSSettings
from dbintel.common.grpc_security import bearer_metadata, describe_rpc_error, open_channel
from dbintel.v1 import operator_service_pb2 as pb
from dbintel.v1 import operator_service_pb2_grpc


async def fetch_status(
    address: str,
    *,
    agent_filter: str = "",
    timeout: float = 5.0,
    tls: TLSSettings | None = None,
    token: SecretStr | None = None,
) -> dict:
    """The three operator listings; `tls` secures the channel, `token` is the operator bearer token."""
    async with open_channel(address, tls) as channel:
        stub = operator_service_pb2_grpc.OperatorServiceStub(channel)
        call = {"timeout": timeout, "metadata": bearer_metadata(token)}
        try:
            cluster = await stub.GetClusterStatus(pb.GetClusterStatusRequest(), **call)
            agents = await stub.ListAgents(pb.ListAgentsRequest(), **call)
            assignments = await stub.ListAssignments(pb.ListAssignmentsRequest(agent_id=agent_filter), **call)
        except grpc.aio.AioRpcError as exc:
            raise ConnectionError(f"{address}: {describe_rpc_error(exc, address, tls)}") from None

    def as_dict(m):
        return MessageToDict(m, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)

    return {
        "cluster": as_dict(cluster),
        "agents": as_dict(agents)["agents"],
        "assignments": as_dict(assignments)["assignments"],
    }


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _ago(timestamp: str | None) -> str:
    if not timestamp:
        return "-"
    when = dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = (dt.datetime.now(dt.UTC) - when).total_seconds()
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


def render_status(status: dict) -> str:
    c = status["cluster"]
    states = ", ".join(f"{k} {v}" for k, v in sorted(c.get("agents_by_state", {}).items()) if v) or "none"
    summary = [
        f"leader      {c['leader_id'] or '(none)'}  epoch {c['leader_epoch']}   (answered by {c['coordinator_id']}, "
        f"{'leader' if c['is_leader'] else 'follower'}, store {c['store_mode']})",
        f"agents      {states}",
        f"databases   {c['resources_total']} total: {c['resources_assigned']} assigned, {c['resources_pending']} "
        f"moving, {c['resources_unassigned']} unassigned   assignment epoch {c['assignment_epoch']}",
        f"rebalances  {c['rebalances_total']}, last: {c['last_rebalance_reason'] or '-'} "
        f"{_ago(c.get('last_rebalance_time'))}",
    ]
    agents = _table(
        ["AGENT", "STATE", "ZONE", "DATABASES", "POLLING", "LOAD", "EPOCH", "APPLIED", "HEARTBEAT", "HTTP"],
        [
            [
                a["agent_id"],
                a["state"].removeprefix("AGENT_STATE_").lower()
                + (" (unacknowledged)" if a.get("unacknowledged") else "")
                + (" (unproven)" if a.get("unproven") else "")
                + (f" (disconnected {_ago(a['disconnected_time'])})" if a.get("disconnected_time") else ""),
                a["zone"] or "-",
                str(a["target_resources"]),
                str(a["current_resources"]),
                f"{a['load']:.3f}",
                str(a["assignment_epoch"]),
                str(a["applied_assignment_epoch"]),
                _ago(a.get("last_heartbeat_time")),
                a.get("http_address") or "-",
            ]
            for a in status["agents"]
        ],
    )
    assignments = _table(
        ["DATABASE", "AGENT", "STATE", "COST"],
        [
            [
                a["resource_id"],
                a["agent_id"] or "-",
                a["state"].removeprefix("ASSIGNMENT_STATE_").lower(),
                f"{a['cost']:.4f}",
            ]
            for a in status["assignments"]
        ],
    )
    return "\n".join(summary) + "\n\n" + agents + "\n\n" + assignments
