"""Leader election (a fenced lease) and the leader's step loop.

`Leadership` keeps trying for the lease, renews it every ttl/3, and stops leading at once when a
renewal says the lease is someone else's (or when it could not renew for a whole ttl). `LeaderLoop`
runs only while this replica leads: it wakes on store events (an agent joined, left or acked a
hand-off) or every tick, computes one step with `planning.plan_step` and writes it fenced.

A tick with nothing to do is cheap: unless an event arrived since the last full step, a join is
settling, an operator request or the periodic rebalance is due, or the store clock has reached the
earliest moment any member could expire (`planning.expiry_deadline_ms`), the leader reads only the
store's clock, not the whole fleet. Heartbeats that change nothing publish no event and only push
expiry later, so skipping then cannot miss a decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from dbintel.common.config import Config

from .engine.assignment import Move, spread
from .planning import InventoryItem, StepInput, StepPlan, expiry_deadline_ms, moves_between, plan_step
from .store.base import ScalingStore, StoreEvent
from .store.records import FencedError, Lease, StoreUnavailable
from .telemetry import CoordinatorMetrics

log = logging.getLogger(__name__)

JOIN_SETTLE_S = 2.0  # joins closer than this are absorbed in one balancing move


def tick_seconds(heartbeat_interval_s: float) -> float:
    """How often the leader looks without an event: often enough to expire a silent agent within
    node_timeout plus a quarter heartbeat, rarely enough that a large fleet's store reads stay cheap."""
    return min(5.0, max(0.2, heartbeat_interval_s / 4))


class Leadership:
    def __init__(self, store: ScalingStore, holder: str, ttl_s: float, address: str,
                 metrics: CoordinatorMetrics, on_change: Callable[[bool], Awaitable[None]] | None = None):
        self._store, self._holder, self._ttl_ms, self._address = store, holder, int(ttl_s * 1000), address
        self._metrics, self._on_change = metrics, on_change
        self.lease: Lease | None = None
        self.highest_epoch_seen = 0
        self._last_renewed = 0.0
        self._stopping = False
        self.changed = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        return self.lease is not None

    async def _set(self, lease: Lease | None) -> None:
        was = self.is_leader
        self.lease = lease
        if lease is not None:
            self.highest_epoch_seen = max(self.highest_epoch_seen, lease.epoch)
        self._metrics.leader.set(1 if lease else 0)
        if lease:
            self._metrics.leader_epoch.set(lease.epoch)
        if was != self.is_leader:
            log.info("%s leadership (epoch %s)", "acquired" if lease else "lost", lease.epoch if lease else "-")
            self.changed.set()
            if self._on_change is not None:
                await self._on_change(self.is_leader)

    async def run(self) -> None:
        period = self._ttl_ms / 3000.0
        while not self._stopping:
            sleep_for = period
            try:
                if self.lease is None:
                    lease = await self._store.try_acquire_leadership(self._holder, self._ttl_ms, self._address,
                                                                     self.highest_epoch_seen)
                    if lease is not None:
                        self._last_renewed = time.monotonic()
                        await self._set(lease)
                    else:
                        current = await self._store.read_leader()
                        if current is not None:
                            self.highest_epoch_seen = max(self.highest_epoch_seen, current.epoch)
                        # Poll faster than ttl/3 so a crashed leader is replaced soon after its lease ends.
                        sleep_for = min(period, 0.5)
                elif await self._store.renew_leadership(self.lease, self._ttl_ms):
                    self._last_renewed = time.monotonic()
                else:
                    await self._set(None)  # someone else holds it now: stop at once
                    sleep_for = 0
            except StoreUnavailable:
                self._metrics.store_errors.labels("leadership").inc()
                if self.lease is not None and time.monotonic() - self._last_renewed >= self._ttl_ms / 1000.0:
                    await self._set(None)  # our lease has run out in Redis by now
                sleep_for = min(period, 0.5)
            await asyncio.sleep(sleep_for)

    async def release(self) -> None:
        """Give the lease up on shutdown so a successor takes over at once."""
        self._stopping = True
        lease = self.lease
        if lease is not None:
            with contextlib.suppress(Exception):
                await self._store.release_leadership(lease)
            await self._set(None)


@dataclass
class OperatorRequest:
    kind: str  # "rebalance" or "drain"
    dry_run: bool
    agent_id: str = ""
    result: asyncio.Future | None = None


@dataclass(frozen=True)
class OperatorResult:
    moves: list[Move]
    applied: bool
    spread_before: float = 1.0
    spread_after: float = 1.0


class LeaderLoop:
    """The leader's decisions. Runs only while `leadership.is_leader`; every write is fenced."""

    def __init__(self, store: ScalingStore, leadership: Leadership, config_source: Callable[[], Config],
                 metrics: CoordinatorMetrics):
        self._store, self._leadership, self._config_source, self._metrics = store, leadership, config_source, metrics
        self._wake = asyncio.Event()
        self._requests: asyncio.Queue[OperatorRequest] = asyncio.Queue()
        self._known_live: set[str] | None = None
        self._first_pending_join: float | None = None
        self._last_join: float = 0.0
        self._last_balance = 0.0
        self._last_periodic = time.monotonic()
        self._took_over_at = 0.0
        self._sent: dict[str, dict[int, frozenset[str]]] = {}
        self._last_step_seconds = 0.0
        self._inventory_cache: tuple[Config, dict[str, InventoryItem]] | None = None
        self._inventory_version = None
        self.last_plan: StepPlan | None = None
        # Whether the store may hold something the last full step did not see (an event came, a
        # step failed or wrote something); and, on the store clock, when a member could next expire.
        self._dirty = True
        self._expiry_due_ms: int | None = None
        self._expiry_due_at = float("inf")  # the same moment on time.monotonic(), to time the wake-up
        self.full_steps = self.skipped_steps = 0

    def wake(self) -> None:
        self._dirty = True
        self._wake.set()

    def inventory_changed(self) -> None:
        self._inventory_version = object()
        self.wake()

    async def submit(self, request: OperatorRequest) -> OperatorResult:
        request.result = asyncio.get_running_loop().create_future()
        await self._requests.put(request)
        self.wake()
        return await request.result

    def _inventory(self, config: Config) -> dict[str, InventoryItem]:
        if self._inventory_cache is None or self._inventory_cache[0] is not config:  # rebuilt on reload only
            self._inventory_cache = (config, {rid: InventoryItem(rid, db.type, db.interval.total_seconds(), db.pin)
                                              for rid, db in config.resources().items()})
        return self._inventory_cache[1]

    async def _read_input(self, config: Config) -> StepInput:
        agents, target, assignments, meta, now_ms = await asyncio.gather(
            self._store.read_agents(), self._store.read_target(), self._store.read_assignments(),
            self._store.read_meta(), self._store.now_ms())
        self._meta = meta
        return StepInput(inventory=self._inventory(config), agents=agents, target=target,
                         assigned={a: frozenset(r.grants) for a, r in assignments.items()},
                         in_flight=self._track_in_flight(agents, assignments),
                         now_ms=now_ms, node_timeout_ms=int(config.scaling.coordinator.node_timeout.total_seconds() * 1000),
                         grace_from_ms=meta.grace_from_ms)

    def _track_in_flight(self, agents, assignments) -> dict[str, frozenset[str]]:
        """Remember every assignment sent until the agent acknowledges an epoch at least as new.
        (A new leader starts from the latest unacknowledged one, the best the store can tell.)"""
        for agent_id, record in assignments.items():
            self._sent.setdefault(agent_id, {})[record.epoch] = frozenset(record.grants)
        in_flight = {}
        for agent_id, sent in list(self._sent.items()):
            applied = agents[agent_id].applied_epoch if agent_id in agents else None
            if applied is None:
                del self._sent[agent_id]
                continue
            for epoch in [e for e in sent if e <= applied]:
                del sent[epoch]
            if sent:
                in_flight[agent_id] = frozenset().union(*sent.values())
        return in_flight

    async def run(self) -> None:
        """Step while leading; sleep on the wake event otherwise."""
        while True:
            if not self._leadership.is_leader:
                self._known_live = None
                self._dirty = True
                self._fail_pending("not the leader")
                await self._leadership.changed.wait()
                self._leadership.changed.clear()
                continue
            started = time.perf_counter()
            try:
                await self._step_once()
            except FencedError:
                self._dirty = True
                log.warning("a leader write was fenced off: another coordinator leads now")
            except StoreUnavailable:
                self._dirty = True
                self._metrics.store_errors.labels("leader_step").inc()
            except Exception:  # a bug must not end leadership silently: log and go on
                self._dirty = True
                log.exception("leader step failed")
            self._last_step_seconds = time.perf_counter() - started
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._next_wake_in())
            if self._wake.is_set():
                # Events come in bursts (a registration storm, a wave of acks): let a burst gather so
                # one step answers it, for at most as long as a step takes.
                await asyncio.sleep(min(0.1, self._last_step_seconds))
            self._wake.clear()

    def _next_wake_in(self) -> float:
        timing = self._config_source().scaling.coordinator
        wait = tick_seconds(timing.heartbeat_interval.total_seconds())
        if self._first_pending_join is not None:  # wake when the pending joins settle
            settle = min(JOIN_SETTLE_S, timing.min_rebalance_interval.total_seconds())
            due = min(self._last_join + settle,
                      self._first_pending_join + timing.min_rebalance_interval.total_seconds())
            wait = min(wait, max(0.05, due - time.monotonic()))
        until_expiry = self._expiry_due_at - time.monotonic()
        if until_expiry > 0:  # wake when the first member could expire, not up to a tick later
            wait = min(wait, until_expiry + 0.01)
        return wait

    async def _needs_full_step(self, timing, now: float) -> bool:
        if (self._dirty or self._known_live is None or self._first_pending_join is not None
                or not self._requests.empty() or self._expiry_due_ms is None):
            return True
        if (now - self._last_periodic >= timing.rebalance_interval.total_seconds()
                and now - self._last_balance >= timing.min_rebalance_interval.total_seconds()):
            return True
        return await self._store.now_ms() >= self._expiry_due_ms

    def _fail_pending(self, why: str) -> None:
        while not self._requests.empty():
            request = self._requests.get_nowait()
            if request.result is not None and not request.result.done():
                request.result.set_exception(RuntimeError(why))

    async def _step_once(self) -> None:
        lease = self._leadership.lease
        if lease is None:
            return
        config = self._config_source()
        timing = config.scaling.coordinator
        if not await self._needs_full_step(timing, time.monotonic()):
            self.skipped_steps += 1
            return
        self.full_steps += 1
        self._dirty = False  # cleared before reading: an event that arrives during the step sets it again
        self._expiry_due_ms, self._expiry_due_at = None, float("inf")
        step = await self._read_input(config)
        now = time.monotonic()

        live_now = {a for a, r in step.agents.items() if r.is_member}
        balance, reason = False, ""
        if self._known_live is None:
            self._known_live = live_now  # just took over: what is there is not "joining"
            self._took_over_at = now
            silence_ms = step.now_ms - self._meta.last_heartbeat_write_ms
            if live_now and silence_ms > timing.heartbeat_interval.total_seconds() * 1000:
                # Nobody recorded heartbeats for a while (every coordinator was down, or the store
                # was): the agents were not silent, we were. Give them a fresh node_timeout.
                await self._store.mark_recovered()
                step = await self._read_input(config)
        joined = live_now - self._known_live
        left = self._known_live - live_now
        if joined:
            self._first_pending_join = self._first_pending_join or now
            self._last_join = now
        self._known_live = live_now  # seen now, whether or not this step places anything
        if left:
            reason = "agent_left"
        settle = min(JOIN_SETTLE_S, timing.min_rebalance_interval.total_seconds())
        if self._first_pending_join is not None and (
                now - self._last_join >= settle
                or now - self._first_pending_join >= timing.min_rebalance_interval.total_seconds()):
            balance, reason = True, "agent_joined"

        request = None if self._requests.empty() else self._requests.get_nowait()
        if request is not None:
            self._dirty = True  # the request may have written; the next tick takes a normal step
            await self._serve_request(request, lease, step)
            return

        cost_rebalance = None
        if (not balance and now - self._last_periodic >= timing.rebalance_interval.total_seconds()
                and now - self._last_balance >= timing.min_rebalance_interval.total_seconds()):
            cost_rebalance, reason = timing.rebalance_improvement, "periodic"
            self._last_periodic = now
        if not step.target and step.inventory and (
                (self._first_pending_join is not None and not balance)
                or now - self._took_over_at < min(JOIN_SETTLE_S, timing.heartbeat_interval.total_seconds())):
            # Nothing placed yet (a new cluster, or a store that lost its data): let the agents
            # register (or re-register) first, so the first placement is balanced and sticky.
            self._dirty = True
            return
        plan = plan_step(step, balance=balance, cost_rebalance=cost_rebalance,
                         reason=reason or self._reason_for(step))
        await self._apply(lease, plan, step)
        if balance:
            self._first_pending_join, self._last_balance = None, now
        self._known_live = live_now - set(plan.expired)
        if plan.is_noop:
            self._expiry_due_ms = expiry_deadline_ms(step.agents, step.now_ms, step.node_timeout_ms,
                                                     step.grace_from_ms)
            self._expiry_due_at = now + (self._expiry_due_ms - step.now_ms) / 1000.0
        else:
            self._dirty = True  # look once more after a write: its effects (expiries, epochs) are in the store now

    def _reason_for(self, step: StepInput) -> str:
        if set(step.target) != set(step.inventory):
            return "inventory"
        return "agent_expired" if any(r.is_member for r in step.agents.values()) else "placement"

    async def _apply(self, lease: Lease, plan: StepPlan, step: StepInput) -> None:
        self.last_plan = plan
        self._observe(plan)
        if plan.is_noop:
            return
        started = time.perf_counter()
        epochs = await self._store.write_placement(lease, plan.write)
        if plan.target_changed:
            self._metrics.rebalances.inc()
            self._metrics.rebalance_duration.observe(time.perf_counter() - started)
        self._metrics.moves.inc(plan.write.moves)
        if plan.write.expire:
            log.info("expired agents silent for over node_timeout: %s", ", ".join(plan.write.expire))
        if epochs:
            await self._store.publish(StoreEvent("assignments", tuple(sorted(epochs))))

    def _observe(self, plan: StepPlan) -> None:
        m = self._metrics
        m.nodes.set(len(plan.live))
        m.assignments.set(sum(len(s) for s in plan.holdings.values()))
        m.unassigned.set(len(plan.placement.unassigned))

    async def _serve_request(self, request: OperatorRequest, lease: Lease, step: StepInput) -> None:
        try:
            if request.kind == "drain":
                if not request.dry_run:
                    await self._store.set_draining(request.agent_id, True)
                    step = await self._read_input(self._config_source())
                plan = plan_step(_as_draining(step, request.agent_id), reason="drain")
            else:
                plan = plan_step(step, cost_rebalance=0.0, reason="operator")
            before_loads = _loads(step.target, plan.costs, plan.live)
            moves = moves_between(step.target, plan.placement.owners)
            if not request.dry_run:
                await self._apply(lease, plan, step)
            result = OperatorResult(moves=moves, applied=not request.dry_run,
                                    spread_before=spread(before_loads), spread_after=spread(plan.placement.loads))
            if request.result is not None and not request.result.done():
                request.result.set_result(result)
        except Exception as exc:
            if request.result is not None and not request.result.done():
                request.result.set_exception(exc)


def _as_draining(step: StepInput, agent_id: str) -> StepInput:
    agents = dict(step.agents)
    if agent_id in agents and agents[agent_id].is_member:
        agents[agent_id] = dataclasses.replace(agents[agent_id], state="draining")
    return dataclasses.replace(step, agents=agents)


def _loads(owners, costs, live) -> dict[str, float]:
    loads = {a: 0.0 for a in live}
    for rid, agent in owners.items():
        if agent in loads:
            loads[agent] += costs.get(rid, 1.0)
    return loads
