"""When the leader steps and what kind of step it takes: pure functions of its schedule and `now`.

The leader loop keeps a `LeaderSchedule` and asks: must this tick read the whole store
(`full_step_due`, else only if the store clock says a member could expire: `expiry_due`); what does
the step do once the store is read (`decide`: absorb a burst of joins into one balancing move, run
the periodic cost rebalance, or wait for agents to register before the first placement); what to
remember after it (`after_plan`); and how long to sleep (`next_wake_in`). No I/O and no clock reads:
`now` is the leader's monotonic clock in seconds, `*_ms` values are the store's clock.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from dbintel.common.config import CoordinatorScaling

from .planning import StepInput, StepPlan, expiry_deadline_ms

JOIN_SETTLE_S = 2.0  # joins closer than this are absorbed in one balancing move


def tick_seconds(heartbeat_interval_s: float) -> float:
    """How often the leader looks without an event: often enough to expire a silent agent within
    node_timeout plus a quarter heartbeat, rarely enough that a large fleet's store reads stay cheap."""
    return min(5.0, max(0.2, heartbeat_interval_s / 4))


@dataclass(frozen=True)
class Timing:
    heartbeat_interval_s: float
    rebalance_interval_s: float
    min_rebalance_interval_s: float
    rebalance_improvement: float
    rebalance_max_spread: float = 1.03

    @classmethod
    def of(cls, settings: CoordinatorScaling) -> Timing:
        return cls(
            heartbeat_interval_s=settings.heartbeat_interval.total_seconds(),
            rebalance_interval_s=settings.rebalance_interval.total_seconds(),
            min_rebalance_interval_s=settings.min_rebalance_interval.total_seconds(),
            rebalance_improvement=settings.rebalance_improvement,
            rebalance_max_spread=settings.rebalance_max_spread,
        )

    @property
    def join_settle_s(self) -> float:
        return min(JOIN_SETTLE_S, self.min_rebalance_interval_s)


@dataclass(frozen=True)
class LeaderSchedule:
    """What the leader remembers between steps."""

    last_periodic: float  # the last periodic rebalance (at first: when the loop was made)
    known_live: frozenset[str] | None = None  # members the last step saw; None: a term is starting
    took_over_at: float = 0.0
    first_pending_join: float | None = None  # set from the first join not yet balanced
    last_join: float = 0.0
    last_balance: float = -math.inf
    # After a step that wrote nothing: the earliest store time a member could expire, and that moment
    # on the monotonic clock (to time the wake-up). None / inf: unknown, so the next tick steps in full.
    expiry_due_ms: int | None = None
    expiry_due_at: float = math.inf

    def new_term(self) -> LeaderSchedule:
        """Leadership was lost: whoever is there when it is regained is not "joining"."""
        return dataclasses.replace(self, known_live=None)


@dataclass(frozen=True)
class StepDecision:
    action: str  # "plan": plan and write; "serve_request": an operator request takes the step; "wait"
    balance: bool = False  # agents joined and have settled: move what balancing needs
    cost_rebalance: float | None = None  # periodic: the spread improvement a cost rebalance must bring
    reason: str = ""
    # A new term found no heartbeat recorded for over an interval (every coordinator, or the store, was
    # down): the agents were not silent, we were, so they get a fresh node_timeout before planning.
    mark_recovered: bool = False


def periodic_due(schedule: LeaderSchedule, timing: Timing, now: float) -> bool:
    return (
        now - schedule.last_periodic >= timing.rebalance_interval_s
        and now - schedule.last_balance >= timing.min_rebalance_interval_s
    )


def joins_settled(schedule: LeaderSchedule, timing: Timing, now: float) -> bool:
    """Joins have been quiet for the settle window, or have kept coming for min_rebalance_interval."""
    first = schedule.first_pending_join
    return first is not None and (
        now - schedule.last_join >= timing.join_settle_s or now - first >= timing.min_rebalance_interval_s
    )


def full_step_due(schedule: LeaderSchedule, timing: Timing, now: float, *, dirty: bool, request_pending: bool) -> bool:
    """Whether this tick must read the whole store. If not, it steps only when `expiry_due`.
    `dirty`: an event came, or a step failed or wrote, since the last full step."""
    return (
        dirty
        or request_pending
        or schedule.known_live is None
        or schedule.first_pending_join is not None
        or schedule.expiry_due_ms is None
        or periodic_due(schedule, timing, now)
    )


def expiry_due(schedule: LeaderSchedule, store_now_ms: int) -> bool:
    return schedule.expiry_due_ms is None or store_now_ms >= schedule.expiry_due_ms


def decide(
    schedule: LeaderSchedule,
    timing: Timing,
    now: float,
    *,
    live: frozenset[str],
    request_pending: bool,
    step: StepInput,
    last_heartbeat_write_ms: int,
) -> tuple[LeaderSchedule, StepDecision]:
    """The kind of this full step, from the members the store lists now (`live`) and what it holds."""
    s = dataclasses.replace(schedule, expiry_due_ms=None, expiry_due_at=math.inf)
    mark_recovered = False
    if s.known_live is None:  # a term starts: what is there is not "joining"
        silence_ms = step.now_ms - last_heartbeat_write_ms
        mark_recovered = bool(live) and silence_ms > timing.heartbeat_interval_s * 1000
        s = dataclasses.replace(s, known_live=live, took_over_at=now)
    known = s.known_live or frozenset()
    joined, left = live - known, known - live
    if joined:
        first = now if s.first_pending_join is None else s.first_pending_join
        s = dataclasses.replace(s, first_pending_join=first, last_join=now)
    s = dataclasses.replace(s, known_live=live)  # seen now, whether or not this step places anything
    if request_pending:
        return s, StepDecision("serve_request", mark_recovered=mark_recovered)

    balance = joins_settled(s, timing, now)
    reason = "agent_joined" if balance else "agent_left" if left else ""
    cost_rebalance = None
    if not balance and periodic_due(s, timing, now):
        cost_rebalance, reason = timing.rebalance_improvement, "periodic"
        s = dataclasses.replace(s, last_periodic=now)
    settling = s.first_pending_join is not None and not balance
    just_took_over = now - s.took_over_at < min(JOIN_SETTLE_S, timing.heartbeat_interval_s)
    if not step.target and step.inventory and (settling or just_took_over):
        # Nothing placed yet (a new cluster, or a store that lost its data): let the agents register
        # (or re-register) first, so the first placement is balanced and sticky.
        return s, StepDecision("wait", mark_recovered=mark_recovered)
    return s, StepDecision("plan", balance, cost_rebalance, reason, mark_recovered)


def after_plan(
    schedule: LeaderSchedule, now: float, decision: StepDecision, step: StepInput, plan: StepPlan
) -> LeaderSchedule:
    """What to remember once `plan` is written: expired agents are no longer members, a balance
    ends the pending joins, and a step that wrote nothing says when the next expiry could be."""
    s = dataclasses.replace(schedule, known_live=(schedule.known_live or frozenset()) - frozenset(plan.expired))
    if decision.balance:
        s = dataclasses.replace(s, first_pending_join=None, last_balance=now)
    if plan.is_noop:
        due = expiry_deadline_ms(
            step.agents, step.now_ms, step.node_timeout_ms, step.grace_from_ms, step.disconnect_grace_ms
        )
        s = dataclasses.replace(s, expiry_due_ms=due, expiry_due_at=now + (due - step.now_ms) / 1000.0)
    return s


def next_wake_in(schedule: LeaderSchedule, timing: Timing, now: float) -> float:
    """Seconds until the next tick: a tick, or sooner when pending joins settle or a member could expire."""
    wait = tick_seconds(timing.heartbeat_interval_s)
    if schedule.first_pending_join is not None:
        due = min(
            schedule.last_join + timing.join_settle_s, schedule.first_pending_join + timing.min_rebalance_interval_s
        )
        wait = min(wait, max(0.05, due - now))
    until_expiry = schedule.expiry_due_at - now
    if until_expiry > 0:  # wake when the first member could expire, not up to a tick later
        wait = min(wait, until_expiry + 0.01)
    return wait
