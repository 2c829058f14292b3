"""The leader's decisions as pure functions of its schedule and the clock (dbintel.coordinator.schedule):
a burst of joins becomes one balancing move, the periodic rebalance keeps its cadence, a new cluster
waits for agents before placing, and the wake-up comes no later than the next possible expiry."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from dbintel.coordinator.engine.assignment import Placement
from dbintel.coordinator.model import PlacementWrite
from dbintel.coordinator.planning import InventoryItem, StepInput, StepPlan
from dbintel.coordinator.schedule import (
    JOIN_SETTLE_S,
    LeaderSchedule,
    Timing,
    after_plan,
    decide,
    full_step_due,
    next_wake_in,
    tick_seconds,
)

TIMING = Timing(
    heartbeat_interval_s=10.0, rebalance_interval_s=300.0, min_rebalance_interval_s=30.0, rebalance_improvement=0.1
)
INVENTORY = {"db:redis/a": InventoryItem("db:redis/a", "redis", 10.0)}


def step(*, placed: bool = True, now_ms: int = 1_000_000) -> StepInput:
    return StepInput(
        inventory=INVENTORY,
        agents={},
        target={"db:redis/a": "a1"} if placed else {},
        assigned={},
        now_ms=now_ms,
        node_timeout_ms=30_000,
    )


def run(schedule: LeaderSchedule, now: float, live: set[str], *, placed: bool = True, heartbeat_ms: int = 1_000_000):
    return decide(
        schedule,
        TIMING,
        now,
        live=frozenset(live),
        request_pending=False,
        step=step(placed=placed),
        last_heartbeat_write_ms=heartbeat_ms,
    )


def written(schedule: LeaderSchedule, now: float, decision) -> LeaderSchedule:
    """The schedule once the leader has written the step it decided (a plan that moved nothing)."""
    if decision.action != "plan":
        return schedule
    plan = StepPlan(
        write=PlacementWrite(),
        placement=Placement(owners={}, unassigned=(), moved={}, loads={}),
        holdings={},
        live=(),
        expired=(),
    )
    return after_plan(schedule, now, decision, step(), plan)


def test_a_new_term_takes_the_members_it_finds_as_already_there() -> None:
    schedule, decision = run(LeaderSchedule(last_periodic=0.0), 100.0, {"a1", "a2"})
    assert decision.action == "plan" and not decision.balance
    assert schedule.known_live == {"a1", "a2"} and schedule.first_pending_join is None


def test_a_new_term_after_a_silence_gives_the_agents_a_fresh_timeout() -> None:
    _, quiet = run(LeaderSchedule(last_periodic=0.0), 100.0, {"a1"}, heartbeat_ms=1_000_000 - 60_000)
    _, recent = run(LeaderSchedule(last_periodic=0.0), 100.0, {"a1"}, heartbeat_ms=1_000_000 - 1_000)
    assert quiet.mark_recovered and not recent.mark_recovered


def test_a_join_is_balanced_once_it_has_settled() -> None:
    schedule, _ = run(LeaderSchedule(last_periodic=0.0), 100.0, {"a1"})
    schedule, joining = run(schedule, 101.0, {"a1", "a2"})
    assert joining.action == "plan" and not joining.balance  # not yet: more may follow
    assert schedule.first_pending_join == 101.0
    schedule, settled = run(schedule, 101.0 + JOIN_SETTLE_S, {"a1", "a2"})
    assert settled.balance and settled.reason == "agent_joined"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.01, JOIN_SETTLE_S * 0.99), min_size=1, max_size=40))
def test_a_burst_of_joins_closer_than_the_settle_window_is_one_balancing_move(gaps: list[float]) -> None:
    schedule, decision = run(LeaderSchedule(last_periodic=0.0), 1000.0, {"a0"})
    schedule = written(schedule, 1000.0, decision)
    now, live, balances = 1000.0, {"a0"}, 0
    for index, gap in enumerate(gaps, start=1):
        now += gap
        live = live | {f"a{index}"}
        schedule, decision = run(schedule, now, live)
        schedule = written(schedule, now, decision)
        balances += decision.balance
    # While joins keep coming, at most one balance per min_rebalance_interval; once they stop, one more
    # (or none, when the last balance already took every join in).
    assert balances <= math.ceil((now - 1000.0) / TIMING.min_rebalance_interval_s)
    # Once the joins have settled and the minimum interval since the last balance has passed (a hair
    # past both: `a + b - a` need not be `b` in floating point).
    settled_at = max(now + JOIN_SETTLE_S, schedule.last_balance + TIMING.min_rebalance_interval_s) + 1e-6
    schedule, decision = run(schedule, settled_at, live)
    schedule = written(schedule, settled_at, decision)
    assert schedule.first_pending_join is None  # every join has been balanced
    assert balances + decision.balance >= 1
    _, quiet = run(schedule, settled_at + 1.0, live)
    assert not quiet.balance  # and nothing is balanced again without a new join


def test_the_periodic_rebalance_runs_on_its_interval_and_asks_for_an_improvement() -> None:
    schedule, _ = run(LeaderSchedule(last_periodic=0.0), 100.0, {"a1"})
    _, early = run(schedule, 299.0, {"a1"})
    schedule, due = run(schedule, 300.0, {"a1"})
    assert early.cost_rebalance is None
    assert due.cost_rebalance == TIMING.rebalance_improvement and due.reason == "periodic"
    assert schedule.last_periodic == 300.0


def test_nothing_is_placed_while_the_first_agents_register() -> None:
    schedule, decision = run(LeaderSchedule(last_periodic=0.0), 100.0, {"a1"}, placed=False)
    assert decision.action == "wait"  # it just took over: agents may still be re-registering
    _, later = run(schedule, 100.0 + JOIN_SETTLE_S, {"a1"}, placed=False)
    assert later.action == "plan"


def test_a_tick_reads_the_store_in_full_only_when_something_may_have_changed() -> None:
    quiet = LeaderSchedule(last_periodic=100.0, known_live=frozenset({"a1"}), expiry_due_ms=5_000)
    assert not full_step_due(quiet, TIMING, 150.0, dirty=False, request_pending=False)
    assert full_step_due(quiet, TIMING, 150.0, dirty=True, request_pending=False)
    assert full_step_due(quiet, TIMING, 150.0, dirty=False, request_pending=True)
    assert full_step_due(quiet, TIMING, 400.0, dirty=False, request_pending=False)  # periodic is due
    assert full_step_due(LeaderSchedule(last_periodic=100.0), TIMING, 150.0, dirty=False, request_pending=False)


@given(st.floats(0.0, 100.0), st.floats(0.1, 10.0))
def test_the_leader_wakes_no_later_than_a_tick_or_the_first_possible_expiry(now: float, until: float) -> None:
    schedule = LeaderSchedule(last_periodic=now, known_live=frozenset({"a1"}), expiry_due_at=now + until)
    wait = next_wake_in(schedule, TIMING, now)
    assert 0 < wait <= tick_seconds(TIMING.heartbeat_interval_s)
    assert wait <= until + 0.01 + 1e-9
