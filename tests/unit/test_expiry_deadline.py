"""What lets the leader skip a step: the earliest expiry deadline (pure), and the heartbeat validation
fast path, which must accept and reject exactly what the field-by-field checks do."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbintel.coordinator import validation
from dbintel.coordinator.model import AgentRecord, Registration
from dbintel.coordinator.planning import expiry_deadline_ms, expiry_reason, liveness
from dbintel.v1 import types_pb2

TIMEOUT = 90_000

members = st.dictionaries(
    st.text("abcdef", min_size=1, max_size=4),
    st.tuples(st.integers(0, 400_000), st.sampled_from(["active", "draining", "left", "expired"])),
    max_size=8,
)


def records(spec) -> dict[str, AgentRecord]:
    return {
        a: AgentRecord(
            agent_id=a,
            registration=Registration(instance_id=a),
            state=state,
            last_heartbeat_ms=hb,
            applied_epoch=0,
            current={},
        )
        for a, (hb, state) in spec.items()
    }


@settings(max_examples=300, deadline=None)
@given(members, st.integers(0, 400_000), st.integers(0, 300_000), st.integers(0, 200_000))
def test_nobody_expires_before_the_deadline_and_someone_does_at_it(spec, now, grace, later):
    agents = records(spec)
    deadline = expiry_deadline_ms(agents, now, TIMEOUT, grace)
    assert deadline <= now + TIMEOUT  # the leader re-reads the store at least once per node_timeout
    assert liveness(agents, deadline - 1, TIMEOUT, grace)[1] == []
    if deadline < now + TIMEOUT:  # set by a member: that member expires exactly then
        assert liveness(agents, deadline, TIMEOUT, grace)[1]
    # A heartbeat only pushes the deadline later, so a step skipped in between cannot miss an expiry.
    for agent_id, record in agents.items():
        beat = dict(agents)
        beat[agent_id] = dataclasses.replace(record, last_heartbeat_ms=record.last_heartbeat_ms + later)
        assert expiry_deadline_ms(beat, now, TIMEOUT, grace) >= deadline


def test_a_fleet_with_no_members_is_still_looked_at_once_per_node_timeout():
    assert expiry_deadline_ms({}, 5_000, TIMEOUT) == 95_000
    assert expiry_deadline_ms(records({"a": (0, "left")}), 5_000, TIMEOUT) == 95_000


def _status(rid, seconds=1_700_000_000, nanos=0, d_seconds=0, d_nanos=7_000_000, polls=3, errors=1, up=True):
    status = types_pb2.ResourceStatus(resource_id=rid, polls_total=polls, errors_total=errors, up=up)
    status.last_poll_time.seconds, status.last_poll_time.nanos = seconds, nanos
    status.last_poll_duration.seconds, status.last_poll_duration.nanos = d_seconds, d_nanos
    return status


statuses = st.builds(
    _status,
    st.text(st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=12) | st.just("x" * 1025),
    st.integers(-5, 2_000_000_000),
    st.integers(0, 999_999_999),
    st.integers(-3, 90_000),
    st.integers(-5, 999_999_999),
    st.integers(0, 2**40),
    st.integers(0, 2**40),
    st.booleans(),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(statuses, max_size=4))
def test_the_fast_path_agrees_with_the_field_by_field_checks(items):
    try:
        expected = dict(validation._status(i, s) for i, s in enumerate(items))
    except validation.InvalidArgument as exc:
        with pytest.raises(validation.InvalidArgument) as raised:
            validation._statuses(items, "current")
        assert str(raised.value) == str(exc)  # the same field named
    else:
        assert validation._statuses(items, "current") == expected


def test_the_fast_path_names_the_bad_entry():
    with pytest.raises(validation.InvalidArgument, match=r"released\[1\]\.resource_id: contains control"):
        validation._statuses([_status("db:redis/a"), _status("db:redis/\x07")], "released")
    with pytest.raises(validation.InvalidArgument, match=r"current\[0\]\.last_poll_duration: longer than a day"):
        validation._statuses([_status("db:redis/a", d_seconds=86_401)], "current")


DISCONNECT_GRACE = 6_000

suspects = st.dictionaries(
    st.text("abcdef", min_size=1, max_size=4),
    st.tuples(
        st.integers(0, 400_000),  # last heartbeat
        st.sampled_from(["active", "draining", "left", "expired"]),
        st.one_of(st.just(0), st.integers(1, 400_000)),  # when its stream ended without a Leave (0: it did not)
    ),
    max_size=8,
)


def suspect_records(spec) -> dict[str, AgentRecord]:
    return {
        a: dataclasses.replace(records({a: (hb, state)})[a], disconnected_ms=disc)
        for a, (hb, state, disc) in spec.items()
    }


@settings(max_examples=300, deadline=None)
@given(suspects, st.integers(0, 400_000), st.integers(0, 300_000), st.integers(1, 200_000))
def test_a_suspect_expires_at_its_disconnect_grace_and_a_heartbeat_only_pushes_that_later(spec, now, grace, later):
    agents = suspect_records(spec)
    deadline = expiry_deadline_ms(agents, now, TIMEOUT, grace, DISCONNECT_GRACE)
    assert liveness(agents, deadline - 1, TIMEOUT, grace, DISCONNECT_GRACE)[1] == []
    if deadline < now + TIMEOUT:
        assert liveness(agents, deadline, TIMEOUT, grace, DISCONNECT_GRACE)[1]
    for agent_id, record in agents.items():
        if not record.is_member:
            continue
        # Never later than the silence rule; the mark counts only if it is not older than a store outage.
        _, expired = liveness({agent_id: record}, now, TIMEOUT, grace, DISCONNECT_GRACE)
        silent = now > max(record.last_heartbeat_ms, grace) + TIMEOUT
        disconnected = record.disconnected_ms >= max(grace, 1) and now > record.disconnected_ms + DISCONNECT_GRACE
        assert (expired == [agent_id]) == (silent or disconnected)
        reason = expiry_reason(record, now, TIMEOUT, grace)
        if expired:
            assert reason == ("silent" if silent else "disconnected")
        # A heartbeat clears the mark and moves the last heartbeat on: never earlier.
        beat = dict(agents)
        beat[agent_id] = dataclasses.replace(
            record, last_heartbeat_ms=record.last_heartbeat_ms + later, disconnected_ms=0
        )
        assert expiry_deadline_ms(beat, now, TIMEOUT, grace, DISCONNECT_GRACE) >= deadline


def test_with_the_grace_off_only_silence_expires():
    agents = suspect_records({"a": (1_000, "active", 2_000)})
    assert liveness(agents, 2_000 + DISCONNECT_GRACE + 1, TIMEOUT, 0, 0) == (["a"], [])
    assert liveness(agents, 2_000 + DISCONNECT_GRACE + 1, TIMEOUT, 0, DISCONNECT_GRACE) == ([], ["a"])
