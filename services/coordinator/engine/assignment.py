"""Sticky, cost-aware placement of resources (databases) on agents.

Pure: no I/O, no clock, no randomness. The leader calls `place` after every membership change and
`plan_cost_rebalance` for load drift; the hand-off of the resulting moves is `handoff.py`'s job.

Vocabulary
----------
- *eligible* agent: present in `agents` and not draining.
- *load* of an agent: sum of the costs of the resources placed on it. T = mean load over the
  eligible agents; c_max = the largest cost of a placed resource; c_mean = the mean cost of the
  movable resources.
- *movable* resource: a placed resource that is not pinned to an eligible agent.

Placement, in order
-------------------
1. Pins: a resource pinned to an eligible agent goes there, even beyond that agent's capacity
   (an operator's pin is an explicit order; capacity only limits what the engine chooses itself).
   A pin to an absent or draining agent is ignored until that agent is eligible again, so the
   database stays monitored and moves back when its pinned agent returns.
2. Sticky: a resource keeps its previous owner when that owner is eligible, is not contradicted by
   a pin, and has room (pinned resources fill capacity first; when an agent is over capacity it
   keeps its most expensive resources, ties by resource id, and sheds the rest).
3. Orphans (no valid previous owner, shed, or owner draining/gone) go one by one, largest cost
   first (LPT), to the least-loaded eligible agent with room, ties by agent id. A resource no agent
   can take is reported in `unassigned`.
4. Only with `balance=True`: repeatedly move one movable resource from the most loaded agent M to
   the least loaded agent m with room, until every load is inside the open band
   (T - c_mean, T + c_mean) or no move between M and m improves them. The resource moved is the
   largest one that keeps both agents inside the band; if there is none, the one that best evens
   the pair out, provided it strictly lowers max(load M, load m) (so the loop terminates: the sum of
   squared loads strictly decreases).

Balance bound (guaranteed by `place(..., balance=True)`)
--------------------------------------------------------
When no resource is pinned to an eligible agent and no agent has a capacity limit:

    T - c_max < load(a) < T + c_max        for every eligible agent a.

With equal costs (c_max = c_mean = 1, loads are counts) this is exactly: max count - min count <= 1.
Proof: the loop stops either with every load inside (T - c_mean, T + c_mean), and c_mean <= c_max;
or because no resource x on M has cost(x) < load(M) - load(m). With no pins and no capacity limits
M is the most loaded agent overall (every loaded agent has movable resources) and m the least
loaded, so load(M) - load(m) <= c_max with load(m) <= T <= load(M), which gives the band (strictly,
since equality would force every load to be T). Pins and capacity limits can make the band
infeasible; the loop still stops and every other guarantee holds.

Movement
--------
- `balance=False` moves exactly the resources without a valid sticky owner (orphans, resources of
  draining agents, pin returns, capacity overflow); nothing else. This is what runs when agents
  leave or expire: only their resources move.
- `balance=True` with equal costs and no pins or capacity limits moves the theoretical minimum:
  (resources without a valid owner) + sum over agents of max(0, s_a - t_a), where s_a is what the
  agent keeps after steps 1-2 and t_a in {q, q+1} (q = N // A) gives q+1 to the N % A agents that
  keep the most. Each step moves a unit from an agent over its target to one under it.
- With costs there is no cheap exact minimum; moves prefer the largest resource that fits the band,
  so a join moves about a fair share's worth. Property-tested (not proved): for costs within a 4:1
  ratio, a join from a balanced placement moves at most 2 * (equal-cost minimum + newcomers);
  docs/benchmarks.md has measured figures.
- `Move.from_agent` is the previous owner when it is still in `agents` (draining included: it must
  hand the resource off), None when it is gone or there was none.

`zone` is carried for the leader and operators; this engine does not balance across zones.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["AgentSlot", "Move", "Placement", "ResourceDemand", "place", "plan_cost_rebalance", "spread"]


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
    moves: tuple[Move, ...]  # difference from `previous` (includes placing orphans, from_agent=None)
    loads: Mapping[str, float]  # agent_id -> sum of costs, for every non-draining agent (0.0 if empty)


def spread(loads: Mapping[str, float]) -> float:
    """Max load / mean load: 1.0 is perfect balance; 1.0 as well when there is no load at all."""
    if not loads:
        return 1.0
    total = math.fsum(loads.values())
    if total <= 0:
        return 1.0
    return max(loads.values()) * len(loads) / total


def place(
    resources: Iterable[ResourceDemand],
    agents: Iterable[AgentSlot],
    previous: Mapping[str, str],
    *,
    balance: bool,
) -> Placement:
    """Place every resource on one eligible agent, moving as little as the module docstring says."""
    board = _Board(resources, agents)
    board.settle(previous)
    board.place_orphans()
    if balance:
        board.balance()
    return board.placement(previous)


def plan_cost_rebalance(
    resources: Iterable[ResourceDemand],
    agents: Iterable[AgentSlot],
    previous: Mapping[str, str],
    *,
    min_improvement: float = 0.10,
) -> tuple[Placement, bool]:
    """Balanced placement from `previous`, accepted only if it is worth its moves.

    Returns (candidate, True) when the relative spread gain (before - after) / before is > 0 and
    >= `min_improvement`; otherwise (the placement that only fixes orphans, False). "before" is
    the spread once orphans are fixed, so an expired agent alone never justifies extra movement.
    """
    if not (math.isfinite(min_improvement) and min_improvement >= 0):
        raise ValueError(f"min_improvement must be a finite number >= 0, got {min_improvement}")
    resources = tuple(resources)
    agents = tuple(agents)
    settled = place(resources, agents, previous, balance=False)
    candidate = place(resources, agents, previous, balance=True)
    before, after = spread(settled.loads), spread(candidate.loads)
    gain = (before - after) / before
    if gain > 0 and gain >= min_improvement:
        return candidate, True
    return settled, False


class _Board:
    """Mutable working state of one `place` call: who holds what, loads and counts."""

    def __init__(self, resources: Iterable[ResourceDemand], agents: Iterable[AgentSlot]) -> None:
        self.demands: dict[str, ResourceDemand] = {}
        for demand in resources:
            if demand.resource_id in self.demands:
                raise ValueError(f"resource {demand.resource_id} is listed twice")
            self.demands[demand.resource_id] = demand
        self.slots: dict[str, AgentSlot] = {}
        for slot in agents:
            if slot.agent_id in self.slots:
                raise ValueError(f"agent {slot.agent_id} is listed twice")
            self.slots[slot.agent_id] = slot
        self.eligible = sorted(a for a, s in self.slots.items() if not s.draining)
        self.eligible_set = frozenset(self.eligible)
        self.owner: dict[str, str] = {}
        self.load: dict[str, float] = dict.fromkeys(self.eligible, 0.0)
        self.count: dict[str, int] = dict.fromkeys(self.eligible, 0)
        self.fixed: set[str] = set()  # pinned to the eligible agent holding them
        self.orphans: list[str] = []

    def has_room(self, agent: str) -> bool:
        capacity = self.slots[agent].capacity
        return capacity == 0 or self.count[agent] < capacity

    def settle(self, previous: Mapping[str, str]) -> None:
        """Steps 1-2: pins, then sticky owners within capacity; everything else becomes an orphan."""
        kept: dict[str, list[str]] = {}
        for rid in sorted(self.demands):
            pin = self.demands[rid].pinned_agent
            if pin in self.eligible_set:
                self.owner[rid] = pin
                self.fixed.add(rid)
                self.count[pin] += 1
                continue
            holder = previous.get(rid)
            if holder in self.eligible_set:
                kept.setdefault(holder, []).append(rid)
            else:
                self.orphans.append(rid)
        for agent, rids in kept.items():
            capacity = self.slots[agent].capacity
            if capacity and self.count[agent] + len(rids) > capacity:
                rids.sort(key=lambda r: (-self.demands[r].cost, r))
                room = max(0, capacity - self.count[agent])
                self.orphans.extend(rids[room:])
                rids = rids[:room]
            for rid in rids:
                self.owner[rid] = agent
            self.count[agent] += len(rids)
        costs_by_agent: dict[str, list[float]] = {}
        for rid, agent in self.owner.items():
            costs_by_agent.setdefault(agent, []).append(self.demands[rid].cost)
        for agent, costs in costs_by_agent.items():
            self.load[agent] = math.fsum(costs)  # exact, so the result never depends on input order

    def place_orphans(self) -> None:
        """Step 3: LPT onto the least-loaded agent with room, ties by agent id."""
        self.orphans.sort(key=lambda r: (-self.demands[r].cost, r))
        heap = [(self.load[a], a) for a in self.eligible if self.has_room(a)]
        heapq.heapify(heap)
        placed = 0
        for rid in self.orphans:
            if not heap:
                break
            load, agent = heapq.heappop(heap)
            cost = self.demands[rid].cost
            self.owner[rid] = agent
            self.load[agent] = load + cost
            self.count[agent] += 1
            placed += 1
            if self.has_room(agent):
                heapq.heappush(heap, (load + cost, agent))
        self.orphans = self.orphans[placed:]

    def balance(self) -> None:
        """Step 4: move from the most to the least loaded agent until the band holds."""
        if len(self.eligible) < 2:
            return
        movable: dict[str, list[tuple[float, str]]] = {a: [] for a in self.eligible}
        for rid, agent in self.owner.items():
            if rid not in self.fixed:
                movable[agent].append((self.demands[rid].cost, rid))
        movable_costs = [cost for items in movable.values() for cost, _ in items]
        if not movable_costs:
            return
        mean_load = math.fsum(self.load.values()) / len(self.eligible)
        tolerance = math.fsum(movable_costs) / len(movable_costs)
        lower, upper = mean_load - tolerance, mean_load + tolerance
        for items in movable.values():
            items.sort()
        load = self.load
        donors = [(-load[a], a) for a in self.eligible if movable[a]]
        receivers = [(load[a], a) for a in self.eligible if self.has_room(a)]
        heapq.heapify(donors)
        heapq.heapify(receivers)
        while True:
            # Heap entries go stale when a load changes; drop them as they surface.
            while donors and (-donors[0][0] != load[donors[0][1]] or not movable[donors[0][1]]):
                heapq.heappop(donors)
            while receivers and (receivers[0][0] != load[receivers[0][1]] or not self.has_room(receivers[0][1])):
                heapq.heappop(receivers)
            if not donors or not receivers:
                return
            donor, receiver = donors[0][1], receivers[0][1]
            donor_load, receiver_load = load[donor], load[receiver]
            if donor == receiver or donor_load <= receiver_load:
                return
            if donor_load < upper and receiver_load > lower:
                return
            items = movable[donor]
            index = self._largest_below(items, min(donor_load - lower, upper - receiver_load))
            if index is None:
                index = self._best_pair_split(items, donor_load, receiver_load)
                if index is None:
                    return
            if max(donor_load - items[index][0], receiver_load + items[index][0]) >= donor_load:
                # Exactly no gain, or rounding ate it (a cost equal to the gap, as a sum of costs can
                # be): moving it would swap the two loads and the next step would swap them back.
                # Every move lowers the pair's maximum, so the loads fall lexicographically: it ends.
                return
            cost, rid = items.pop(index)
            insort(movable[receiver], (cost, rid))
            self.owner[rid] = receiver
            load[donor] = donor_load - cost
            load[receiver] = receiver_load + cost
            self.count[donor] -= 1
            self.count[receiver] += 1
            for agent in (donor, receiver):
                if movable[agent]:
                    heapq.heappush(donors, (-load[agent], agent))
                if self.has_room(agent):
                    heapq.heappush(receivers, (load[agent], agent))

    @staticmethod
    def _largest_below(items: list[tuple[float, str]], limit: float) -> int | None:
        index = bisect_left(items, (limit, ""))  # first item with cost >= limit
        return index - 1 if index > 0 else None

    @staticmethod
    def _best_pair_split(items: list[tuple[float, str]], high: float, low: float) -> int | None:
        """Index of the item whose move best evens `high` and `low` while strictly lowering their max."""
        gap = high - low
        middle = bisect_left(items, (gap / 2, ""))
        best: tuple[float, int] | None = None
        for index in (middle - 1, middle):
            if 0 <= index < len(items) and items[index][0] < gap:
                cost = items[index][0]
                worse = max(high - cost, low + cost)
                if best is None or worse < best[0]:
                    best = (worse, index)
        return None if best is None else best[1]

    def placement(self, previous: Mapping[str, str]) -> Placement:
        owners = {rid: self.owner[rid] for rid in sorted(self.owner)}
        moves = []
        for rid, agent in owners.items():
            before = previous.get(rid)
            if before != agent:
                moves.append(Move(rid, before if before in self.slots else None, agent))
        costs_by_agent: dict[str, list[float]] = {a: [] for a in self.eligible}
        for rid, agent in owners.items():
            costs_by_agent[agent].append(self.demands[rid].cost)
        loads = {a: math.fsum(costs) for a, costs in costs_by_agent.items()}
        return Placement(
            owners=MappingProxyType(owners),
            unassigned=tuple(sorted(self.orphans)),
            moves=tuple(moves),
            loads=MappingProxyType(loads),
        )
