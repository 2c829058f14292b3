"""The coordinator against scripted protocol agents, on the memory store and on a real Redis:
exactly one owner, hand-off order, failover times, pushes from any replica, Redis trouble."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from dbintel.v1 import agent_service_pb2 as apb
from dbintel.v1 import operator_service_pb2 as opb
from tests.coordinator_harness import (
    ScriptedAgent,
    exactly_once,
    make_config,
    operator_stub,
    owners,
    scripted_cluster,
    start_coordinator,
    wait_for,
)


def resources(config) -> set[str]:
    return set(config.resources())


@pytest.fixture(params=["memory", "redis"])
def mode(request):
    return request.param


@pytest.fixture
def cluster_config(mode, request):
    redis = request.getfixturevalue("redis_server") if mode == "redis" else None
    return lambda **kw: make_config(mode=mode, redis=redis, **kw)


class DuplicateWatcher:
    """Samples the scripted agents every 5 ms and records any database held by two agents at once."""

    def __init__(self, agents):
        self.agents, self.duplicates, self._task = agents, [], None

    async def _run(self):
        while True:
            for rid, holders in owners(self.agents).items():
                if len(holders) > 1:
                    self.duplicates.append((rid, tuple(holders)))
            await asyncio.sleep(0.005)

    def __enter__(self):
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc):
        self._task.cancel()


async def test_every_database_has_exactly_one_owner_and_status_shows_it(cluster_config):
    config = cluster_config(databases=9)
    coordinator = await start_coordinator(config, "c1")
    address = f"127.0.0.1:{coordinator.grpc_port}"
    agents = [ScriptedAgent(f"agent-{i}", address).start() for i in range(3)]
    channel, stub = operator_stub(address)
    try:
        await wait_for(lambda: exactly_once(agents, resources(config)), message="exactly one owner each")
        assert sorted(len(a.held) for a in agents) == [3, 3, 3]
        status = await stub.GetClusterStatus(opb.GetClusterStatusRequest())
        assert status.is_leader and status.leader_id == "c1" and status.leader_epoch >= 1
        assert status.resources_total == 9 and status.resources_assigned == 9
        assert status.agents_by_state["active"] == 3
        listed = await stub.ListAssignments(opb.ListAssignmentsRequest(agent_id="agent-1"))
        assert {e.resource_id for e in listed.assignments} == agents[1].held
        agent_list = await stub.ListAgents(opb.ListAgentsRequest())
        assert [a.agent_id for a in agent_list.agents] == ["agent-0", "agent-1", "agent-2"]
        assert all(a.applied_assignment_epoch == a.assignment_epoch for a in agent_list.agents)
        listed_resources = await stub.ListResources(opb.ListResourcesRequest(type="redis"))
        assert {r.resource_id: r.owner_agent_id for r in listed_resources.resources} == {
            rid: holders[0] for rid, holders in owners(agents).items()
        }
    finally:
        await channel.close()
        for agent in agents:
            await agent.stop()
        await coordinator.shutdown()


async def test_leave_hands_off_within_a_second_without_double_owner(cluster_config):
    config = cluster_config(databases=12)
    async with scripted_cluster(config, 3) as (_coordinator, _address, agents):
        leaving, staying = agents[0], agents[1:]
        moved = set(leaving.held)
        before = {a.agent_id: set(a.held) for a in staying}
        with DuplicateWatcher(agents) as watcher:
            started = time.monotonic()
            released = await leaving.leave("SIGTERM")
            await wait_for(lambda: exactly_once(staying, resources(config)), timeout=5, message="hand-off")
            elapsed = time.monotonic() - started
        assert released == len(moved)
        assert elapsed < 1.0, f"graceful leave took {elapsed:.2f}s"
        assert watcher.duplicates == []
        for agent in staying:  # only the leaver's databases moved
            assert before[agent.agent_id] <= agent.held


async def test_leave_after_final_report_still_counts_the_databases_it_held(cluster_config):
    """The real agent reports everything released in a final heartbeat before Leave, so its current set
    is already empty when Leave arrives; the reply must still say how many databases move."""
    config = cluster_config(databases=9)
    async with scripted_cluster(config, 3) as (_coordinator, _address, agents):
        leaving = agents[0]
        moved = set(leaving.held)
        assert moved, "the leaving agent should hold databases"
        answered = leaving.responses
        leaving.silent = True
        held, leaving.held = leaving.held, set()
        leaving._outbox.put_nowait(leaving.request(released=held))
        await wait_for(lambda: leaving.responses > answered, timeout=5, message="final report answered")
        assert await leaving.leave("SIGTERM") == len(moved)


async def test_crashed_agent_databases_move_within_node_timeout_plus_heartbeat(cluster_config):
    config = cluster_config(databases=8)
    timing = config.scaling.coordinator
    async with scripted_cluster(config, 2) as (_coordinator, address, agents):
        crashed, survivor = agents
        await crashed.stop()  # no Leave: a crash
        started = time.monotonic()
        await wait_for(lambda: survivor.held == resources(config), timeout=10, message="failover")
        elapsed = time.monotonic() - started
        bound = (timing.node_timeout + timing.heartbeat_interval).total_seconds() + 0.5  # + leader tick
        assert elapsed <= bound, f"failover took {elapsed:.2f}s, bound {bound:.2f}s"
        channel, stub = operator_stub(address)
        states = {a.agent_id: a.state for a in (await stub.ListAgents(opb.ListAgentsRequest())).agents}
        await channel.close()
        assert states["agent-0"] == 4  # AGENT_STATE_EXPIRED


DISCONNECT_TIMING = {"node_timeout": "30s", "disconnect_grace": "3s"}


async def _suspect_since(address: str, agent_id: str) -> bool:
    channel, stub = operator_stub(address)
    try:
        agents = {a.agent_id: a for a in (await stub.ListAgents(opb.ListAgentsRequest())).agents}
        return agents[agent_id].HasField("disconnected_time")
    finally:
        await channel.close()


async def test_a_stream_that_ends_without_leave_expires_its_agent_after_the_disconnect_grace(cluster_config):
    """A crash closes the connection: the agent is suspect at once and expired disconnect_grace
    later, long before node_timeout (30 s here); the coordinator counts it as disconnected."""
    config = cluster_config(databases=8, timing=DISCONNECT_TIMING)
    async with scripted_cluster(config, 2, sequenced=True) as (coordinator, address, agents):
        crashed, survivor = agents
        await crashed.stop()  # no Leave: the stream just ends
        started = time.monotonic()
        await wait_for(lambda: _suspect_since(address, "agent-0"), timeout=2, message="agent-0 listed as suspect")
        await wait_for(lambda: survivor.held == resources(config), timeout=10, message="failover")
        elapsed = time.monotonic() - started
        assert 3.0 - 0.2 <= elapsed <= 3.0 + 1.0, f"failover took {elapsed:.2f}s with disconnect_grace 3s"
        expired = coordinator.registry.get_sample_value(
            "dbintel_scaling_agent_expirations_total", {"reason": "disconnected"}
        )
        assert expired == 1


async def test_an_agent_that_reconnects_within_the_grace_keeps_its_databases(cluster_config):
    config = cluster_config(databases=8, timing=DISCONNECT_TIMING)
    async with scripted_cluster(config, 2, sequenced=True) as (coordinator, address, agents):
        blinking, other = agents
        held = set(blinking.held)
        epoch = blinking.epoch
        await blinking.stop()
        await wait_for(lambda: _suspect_since(address, "agent-0"), timeout=2, message="agent-0 listed as suspect")
        blinking.held, blinking.epoch = held, epoch  # the same process, back on a new stream
        blinking.start()
        await wait_for(
            lambda: _cleared(address, "agent-0"), timeout=2, message="the reconnect's heartbeat clears the mark"
        )
        # Past the grace: nothing moved, nobody expired.
        deadline = time.monotonic() + 3.5
        await wait_for(lambda: time.monotonic() >= deadline, timeout=5)
        assert blinking.held == held and other.held == resources(config) - held
        assert coordinator.registry.get_sample_value(
            "dbintel_scaling_agent_expirations_total", {"reason": "disconnected"}
        ) in (None, 0)


async def _cleared(address: str, agent_id: str) -> bool:
    return not await _suspect_since(address, agent_id)


async def test_join_moves_only_what_balancing_needs(cluster_config):
    config = cluster_config(databases=12, timing={"min_rebalance_interval": "1s"})
    async with scripted_cluster(config, 2) as (_coordinator, address, agents):
        before = {a.agent_id: set(a.held) for a in agents}
        newcomer = ScriptedAgent("agent-new", address).start()
        agents.append(newcomer)
        with DuplicateWatcher(agents) as watcher:
            await wait_for(
                lambda: len(newcomer.held) == 4 and exactly_once(agents, resources(config)),
                timeout=10,
                message="balanced after join",
            )
        assert watcher.duplicates == []
        kept = sum(len(before[a.agent_id] & a.held) for a in agents[:2])
        assert kept == 8  # exactly 4 moved: the minimum for 12 over 3


async def test_grant_carries_previous_owner_last_poll_time(cluster_config):
    config = cluster_config(databases=4)
    async with scripted_cluster(config, 2) as (_coordinator, _address, agents):
        leaving, staying = agents
        stamp = int(time.time() * 1000) - 1234
        leaving.poll_times_ms = dict.fromkeys(leaving.held, stamp)
        moved = set(leaving.held)
        await asyncio.sleep(0.8)  # a heartbeat carries the poll times
        await leaving.leave()
        await wait_for(lambda: staying.held == resources(config), timeout=5, message="hand-off")
        assert {rid: staying.grants.get(rid) for rid in moved} == dict.fromkeys(moved, stamp)


async def test_drain_and_rebalance_dry_run(cluster_config):
    config = cluster_config(databases=6)
    async with scripted_cluster(config, 2) as (_coordinator, address, agents):
        channel, stub = operator_stub(address)
        try:
            dry = await stub.Rebalance(opb.RebalanceRequest())
            assert not dry.applied and list(dry.moves) == []  # already balanced with equal costs
            plan = await stub.DrainAgent(opb.DrainAgentRequest(agent_id="agent-0"))
            assert not plan.applied and {m.resource_id for m in plan.moves} == agents[0].held
            assert all(m.to_agent_id == "agent-1" for m in plan.moves)
            assert len(agents[0].held) == 3  # a dry run changes nothing
            stamp = int(time.time() * 1000) - 4321
            drained = set(agents[0].held)
            agents[0].poll_times_ms = dict.fromkeys(drained, stamp)  # reported when it releases them
            done = await stub.DrainAgent(opb.DrainAgentRequest(agent_id="agent-0", apply=True))
            assert done.applied
            await wait_for(
                lambda: agents[1].held == resources(config) and not agents[0].held, timeout=5, message="drained"
            )
            assert {rid: agents[1].grants.get(rid) for rid in drained} == dict.fromkeys(drained, stamp)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.DrainAgent(opb.DrainAgentRequest(agent_id="nobody", apply=True))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError) as listed:
                await stub.ListAssignments(opb.ListAssignmentsRequest(agent_id="nobody"))
            assert listed.value.code() == grpc.StatusCode.NOT_FOUND
            assert "nobody" in (listed.value.details() or "")
        finally:
            await channel.close()


async def test_agent_id_collision_between_live_pods_is_refused(cluster_config):
    config = cluster_config(databases=2)
    coordinator = await start_coordinator(config, "c1")
    address = f"127.0.0.1:{coordinator.grpc_port}"
    first = ScriptedAgent("agent-x", address, pod_name="pod-a").start()
    await wait_for(lambda: first.held == resources(config), message="the first pod registered")
    impostor = ScriptedAgent("agent-x", address, pod_name="pod-b", reconnect=False).start()
    try:
        await wait_for(lambda: impostor.error is not None, message="refusal")
        assert impostor.error.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "pod-a" in impostor.error.details()
        await wait_for(lambda: first.held == resources(config), message="the first keeps its databases")
    finally:
        await first.stop()
        await impostor.stop()
        await coordinator.shutdown()


async def test_malformed_requests_get_invalid_argument_naming_the_field(cluster_config):
    config = cluster_config(databases=1)
    coordinator = await start_coordinator(config, "c1")
    address = f"127.0.0.1:{coordinator.grpc_port}"
    from dbintel.v1 import agent_service_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        agents = agent_service_pb2_grpc.AgentServiceStub(channel)
        operators = __import__("dbintel.v1.operator_service_pb2_grpc", fromlist=["x"]).OperatorServiceStub(channel)

        async def stream_error(*requests):
            async def gen():
                for r in requests:
                    yield r

            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in agents.Heartbeat(gen()):
                    pass
            return info.value

        no_registration = await stream_error(apb.HeartbeatRequest(agent_id="a"))
        assert (
            no_registration.code() == grpc.StatusCode.INVALID_ARGUMENT and "registration" in no_registration.details()
        )
        bad_id = await stream_error(apb.HeartbeatRequest(agent_id="bad id!", registration={"instance_id": "i"}))
        assert "agent_id" in bad_id.details()
        negative = await stream_error(
            apb.HeartbeatRequest(
                agent_id="a",
                registration={"instance_id": "i"},
                current=[{"resource_id": "db:x", "last_poll_duration": {"seconds": -5}}],
            )
        )
        assert "current[0].last_poll_duration" in negative.details()
        switched = await stream_error(
            apb.HeartbeatRequest(agent_id="a", registration={"instance_id": "i"}), apb.HeartbeatRequest(agent_id="b")
        )
        assert "agent_id" in switched.details()
        for call, request, field in (
            (agents.GetAssignments, apb.GetAssignmentsRequest(agent_id=""), "agent_id"),
            (agents.Leave, apb.LeaveRequest(agent_id="x" * 300), "agent_id"),
            (operators.ListResources, opb.ListResourcesRequest(type="oracle"), "type"),
            (operators.ListAssignments, opb.ListAssignmentsRequest(agent_id="a b"), "agent_id"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(request, timeout=5)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in info.value.details()
        # and the server still serves
        status = await operators.GetClusterStatus(opb.GetClusterStatusRequest(), timeout=5)
        assert status.coordinator_id == "c1"
    await coordinator.shutdown()


async def test_shutdown_is_idempotent_and_safe_without_start():
    from dbintel.coordinator.server import Coordinator

    never_started = Coordinator(make_config(), coordinator_id="x")
    await never_started.shutdown()
    await never_started.shutdown()
    started = await start_coordinator(make_config(), "y")
    await started.shutdown()
    await started.shutdown()
