"""Sticky, cost- and count-aware, zone-aware placement of resources (databases) on agents.

Pure: no I/O, no clock, no randomness. The leader calls `place` after every membership change and
`plan_cost_rebalance` periodically; the hand-off of the resulting moves is `handoff.py`'s job.

Vocabulary
----------
- *eligible* agent: present in `agents` and not draining.
- *pool*: the agents a resource may go to. A resource that names a zone in which some eligible agent
  lives is *bound* to that zone's agents; every other resource (no zone, or a zone with no live
  agent: the cross-zone fallback) *floats* and may go to any eligible agent. When no resource is
  bound there is one pool, every eligible agent; otherwise each zone's agents are a pool and balance
  among themselves.
- *load* of an agent: sum of the costs of the resources placed on it; *count*: how many there are.
  In a pool of A agents: T = mean load, mu = mean count, c_mean = mean cost of the movable resources.
- *movable* resource: a placed resource that is not pinned to an eligible agent.
- *heavy* resource: one costing more than the fair share of what is left once the heavier ones
  each have an agent of their own: sort the movable costs c_1 >= c_2 >= ...; c_k is heavy while
  c_k > (L - c_1 - ... - c_(k-1)) / (A - k + 1), L the pool's load, and at most A - 1 are heavy.
- count cap U = max(ceil(mu'), floor(1.25 * mu')), mu' the mean count over the pool's agents that
  hold no heavy resource.

Placement, in order
-------------------
1. Pins: a resource pinned to an eligible agent goes there, even beyond that agent's capacity or
   outside its zone (an operator's pin is an explicit order). A pin to an absent or draining agent is
   ignored until that agent is eligible again, so the database stays monitored and moves back.
2. Sticky: a resource keeps its previous owner when that owner is eligible, in its pool (a bound
   resource on another zone's agent returns to its zone as soon as the zone has a live agent), not
   contradicted by a pin, and has room (pins fill capacity first; an agent over capacity keeps its
   most expensive resources, ties by resource id, and sheds the rest).
3. Orphans (no valid previous owner) go largest cost first, ties by id, within their pool, to agents
   with room under the count cap (the cap is waived only when nobody is under it):
   - when they carry at most half the pool's load (a leave, a drain, an expiry): *best fit*, to the
     most loaded agent whose load stays within T + tol (tol below), else to the least loaded one,
     so the large orphans find the agents with the most room;
   - otherwise (a first placement): LPT, each to the least loaded agent (ties by agent id).
   A resource no agent can take is reported in `unassigned`.
4. Only with `balance=True`, in each pool of two or more agents:
   a. Heavy resources each get an agent of their own: the one holding it when that agent holds no
      larger heavy one, else the least loaded free agent. Everything movable that shares an agent
      with a heavy resource moves to the other agents (LPT). The heavy agents then leave the pool:
      the rest balances among itself with its own T, mu and U, so one heavy database never stops a
      join or a rebalance.
   b. Counts: an agent above the count cap U gives, one at a time, the resource that best evens
      both loads (closest to min(its excess, the receiver's room), else its smallest) to the least
      loaded agent under U.
   c. Costs: with band (T - tol, T + tol), tol = min(c_mean, 0.02 * T) (c_mean when mu < 10): while the most loaded agent
      M is above the band or the least loaded m below it, move one resource from M to m when m has
      room (the one nearest m's per-slot need (T - load m) / (mu - count m), among those that keep
      both inside the band; else the one that best evens the pair); when m is at its count cap or no
      single move helps, swap M's resource x for m's smallest y (x - y nearest half the gap). Every
      move or swap strictly lowers max(load M, load m), so the loop ends; an M that nothing helps is
      set aside and the next most loaded agent is tried.

Bounds (proved; property-tested in tests/unit/test_assignment_engine.py)
-----------------------------------------------------------------------
With no pins, capacity limits or zones, after `place(..., balance=True)`:
- Equal costs: max count - min count <= 1, reached with exactly the theoretical minimum of moves
  (below). Proof: loads are counts, tol = 1 when T >= 50 or T < 10 (else smaller), U >= ceil(mu); a move
  happens only between agents whose counts differ by >= 2, from the most to the least loaded, so
  each move takes a unit from an agent above its target to one below it; the loop stops only when
  no two counts differ by 2.
- Counts: every agent holds at most U resources, U <= max(ceil(mu'), 1.25 mu'). Proof: step 4b
  stops only when no agent is above U, since an agent under U always exists while one is above (the
  counts sum to A' mu' <= A' U); 4c moves only to agents under U and swaps keep counts.
- Costs: a heavy resource sits alone on its agent (with pins only). Every other agent ends within
  the band, or was set aside when no single move or swap lowered it against the least loaded agent
  m. If m had room under the count cap then, every resource on it cost at least load - load(m), and
  since the least load never falls (a move leaves the donor above the receiver's old load), load <=
  T' + c_max' (c_max' the largest non-heavy cost, T' the mean over the non-heavy agents), and
  T' + c_max' <= 2 T' since no remaining resource is heavy. When m sat at the count cap only the
  swap was tried, and the bound is measured, not proved (property-tested: mean +- c_max holds).
  Measured (bench/bench_assignment_quality.py, docs/benchmarks.md), not proved: worst/mean <= 1.03
  after a join or a rebalance when mu >= 10 and no resource is heavy.
With zones, all of the above holds within each zone's pool for the resources bound to it.

Movement
--------
- `balance=False` moves exactly the resources without a valid sticky owner (orphans, resources of
  draining agents, pin returns, zone returns, capacity overflow); nothing else. This is what runs
  when agents leave or expire: only their resources move. With skewed costs the agent that takes a
  large orphan may end above T + tol; the periodic `plan_cost_rebalance` puts it back under
  `max_spread` (an absolute bound), moving only what balancing needs.
- `balance=True` with equal costs, no pins, capacity limits or zones moves the theoretical minimum:
  (resources without a valid owner) + sum over agents of max(0, s_a - t_a), where s_a is what the
  agent keeps after steps 1-2 and t_a in {q, q+1} (q = N // A) gives q+1 to the N % A agents that
  keep the most.
- With costs there is no cheap exact minimum. A join moves about the newcomers' fair share of the
  cost, in resources of about the mean cost (so the newcomers also get their share of the count);
  measured in docs/benchmarks.md.
- `Placement.moved` maps every resource whose owner changed to its previous owner when that one is
  still in `agents` (draining included: it must hand the resource off), None when it is gone or
  there was none. `Placement.moves` lists the same as `Move`s, built only when asked for.

Cost of a call
--------------
`place` reads every input: O(N) dictionary work (N resources), then O(orphans log A) for the
orphans and, balancing, O(moves * (log A + resources of an agent)) plus sorting the resources of the
agents that give or take. A kept `Fleet` skips the O(N) part: `set_agents` + `plan` for a leave or a
join costs O(what moves + A + resources of the agents involved). The leader currently builds a fresh
fleet every step (its step reads the whole store and every agent's report anyway, which is O(N));
bench/bench_assignment.py measures both and the whole leader step.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType

__all__ = [
    "COUNT_BOUND",
    "AgentSlot",
    "Move",
    "Placement",
    "ResourceDemand",
    "imbalance",
    "place",
    "plan_cost_rebalance",
    "spread",
]

COUNT_BOUND = 1.25  # worst count / mean count the engine keeps (see the count cap U)
_BAND = 0.02  # cost band half-width as a share of the mean load, at most the mean cost
_LAST = "\U0010ffff"  # sorts after every resource id: (cost, _LAST) is past every item of that cost


@dataclass(frozen=True)
class AgentSlot:
    agent_id: str
    capacity: int = 0  # most resources it accepts; 0 = no limit
    zone: str = ""
    draining: bool = False  # receives nothing; everything it has moves away

    def __post_init__(self) -> None:
        if not self.agent_id:
            raise ValueError("agent_id must not be empty")
        if self.capacity < 0:
            raise ValueError(f"agent {self.agent_id}: capacity must be >= 0 (0 = no limit), got {self.capacity}")


@dataclass(frozen=True)
class ResourceDemand:
    resource_id: str
    cost: float = 1.0  # measured poll time / interval; 1.0 until measured; must be > 0
    pinned_agent: str | None = None
    zone: str = ""  # preferred zone; "" = any

    def __post_init__(self) -> None:
        if not self.resource_id:
            raise ValueError("resource_id must not be empty")
        if not (math.isfinite(self.cost) and self.cost > 0):
            raise ValueError(f"resource {self.resource_id}: cost must be finite and > 0, got {self.cost}")


@dataclass(frozen=True)
class Move:
    resource_id: str
    from_agent: str | None  # None for a resource that had no valid owner
    to_agent: str


@dataclass(frozen=True)
class Placement:
    owners: Mapping[str, str]  # resource_id -> agent_id, for every placed resource
    unassigned: tuple[str, ...]  # resources no agent can take (no agents, capacity exhausted)
    moved: Mapping[str, str | None]  # resource -> previous owner (None: gone or none), owner changed
    loads: Mapping[str, float]  # agent_id -> sum of costs, for every non-draining agent (0.0 if empty)
    counts: Mapping[str, int] = field(default_factory=dict)  # agent_id -> resources, like `loads`
    zones: Mapping[str, str] = field(default_factory=dict)  # agent_id -> pool: its zone, "" in one pool

    @cached_property
    def moves(self) -> tuple[Move, ...]:
        """The difference from `previous`, by resource id (placing an orphan: from_agent=None)."""
        return tuple(Move(rid, self.moved[rid], self.owners[rid]) for rid in sorted(self.moved))


def spread(loads: Mapping[str, float]) -> float:
    """Max load / mean load: 1.0 is perfect balance; 1.0 as well when there is no load at all."""
    if not loads:
        return 1.0
    total = math.fsum(loads.values())
    if total <= 0:
        return 1.0
    return max(loads.values()) * len(loads) / total


def imbalance(placement: Placement) -> tuple[float, float]:
    """(worst cost spread, worst count spread) over the placement's pools (each max / mean in its pool)."""
    pools: dict[str, list[str]] = {}
    for agent in placement.loads:
        pools.setdefault(placement.zones.get(agent, ""), []).append(agent)
    cost_worst = count_worst = 1.0
    for members in pools.values():
        cost_worst = max(cost_worst, spread({a: placement.loads[a] for a in members}))
        count_worst = max(count_worst, spread({a: float(placement.counts.get(a, 0)) for a in members}))
    return cost_worst, count_worst


def place(
    resources: Iterable[ResourceDemand],
    agents: Iterable[AgentSlot],
    previous: Mapping[str, str],
    *,
    balance: bool,
) -> Placement:
    """Place every resource on one eligible agent, moving as little as the module docstring says."""
    fleet = Fleet(resources, agents)
    fleet.settle(previous)
    return fleet.plan(balance=balance)


def plan_cost_rebalance(
    resources: Iterable[ResourceDemand],
    agents: Iterable[AgentSlot],
    previous: Mapping[str, str],
    *,
    min_improvement: float = 0.10,
    max_spread: float = 1.03,
) -> tuple[Placement, bool]:
    """Balanced placement from `previous`, accepted when the current one breaks an absolute bound or
    the balanced one is worth its moves.

    "Current" is `previous` once orphans are fixed (an expired agent alone never justifies extra
    movement). Returns (candidate, True) when the candidate moves anything beyond that and either the
    current worst cost spread of a pool is above `max_spread`, its worst count spread above
    COUNT_BOUND, or the relative cost spread gain (before - after) / before is > 0 and >=
    `min_improvement`; otherwise (the placement that only fixes orphans, False). Balancing stops as
    soon as the band holds, so a triggered rebalance moves only what balancing needs, and one that
    is already as balanced as it gets (a heavy database keeps the spread up) moves nothing.
    """
    if not (math.isfinite(min_improvement) and min_improvement >= 0):
        raise ValueError(f"min_improvement must be a finite number >= 0, got {min_improvement}")
    if not (math.isfinite(max_spread) and max_spread >= 1):
        raise ValueError(f"max_spread must be a finite number >= 1, got {max_spread}")
    resources = tuple(resources)
    agents = tuple(agents)
    settled = place(resources, agents, previous, balance=False)
    candidate = place(resources, agents, previous, balance=True)
    if candidate.owners == settled.owners:
        return settled, False
    cost_worst, count_worst = imbalance(settled)
    before, after = spread(settled.loads), spread(candidate.loads)
    gain = (before - after) / before
    if cost_worst > max_spread or count_worst > COUNT_BOUND or (gain > 0 and gain >= min_improvement):
        return candidate, True
    return settled, False


def count_cap(mean_count: float) -> int:
    """U: the most resources balancing leaves on one agent of a pool with this mean count."""
    return max(math.ceil(mean_count), math.floor(COUNT_BOUND * mean_count))


class Fleet:
    """The engine's working state: who holds what, loads and counts.

    `place` builds one per call. A caller that keeps one between calls (the leader, a benchmark)
    applies a membership change with `set_agents` and pays only for what moves plus O(agents);
    `plan` then places orphans (and balances) and returns the same `Placement` a fresh `place` on
    the same inputs would. Pure like the rest: no I/O, no clock, no randomness.
    """

    def __init__(self, resources: Iterable[ResourceDemand], agents: Iterable[AgentSlot]) -> None:
        self.demands: dict[str, ResourceDemand] = {}
        for demand in resources:
            if demand.resource_id in self.demands:
                raise ValueError(f"resource {demand.resource_id} is listed twice")
            self.demands[demand.resource_id] = demand
        self.cost = {rid: d.cost for rid, d in self.demands.items()}
        self.named_zones = frozenset(d.zone for d in self.demands.values() if d.zone)
        self.pins: dict[str, list[str]] = {}  # agent -> resources pinned to it
        for rid, demand in self.demands.items():
            if demand.pinned_agent is not None:
                self.pins.setdefault(demand.pinned_agent, []).append(rid)
        self.owner: dict[str, str] = {}
        self.held: dict[str, list[str]] = {}  # movable resources by agent
        self.load: dict[str, float] = {}
        self.count: dict[str, int] = {}
        self.fixed: set[str] = set()  # pinned to the eligible agent holding them
        self.orphans: list[str] = []
        self.origin: dict[str, str | None] = {}  # resource -> owner before this step, once it is touched
        self.dirty: set[str] = set()  # agents whose load changed this step (recomputed exactly)
        self._set_slots(agents)

    def _set_slots(self, agents: Iterable[AgentSlot]) -> None:
        self.slots: dict[str, AgentSlot] = {}
        for slot in agents:
            if slot.agent_id in self.slots:
                raise ValueError(f"agent {slot.agent_id} is listed twice")
            self.slots[slot.agent_id] = slot
        self.eligible = sorted(a for a, s in self.slots.items() if not s.draining)
        self.eligible_set = frozenset(self.eligible)
        self.live_zones = frozenset(self.slots[a].zone for a in self.eligible) & self.named_zones
        # A resource is bound to its zone when that zone has a live agent; with none bound, one pool.
        self.bound: dict[str, str] = (
            {rid: d.zone for rid, d in self.demands.items() if d.zone in self.live_zones} if self.live_zones else {}
        )
        if self.bound:
            self.pool_of = {a: self.slots[a].zone for a in self.eligible}
        else:
            self.pool_of = dict.fromkeys(self.eligible, "")
        self.pools: dict[str, list[str]] = {}
        for agent in self.eligible:
            self.pools.setdefault(self.pool_of[agent], []).append(agent)

    def has_room(self, agent: str) -> bool:
        capacity = self.slots[agent].capacity
        return capacity == 0 or self.count[agent] < capacity

    def under_cap(self, agent: str, cap: int) -> bool:
        return self.count[agent] < cap and self.has_room(agent)

    # -- steps 1-2 -------------------------------------------------------------------------------------

    def settle(self, previous: Mapping[str, str]) -> None:
        """Pins, then sticky owners within pool and capacity; everything else becomes an orphan."""
        eligible, bound = self.eligible_set, self.bound
        pool_of, origin = self.pool_of, self.origin
        kept: dict[str, list[str]] = {a: [] for a in self.eligible}
        count = dict.fromkeys(self.eligible, 0)
        for agent, rids in self.pins.items():
            if agent in eligible:
                for rid in rids:
                    self.owner[rid] = agent
                    self.fixed.add(rid)
                    if previous.get(rid) != agent:
                        origin[rid] = previous.get(rid)  # a pin return
                count[agent] = len(rids)
        fixed, orphans = self.fixed, self.orphans
        for rid in self.demands:
            if rid in fixed:
                continue
            holder = previous.get(rid)
            if holder in eligible and (not bound or rid not in bound or pool_of[holder] == bound[rid]):
                kept[holder].append(rid)
            else:
                orphans.append(rid)
                origin[rid] = holder
        cost = self.cost
        for agent, rids in kept.items():
            capacity = self.slots[agent].capacity
            if capacity and count[agent] + len(rids) > capacity:
                rids.sort(key=lambda r: (-cost[r], r))
                room = max(0, capacity - count[agent])
                for rid in rids[room:]:
                    orphans.append(rid)
                    origin[rid] = agent
                del rids[room:]
            count[agent] += len(rids)
        owner = self.owner
        for agent, rids in kept.items():
            owner.update(dict.fromkeys(rids, agent))
        self.held, self.count = kept, count
        self.load = {a: self._exact_load(a) for a in self.eligible}  # exact: independent of input order

    def _exact_load(self, agent: str) -> float:
        cost = self.cost
        pinned = [cost[r] for r in self.pins.get(agent, ()) if r in self.fixed and self.owner.get(r) == agent]
        return (
            math.fsum([*map(cost.__getitem__, self.held[agent]), *pinned])
            if pinned
            else math.fsum(map(cost.__getitem__, self.held[agent]))
        )

    # -- a membership change between two steps -------------------------------------------------------

    def set_agents(self, agents: Iterable[AgentSlot]) -> bool:
        """Apply a new agent list to a fleet that `plan` has finished: the resources of agents gone or
        now draining become orphans, pins to agents now eligible return to them. Returns False (and
        changes nothing) when the change is not a pure join/leave (a capacity or zone changed, or a
        zone gained or lost its last agent): the caller then builds a new fleet."""
        agents = tuple(agents)
        if len({s.agent_id for s in agents}) != len(agents):
            raise ValueError("an agent is listed twice")
        old_slots, old_eligible, old_live_zones = self.slots, self.eligible_set, self.live_zones
        for slot in agents:
            before = old_slots.get(slot.agent_id)
            if before is not None and (before.capacity, before.zone) != (slot.capacity, slot.zone):
                return False
        new_eligible = frozenset(s.agent_id for s in agents if not s.draining)
        if frozenset(s.zone for s in agents if not s.draining) & self.named_zones != old_live_zones:
            return False
        if any(s.capacity for s in agents if s.agent_id in new_eligible - old_eligible):
            return False  # a capacity limit needs the shedding order of a fresh settle
        self._set_slots(agents)
        for agent in sorted(old_eligible - new_eligible):
            lost = self.held.pop(agent)
            lost += [r for r in self.pins.get(agent, ()) if r in self.fixed and self.owner.get(r) == agent]
            for rid in lost:
                self.fixed.discard(rid)
                del self.owner[rid]
                self.origin.setdefault(rid, agent)
                self.orphans.append(rid)
            del self.load[agent], self.count[agent]
        for agent in sorted(new_eligible - old_eligible):
            self.held[agent], self.load[agent], self.count[agent] = [], 0.0, 0
            for rid in self.pins.get(agent, ()):
                holder = self.owner.get(rid)
                self.origin.setdefault(rid, holder)
                if holder in self.held and rid in self.held[holder]:
                    self.held[holder].remove(rid)
                    self.count[holder] -= 1
                    self.dirty.add(holder)
                elif rid in self.orphans:
                    self.orphans.remove(rid)
                self.owner[rid] = agent
                self.fixed.add(rid)
                self.count[agent] += 1
            self.dirty.add(agent)
        self.dirty &= new_eligible
        for agent in self.dirty:
            self.load[agent] = self._exact_load(agent)
        self.orphans = list(dict.fromkeys(self.orphans))
        return True

    # -- moving one resource ---------------------------------------------------------------------------

    def transfer(self, rid: str, source: str, target: str) -> None:
        """Move a movable resource between two agents (the caller keeps `held` lists in step)."""
        cost = self.cost[rid]
        self.origin.setdefault(rid, source)
        self.owner[rid] = target
        self.load[source] -= cost
        self.load[target] += cost
        self.count[source] -= 1
        self.count[target] += 1
        self.dirty.update((source, target))

    # -- step 3 ------------------------------------------------------------------------------------------

    def place_orphans(self) -> None:
        if not self.orphans or not self.eligible:
            return
        by_zone: dict[str | None, list[str]] = {}  # None: floating
        bound = self.bound
        if bound:
            for rid in self.orphans:
                by_zone.setdefault(bound.get(rid), []).append(rid)
        else:
            by_zone[None] = self.orphans
        left: list[str] = []
        # Bound resources first (they have no choice), then the floating ones on top, anywhere.
        for zone in sorted(z for z in by_zone if z is not None) + ([None] if None in by_zone else []):
            rids = sorted(by_zone[zone])
            rids.sort(key=self.cost.__getitem__, reverse=True)  # stable: ties stay by resource id
            left += self._place_in(rids, self.eligible if zone is None else self.pools[zone])
        self.orphans = left

    def _place_in(self, rids: list[str], members: list[str]) -> list[str]:
        """Place `rids` (largest first) on `members`; returns what nobody could take."""
        orphan_load = math.fsum(map(self.cost.__getitem__, rids))
        pool_load = math.fsum(self.load[a] for a in members) + orphan_load
        mean = pool_load / len(members)
        cap = count_cap((sum(self.count[a] for a in members) + len(rids)) / len(members))
        if orphan_load * 2 <= pool_load:
            tol = min(orphan_load / len(rids), _BAND * mean)
            return self._best_fit(rids, members, cap, mean + tol)
        return self._lpt(rids, members, cap)

    def _assign(self, rid: str, agent: str) -> None:
        self.owner[rid] = agent
        self.held[agent].append(rid)
        self.load[agent] += self.cost[rid]
        self.count[agent] += 1
        self.dirty.add(agent)

    def _lpt(self, rids: list[str], members: list[str], cap: int) -> list[str]:
        """Each resource (largest first) to the least loaded agent under the count cap (ties by agent
        id); the cap is waived only when nobody is under it. Inlined: a first placement runs this for
        every resource."""
        load, held, cost, owner, count = self.load, self.held, self.cost, self.owner, self.count
        placed = 0
        for limit in (cap, math.inf):
            room = {}
            for agent in members:
                capacity = self.slots[agent].capacity or math.inf
                room[agent] = min(limit, capacity) - self.count[agent]
            heap = [(load[a], a) for a in members if room[a] > 0]
            heapq.heapify(heap)
            start = placed
            for rid in rids[start:]:
                if not heap:
                    break
                agent_load, agent = heap[0]
                owner[rid] = agent
                held[agent].append(rid)
                count[agent] += 1
                room[agent] -= 1
                if room[agent] > 0:
                    heapq.heapreplace(heap, (agent_load + cost[rid], agent))
                else:
                    heapq.heappop(heap)
                load[agent] = agent_load + cost[rid]
                placed += 1
            self.dirty.update(members)
            if placed == len(rids):
                return []
        return rids[placed:]

    def _best_fit(self, rids: list[str], members: list[str], cap: int, upper: float) -> list[str]:
        load, cost = self.load, self.cost
        index = 0
        for limit in (cap, math.inf):
            open_ = sorted((load[a], a) for a in members if self.count[a] < limit and self.has_room(a))
            while open_ and index < len(rids):
                rid = rids[index]
                index += 1
                slot = bisect_right(open_, (upper - cost[rid], _LAST)) - 1
                _, agent = open_.pop(slot if slot >= 0 else 0)
                self._assign(rid, agent)
                if self.count[agent] < limit and self.has_room(agent):
                    insort(open_, (load[agent], agent))
            if index == len(rids):
                return []
        return rids[index:]

    # -- step 4 ------------------------------------------------------------------------------------------

    def balance(self) -> None:
        for pool in sorted(self.pools):
            members = self.pools[pool]
            if len(members) >= 2:
                self._balance_pool(members)

    def _items(self, agent: str) -> list[tuple[float, str]]:
        """The agent's movable resources as a sorted (cost, id) list, built on first use."""
        items = self.sorted_items.get(agent)
        if items is None:
            held = self.held[agent]
            items = sorted(zip(map(self.cost.__getitem__, held), held, strict=True))
            self.sorted_items[agent] = items
        return items

    def _give(self, source: str, index: int, target: str) -> None:
        """Move the source's item at `index` (of its sorted list) to `target`."""
        cost, rid = self._items(source).pop(index)
        insort(self._items(target), (cost, rid))
        self.transfer(rid, source, target)

    def _balance_pool(self, members: list[str]) -> None:
        # While a pool balances, an agent's sorted item list, once built, is the truth; `held` is
        # brought back in step at the end (sorting only the agents that give or take keeps a join cheap).
        self.sorted_items: dict[str, list[tuple[float, str]]] = {}
        try:
            balancers = self._isolate_heavy(members)
            movable = sum(map(self._movable_count, balancers))
            if len(balancers) < 2 or not movable:
                return
            total = math.fsum(self.load[a] for a in balancers)
            mean = total / len(balancers)
            mean_count = sum(self.count[a] for a in balancers) / len(balancers)
            movable_cost = total - math.fsum(map(self._pinned_load, balancers))
            # Under ten resources an agent, 2 % of a load is finer than one resource: the mean cost it is.
            tol = movable_cost / movable if mean_count < 10 else min(movable_cost / movable, _BAND * mean)
            cap = count_cap(mean_count)
            self._even_counts(balancers, mean, cap)
            self._even_loads(balancers, mean, mean_count, mean - tol, mean + tol, cap)
        finally:
            for agent, items in self.sorted_items.items():
                self.held[agent] = [rid for _, rid in items]

    def _pinned_load(self, agent: str) -> float:
        cost, owner, fixed = self.cost, self.owner, self.fixed
        return math.fsum(cost[r] for r in self.pins.get(agent, ()) if r in fixed and owner.get(r) == agent)

    def _movable_count(self, agent: str) -> int:
        items = self.sorted_items.get(agent)
        return len(items) if items is not None else len(self.held[agent])

    def _isolate_heavy(self, members: list[str]) -> list[str]:
        """Step 4a: each heavy resource alone on an agent; returns the agents left to balance."""
        cost, load = self.cost, self.load
        pool_load = math.fsum(load[a] for a in members)
        if max(cost.values(), default=0.0) * len(members) <= pool_load:
            return members  # quick: nothing in the whole fleet costs more than this pool's mean
        largest = max((max(map(cost.__getitem__, self.held[a])) for a in members if self.held[a]), default=0.0)
        pool_load = math.fsum(load[a] for a in members)
        if largest * len(members) <= pool_load:
            return members  # nothing costs more than the mean: nothing is heavy
        top = heapq.nlargest(len(members) - 1, ((cost[r], r) for a in members for r in self.held[a]))
        remaining, agents_left, heavy = pool_load, len(members), []
        for c, rid in top:
            if c * agents_left <= remaining:
                break
            heavy.append(rid)
            remaining -= c
            agents_left -= 1
        claimed: dict[str, str] = {}  # agent -> its heavy resource
        homeless = []
        for rid in heavy:  # largest first: it keeps its agent unless a larger one sits there
            agent = self.owner[rid]
            if agent in claimed:
                homeless.append(rid)
            else:
                claimed[agent] = rid
        for rid in homeless:
            free = min((a for a in members if a not in claimed), key=lambda a: (load[a], a))
            source = self.owner[rid]
            self._give(source, self._index_of(source, rid), free)
            claimed[free] = rid
        balancers = [a for a in members if a not in claimed]
        evicted: list[tuple[float, str, str]] = []
        for agent, rid in claimed.items():
            evicted += [(c, r, agent) for c, r in self._items(agent) if r != rid]
        evicted.sort(key=lambda e: (-e[0], e[1]))
        heap = [(load[a], a) for a in balancers]
        heapq.heapify(heap)
        for _cost, rid, source in evicted:
            while heap and (heap[0][0] != load[heap[0][1]] or not self.has_room(heap[0][1])):
                heapq.heappop(heap)
            if not heap:
                break
            target = heap[0][1]
            self._give(source, self._index_of(source, rid), target)
            heapq.heapreplace(heap, (load[target], target))
        return balancers

    def _index_of(self, agent: str, rid: str) -> int:
        items = self._items(agent)
        return bisect_left(items, (self.cost[rid], rid))

    def _even_counts(self, balancers: list[str], mean: float, cap: int) -> None:
        """Step 4b: nobody above the count cap."""
        load = self.load
        over = sorted((a for a in balancers if self.count[a] > cap), key=lambda a: (-self.count[a], a))
        if not over:
            return
        receivers = [(load[a], a) for a in balancers if self.under_cap(a, cap)]
        heapq.heapify(receivers)
        for donor in over:
            while self.count[donor] > cap and self._movable_count(donor):
                while receivers and (
                    receivers[0][0] != load[receivers[0][1]] or not self.under_cap(receivers[0][1], cap)
                ):
                    heapq.heappop(receivers)
                if not receivers:
                    return
                receiver = receivers[0][1]
                want = min(load[donor] - mean, mean - load[receiver])
                items = self._items(donor)
                index = _nearest(items, max(want, 0.0), math.inf)
                self._give(donor, index if index is not None else 0, receiver)
                heapq.heappush(receivers, (load[receiver], receiver))

    def _even_loads(
        self, balancers: list[str], mean: float, mean_count: float, lower: float, upper: float, cap: int
    ) -> None:
        """Step 4c: most loaded to least loaded, until the band holds or nothing helps."""
        load = self.load
        donors = [(-load[a], a) for a in balancers if self._movable_count(a)]
        receivers = [(load[a], a) for a in balancers]
        heapq.heapify(donors)
        heapq.heapify(receivers)
        stuck: set[str] = set()
        while True:
            # Heap entries go stale when a load changes; drop them as they surface.
            while donors and (
                -donors[0][0] != load[donors[0][1]] or donors[0][1] in stuck or not self._movable_count(donors[0][1])
            ):
                heapq.heappop(donors)
            while receivers and receivers[0][0] != load[receivers[0][1]]:
                heapq.heappop(receivers)
            if not donors or not receivers:
                return
            donor, receiver = donors[0][1], receivers[0][1]
            high, low = load[donor], load[receiver]
            if donor == receiver or high <= low or (high < upper and low > lower):
                return
            if not (
                self._move_one(donor, receiver, mean, mean_count, lower, upper, cap) or self._swap(donor, receiver)
            ):
                stuck.add(donor)  # nothing lowers it against the least loaded: try the next one
                continue
            for agent in (donor, receiver):
                if self._movable_count(agent):
                    heapq.heappush(donors, (-load[agent], agent))
                heapq.heappush(receivers, (load[agent], agent))

    def _move_one(
        self, donor: str, receiver: str, mean: float, mean_count: float, lower: float, upper: float, cap: int
    ) -> bool:
        if not self.under_cap(receiver, cap):
            return False
        high, low = self.load[donor], self.load[receiver]
        items = self._items(donor)
        limit = min(high - lower, upper - low)  # both stay inside the band
        need = (mean - low) / max(1.0, mean_count - self.count[receiver])  # the receiver's per-slot need
        index = _nearest(items, min(need, limit), limit) if limit > 0 else None
        if index is None:
            index = _nearest(items, (high - low) / 2, high - low)
        if index is None or not _lowers(high, max(high - items[index][0], low + items[index][0])):
            # No gain, or rounding ate it (a cost equal to the gap, as a sum of costs can be):
            # moving it would swap the two loads and the next step would swap them back.
            return False
        self._give(donor, index, receiver)
        return True

    def _swap(self, donor: str, receiver: str) -> bool:
        """Trade the donor's x for the receiver's smallest y, x - y nearest half the gap."""
        theirs = self._items(receiver)
        if not theirs:
            return False
        high, low = self.load[donor], self.load[receiver]
        small = theirs[0][0]
        mine = self._items(donor)
        index = _nearest(mine, small + (high - low) / 2, small + (high - low))
        if index is None or mine[index][0] <= small:
            return False
        x = mine[index][0]
        if not _lowers(high, max((high - x) + small, (low + x) - small)):  # as the two transfers compute it
            return False
        taken = theirs[0][1]
        self._give(donor, index, receiver)
        self._give(receiver, self._index_of(receiver, taken), donor)
        return True

    # -- result ------------------------------------------------------------------------------------------

    def plan(self, *, balance: bool) -> Placement:
        """Steps 3 (and 4 with `balance`) from the settled state; the fleet then holds the result."""
        self.place_orphans()
        if balance:
            self.balance()
        return self.result()

    def result(self) -> Placement:
        owner, slots = self.owner, self.slots
        moved = {rid: before for rid, before in self.origin.items() if owner.get(rid, before) != before}
        for rid in [r for r, before in moved.items() if before is not None and before not in slots]:
            moved[rid] = None  # its owner is gone
        for agent in self.dirty:
            self.load[agent] = self._exact_load(agent)
        placement = Placement(
            owners=MappingProxyType(dict(owner)),
            unassigned=tuple(sorted(self.orphans)),
            moved=MappingProxyType(moved),
            loads=MappingProxyType(dict(self.load)),
            counts=MappingProxyType(dict(self.count)),
            zones=MappingProxyType(dict(self.pool_of)),
        )
        # The next step starts from this placement.
        self.origin = dict.fromkeys(self.orphans)  # unowned in this placement, so unowned before the next
        self.dirty = set()
        return placement


def _lowers(high: float, new_high: float) -> bool:
    """Whether a move lowers the pair's maximum by more than rounding: every move must, so the sum
    of squared loads falls by a real amount each time and balancing ends."""
    return new_high < high - 1e-9 * high


def _nearest(items: list[tuple[float, str]], target: float, limit: float) -> int | None:
    """Index of the item whose cost is nearest `target` among those costing less than `limit`
    (ties: the smaller one), or None when every item costs `limit` or more."""
    end = bisect_left(items, (limit, ""))
    if end == 0:
        return None
    middle = min(bisect_left(items, (target, "")), end - 1)
    if middle > 0 and abs(items[middle - 1][0] - target) <= abs(items[middle][0] - target):
        return middle - 1
    return middle
