"""The one storage interface of the coordinator. It stores; it does not decide placement.

Two implementations: `RedisScalingStore` (shared state, fenced Lua writes) and
`MemoryScalingStore` (one coordinator, no Redis). tests/integration/test_store_contract.py runs
the same suite against both.

Writes fall in two groups:
- membership writes (heartbeats, leave, drain flags) come from whichever replica holds the agent's
  stream, unfenced: they record what agents say;
- leader writes (target placement, assignments, expiry) are fenced: they check, atomically inside
  the store, that the writer still holds the lease at its epoch.

A released database's top-query baseline (`QueryBaseline`) is a membership write too: stored with
the heartbeat or Leave that releases it, in the same atomic write, so no grant of it can be written
(let alone pushed) before its baseline is there; kept apart from the agent records (which every
leader step reads whole), one entry per resource, for QUERY_BASELINE_TTL_MS.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

from ..model import (
    AgentRecord,
    AssignmentRecord,
    ClusterMeta,
    HeartbeatOutcome,
    HeartbeatReport,
    LeaderInfo,
    Lease,
    PlacementWrite,
    QueryBaseline,
)


@dataclass(frozen=True)
class StoreEvent:
    """`membership`: an agent joined, left or reported a different set (the leader should look now).
    `assignments`: the leader wrote assignments for `agents` (replicas push them to their streams)."""

    kind: str
    agents: tuple[str, ...] = ()


class ScalingStore(abc.ABC):
    mode: str

    # -- leadership -------------------------------------------------------------------------
    @abc.abstractmethod
    async def try_acquire_leadership(
        self, holder: str, ttl_ms: int, address: str = "", min_epoch: int = 0
    ) -> Lease | None:
        """Take the lease if nobody holds it. The epoch is above every epoch seen before
        (`min_epoch` carries the caller's memory across a store that lost its data)."""

    @abc.abstractmethod
    async def renew_leadership(self, lease: Lease, ttl_ms: int) -> bool:
        """Extend the lease; False if it is no longer ours (lost: stop leading at once)."""

    @abc.abstractmethod
    async def release_leadership(self, lease: Lease) -> None:
        """Give the lease up so a successor takes over now rather than after the TTL."""

    @abc.abstractmethod
    async def read_leader(self) -> LeaderInfo | None: ...

    # -- membership (unfenced) ----------------------------------------------------------------
    @abc.abstractmethod
    async def record_heartbeat(self, report: HeartbeatReport, node_timeout_ms: int) -> HeartbeatOutcome:
        """Upsert the agent (re-registering it if the store does not know it) and its current set,
        and store each of `report.baselines` as a QueryBaseline at its released poll time. Raises AgentIdConflict when a live agent of another pod holds the id, SessionMismatch when
        the registration's instance is known under another session, AgentAlreadyLeft when that
        very registration left."""

    @abc.abstractmethod
    async def record_leave(
        self,
        agent_id: str,
        session: str,
        released: Mapping[str, int],
        baselines: Mapping[str, bytes] | None = None,
    ) -> int | None:
        """Mark the agent left, merging the final poll times it `released` (resource -> ms) as a
        heartbeat would, and storing its `baselines` (resource -> bytes) at those times; returns how many databases it reported polling, None if the store does not
        know the agent. Raises SessionMismatch unless `session` is its registration's session."""

    @abc.abstractmethod
    async def record_disconnect(self, agent_id: str, instance_id: str, sequence: int) -> bool:
        """Mark a member agent suspect: its stream ended without a Leave after the heartbeat
        `sequence` of registration `instance_id` was recorded. Refused (False) if the store knows
        a newer heartbeat of it (it reconnected meanwhile), another instance, or a non-member;
        an already suspect agent keeps its first mark. A later heartbeat clears the mark."""

    @abc.abstractmethod
    async def read_query_baselines(self, resource_ids: Sequence[str]) -> dict[str, QueryBaseline]:
        """The stored, unexpired baselines of `resource_ids` (absent ones left out), in one read."""

    @abc.abstractmethod
    async def read_agent(self, agent_id: str) -> AgentRecord | None: ...

    @abc.abstractmethod
    async def set_draining(self, agent_id: str, draining: bool) -> bool:
        """Flag a member agent as draining (or active again); False if it is not a member."""

    @abc.abstractmethod
    async def read_agents(self) -> dict[str, AgentRecord]: ...

    @abc.abstractmethod
    async def mark_recovered(self) -> None:
        """Record that the store was unreachable and is back: agents get a fresh node_timeout."""

    # -- placement (fenced) ---------------------------------------------------------------------
    @abc.abstractmethod
    async def write_placement(self, lease: Lease, write: PlacementWrite) -> dict[str, int]:
        """Apply a leader step atomically; returns agent -> new assignment epoch.
        Raises FencedError if `lease` is no longer the current one, StaleRead if an agent in
        `write.expire_heard_ms` has heartbeated since (nothing is written then)."""

    @abc.abstractmethod
    async def read_target(self) -> dict[str, str]: ...

    @abc.abstractmethod
    async def read_assignments(self, agent_ids: list[str] | None = None) -> dict[str, AssignmentRecord]: ...

    @abc.abstractmethod
    async def read_meta(self) -> ClusterMeta: ...

    @abc.abstractmethod
    async def now_ms(self) -> int:
        """The store's clock (Redis TIME), so replicas with skewed clocks agree."""

    # -- notifications ----------------------------------------------------------------------------
    @abc.abstractmethod
    async def publish(self, event: StoreEvent) -> None: ...

    def subscribe(self) -> EventSubscription:
        subscription = EventSubscription(self)
        self._subscribers.add(subscription)
        return subscription

    def _deliver(self, event: StoreEvent) -> None:
        for subscription in list(self._subscribers):
            subscription.queue.put_nowait(event)

    _subscribers: set[EventSubscription]

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:  # noqa: B027 - optional hook: a store without background work needs none
        """Start background work (the Redis event listener). Idempotent."""

    @abc.abstractmethod
    async def ping(self) -> bool: ...

    @abc.abstractmethod
    async def close(self) -> None:
        """Idempotent; safe without start()."""


class EventSubscription:
    """An in-process queue of store events for one consumer (the leader, or the stream fan-out)."""

    def __init__(self, store: ScalingStore):
        self._store = store
        self.queue: asyncio.Queue[StoreEvent] = asyncio.Queue()

    def close(self) -> None:
        self._store._subscribers.discard(self)

    def __aiter__(self) -> AsyncIterator[StoreEvent]:
        return self

    async def __anext__(self) -> StoreEvent:
        return await self.queue.get()
