"""OperatorService: status and listings from the shared store (any replica answers), and the
leader-only Rebalance / DrainAgent, which a follower forwards to the leader's advertised address.

Rebalance and DrainAgent change state only when the request says `apply: true`: a request that parses
to defaults (empty, from an old client that sent `dry_run`, or with a field the decoder had to drop) is
a dry run, so a mangled request can never move databases by accident."""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import SecretStr

from dbintel.common.config import Config, TLSSettings
from dbintel.common.grpc_security import bearer_metadata, open_channel
from dbintel.v1 import operator_service_pb2 as pb
from dbintel.v1 import operator_service_pb2_grpc, types_pb2

from . import rpc, validation
from .leader import LeaderLoop, Leadership, OperatorRequest
from .model import StoreUnavailable
from .planning import InventoryItem, liveness, measured_costs
from .store.base import ScalingStore

log = logging.getLogger(__name__)

_STATES = {
    "active": types_pb2.AGENT_STATE_ACTIVE,
    "draining": types_pb2.AGENT_STATE_DRAINING,
    "left": types_pb2.AGENT_STATE_LEFT,
    "expired": types_pb2.AGENT_STATE_EXPIRED,
}


def _timestamp(ms: int) -> Timestamp:
    return Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


class OperatorServicer(operator_service_pb2_grpc.OperatorServiceServicer):
    def __init__(
        self,
        store: ScalingStore,
        *,
        coordinator_id: str,
        config_source: Callable[[], Config],
        leadership: Leadership,
        leader_loop: LeaderLoop,
        forward_tls: TLSSettings | None = None,
        operator_token: SecretStr | None = None,
    ):
        self._store, self._id, self._config_source = store, coordinator_id, config_source
        self._leadership, self._loop = leadership, leader_loop
        # A follower forwards with its own client TLS settings and token (every replica has the same config).
        self._forward_tls, self._forward_metadata = forward_tls, bearer_metadata(operator_token)

    async def _snapshot(self, context):
        try:
            agents, target, assignments, meta, now_ms = (
                await self._store.read_agents(),
                await self._store.read_target(),
                await self._store.read_assignments(),
                await self._store.read_meta(),
                await self._store.now_ms(),
            )
        except StoreUnavailable as exc:
            await rpc.abort(context, grpc.StatusCode.UNAVAILABLE, f"store unreachable from this replica: {exc}")
        config = self._config_source()
        inventory = {
            rid: InventoryItem(rid, db.type, db.interval.total_seconds(), db.pin, db.zone)
            for rid, db in config.resources().items()
        }
        timeout_ms = int(config.scaling.coordinator.node_timeout.total_seconds() * 1000)
        live, _ = liveness(agents, now_ms, timeout_ms, meta.grace_from_ms)
        costs = measured_costs(inventory, agents, live)
        granted = {rid: a for a, rec in assignments.items() for rid in rec.grants}
        return config, agents, target, assignments, meta, costs, granted

    def _placement_state(self, rid, target, granted):
        if rid not in target:
            return types_pb2.ASSIGNMENT_STATE_UNASSIGNED
        return (
            types_pb2.ASSIGNMENT_STATE_ASSIGNED
            if granted.get(rid) == target[rid]
            else types_pb2.ASSIGNMENT_STATE_PENDING
        )

    async def GetClusterStatus(self, request, context):
        config, agents, target, _assignments, meta, _costs, granted = await self._snapshot(context)
        leader = await self._store.read_leader()
        by_state: dict[str, int] = dict.fromkeys(_STATES, 0)
        for record in agents.values():
            by_state[record.state] = by_state.get(record.state, 0) + 1
        inventory = config.resources()
        states = [self._placement_state(rid, target, granted) for rid in inventory]
        reply = pb.GetClusterStatusResponse(
            coordinator_id=self._id,
            leader_id=leader.holder if leader else "",
            leader_epoch=leader.epoch if leader else 0,
            is_leader=self._leadership.is_leader,
            store_mode=self._store.mode,
            store_healthy=True,
            agents_by_state=by_state,
            resources_total=len(inventory),
            resources_assigned=states.count(types_pb2.ASSIGNMENT_STATE_ASSIGNED),
            resources_pending=states.count(types_pb2.ASSIGNMENT_STATE_PENDING),
            resources_unassigned=states.count(types_pb2.ASSIGNMENT_STATE_UNASSIGNED),
            assignment_epoch=meta.assignment_epoch,
            last_rebalance_reason=meta.last_rebalance_reason,
            rebalances_total=meta.rebalances_total,
        )
        if meta.last_rebalance_ms:
            reply.last_rebalance_time.CopyFrom(_timestamp(meta.last_rebalance_ms))
        return reply

    async def ListAgents(self, request, context):
        _config, agents, target, assignments, meta, costs, _granted = await self._snapshot(context)
        flagged = set(meta.unacknowledged)
        targeted: dict[str, list[str]] = {}
        for rid, agent in target.items():
            targeted.setdefault(agent, []).append(rid)
        reply = pb.ListAgentsResponse()
        for agent_id in sorted(agents):
            record = agents[agent_id]
            mine = targeted.get(agent_id, [])
            info = types_pb2.AgentInfo(
                agent_id=agent_id,
                pod_name=record.registration.pod_name,
                zone=record.registration.zone,
                version=record.registration.version,
                state=_STATES.get(record.state, types_pb2.AGENT_STATE_UNSPECIFIED),
                assignment_epoch=assignments[agent_id].epoch if agent_id in assignments else 0,
                applied_assignment_epoch=record.applied_epoch,
                target_resources=len(mine),
                current_resources=len(record.current),
                load=sum(costs.get(r, 0.0) for r in mine),
                capacity=record.registration.capacity,
                http_address=record.registration.http_address,
                unacknowledged=agent_id in flagged,
                unproven=record.is_member and not record.proven,
            )
            info.last_heartbeat_time.CopyFrom(_timestamp(record.last_heartbeat_ms))
            if record.suspect:
                info.disconnected_time.CopyFrom(_timestamp(record.disconnected_ms))
            reply.agents.append(info)
        return reply

    async def ListAssignments(self, request, context):
        if request.agent_id:
            await rpc.checked(context, validation.agent_id, request.agent_id)
        config, agents, target, _assignments, _meta, costs, granted = await self._snapshot(context)
        if request.agent_id and request.agent_id not in agents:
            await rpc.abort(context, grpc.StatusCode.NOT_FOUND, f"agent_id: no agent {request.agent_id!r} is known")
        reply = pb.ListAssignmentsResponse()
        for rid in sorted(config.resources()):
            agent = target.get(rid, "")
            if request.agent_id and agent != request.agent_id:
                continue
            reply.assignments.append(
                types_pb2.AssignmentEntry(
                    resource_id=rid,
                    agent_id=agent,
                    state=self._placement_state(rid, target, granted),
                    cost=costs.get(rid, 1.0),
                )
            )
        return reply

    async def ListResources(self, request, context):
        wanted = await rpc.checked(context, validation.resource_type, request.type)
        config, _agents, _target, _assignments, _meta, costs, granted = await self._snapshot(context)
        reply = pb.ListResourcesResponse()
        for rid, db in sorted(config.resources().items()):
            if wanted and db.type != wanted:
                continue
            interval = Duration()
            interval.FromTimedelta(db.interval)
            reply.resources.append(
                types_pb2.ResourceInfo(
                    resource_id=rid,
                    type=db.type,
                    name=db.name,
                    endpoint=db.endpoint,
                    interval=interval,
                    labels=db.labels,
                    owner_agent_id=granted.get(rid, ""),
                    cost=costs.get(rid, 1.0),
                    pinned_agent_id=db.pin or "",
                )
            )
        return reply

    # -- leader-only ---------------------------------------------------------------------------------------
    async def _on_leader(self, context, request: OperatorRequest, forward):
        if self._leadership.is_leader:
            try:
                return await self._loop.submit(request)
            except RuntimeError as exc:
                await rpc.abort(context, grpc.StatusCode.UNAVAILABLE, f"leadership changed: {exc}; retry")
        leader = await self._store.read_leader()
        if leader is None or not leader.address:
            await rpc.abort(context, grpc.StatusCode.UNAVAILABLE, "no leader elected right now; retry shortly")
        async with open_channel(leader.address, self._forward_tls, section="coordinator.client_tls") as channel:
            try:
                return await forward(
                    operator_service_pb2_grpc.OperatorServiceStub(channel), timeout=10, metadata=self._forward_metadata
                )
            except grpc.aio.AioRpcError as exc:
                await rpc.abort(context, exc.code(), f"forwarded to leader {leader.holder}: {exc.details()}")

    @staticmethod
    def _moves(moves):
        return [
            types_pb2.Move(resource_id=m.resource_id, from_agent_id=m.from_agent or "", to_agent_id=m.to_agent)
            for m in moves
        ]

    async def Rebalance(self, request, context):
        result = await self._on_leader(
            context,
            OperatorRequest("rebalance", not request.apply),
            lambda stub, **call: stub.Rebalance(request, **call),
        )
        if isinstance(result, pb.RebalanceResponse):
            return result
        return pb.RebalanceResponse(
            moves=self._moves(result.moves),
            applied=result.applied,
            spread_before=result.spread_before,
            spread_after=result.spread_after,
        )

    async def DrainAgent(self, request, context):
        agent = await rpc.checked(context, validation.agent_id, request.agent_id)
        try:
            agents = await self._store.read_agents()
        except StoreUnavailable as exc:
            await rpc.abort(context, grpc.StatusCode.UNAVAILABLE, f"store unreachable from this replica: {exc}")
        if agent not in agents or not agents[agent].is_member:
            await rpc.abort(context, grpc.StatusCode.NOT_FOUND, f"agent_id: no live agent {agent!r}")
        result = await self._on_leader(
            context,
            OperatorRequest("drain", not request.apply, agent_id=agent),
            lambda stub, **call: stub.DrainAgent(request, **call),
        )
        if isinstance(result, pb.DrainAgentResponse):
            return result
        return pb.DrainAgentResponse(moves=self._moves(result.moves), applied=result.applied)
