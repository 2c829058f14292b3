"""The pure rules of carrying top-query baselines: which stored baseline a grant may carry, the
per-request and per-assignment byte budgets, and the input checks."""

from __future__ import annotations

import pytest

from dbintel.agent.runtime import with_query_baselines
from dbintel.common.message_limits import MAX_QUERY_BASELINE_BYTES, MAX_RELEASED_BASELINE_BYTES
from dbintel.coordinator import validation
from dbintel.coordinator.model import QueryBaseline, baseline_candidates, baselines_to_attach
from dbintel.v1 import agent_service_pb2 as apb
from dbintel.v1 import types_pb2


def test_a_grant_carries_a_baseline_only_at_the_poll_time_it_was_released_with():
    grants = {"db:a": 1000, "db:b": 2000, "db:c": 0, "db:d": 4000}
    stored = {
        "db:a": QueryBaseline(1000, b"a"),  # released at the grant's poll time: carried
        "db:b": QueryBaseline(1500, b"b"),  # an older hand-off's: the database was polled since
        "db:c": QueryBaseline(0, b"c"),  # a grant without a previous poll time carries nothing
        "db:d": QueryBaseline(4000, b""),
        "db:e": QueryBaseline(5000, b"e"),  # not granted
    }
    assert baselines_to_attach(grants, stored, 1 << 20) == {"db:a": b"a"}


def test_the_assignment_budget_keeps_resource_order_and_skips_what_does_not_fit():
    grants = {"db:a": 1, "db:b": 1, "db:c": 1}
    stored = {"db:a": QueryBaseline(1, b"x" * 6), "db:b": QueryBaseline(1, b"y" * 6), "db:c": QueryBaseline(1, b"z")}
    assert baselines_to_attach(grants, stored, 8) == {"db:a": b"x" * 6, "db:c": b"z"}


def test_candidates_are_grants_with_a_poll_time_the_agent_does_not_poll_already():
    assert baseline_candidates({"db:a": 5, "db:b": 0, "db:c": 7}, polling={"db:c"}) == ["db:a"]


def status(rid: str, size: int = 0) -> types_pb2.ResourceStatus:
    return types_pb2.ResourceStatus(resource_id=rid, query_baseline=bytes(size))


def test_the_agent_fills_the_request_budget_in_order_and_releases_the_rest_without_one():
    statuses = [status("db:a"), status("db:b"), status("db:c"), status("db:d")]
    sizes = {"db:a": 6, "db:b": 6, "db:c": 2, "db:d": MAX_QUERY_BASELINE_BYTES + 1}
    out = with_query_baselines(statuses, lambda rid: b"q" * sizes[rid], budget_bytes=8)
    assert [len(s.query_baseline) for s in out] == [6, 0, 2, 0]
    assert [s.resource_id for s in out] == ["db:a", "db:b", "db:c", "db:d"]
    assert statuses[0].query_baseline == b""  # the kept entries are not changed: copies carry it


def test_the_coordinator_checks_each_baseline_and_the_total_naming_the_field():
    ok = [status("db:a", MAX_QUERY_BASELINE_BYTES), status("db:b")]
    assert validation.query_baselines(ok) == {"db:a": bytes(MAX_QUERY_BASELINE_BYTES)}
    with pytest.raises(validation.InvalidArgument, match=r"released\[1\]\.query_baseline: 65537 bytes for 'db:b'"):
        validation.query_baselines([status("db:a"), status("db:b", MAX_QUERY_BASELINE_BYTES + 1)])
    full = MAX_RELEASED_BASELINE_BYTES // MAX_QUERY_BASELINE_BYTES
    many = [status(f"db:{i}", MAX_QUERY_BASELINE_BYTES) for i in range(full + 1)]
    assert len(validation.query_baselines(many[:full])) == full
    with pytest.raises(validation.InvalidArgument, match=rf"released\[{full}\]\.query_baseline: .* add up"):
        validation.query_baselines(many)


def test_a_heartbeat_and_a_leave_carry_their_released_baselines():
    request = apb.HeartbeatRequest(
        agent_id="a1",
        registration=apb.AgentRegistration(instance_id="i"),
        current=[types_pb2.ResourceStatus(resource_id="db:kept", query_baseline=b"ignored in current")],
        released=[status("db:gone", 3), status("db:plain")],
    )
    report = validation.heartbeat(request, None, "c1")
    assert report.baselines == {"db:gone": bytes(3)} and set(report.released) == {"db:gone", "db:plain"}
    finals, baselines = validation.leave_released(apb.LeaveRequest(agent_id="a1", released=request.released))
    assert set(finals) == {"db:gone", "db:plain"} and baselines == {"db:gone": bytes(3)}
