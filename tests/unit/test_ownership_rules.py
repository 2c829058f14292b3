"""Who may be given databases: proven sessions, the acknowledgment deadline. Pure planning rules."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from dbintel.coordinator.model import AgentRecord, PollStatus, Registration, membership_digest
from dbintel.coordinator.planning import (
    InventoryItem,
    StepInput,
    ack_check_due_ms,
    ack_deadline_ms,
    plan_step,
    unacknowledged,
)

NOW = 5_000_000


def member(agent_id, current=(), proven=True, applied=0):
    return AgentRecord(
        agent_id=agent_id,
        registration=Registration(pod_name=agent_id, instance_id=agent_id),
        state="active",
        last_heartbeat_ms=NOW,
        applied_epoch=applied,
        current={r: PollStatus(last_poll_ms=NOW - 100, polls=1) for r in current},
        proven=proven,
    )


INVENTORY = {f"db:redis/{i}": InventoryItem(f"db:redis/{i}", "redis", 10.0) for i in range(6)}


def step_of(*agents, **changes):
    base = StepInput(
        inventory=INVENTORY,
        agents={a.agent_id: a for a in agents},
        target={},
        assigned={},
        now_ms=NOW,
        node_timeout_ms=90_000,
    )
    return dataclasses.replace(base, **changes)


def test_an_unproven_registrant_is_given_nothing_until_it_heartbeats_again():
    plan = plan_step(step_of(member("a"), member("silent", proven=False)))
    assert set(plan.placement.owners.values()) == {"a"}
    assert not plan.holdings.get("silent")
    proven = plan_step(step_of(member("a"), member("silent")), balance=True)
    assert "silent" in set(proven.placement.owners.values())


def test_proving_the_session_changes_the_membership_digest():
    reg = Registration(instance_id="i")
    assert membership_digest(reg, 0, [], proven=False) != membership_digest(reg, 0, [])


def test_a_flagged_agent_loses_its_targets_and_its_unacknowledged_grants_do_not_block_others():
    granted = frozenset(INVENTORY)
    target = dict.fromkeys(INVENTORY, "rogue")
    waiting = step_of(
        member("rogue"), member("b"), target=target, assigned={"rogue": granted}, in_flight={"rogue": granted}
    )
    blocked = plan_step(waiting)
    assert not blocked.holdings.get("b")  # not flagged yet: its grants may still be applied any moment
    flagged = plan_step(dataclasses.replace(waiting, unacknowledged=frozenset({"rogue"})))
    assert set(flagged.placement.owners.values()) == {"b"}
    assert flagged.holdings["b"] == granted  # it reports polling nothing: they are b's at once
    assert flagged.write.unacknowledged == ("rogue",)


def test_a_flagged_agent_that_still_reports_polling_keeps_the_grant_waiting():
    target = dict.fromkeys(INVENTORY, "rogue")
    polling = member("rogue", current=["db:redis/0"])
    plan = plan_step(step_of(polling, member("b"), target=target, unacknowledged=frozenset({"rogue"})))
    assert "db:redis/0" not in plan.holdings.get("b", frozenset())  # revocation first, then the grant


def test_the_flag_is_written_only_when_it_changes():
    same = step_of(member("a"), unacknowledged=frozenset({"x"}), recorded_unacknowledged=frozenset({"x"}))
    assert plan_step(same).write.unacknowledged is None
    cleared = step_of(member("a"), recorded_unacknowledged=frozenset({"x"}))
    assert plan_step(cleared).write.unacknowledged == ()


def test_deadline_is_two_heartbeats_and_at_least_two_seconds():
    assert ack_deadline_ms(100) == 2000
    assert ack_deadline_ms(30_000) == 60_000


sent = st.dictionaries(
    st.sampled_from("abcd"),
    st.dictionaries(st.integers(1, 50), st.integers(NOW - 10_000, NOW), max_size=4),
    max_size=4,
)


@given(sent, st.sets(st.sampled_from("abcde")), st.integers(0, 8_000))
def test_flagging_follows_the_oldest_unacknowledged_epoch(first_sent, flagged_before, deadline):
    flagged = unacknowledged(first_sent, flagged_before, NOW, deadline)
    for agent, epochs in first_sent.items():
        late = bool(epochs) and NOW - min(epochs.values()) > deadline
        assert (agent in flagged) == (late or (bool(epochs) and agent in flagged_before))
    assert flagged <= {a for a, e in first_sent.items() if e}  # acknowledging everything clears the flag
    due = ack_check_due_ms(first_sent, flagged, deadline)
    if due is None:
        assert all(not e or a in flagged for a, e in first_sent.items())
    else:
        assert due > NOW  # whoever is late is flagged already; the next one comes later
        assert unacknowledged(first_sent, flagged, due, deadline) > flagged
