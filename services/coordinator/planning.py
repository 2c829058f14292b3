"""One leader step as a pure function: from what the store says to what the leader writes.

No I/O and no clock reads: the leader passes `now_ms` (the store's clock). It combines the
assignment engine (who should own what) with the hand-off reconciliation (what each agent may
hold right now) and turns the difference into one fenced `PlacementWrite`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .engine.assignment import AgentSlot, Move, Placement, ResourceDemand, place, plan_cost_rebalance
from .engine.handoff import changed, holdings
from .model import AgentRecord, PlacementWrite


@dataclass(frozen=True)
class InventoryItem:
    resource_id: str
    type: str
    interval_s: float
    pin: str | None = None
    zone: str = ""


@dataclass(frozen=True)
class StepInput:
    inventory: Mapping[str, InventoryItem]
    agents: Mapping[str, AgentRecord]
    target: Mapping[str, str]  # the previous target placement
    assigned: Mapping[str, frozenset[str]]  # agent -> what it was last told to hold
    now_ms: int
    node_timeout_ms: int
    grace_from_ms: int = 0
    disconnect_grace_ms: int = 0  # a suspect (stream ended, no Leave) expires after this; 0: off
    # agent -> union of every grant set sent to it at an epoch it has not acknowledged yet
    in_flight: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # agents that left a grant unacknowledged past the deadline (see `unacknowledged`)
    unacknowledged: frozenset[str] = frozenset()
    recorded_unacknowledged: frozenset[str] = frozenset()  # what the store says (ClusterMeta)


@dataclass(frozen=True)
class StepPlan:
    write: PlacementWrite
    placement: Placement
    holdings: Mapping[str, frozenset[str]]
    live: tuple[str, ...]
    expired: tuple[str, ...]
    costs: Mapping[str, float] = field(default_factory=dict)
    target_changed: bool = False
    expiry_reasons: Mapping[str, str] = field(default_factory=dict)  # expired agent -> see expiry_reason

    @property
    def is_noop(self) -> bool:
        w = self.write
        return not (w.target_set or w.target_delete or w.assignments or w.expire or w.unacknowledged is not None)


def _expires_at_ms(record: AgentRecord, node_timeout_ms: int, grace_from_ms: int, disconnect_grace_ms: int) -> int:
    """The store time after which `record` (a member) is expired. Silence is counted from the later
    of its last heartbeat and the end of a store outage (`grace_from_ms`), so nobody is expired for
    the store's silence. A suspect (its stream ended without a Leave: the process is likely gone)
    goes `disconnect_grace_ms` after that end, unless the mark predates a store outage: what
    happened during one is unknown, so the silence rule decides."""
    deadline = max(record.last_heartbeat_ms, grace_from_ms) + node_timeout_ms
    if disconnect_grace_ms > 0 and record.disconnected_ms > 0 and record.disconnected_ms >= grace_from_ms:
        deadline = min(deadline, record.disconnected_ms + disconnect_grace_ms)
    return deadline


def expiry_reason(record: AgentRecord, now_ms: int, node_timeout_ms: int, grace_from_ms: int = 0) -> str:
    """Why an expired member expired: "silent" (node_timeout without a heartbeat) or "disconnected"."""
    return "silent" if now_ms > max(record.last_heartbeat_ms, grace_from_ms) + node_timeout_ms else "disconnected"


def liveness(
    agents: Mapping[str, AgentRecord],
    now_ms: int,
    node_timeout_ms: int,
    grace_from_ms: int = 0,
    disconnect_grace_ms: int = 0,
) -> tuple[list[str], list[str]]:
    """(live members, members to expire): see `_expires_at_ms`."""
    live: list[str] = []
    expire: list[str] = []
    for agent_id, record in agents.items():
        if not record.is_member:
            continue
        expired = now_ms > _expires_at_ms(record, node_timeout_ms, grace_from_ms, disconnect_grace_ms)
        (expire if expired else live).append(agent_id)
    return sorted(live), sorted(expire)


def expiry_deadline_ms(
    agents: Mapping[str, AgentRecord],
    now_ms: int,
    node_timeout_ms: int,
    grace_from_ms: int = 0,
    disconnect_grace_ms: int = 0,
) -> int:
    """The first store time at which `liveness` could expire a member of `agents`. A heartbeat only
    moves it later, so until then a leader step with no event in between has nothing to expire
    (a suspect mark publishes an event). Capped at one node_timeout after `now_ms`, so the leader
    re-reads the store at least that often."""
    deadline = now_ms + node_timeout_ms
    for record in agents.values():
        if record.is_member:
            deadline = min(deadline, _expires_at_ms(record, node_timeout_ms, grace_from_ms, disconnect_grace_ms) + 1)
    return deadline


def _may_be_polling(step: StepInput, agent_id: str) -> frozenset[str]:
    """What an agent may be polling: what it reports, plus everything granted by assignments it has
    not acknowledged yet (it may still apply them). Otherwise a database granted to A and retargeted
    to B before A's ack would be granted to B too, and A would apply its older grant late. An agent
    flagged as unacknowledged is past that: waiting on it would leave its grants unpolled forever,
    so only what it reports counts."""
    reported = frozenset(step.agents[agent_id].current)
    if agent_id not in step.unacknowledged:
        reported |= step.in_flight.get(agent_id, frozenset())
    return frozenset(r for r in reported if r in step.inventory)


def eligible(step: StepInput, agent_id: str) -> bool:
    """Whether a live agent may be given databases: it proved its session, is not draining and
    has not left a grant unacknowledged past the deadline."""
    record = step.agents[agent_id]
    return record.proven and record.state != "draining" and agent_id not in step.unacknowledged


def ack_deadline_ms(heartbeat_interval_ms: int) -> int:
    """How long a grant may stay unacknowledged: two heartbeats (an agent acknowledges at once
    after applying, and heartbeats at least once an interval), at least two seconds."""
    return max(2 * heartbeat_interval_ms, 2000)


def unacknowledged(
    first_sent_ms: Mapping[str, Mapping[int, int]], flagged: Iterable[str], now_ms: int, deadline_ms: int
) -> frozenset[str]:
    """Agents to treat as unacknowledged: those with an assignment epoch first sent more than
    `deadline_ms` ago and still not acknowledged, plus those already `flagged` that still have one
    unacknowledged. `first_sent_ms`: agent -> {unacknowledged epoch: when first seen sent}."""
    pending = {a for a, epochs in first_sent_ms.items() if epochs}
    late = {a for a in pending if now_ms - min(first_sent_ms[a].values()) > deadline_ms}
    return frozenset(late | (set(flagged) & pending))


def ack_check_due_ms(
    first_sent_ms: Mapping[str, Mapping[int, int]], flagged: Iterable[str], deadline_ms: int
) -> int | None:
    """The store time at which `unacknowledged` would next flag someone new; None if nobody waits."""
    already = set(flagged)
    times = [min(e.values()) + deadline_ms + 1 for a, e in first_sent_ms.items() if e and a not in already]
    return min(times, default=None)


def measured_costs(
    inventory: Mapping[str, InventoryItem], agents: Mapping[str, AgentRecord], live: list[str]
) -> dict[str, float]:
    """cost = last poll duration ÷ interval, from the live agent polling it. An unmeasured database
    costs the mean measured cost of its type (1.0 when nothing of that type is measured yet), so a
    fresh database neither looks free nor a thousand times dearer than its measured siblings."""
    measured: dict[str, float] = {}
    for agent_id in live:
        for rid, status in agents[agent_id].current.items():
            item = inventory.get(rid)
            if item is not None and status.polls > 0 and status.duration_ms > 0:
                measured[rid] = max(status.duration_ms / 1000.0 / item.interval_s, 1e-6)
    by_type: dict[str, list[float]] = {}
    for rid, cost in measured.items():
        by_type.setdefault(inventory[rid].type, []).append(cost)
    mean = {t: sum(v) / len(v) for t, v in by_type.items()}
    return {rid: measured.get(rid, mean.get(item.type, 1.0)) for rid, item in inventory.items()}


def last_poll_times(agents: Mapping[str, AgentRecord]) -> dict[str, int]:
    """Newest reported poll of each database across every agent record (live or not), including
    the final poll of databases an agent released: the grant carries it so the new owner
    continues the schedule."""
    newest: dict[str, int] = {}
    for record in agents.values():
        reported = [(rid, s.last_poll_ms) for rid, s in record.current.items()] + list(record.released.items())
        for rid, last_poll_ms in reported:
            if last_poll_ms > newest.get(rid, 0):
                newest[rid] = last_poll_ms
    return newest


def plan_step(
    step: StepInput,
    *,
    balance: bool = False,
    cost_rebalance: float | None = None,
    max_spread: float = 1.03,
    reason: str = "",
) -> StepPlan:
    """Compute one leader step. `balance`: move the minimum needed to balance (agents joined);
    `cost_rebalance`: a periodic rebalance, applied if it improves the spread by that share or the
    current placement breaks the absolute bound `max_spread` (see `plan_cost_rebalance`);
    `reason`: what prompted the step, recorded with a target change (else `_unprompted_reason`)."""
    live, expire = liveness(
        step.agents, step.now_ms, step.node_timeout_ms, step.grace_from_ms, step.disconnect_grace_ms
    )
    current = {a: _may_be_polling(step, a) for a in live}
    costs = measured_costs(step.inventory, step.agents, live)

    live_set = set(live)
    previous = {r: a for r, a in step.target.items() if r in step.inventory and a in live_set}
    for agent_id in live:  # after a store data loss, what agents still poll is the best stickiness hint
        for rid in current[agent_id]:
            previous.setdefault(rid, agent_id)

    slots = [
        AgentSlot(
            agent_id=a,
            capacity=step.agents[a].registration.capacity,
            zone=step.agents[a].registration.zone,
            draining=not eligible(step, a),  # an ineligible agent is given nothing, like a draining one
        )
        for a in live
    ]
    demands = [
        ResourceDemand(resource_id=rid, cost=costs[rid], pinned_agent=item.pin, zone=item.zone)
        for rid, item in sorted(step.inventory.items())
    ]
    if cost_rebalance is not None:
        placement, _improved = plan_cost_rebalance(
            demands, slots, previous, min_improvement=cost_rebalance, max_spread=max_spread
        )
    else:
        placement = place(demands, slots, previous, balance=balance)

    held = holdings(placement.owners, current)
    before = {a: s for a, s in step.assigned.items() if s}
    changed_agents = changed(before, held)
    polls = last_poll_times(step.agents)
    assignments = {
        a: {rid: polls.get(rid, 0) for rid in sorted(held.get(a, frozenset()))} for a in sorted(changed_agents)
    }

    target_set = {r: a for r, a in placement.owners.items() if step.target.get(r) != a}
    target_delete = tuple(sorted(r for r in step.target if r not in placement.owners))
    target_changed = bool(target_set or target_delete)
    real_moves = sum(1 for rid in placement.moved if step.target.get(rid) != placement.owners[rid])
    write = PlacementWrite(
        target_set=target_set,
        target_delete=target_delete,
        assignments=assignments,
        expire=tuple(expire),
        expire_heard_ms={a: step.agents[a].last_heartbeat_ms for a in expire},
        rebalance_reason=(reason or _unprompted_reason(step)) if target_changed else None,
        moves=real_moves,
        unacknowledged=None
        if step.unacknowledged == step.recorded_unacknowledged
        else tuple(sorted(step.unacknowledged)),
    )
    return StepPlan(
        write=write,
        placement=placement,
        holdings=held,
        live=tuple(live),
        expired=tuple(expire),
        costs=costs,
        target_changed=target_changed,
        expiry_reasons={
            a: expiry_reason(step.agents[a], step.now_ms, step.node_timeout_ms, step.grace_from_ms) for a in expire
        },
    )


def moves_between(before: Mapping[str, str], after: Mapping[str, str]) -> list[Move]:
    """The owner changes between two target placements (for dry runs and operator replies)."""
    return [
        Move(resource_id=r, from_agent=before.get(r), to_agent=a)
        for r, a in sorted(after.items())
        if before.get(r) != a
    ]


def _unprompted_reason(step: StepInput) -> str:
    """Why the target changed in a step no join, leave or request prompted."""
    if set(step.target) != set(step.inventory):
        return "inventory"
    return "agent_expired" if any(r.is_member for r in step.agents.values()) else "placement"


def with_draining(step: StepInput, agent_id: str) -> StepInput:
    """The step as if `agent_id` (a member) were already draining: a dry-run drain plans on this."""
    agents = dict(step.agents)
    if agent_id in agents and agents[agent_id].is_member:
        agents[agent_id] = dataclasses.replace(agents[agent_id], state="draining")
    return dataclasses.replace(step, agents=agents)


def loads_of(owners: Mapping[str, str], costs: Mapping[str, float], live: Iterable[str]) -> dict[str, float]:
    """Each live agent's load under `owners` (a target placement) at today's costs."""
    loads = dict.fromkeys(live, 0.0)
    for rid, agent in owners.items():
        if agent in loads:
            loads[agent] += costs.get(rid, 1.0)
    return loads
