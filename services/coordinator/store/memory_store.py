"""In-process store for a single coordinator (`scaling.mode: memory`): same contract as Redis."""

from __future__ import annotations

import dataclasses
import secrets
import time

from ..model import (
    QUERY_BASELINE_TTL_MS,
    AgentAlreadyLeft,
    AgentIdConflict,
    AgentRecord,
    AssignmentRecord,
    ClusterMeta,
    FencedError,
    HeartbeatOutcome,
    HeartbeatReport,
    LeaderInfo,
    Lease,
    PlacementWrite,
    QueryBaseline,
    SessionMismatch,
    StaleRead,
    membership_digest,
)
from .base import ScalingStore, StoreEvent


class MemoryScalingStore(ScalingStore):
    mode = "memory"

    def __init__(self, clock=time.time, *, query_baseline_ttl_ms: int = QUERY_BASELINE_TTL_MS):
        self._clock = clock  # wall clock in seconds; injectable for the contract tests
        self._baseline_ttl_ms = query_baseline_ttl_ms
        self._baselines: dict[str, tuple[QueryBaseline, int]] = {}  # resource -> (baseline, expires at ms)
        self._subscribers = set()
        self._lease: Lease | None = None
        self._lease_expires_ms = 0
        self._leader_address = ""
        self._epoch_counter = 0
        self._agents: dict[str, AgentRecord] = {}
        self._target: dict[str, str] = {}
        self._assignments: dict[str, AssignmentRecord] = {}
        self._meta = ClusterMeta()

    async def now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _now(self) -> int:
        return int(self._clock() * 1000)

    def _current_lease(self) -> Lease | None:
        if self._lease is not None and self._now() >= self._lease_expires_ms:
            self._lease = None
        return self._lease

    async def try_acquire_leadership(self, holder, ttl_ms, address="", min_epoch=0):
        if self._current_lease() is not None:
            return None
        self._epoch_counter = max(self._epoch_counter + 1, min_epoch + 1)
        self._lease = Lease(holder=holder, epoch=self._epoch_counter, token=secrets.token_hex(8))
        self._lease_expires_ms = self._now() + ttl_ms
        self._leader_address = address
        return self._lease

    async def renew_leadership(self, lease, ttl_ms):
        if self._current_lease() != lease:
            return False
        self._lease_expires_ms = self._now() + ttl_ms
        return True

    async def release_leadership(self, lease):
        if self._current_lease() == lease:
            self._lease = None

    async def read_leader(self):
        lease = self._current_lease()
        return None if lease is None else LeaderInfo(lease.holder, lease.epoch, self._leader_address)

    async def record_heartbeat(self, report: HeartbeatReport, node_timeout_ms: int) -> HeartbeatOutcome:
        now = self._now()
        old = self._agents.get(report.agent_id)
        state, changed, rejoined, proven = "active", True, True, report.proven
        if old is not None:
            same_instance = old.registration.instance_id == report.registration.instance_id
            if same_instance and old.registration.session != report.registration.session:
                raise SessionMismatch(f"agent {report.agent_id!r}: this registration has another session")
            if old.state == "left" and same_instance:
                raise AgentAlreadyLeft(f"agent {report.agent_id!r} has left; a restarted process rejoins")
            proven = proven or (same_instance and old.proven)
            if old.is_member:
                if (
                    old.registration.instance_id != report.registration.instance_id
                    and old.registration.pod_name != report.registration.pod_name
                    and now - old.last_heartbeat_ms < node_timeout_ms
                ):
                    raise AgentIdConflict(
                        f"agent id {report.agent_id!r} is in use by live pod {old.registration.pod_name!r}"
                    )
                state, rejoined = old.state, False
                changed = membership_digest(
                    old.registration, old.applied_epoch, old.current, old.proven
                ) != membership_digest(report.registration, report.applied_epoch, report.current, proven)
        sequence = report.sequence
        if old is not None and old.registration.instance_id == report.registration.instance_id:
            sequence = max(sequence, old.sequence)  # a late heartbeat from an older stream: not newer
        released = dict(old.released) if old is not None else {}
        released.update({rid: s.last_poll_ms for rid, s in report.released.items()})
        for rid in report.current:
            released.pop(rid, None)
        self._store_baselines(report.baselines, {rid: s.last_poll_ms for rid, s in report.released.items()}, now)
        self._agents[report.agent_id] = AgentRecord(
            report.agent_id,
            report.registration,
            state,
            now,
            report.applied_epoch,
            dict(report.current),
            report.coordinator_id,
            released,
            proven,
            sequence,
        )
        self._meta = dataclasses.replace(self._meta, last_heartbeat_write_ms=now)
        return HeartbeatOutcome(changed=changed, rejoined=rejoined)

    def _store_baselines(self, baselines, released_ms, now: int) -> None:
        """Each baseline at the poll time it was released with; expired entries go first (bounded memory)."""
        if not baselines:
            return
        for rid in [r for r, (_, expires) in self._baselines.items() if expires <= now]:
            del self._baselines[rid]
        for rid, state in baselines.items():
            self._baselines[rid] = (QueryBaseline(released_ms.get(rid, 0), bytes(state)), now + self._baseline_ttl_ms)

    async def read_query_baselines(self, resource_ids):
        now = self._now()
        found = {}
        for rid in resource_ids:
            entry = self._baselines.get(rid)
            if entry is not None and entry[1] > now:
                found[rid] = entry[0]
        return found

    async def record_leave(self, agent_id, session, released, baselines=None):
        old = self._agents.get(agent_id)
        if old is None:
            return None
        if old.registration.session != session:
            raise SessionMismatch(f"agent {agent_id!r}: not this registration's session")
        self._store_baselines(baselines, released, self._now())
        finals = dict(old.released)
        for rid, ms in released.items():
            finals[rid] = max(ms, finals.get(rid, 0))
        self._agents[agent_id] = dataclasses.replace(old, state="left", released=finals)
        return len(old.current)

    async def record_disconnect(self, agent_id, instance_id, sequence):
        old = self._agents.get(agent_id)
        if (
            old is None
            or not old.is_member
            or old.registration.instance_id != instance_id
            or old.sequence > sequence
            or old.disconnected_ms
        ):
            return False
        self._agents[agent_id] = dataclasses.replace(old, disconnected_ms=self._now())
        return True

    async def read_agent(self, agent_id):
        return self._agents.get(agent_id)

    async def set_draining(self, agent_id, draining):
        old = self._agents.get(agent_id)
        if old is None or not old.is_member:
            return False
        self._agents[agent_id] = dataclasses.replace(old, state="draining" if draining else "active")
        return True

    async def read_agents(self):
        return dict(self._agents)

    async def mark_recovered(self):
        self._meta = dataclasses.replace(self._meta, grace_from_ms=self._now())

    async def write_placement(self, lease: Lease, write: PlacementWrite) -> dict[str, int]:
        if self._current_lease() != lease:
            raise FencedError("lease lost")
        for agent_id, heard_ms in write.expire_heard_ms.items():
            old = self._agents.get(agent_id)
            if old is not None and old.last_heartbeat_ms != heard_ms:
                raise StaleRead(f"agent {agent_id!r} was heard from since the step read the store")
        now = self._now()
        self._target.update(write.target_set)
        for resource in write.target_delete:
            self._target.pop(resource, None)
        for agent_id in write.expire:
            old = self._agents.get(agent_id)
            if old is not None and old.is_member:
                self._agents[agent_id] = dataclasses.replace(old, state="expired")
        epoch, epochs = self._meta.assignment_epoch, {}
        for agent_id, grants in write.assignments.items():
            epoch = max(epoch + 1, now)  # hybrid epoch: monotonic even if the store is ever emptied
            self._assignments[agent_id] = AssignmentRecord(agent_id, epoch, lease.epoch, dict(grants))
            epochs[agent_id] = epoch
        meta = dataclasses.replace(
            self._meta, assignment_epoch=epoch, leader_tick_ms=now, moves_total=self._meta.moves_total + write.moves
        )
        if write.unacknowledged is not None:
            meta = dataclasses.replace(meta, unacknowledged=tuple(sorted(write.unacknowledged)))
        if write.rebalance_reason:
            meta = dataclasses.replace(
                meta,
                rebalances_total=meta.rebalances_total + 1,
                last_rebalance_ms=now,
                last_rebalance_reason=write.rebalance_reason,
            )
        self._meta = meta
        return epochs

    async def read_target(self):
        return dict(self._target)

    async def read_assignments(self, agent_ids=None):
        if agent_ids is None:
            return dict(self._assignments)
        return {a: self._assignments[a] for a in agent_ids if a in self._assignments}

    async def read_meta(self):
        return self._meta

    async def publish(self, event: StoreEvent) -> None:
        self._deliver(event)

    async def ping(self):
        return True

    async def close(self):
        self._subscribers.clear()
