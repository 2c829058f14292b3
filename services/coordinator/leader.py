"""Leader election (a fenced lease) and the leader's step loop.

`Leadership` keeps trying for the lease, renews it every ttl/3, and stops leading at once when a
renewal says the lease is someone else's (or when it could not renew for a whole ttl). `LeaderLoop`
runs only while this replica leads: it wakes on store events (an agent joined, left or acked a
hand-off) or every tick, computes one step with `planning.plan_step` and writes it fenced.

When a tick reads the whole store, and what kind of step it takes (a settled join's balancing, the
periodic rebalance, waiting for the first registrations), are `schedule`'s pure rules. A tick with
nothing to do is cheap: it reads only the store's clock, to see whether a member could expire yet.
Heartbeats that change nothing publish no event and only push expiry later, so skipping then cannot
miss a decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from dbintel.common.config import Config

from .engine.assignment import Move, spread
from .model import AgentRecord, AssignmentRecord, ClusterMeta, FencedError, Lease, StaleRead, StoreUnavailable
from .planning import (
    InventoryItem,
    StepInput,
    StepPlan,
    ack_check_due_ms,
    ack_deadline_ms,
    loads_of,
    moves_between,
    plan_step,
    unacknowledged,
    with_draining,
)
from .schedule import LeaderSchedule, Timing, after_plan, decide, expiry_due, full_step_due, next_wake_in
from .store.base import ScalingStore, StoreEvent
from .telemetry import CoordinatorMetrics

log = logging.getLogger(__name__)


class Leadership:
    def __init__(
        self,
        store: ScalingStore,
        holder: str,
        ttl_s: float,
        address: str,
        metrics: CoordinatorMetrics,
        on_change: Callable[[bool], Awaitable[None]] | None = None,
    ):
        self._store, self._holder, self._ttl_ms = store, holder, int(ttl_s * 1000)
        self.address = address  # advertised for forwarding; the server sets it once its port is bound
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
                # A lease runs from when Redis took the write, which is after we asked: count from then.
                asked = time.monotonic()
                if self.lease is None:
                    lease = await self._store.try_acquire_leadership(
                        self._holder, self._ttl_ms, self.address, self.highest_epoch_seen
                    )
                    if lease is not None:
                        self._last_renewed = asked
                        await self._set(lease)
                    else:
                        current = await self._store.read_leader()
                        if current is not None:
                            self.highest_epoch_seen = max(self.highest_epoch_seen, current.epoch)
                        # Poll faster than ttl/3 so a crashed leader is replaced soon after its lease ends.
                        sleep_for = min(period, 0.5)
                elif await self._store.renew_leadership(self.lease, self._ttl_ms):
                    self._last_renewed = asked
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
    """The leader's decisions. Runs only while `leadership.is_leader`; every write is fenced.
    When to step and what kind of step are `schedule`'s pure rules; this loop reads, asks, writes."""

    def __init__(
        self,
        store: ScalingStore,
        leadership: Leadership,
        config_source: Callable[[], Config],
        metrics: CoordinatorMetrics,
    ):
        self._store, self._leadership, self._config_source, self._metrics = store, leadership, config_source, metrics
        self._wake = asyncio.Event()
        self._requests: asyncio.Queue[OperatorRequest] = asyncio.Queue()
        self.schedule = LeaderSchedule(last_periodic=time.monotonic())
        self._sent: dict[str, dict[int, frozenset[str]]] = {}
        self._first_sent_ms: dict[str, dict[int, int]] = {}  # agent -> {unacknowledged epoch: first seen}
        self._ack_check_at: float | None = None  # monotonic: when an unacknowledged grant passes its deadline
        self._last_step_seconds = 0.0
        self._inventory_cache: tuple[Config, dict[str, InventoryItem]] | None = None
        self.last_plan: StepPlan | None = None
        # Whether the store may hold something the last full step did not see (an event came, a
        # step failed or wrote something). Set from outside the step, so kept apart from the schedule.
        self._dirty = True
        self.full_steps = self.skipped_steps = 0

    def wake(self) -> None:
        self._dirty = True
        self._wake.set()

    def inventory_changed(self) -> None:
        self.wake()

    async def submit(self, request: OperatorRequest) -> OperatorResult:
        request.result = asyncio.get_running_loop().create_future()
        await self._requests.put(request)
        self.wake()
        return await request.result

    def _inventory(self, config: Config) -> dict[str, InventoryItem]:
        if self._inventory_cache is None or self._inventory_cache[0] is not config:  # rebuilt on reload only
            self._inventory_cache = (
                config,
                {
                    rid: InventoryItem(rid, db.type, db.interval.total_seconds(), db.pin, db.zone)
                    for rid, db in config.resources().items()
                },
            )
        return self._inventory_cache[1]

    async def _read_input(self, config: Config) -> tuple[StepInput, ClusterMeta]:
        agents, target, assignments, meta, now_ms = await asyncio.gather(
            self._store.read_agents(),
            self._store.read_target(),
            self._store.read_assignments(),
            self._store.read_meta(),
            self._store.now_ms(),
        )
        in_flight = self._track_in_flight(agents, assignments, now_ms)
        deadline_ms = ack_deadline_ms(int(config.scaling.coordinator.heartbeat_interval.total_seconds() * 1000))
        flagged = unacknowledged(self._first_sent_ms, meta.unacknowledged, now_ms, deadline_ms)
        due_ms = ack_check_due_ms(self._first_sent_ms, flagged, deadline_ms)
        self._ack_check_at = None if due_ms is None else time.monotonic() + max(0, due_ms - now_ms) / 1000
        for agent_id in sorted(flagged - set(meta.unacknowledged)):
            log.warning(
                "agent %s has not acknowledged its assignment within %.1fs: giving it no databases until it does",
                agent_id,
                deadline_ms / 1000,
            )
        self._metrics.unacknowledged.set(len(flagged))
        step = StepInput(
            inventory=self._inventory(config),
            agents=agents,
            target=target,
            assigned={a: frozenset(r.grants) for a, r in assignments.items()},
            in_flight=in_flight,
            now_ms=now_ms,
            node_timeout_ms=int(config.scaling.coordinator.node_timeout.total_seconds() * 1000),
            grace_from_ms=meta.grace_from_ms,
            disconnect_grace_ms=int(config.scaling.coordinator.disconnect_grace.total_seconds() * 1000),
            unacknowledged=flagged,
            recorded_unacknowledged=frozenset(meta.unacknowledged),
        )
        return step, meta

    def _track_in_flight(
        self, agents: Mapping[str, AgentRecord], assignments: Mapping[str, AssignmentRecord], now_ms: int
    ) -> dict[str, frozenset[str]]:
        """Remember every assignment sent, and when it was first seen, until the agent acknowledges
        an epoch at least as new. (A new leader starts from the latest unacknowledged one, the best
        the store can tell, and its clock for the ack deadline starts then.)"""
        for agent_id, record in assignments.items():
            self._sent.setdefault(agent_id, {})[record.epoch] = frozenset(record.grants)
            self._first_sent_ms.setdefault(agent_id, {}).setdefault(record.epoch, now_ms)
        in_flight = {}
        for agent_id, sent in list(self._sent.items()):
            member = agents.get(agent_id)
            if member is None or not member.is_member:
                del self._sent[agent_id]
                self._first_sent_ms.pop(agent_id, None)
                continue
            first_sent = self._first_sent_ms.setdefault(agent_id, {})
            for epoch in [e for e in sent if e <= member.applied_epoch]:
                del sent[epoch]
                first_sent.pop(epoch, None)
            if sent:
                in_flight[agent_id] = frozenset().union(*sent.values())
        return in_flight

    async def run(self) -> None:
        """Step while leading; sleep on the wake event otherwise."""
        while True:
            if not self._leadership.is_leader:
                self.schedule = self.schedule.new_term()
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
            except StaleRead:
                self._dirty = True  # an agent it would expire heartbeated meanwhile: step again on a fresh read
                self._wake.set()
                log.info("a leader step was refused: an agent it expired was heard from meanwhile; stepping again")
            except StoreUnavailable:
                self._dirty = True
                self._metrics.store_errors.labels("leader_step").inc()
            except Exception:  # a bug must not end leadership silently: log and go on
                self._dirty = True
                log.exception("leader step failed")
            self._last_step_seconds = time.perf_counter() - started
            timing = Timing.of(self._config_source().scaling.coordinator)
            wait = next_wake_in(self.schedule, timing, time.monotonic())
            if self._ack_check_at is not None:
                wait = min(wait, max(0.0, self._ack_check_at - time.monotonic()))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            if self._ack_check_at is not None and time.monotonic() >= self._ack_check_at:
                self._ack_check_at = None
                self._dirty = True  # a grant passed its acknowledgment deadline: look again
            if self._wake.is_set():
                # Events come in bursts (a registration storm, a wave of acks): let a burst gather so
                # one step answers it, for at most as long as a step takes.
                await asyncio.sleep(min(0.1, self._last_step_seconds))
            self._wake.clear()

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
        timing = Timing.of(config.scaling.coordinator)
        full = full_step_due(
            self.schedule, timing, time.monotonic(), dirty=self._dirty, request_pending=not self._requests.empty()
        )
        if not full and not expiry_due(self.schedule, await self._store.now_ms()):
            self.skipped_steps += 1
            return
        self.full_steps += 1
        self._dirty = False  # cleared before reading: an event that arrives during the step sets it again
        step, meta = await self._read_input(config)
        now = time.monotonic()
        # Joining, for the schedule, means becoming eligible: an unproven or unacknowledged member
        # gets nothing, so it joins (and the cluster balances towards it) once it is past that.
        live = frozenset(a for a, r in step.agents.items() if r.is_member and r.proven and a not in step.unacknowledged)
        self.schedule, decision = decide(
            self.schedule,
            timing,
            now,
            live=live,
            request_pending=not self._requests.empty(),
            step=step,
            last_heartbeat_write_ms=meta.last_heartbeat_write_ms,
        )
        if decision.mark_recovered:
            await self._store.mark_recovered()
            step, _ = await self._read_input(config)
        if decision.action == "serve_request":
            self._dirty = True  # the request may have written; the next tick takes a normal step
            await self._serve_request(self._requests.get_nowait(), lease, step)
            return
        if decision.action == "wait":
            self._dirty = True
            return
        plan = plan_step(
            step,
            balance=decision.balance,
            cost_rebalance=decision.cost_rebalance,
            max_spread=timing.rebalance_max_spread,
            reason=decision.reason,
        )
        await self._apply(lease, plan)
        self.schedule = after_plan(self.schedule, now, decision, step, plan)
        if not plan.is_noop:
            self._dirty = True  # look once more after a write: its effects (expiries, epochs) are in the store now

    async def _apply(self, lease: Lease, plan: StepPlan) -> None:
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
        for agent_id, reason in sorted(plan.expiry_reasons.items()):
            self._metrics.expirations.labels(reason).inc()
            log.info(
                "expired agent %s: %s",
                agent_id,
                "silent for node_timeout" if reason == "silent" else "disconnected for disconnect_grace",
            )
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
                    step, _ = await self._read_input(self._config_source())
                plan = plan_step(with_draining(step, request.agent_id), reason="drain")
            else:
                plan = plan_step(step, cost_rebalance=0.0, reason="operator")
            moves = moves_between(step.target, plan.placement.owners)
            if not request.dry_run:
                await self._apply(lease, plan)
            result = OperatorResult(
                moves=moves,
                applied=not request.dry_run,
                spread_before=spread(loads_of(step.target, plan.costs, plan.live)),
                spread_after=spread(plan.placement.loads),
            )
            if request.result is not None and not request.result.done():
                request.result.set_result(result)
        except Exception as exc:
            if request.result is not None and not request.result.done():
                request.result.set_exception(exc)
