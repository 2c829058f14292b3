"""Checks on RPC input. Each failure names the field; the servicers turn it into INVALID_ARGUMENT."""

from __future__ import annotations

import re

from dbintel.common.config import DATABASE_TYPES
from dbintel.common.message_limits import MAX_QUERY_BASELINE_BYTES, MAX_RELEASED_BASELINE_BYTES
from dbintel.v1 import agent_service_pb2, types_pb2

from .model import HeartbeatReport, PollStatus, Registration, session_digest

_CONTROL = re.compile(r"[\x00-\x1f]")  # checked on every resource id of every heartbeat: keep it in C
_AGENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,252}$")
MAX_RESOURCES_PER_REPORT = 100_000
MAX_TEXT = 253


class InvalidArgument(ValueError):
    """A request field is malformed or out of range; the message names the field."""


def agent_id(value: str, field: str = "agent_id") -> str:
    if not value:
        raise InvalidArgument(f"{field}: required")
    if not _AGENT_ID.match(value):
        raise InvalidArgument(
            f"{field}: must be 1-253 characters of letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit"
        )
    return value


def _text(value: str, field: str, limit: int = MAX_TEXT) -> str:
    if len(value) > limit:
        raise InvalidArgument(f"{field}: longer than {limit} characters")
    if _CONTROL.search(value):
        raise InvalidArgument(f"{field}: contains control characters")
    return value


def registration(message: agent_service_pb2.AgentRegistration) -> Registration:
    return Registration(
        pod_name=_text(message.pod_name, "registration.pod_name"),
        zone=_text(message.zone, "registration.zone", 128),
        version=_text(message.version, "registration.version", 128),
        capacity=message.capacity,
        instance_id=_text(message.instance_id, "registration.instance_id", 128),
        session=session_digest(_text(message.session_secret, "registration.session_secret", 256)),
        http_address=http_address(message.http_address),
    )


_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):([0-9]{1,5})$")


def http_address(value: str, field: str = "registration.http_address") -> str:
    """host:port (an IPv6 host in brackets), or empty (agents before the field)."""
    if not value:
        return ""
    _text(value, field, 261)  # a 253-character DNS name, ':' and a port
    match = _HOST_PORT.match(value)
    if match is None or not 0 < int(match.group(2)) < 65536:
        raise InvalidArgument(f"{field}: must be host:port (an IPv6 host in brackets)")
    return value


def session(secret: str) -> str:
    """The digest a Leave or GetAssignments must match (see model.session_digest)."""
    return session_digest(_text(secret, "session_secret", 256))


def leave_released(request: agent_service_pb2.LeaveRequest) -> tuple[dict[str, int], dict[str, bytes]]:
    """The final poll times a Leave carries (resource -> last poll ms) and its top-query baselines."""
    if len(request.released) > MAX_RESOURCES_PER_REPORT:
        raise InvalidArgument(f"released: more than {MAX_RESOURCES_PER_REPORT} entries")
    finals = {rid: status.last_poll_ms for rid, status in _statuses(request.released, "released").items()}
    return finals, query_baselines(request.released)


def query_baselines(released) -> dict[str, bytes]:
    """resource -> top-query baseline of the `released` entries that carry one, each at most
    MAX_QUERY_BASELINE_BYTES and all together at most MAX_RELEASED_BASELINE_BYTES (message_limits).
    Call after `_statuses` checked the resource ids."""
    out: dict[str, bytes] = {}
    total = 0
    for index, status in enumerate(released):
        blob = status.query_baseline
        if not blob:
            continue
        if len(blob) > MAX_QUERY_BASELINE_BYTES:
            raise InvalidArgument(
                f"released[{index}].query_baseline: {len(blob)} bytes for {shown(status.resource_id)}, "
                f"more than {MAX_QUERY_BASELINE_BYTES}"
            )
        total += len(blob)
        if total > MAX_RELEASED_BASELINE_BYTES:
            raise InvalidArgument(
                f"released[{index}].query_baseline: the baselines of one request add up to more than "
                f"{MAX_RELEASED_BASELINE_BYTES} bytes (at {shown(status.resource_id)}); release the rest without one"
            )
        out[status.resource_id] = blob
    return out


def _status(index: int, status: types_pb2.ResourceStatus, name: str = "current") -> tuple[str, PollStatus]:
    """One status, checked field by field: names the first bad field. The slow path of `_statuses`."""
    field = f"{name}[{index}]"
    if not status.resource_id:
        raise InvalidArgument(f"{field}.resource_id: required")
    _text(status.resource_id, f"{field}.resource_id", 1024)
    if status.last_poll_time.seconds < 0:
        raise InvalidArgument(f"{field}.last_poll_time: before 1970")
    duration = status.last_poll_duration
    if duration.seconds < 0 or duration.nanos < 0:
        raise InvalidArgument(f"{field}.last_poll_duration: negative")
    if duration.seconds > 86_400:
        raise InvalidArgument(f"{field}.last_poll_duration: longer than a day")
    last_ms = status.last_poll_time.seconds * 1000 + status.last_poll_time.nanos // 1_000_000
    return status.resource_id, PollStatus(
        last_poll_ms=last_ms,
        duration_ms=duration.seconds * 1000 + duration.nanos / 1e6,
        polls=status.polls_total,
        errors=status.errors_total,
        up=status.up,
    )


def _statuses(statuses, name: str) -> dict[str, PollStatus]:
    """Every status of a heartbeat (this runs for each database of each heartbeat, so it reads each
    protobuf field once and builds no error text); any bad entry goes through `_status` for its message."""
    out = {}
    for index, status in enumerate(statuses):
        rid, last, duration = status.resource_id, status.last_poll_time, status.last_poll_duration
        last_s, duration_s, duration_ns = last.seconds, duration.seconds, duration.nanos
        if (
            not rid
            or len(rid) > 1024
            or last_s < 0
            or duration_s < 0
            or duration_ns < 0
            or duration_s > 86_400
            or _CONTROL.search(rid)
        ):
            _status(index, status, name)  # raises, naming the field
        out[rid] = PollStatus(
            last_s * 1000 + last.nanos // 1_000_000,
            duration_s * 1000 + duration_ns / 1e6,
            status.polls_total,
            status.errors_total,
            status.up,
        )
    return out


def heartbeat(
    request: agent_service_pb2.HeartbeatRequest, cached: Registration | None, coordinator_id: str
) -> HeartbeatReport:
    """Validate one heartbeat; the first of a stream must carry the registration."""
    agent = agent_id(request.agent_id)
    if request.HasField("registration"):
        reg = registration(request.registration)
        if not reg.instance_id:
            raise InvalidArgument("registration.instance_id: required")
    elif cached is None:
        raise InvalidArgument("registration: required on the first message of a Heartbeat stream")
    else:
        reg = cached
    if len(request.current) > MAX_RESOURCES_PER_REPORT:
        raise InvalidArgument(f"current: more than {MAX_RESOURCES_PER_REPORT} entries")
    if len(request.released) > MAX_RESOURCES_PER_REPORT:
        raise InvalidArgument(f"released: more than {MAX_RESOURCES_PER_REPORT} entries")
    current = _statuses(request.current, "current")
    if len(current) != len(request.current):
        raise InvalidArgument("current: a resource_id appears twice")
    released = _statuses(request.released, "released") if request.released else {}
    baselines = query_baselines(request.released) if request.released else {}
    return HeartbeatReport(
        agent_id=agent,
        registration=reg,
        applied_epoch=request.applied_assignment_epoch,
        current=current,
        coordinator_id=coordinator_id,
        released=released,
        sequence=request.sequence,
        baselines=baselines,
    )


def leave_reason(value: str) -> str:
    return _text(value, "reason", 1024)


def shown(value: str, limit: int = 64) -> str:
    """`value` quoted for an error message, cut to `limit` characters: a reply's details ride in gRPC
    metadata, and echoing a hostile 70 KB field back would overflow it (RESOURCE_EXHAUSTED, not the answer)."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def resource_type(value: str) -> str:
    """A type filter: empty (every type) or one of DATABASE_TYPES."""
    if value and value not in DATABASE_TYPES:
        raise InvalidArgument(
            f"type: {shown(value)} is not one of {', '.join(DATABASE_TYPES)} (empty lists every type)"
        )
    return value
