"""AgentService: heartbeat streams, the GetAssignments fallback and Leave. Every replica serves it.

Each stream is a `Session` with an outbound queue. Replies to heartbeats and pushes of new
assignments (on the leader's "assignments" event) go through that queue, so an assignment reaches
a connected agent within moments of the leader's write, not on its next heartbeat. A reply echoes
the request's sequence once the store has recorded it (a push echoes 0), so the agent knows what
was recorded and when it sent it.

A registration carries a session secret; the store keeps its digest, and Leave and GetAssignments
must present the secret (PERMISSION_DENIED otherwise), so only the registered process can end or
read its session. A registration is *proven* by a second heartbeat on its stream; only then does
the leader give it databases.

A stream that ends without a Leave while this replica is not shutting down (the agent's process
died and its connection closed, or the connection broke) marks the agent *suspect* in the store,
guarded by the sequence of the stream's last recorded heartbeat so that a reconnect elsewhere wins
the race; the leader expires a suspect after `disconnect_grace` unless a heartbeat clears the mark.
A replica that shuts down ends its streams itself and marks nobody.

Every assignment a replica sends (a heartbeat's answer, a push, GetAssignments) carries, on each grant,
the previous owner's top-query baseline when the store holds one released at exactly the grant's last
poll time (`model.baselines_to_attach`; one batched store read per send). None stored — the owner
crashed, or the 15 minutes passed — means none sent: the new owner starts its top queries fresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from dbintel.common.config import Config
from dbintel.common.durations import format_duration
from dbintel.common.message_limits import MAX_GRANTED_BASELINE_BYTES
from dbintel.v1 import agent_service_pb2 as pb
from dbintel.v1 import agent_service_pb2_grpc, types_pb2

from . import rpc, validation
from .model import (
    AgentAlreadyLeft,
    AgentIdConflict,
    AssignmentRecord,
    HeartbeatReport,
    Registration,
    SessionMismatch,
    StoreUnavailable,
    baseline_candidates,
    baselines_to_attach,
)
from .store.base import EventSubscription, ScalingStore, StoreEvent
from .store.health import StoreHealth
from .telemetry import CoordinatorMetrics

log = logging.getLogger(__name__)


def assignment_message(
    agent_id: str, record: AssignmentRecord | None, baselines: dict[str, bytes] | None = None
) -> types_pb2.Assignment:
    """The Assignment of `record`, each grant with its baseline from `baselines` (resource -> bytes)."""
    if record is None:
        return types_pb2.Assignment(agent_id=agent_id)
    baselines = baselines or {}
    grants = []
    for rid in sorted(record.grants):
        grant = types_pb2.ResourceGrant(resource_id=rid)
        if record.grants[rid] > 0:
            grant.last_poll_time.CopyFrom(
                Timestamp(seconds=record.grants[rid] // 1000, nanos=(record.grants[rid] % 1000) * 1_000_000)
            )
        if rid in baselines:
            grant.query_baseline = baselines[rid]
        grants.append(grant)
    return types_pb2.Assignment(
        agent_id=agent_id, assignment_epoch=record.epoch, leader_epoch=record.leader_epoch, resources=grants
    )


@dataclass(eq=False)
class Session:
    agent_id: str
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    last_sent_epoch: int = 0
    registration: Registration | None = None
    last_report: HeartbeatReport | None = None  # re-recorded at once if the store loses its data
    recorded: int = 0  # heartbeats of this stream the store recorded
    last_sequence: int = 0  # of the newest heartbeat of this stream the store recorded
    # Why this replica ended the stream ("stopping", "left", "superseded", "refused"); None while the
    # agent's side is what ends it: then the agent is marked suspect.
    ended_by_coordinator: str | None = None


class AgentServicer(agent_service_pb2_grpc.AgentServiceServicer):
    def __init__(
        self,
        store: ScalingStore,
        *,
        coordinator_id: str,
        config_source: Callable[[], Config],
        metrics: CoordinatorMetrics,
        store_health: StoreHealth,
        leader_epoch: Callable[[], int],
    ):
        self._store, self._id, self._config_source = store, coordinator_id, config_source
        self._metrics, self._health, self._leader_epoch = metrics, store_health, leader_epoch
        self.sessions: dict[str, Session] = {}
        self._fanout: asyncio.Task | None = None
        # (config it came from, its heartbeat_interval, its disconnect_grace)
        self._interval_cache: tuple[object, Duration, Duration] | None = None
        self._stopping = False
        self._marks: set[asyncio.Task[None]] = set()  # suspect marks being written

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        self._fanout = asyncio.create_task(self._push_assignments(self._store.subscribe()), name="assignment-fanout")

    async def stop(self) -> None:
        """End every stream: the agents reconnect to another replica; none is marked suspect."""
        self._stopping = True
        for session in list(self.sessions.values()):
            self._end(session, "stopping")
        if self._fanout is not None:
            self._fanout.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fanout
        if self._marks:  # marks of streams that ended before: let them land (they speed up a failover)
            await asyncio.wait(self._marks, timeout=1.0)

    @staticmethod
    def _end(session: Session, why: str, abort: tuple[grpc.StatusCode, str] | None = None) -> None:
        session.ended_by_coordinator = session.ended_by_coordinator or why
        session.outbox.put_nowait(None if abort is None else ("abort", *abort))

    def _timing(self):
        return self._config_source().scaling.coordinator

    # -- Heartbeat ------------------------------------------------------------------------------------
    async def Heartbeat(self, request_iterator, context):
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            return
        report = await rpc.checked(context, validation.heartbeat, first, None, self._id)
        session = Session(agent_id=report.agent_id, registration=report.registration)
        reader = asyncio.create_task(self._read(session, first, request_iterator))
        try:
            while True:
                item = await session.outbox.get()
                if item is None:
                    return
                if isinstance(item, tuple):
                    _, code, message = item
                    await rpc.abort(context, code, message)
                if item.HasField("assignment"):
                    session.last_sent_epoch = max(session.last_sent_epoch, item.assignment.assignment_epoch)
                yield item
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            if self.sessions.get(session.agent_id) is session:
                del self.sessions[session.agent_id]
                self._suspect_if_gone(session)
            self._metrics.connected_agents.set(len(self.sessions))

    def _suspect_if_gone(self, session: Session) -> None:
        """The agent's side ended this stream (no Leave came through it): mark the agent suspect."""
        if self._stopping or session.ended_by_coordinator is not None or session.registration is None:
            return
        if session.last_sequence == 0 or self._timing().disconnect_grace.total_seconds() <= 0:
            return  # nothing recorded, an agent from before sequence numbers, or turned off: silence decides
        task = asyncio.get_running_loop().create_task(self._mark_disconnected(session), name="suspect mark")
        self._marks.add(task)
        task.add_done_callback(self._marks.discard)

    async def _mark_disconnected(self, session: Session) -> None:
        assert session.registration is not None
        try:
            marked = await self._store.record_disconnect(
                session.agent_id, session.registration.instance_id, session.last_sequence
            )
            if marked:
                self._metrics.disconnects.inc()
                log.info(
                    "agent %s: heartbeat stream ended without a Leave; expiring it in %s unless it reconnects",
                    session.agent_id,
                    format_duration(self._timing().disconnect_grace),
                )
                await self._store.publish(StoreEvent("membership", (session.agent_id,)))
        except StoreUnavailable:
            self._health.failed("disconnect")  # node_timeout expires it instead

    async def _read(self, session: Session, first, request_iterator) -> None:
        """Record each heartbeat and queue its reply; ends the stream on a bad message."""
        try:
            await self._handle(session, first)
            # Only a stream whose registration the store accepted replaces an older one.
            previous = self.sessions.get(session.agent_id)
            if previous is not None and previous is not session:
                self._end(previous, "superseded", (grpc.StatusCode.ABORTED, "superseded by a newer stream"))
            self.sessions[session.agent_id] = session
            self._metrics.connected_agents.set(len(self.sessions))
            async for request in request_iterator:
                if request.agent_id != session.agent_id:
                    raise validation.InvalidArgument("agent_id: must not change within a stream")
                await self._handle(session, request)
            session.outbox.put_nowait(None)
        except validation.InvalidArgument as exc:
            self._end(session, "refused", (grpc.StatusCode.INVALID_ARGUMENT, str(exc)))
        except AgentIdConflict as exc:
            self._end(session, "refused", (grpc.StatusCode.ALREADY_EXISTS, str(exc)))
        except AgentAlreadyLeft as exc:
            self._end(session, "refused", (grpc.StatusCode.FAILED_PRECONDITION, str(exc)))
        except SessionMismatch as exc:
            self._end(session, "refused", (grpc.StatusCode.PERMISSION_DENIED, str(exc)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the client went away, or a bug: end this stream only
            log.debug("heartbeat stream of %s ended: %s", session.agent_id, type(exc).__name__)
            session.outbox.put_nowait(None)

    async def _handle(self, session: Session, request: pb.HeartbeatRequest) -> None:
        report = validation.heartbeat(request, session.registration, self._id)
        if session.recorded == 0:
            report = dataclasses.replace(report, proven=False)  # the registration alone proves nothing
        session.registration = report.registration
        self._metrics.heartbeats.inc()
        timeout_ms = int(self._timing().node_timeout.total_seconds() * 1000)
        degraded = False
        try:
            outcome = await self._store.record_heartbeat(report, timeout_ms)
            session.recorded += 1
            session.last_sequence = max(session.last_sequence, report.sequence)
            await self._health.succeeded()
            if outcome.rejoined and session.last_report is not None:
                # The store forgot an agent that never left: it lost its data. Every replica
                # re-records its streams now, so the leader sees the whole fleet before placing.
                await self._store.publish(StoreEvent("reregister"))
            session.last_report = report
            if outcome.changed:
                await self._store.publish(StoreEvent("membership", (report.agent_id,)))
        except StoreUnavailable:
            self._health.failed("heartbeat")
            degraded = True
        response = self._response(degraded)
        response.answered_sequence = request.sequence
        if not degraded:
            try:
                record = (await self._store.read_assignments([report.agent_id])).get(report.agent_id)
                if record is not None and record.epoch > report.applied_epoch:
                    baselines = await self._baselines({report.agent_id: record}, {report.agent_id: report.current})
                    response.assignment.CopyFrom(
                        assignment_message(report.agent_id, record, baselines.get(report.agent_id))
                    )
            except StoreUnavailable:
                self._health.failed("read_assignment")
                response.degraded = True
        session.outbox.put_nowait(response)

    def _response(self, degraded: bool) -> pb.HeartbeatResponse:
        config = self._config_source()
        if self._interval_cache is None or self._interval_cache[0] is not config:  # rebuilt on reload only
            interval, grace = Duration(), Duration()
            interval.FromTimedelta(config.scaling.coordinator.heartbeat_interval)
            grace.FromTimedelta(config.scaling.coordinator.disconnect_grace)
            self._interval_cache = (config, interval, grace)
        _, interval, grace = self._interval_cache
        return pb.HeartbeatResponse(
            degraded=degraded,
            heartbeat_interval=interval,
            coordinator_id=self._id,
            leader_epoch=self._leader_epoch(),
            disconnect_grace=grace,
        )

    async def _push_assignments(self, subscription: EventSubscription) -> None:
        """Push the leader's new assignments to the agents streaming to this replica."""
        try:
            async for event in subscription:
                if event.kind == "reregister":
                    await self._reregister_all()
                elif event.kind in ("assignments", "resync"):
                    await self._push(list(event.agents) if event.kind == "assignments" else list(self.sessions))
        finally:
            subscription.close()

    async def _push(self, agent_ids: list[str]) -> None:
        agents = [a for a in agent_ids if a in self.sessions]
        if not agents:
            return
        try:
            records = await self._store.read_assignments(agents)
            fresh = {}
            for agent_id, record in records.items():
                session = self.sessions.get(agent_id)
                if session is not None and record.epoch > session.last_sent_epoch:
                    fresh[agent_id] = record
            baselines = await self._baselines(fresh, self._polling(fresh))
        except StoreUnavailable:
            self._health.failed("push_assignments")
            return
        for agent_id, record in fresh.items():
            session = self.sessions.get(agent_id)
            if session is not None and record.epoch > session.last_sent_epoch:
                response = self._response(False)
                response.assignment.CopyFrom(assignment_message(agent_id, record, baselines.get(agent_id)))
                session.last_sent_epoch = record.epoch
                session.outbox.put_nowait(response)

    def _polling(self, agent_ids: Iterable[str]) -> dict[str, Iterable[str]]:
        """What each agent's stream last reported polling (it keeps those: no baseline needed)."""
        out: dict[str, Iterable[str]] = {}
        for agent_id in agent_ids:
            session = self.sessions.get(agent_id)
            if session is not None and session.last_report is not None:
                out[agent_id] = session.last_report.current
        return out

    async def _baselines(
        self, records: Mapping[str, AssignmentRecord], polling: Mapping[str, Iterable[str]]
    ) -> dict[str, dict[str, bytes]]:
        """agent -> the baselines its assignment carries: one store read for all of `records`. A failed
        read sends the assignment without them (the new owners start fresh) rather than delay it."""
        wanted = {a: baseline_candidates(r.grants, polling.get(a, ())) for a, r in records.items()}
        lookup = sorted({rid for rids in wanted.values() for rid in rids})
        if not lookup:
            return {}
        try:
            stored = await self._store.read_query_baselines(lookup)
        except StoreUnavailable:
            self._health.failed("read_query_baselines")
            return {}
        if not stored:
            return {}
        out = {}
        for agent_id, rids in wanted.items():
            mine = {rid: stored[rid] for rid in rids if rid in stored}
            if mine:
                out[agent_id] = baselines_to_attach(records[agent_id].grants, mine, MAX_GRANTED_BASELINE_BYTES)
        return out

    async def _reregister_all(self) -> None:
        timeout_ms = int(self._timing().node_timeout.total_seconds() * 1000)
        for session in list(self.sessions.values()):
            if session.last_report is None:
                continue
            try:
                await self._store.record_heartbeat(session.last_report, timeout_ms)
            except (AgentIdConflict, AgentAlreadyLeft, SessionMismatch):
                pass  # its own stream decides
            except StoreUnavailable:
                self._health.failed("reregister")
                return
        with contextlib.suppress(StoreUnavailable):
            await self._store.publish(StoreEvent("membership"))

    # -- unary ------------------------------------------------------------------------------------------
    async def GetAssignments(self, request, context):
        agent = await rpc.checked(context, validation.agent_id, request.agent_id)
        session = await rpc.checked(context, validation.session, request.session_secret)
        try:
            member = await self._store.read_agent(agent)
            if member is not None and member.registration.session != session:
                await rpc.abort(
                    context, grpc.StatusCode.PERMISSION_DENIED, f"agent {agent!r}: not this registration's session"
                )
            record = (await self._store.read_assignments([agent])).get(agent)
            baselines = await self._baselines({agent: record}, {}) if record is not None else {}
            await self._health.succeeded()
        except StoreUnavailable:
            self._health.failed("get_assignments")
            return pb.GetAssignmentsResponse(assignment=types_pb2.Assignment(agent_id=agent), degraded=True)
        return pb.GetAssignmentsResponse(assignment=assignment_message(agent, record, baselines.get(agent)))

    async def Leave(self, request, context):
        agent = await rpc.checked(context, validation.agent_id, request.agent_id)
        await rpc.checked(context, validation.leave_reason, request.reason)
        digest = await rpc.checked(context, validation.session, request.session_secret)
        finals, baselines = await rpc.checked(context, validation.leave_released, request)
        try:
            # Its final heartbeat has usually emptied its current set already, so count what it was granted.
            record = (await self._store.read_assignments([agent])).get(agent)
            still_polling = await self._store.record_leave(agent, digest, finals, baselines)
            if still_polling is None:
                await rpc.abort(context, grpc.StatusCode.NOT_FOUND, f"agent {agent!r} is not registered")
            released = max(still_polling or 0, len(record.grants) if record is not None else 0)
            await self._store.publish(StoreEvent("membership", (agent,)))
        except SessionMismatch as exc:
            log.warning("refused a Leave for agent %s without its session secret", agent)
            await rpc.abort(context, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except StoreUnavailable:
            self._health.failed("leave")
            await rpc.abort(context, grpc.StatusCode.UNAVAILABLE, "store unreachable; the agent will expire instead")
        session = self.sessions.get(agent)
        if session is not None:  # its stream has nothing more to say
            self._end(session, "left")
        log.info("agent %s left (%s), releasing %d database(s)", agent, request.reason or "no reason", released)
        return pb.LeaveResponse(released_resources=released)
