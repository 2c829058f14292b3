"""The leader's step as a pure function: expiry with grace, the hand-off order, costs, stickiness."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from dbintel.coordinator.model import AgentRecord, PollStatus, Registration
from dbintel.coordinator.planning import InventoryItem, StepInput, liveness, measured_costs, plan_step

NOW = 1_000_000


def agent(agent_id, current=(), hb=NOW, state="active", statuses=None):
    statuses = statuses or {}
    return AgentRecord(
        agent_id=agent_id,
        registration=Registration(pod_name=agent_id, instance_id=agent_id),
        state=state,
        last_heartbeat_ms=hb,
        applied_epoch=0,
        current={r: statuses.get(r, PollStatus()) for r in current},
    )


def inventory(n, type_="redis", interval=30.0):
    return {f"db:{type_}/{i}": InventoryItem(f"db:{type_}/{i}", type_, interval) for i in range(n)}


def step(agents, inv, target=None, assigned=None, now=NOW, grace=0):
    return StepInput(
        inventory=inv,
        agents={a.agent_id: a for a in agents},
        target=target or {},
        assigned=assigned or {},
        now_ms=now,
        node_timeout_ms=90_000,
        grace_from_ms=grace,
    )


def test_silence_counts_from_the_end_of_a_store_outage():
    agents = {"a": agent("a", hb=NOW - 200_000), "b": agent("b", hb=NOW - 10_000), "c": agent("c", state="left")}
    assert liveness(agents, NOW, 90_000) == (["b"], ["a"])
    assert liveness(agents, NOW, 90_000, grace_from_ms=NOW - 5_000) == (["a", "b"], [])


def test_hand_off_revokes_first_then_grants_after_the_ack():
    inv = inventory(2)
    r0, r1 = sorted(inv)
    # a holds both; b drains nothing; a is draining so both must move to b.
    a = agent(
        "a",
        current=[r0, r1],
        state="draining",
        statuses={r0: PollStatus(last_poll_ms=777, polls=1), r1: PollStatus(last_poll_ms=888, polls=1)},
    )
    b = agent("b")
    first = plan_step(step([a, b], inv, target={r0: "a", r1: "a"}, assigned={"a": frozenset(inv)}))
    assert first.placement.owners == {r0: "b", r1: "b"}
    # Revocation at once; b is granted nothing while a still reports polling.
    assert first.write.assignments == {"a": {}}
    assert first.holdings.get("b", frozenset()) == frozenset()
    # a acknowledges: it polls nothing now and reports the final poll times of what it released.
    a_acked = dataclasses.replace(agent("a", current=[], state="draining"), released={r0: 777, r1: 888})
    second = plan_step(
        step([a_acked, b], inv, target=dict(first.placement.owners), assigned={"a": frozenset()}), reason="drain"
    )
    assert second.write.assignments == {"b": {r0: 777, r1: 888}}
    assert second.holdings["b"] == frozenset(inv)


def test_grants_carry_last_poll_time_from_a_departed_owner():
    inv = inventory(1)
    (rid,) = inv
    gone = agent("a", current=[rid], state="left", statuses={rid: PollStatus(last_poll_ms=4242, polls=3)})
    plan = plan_step(step([gone, agent("b")], inv, target={rid: "a"}, assigned={"a": frozenset(inv)}))
    assert plan.write.assignments["b"] == {rid: 4242}
    assert plan.write.assignments["a"] == {}


def test_expired_agents_are_written_expired_and_their_databases_move():
    inv = inventory(4)
    dead = agent("a", current=list(inv)[:2], hb=NOW - 100_000)
    alive = agent("b", current=list(inv)[2:])
    plan = plan_step(
        step(
            [dead, alive],
            inv,
            target={r: ("a" if i < 2 else "b") for i, r in enumerate(sorted(inv))},
            assigned={"a": frozenset(sorted(inv)[:2]), "b": frozenset(sorted(inv)[2:])},
        )
    )
    assert plan.write.expire == ("a",)
    assert set(plan.placement.owners.values()) == {"b"}
    assert plan.holdings["b"] == frozenset(inv)  # an expired agent's current set counts as empty


def test_after_store_data_loss_current_reports_keep_placement_sticky():
    inv = inventory(6)
    ids = sorted(inv)
    a, b = agent("a", current=ids[:3]), agent("b", current=ids[3:])
    plan = plan_step(step([a, b], inv, target={}, assigned={}))
    assert plan.placement.owners == {**dict.fromkeys(ids[:3], "a"), **dict.fromkeys(ids[3:], "b")}
    assert plan.write.moves == 0


def test_measured_cost_is_poll_time_over_interval_and_unmeasured_take_their_type_mean():
    inv = {**inventory(2, "redis", 10.0), **inventory(1, "mysql", 10.0)}
    measured = agent("a", current=["db:redis/0"], statuses={"db:redis/0": PollStatus(duration_ms=50.0, polls=2)})
    costs = measured_costs(inv, {"a": measured}, ["a"])
    assert costs["db:redis/0"] == 50.0 / 1000 / 10.0
    assert costs["db:redis/1"] == costs["db:redis/0"]  # same type, unmeasured
    assert costs["db:mysql/0"] == 1.0  # nothing measured of its type yet


def test_noop_when_nothing_changed():
    inv = inventory(2)
    ids = sorted(inv)
    agents = [agent("a", current=[ids[0]]), agent("b", current=[ids[1]])]
    plan = plan_step(
        step(
            agents,
            inv,
            target={ids[0]: "a", ids[1]: "b"},
            assigned={"a": frozenset([ids[0]]), "b": frozenset([ids[1]])},
        )
    )
    assert plan.is_noop and not plan.target_changed


@settings(max_examples=60, deadline=None)
@given(n_resources=st.integers(0, 30), n_agents=st.integers(1, 5), data=st.data())
def test_hold_sets_never_create_a_second_poller(n_resources, n_agents, data):
    inv = inventory(n_resources)
    ids = sorted(inv)
    names = [f"a{i}" for i in range(n_agents)]
    current = {n: data.draw(st.sets(st.sampled_from(ids)) if ids else st.just(set())) for n in names}
    target = {r: data.draw(st.sampled_from(names)) for r in ids}
    plan = plan_step(step([agent(n, current=sorted(current[n])) for n in names], inv, target=target))
    for rid in ids:
        pollers_now = {n for n in names if rid in current[n]}
        told = {n for n, held in plan.holdings.items() if rid in held}
        # Anyone told to hold it who is not already polling it is a *new* poller: allowed only
        # when nobody else polls it.
        new = told - pollers_now
        assert not new or not (pollers_now - new)
        assert len(told) <= 1


def test_a_grant_not_yet_acknowledged_blocks_a_second_grant():
    inv = inventory(1)
    (rid,) = inv
    # a was granted rid at an epoch it has not acked (reports nothing yet); the target moves to b.
    a, b = agent("a"), agent("b")
    with_in_flight = StepInput(
        inventory=inv,
        agents={"a": a, "b": b},
        target={rid: "b"},
        assigned={"a": frozenset()},
        now_ms=NOW,
        node_timeout_ms=90_000,
        in_flight={"a": frozenset(inv)},
    )
    still_blocked = plan_step(with_in_flight)
    assert rid not in still_blocked.holdings.get("b", frozenset())
    assert still_blocked.write.assignments.get("b", {}) == {}
    acked = plan_step(
        StepInput(
            inventory=inv,
            agents={"a": a, "b": b},
            target={rid: "b"},
            assigned={"a": frozenset()},
            now_ms=NOW,
            node_timeout_ms=90_000,
        )
    )
    assert acked.holdings["b"] == frozenset(inv)


def test_a_database_zone_from_the_config_reaches_the_engine_and_picks_a_same_zone_agent():
    inv = {
        f"db:redis/{i}": InventoryItem(f"db:redis/{i}", "redis", 30.0, zone="eu" if i % 2 else "us") for i in range(6)
    }
    eu, us = agent("eu-1"), agent("us-1")
    eu = dataclasses.replace(eu, registration=dataclasses.replace(eu.registration, zone="eu"))
    us = dataclasses.replace(us, registration=dataclasses.replace(us.registration, zone="us"))
    plan = plan_step(step([eu, us], inv), balance=True)
    assert all(plan.placement.owners[rid] == ("eu-1" if item.zone == "eu" else "us-1") for rid, item in inv.items())
    alone = plan_step(step([us], inv, target=dict(plan.placement.owners)))  # eu has no live agent: fall back
    assert set(alone.placement.owners.values()) == {"us-1"}
