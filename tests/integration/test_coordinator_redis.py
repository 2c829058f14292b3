"""Several coordinator replicas on one real Redis: pushes from any replica, leader failover,
Redis unreachable and Redis losing its data, inventory reload."""

from __future__ import annotations

import asyncio
import time

import yaml

from dbintel.common.config import load_config
from dbintel.v1 import operator_service_pb2 as opb
from tests.coordinator_harness import (
    ScriptedAgent,
    exactly_once,
    make_config,
    operator_stub,
    start_coordinator,
    wait_for,
)


async def test_follower_pushes_assignments_within_a_second(redis_server):
    config = make_config(databases=8, mode="redis", redis=redis_server)
    leader = await start_coordinator(config, "leader")
    await wait_for(lambda: leader.leadership.is_leader, message="first replica leads")
    follower = await start_coordinator(config, "follower")
    follower_address = f"127.0.0.1:{follower.grpc_port}"
    agents = [ScriptedAgent(f"agent-{i}", follower_address, heartbeat_s=5.0).start() for i in range(2)]
    try:
        # heartbeat_s=5: only pushes (not heartbeat replies) can deliver assignments this fast
        await wait_for(lambda: exactly_once(agents, set(config.resources())), timeout=8, message="placement")
        assert not follower.leadership.is_leader
        staying = agents[1]
        started = time.monotonic()
        await agents[0].leave()
        await wait_for(lambda: staying.held == set(config.resources()), timeout=5, message="push")
        assert time.monotonic() - started < 1.0
    finally:
        for agent in agents:
            await agent.stop()
        await follower.shutdown()
        await leader.shutdown()


async def test_leader_shutdown_hands_leadership_over_at_once_without_reshuffle(redis_server):
    config = make_config(databases=6, mode="redis", redis=redis_server, leader_ttl="5s")
    first = await start_coordinator(config, "first")
    await wait_for(lambda: first.leadership.is_leader, message="first leads")
    second = await start_coordinator(config, "second")
    agents = [ScriptedAgent(f"agent-{i}", f"127.0.0.1:{second.grpc_port}").start() for i in range(2)]
    try:
        await wait_for(lambda: exactly_once(agents, set(config.resources())), message="placement")
        before = {a.agent_id: set(a.held) for a in agents}
        epoch = first.leadership.lease.epoch
        started = time.monotonic()
        await first.shutdown()
        await wait_for(lambda: second.leadership.is_leader, timeout=5, message="successor")
        assert time.monotonic() - started < 2.0  # released, not waited out (leader_ttl is 5s)
        assert second.leadership.lease.epoch > epoch
        await asyncio.sleep(1.0)
        assert {a.agent_id: set(a.held) for a in agents} == before
    finally:
        for agent in agents:
            await agent.stop()
        await second.shutdown()
        await first.shutdown()


async def test_crashed_leader_replaced_within_leader_ttl(fresh_redis):
    config = make_config(databases=4, mode="redis", redis=fresh_redis, leader_ttl="1500ms")
    first = await start_coordinator(config, "first")
    await wait_for(lambda: first.leadership.is_leader, message="first leads")
    second = await start_coordinator(config, "second")
    try:
        # A crash: every loop of the first replica stops at once; it never renews nor releases.
        for task in first._tasks:
            task.cancel()
        started = time.monotonic()
        await wait_for(lambda: second.leadership.is_leader, timeout=5, message="new leader")
        assert time.monotonic() - started <= 1.5 + 0.6  # leader_ttl + one follower poll
    finally:
        await second.shutdown()
        first.leadership.lease = None  # dead: nothing to release
        await first.shutdown()


async def test_redis_unreachable_agents_keep_assignments_and_nobody_expires(fresh_redis):
    config = make_config(
        databases=6,
        mode="redis",
        redis=fresh_redis,
        leader_ttl="1s",
        timing={"heartbeat_interval": "300ms", "node_timeout": "1500ms"},
    )
    coordinator = await start_coordinator(config, "c1")
    address = f"127.0.0.1:{coordinator.grpc_port}"
    agents = [ScriptedAgent(f"agent-{i}", address).start() for i in range(2)]
    try:
        await wait_for(lambda: exactly_once(agents, set(config.resources())), message="placement")
        before = {a.agent_id: set(a.held) for a in agents}
        fresh_redis.pause()  # unreachable, data kept: connections hang, then time out
        await wait_for(lambda: all(a.degraded_seen for a in agents), timeout=10, message="degraded replies")
        await asyncio.sleep(3.0)  # 2 × node_timeout of silence in the store
        assert {a.agent_id: set(a.held) for a in agents} == before
        fresh_redis.resume()
        await wait_for(lambda: coordinator.leadership.is_leader, timeout=10, message="leadership back")
        await asyncio.sleep(2.0)
        channel, stub = operator_stub(address)
        listed = await stub.ListAgents(opb.ListAgentsRequest())
        await channel.close()
        assert {a.agent_id: a.state for a in listed.agents} == {"agent-0": 1, "agent-1": 1}  # ACTIVE
        assert {a.agent_id: set(a.held) for a in agents} == before
    finally:
        fresh_redis.resume()
        for agent in agents:
            await agent.stop()
        await coordinator.shutdown()


async def test_redis_flushall_repaired_by_reregistration_without_reshuffle(fresh_redis):
    config = make_config(databases=9, mode="redis", redis=fresh_redis)
    coordinator = await start_coordinator(config, "c1")
    address = f"127.0.0.1:{coordinator.grpc_port}"
    agents = [ScriptedAgent(f"agent-{i}", address).start() for i in range(3)]
    try:
        await wait_for(lambda: exactly_once(agents, set(config.resources())), message="placement")
        before = {a.agent_id: set(a.held) for a in agents}
        epochs = {a.agent_id: a.epoch for a in agents}
        fresh_redis.client().flushall()
        channel, stub = operator_stub(address)

        async def repaired():
            status = await stub.GetClusterStatus(opb.GetClusterStatusRequest())
            return status.leader_id and status.resources_assigned == 9 and status.agents_by_state["active"] == 3

        await wait_for(repaired, timeout=10, message="re-registered and placed")
        await channel.close()
        assert {a.agent_id: set(a.held) for a in agents} == before
        assert all(a.stale_ignored == 0 or a.epoch >= epochs[a.agent_id] for a in agents)
    finally:
        for agent in agents:
            await agent.stop()
        await coordinator.shutdown()


async def test_inventory_reload_adds_and_removes_databases(tmp_path, redis_server):
    config = make_config(
        databases=3,
        mode="redis",
        redis=redis_server,
        extra={
            "coordinator": {
                "grpc_listen": "127.0.0.1:0",
                "metrics_listen": "127.0.0.1:0",
                "health_listen": "127.0.0.1:0",
                "config_reload_interval": "200ms",
            }
        },
    )
    path = tmp_path / "config.yaml"
    doc = config.model_dump(mode="json", exclude_none=True)
    path.write_text(yaml.safe_dump(doc))
    coordinator = await start_coordinator(load_config(path), "c1", config_path=str(path))
    agent = ScriptedAgent("agent-0", f"127.0.0.1:{coordinator.grpc_port}").start()
    try:
        await wait_for(lambda: agent.held == set(config.resources()), message="placement")
        doc["databases"] = doc["databases"][1:] + [
            {"name": "added", "type": "postgresql", "endpoint": "127.0.0.1:5432"}
        ]
        path.write_text(yaml.safe_dump(doc))
        expected = {"db:redis/db001", "db:redis/db002", "db:postgresql/added"}
        await wait_for(lambda: agent.held == expected, timeout=5, message="reloaded inventory")
        path.write_text("databases: [{name: broken}]\n")  # a bad edit is refused; the last good one stays
        await asyncio.sleep(0.8)
        assert agent.held == expected and len(coordinator.config.databases) == 3
    finally:
        await agent.stop()
        await coordinator.shutdown()


async def test_leader_only_rpcs_sent_to_a_follower_are_forwarded(redis_server):
    config = make_config(databases=4, mode="redis", redis=redis_server)
    leader = await start_coordinator(config, "leader")
    await wait_for(lambda: leader.leadership.is_leader, message="first replica leads")
    follower = await start_coordinator(config, "follower")
    address = f"127.0.0.1:{follower.grpc_port}"
    agents = [ScriptedAgent(f"agent-{i}", address).start() for i in range(2)]
    channel, stub = operator_stub(address)
    try:
        await wait_for(lambda: exactly_once(agents, set(config.resources())), message="placement")
        status = await stub.GetClusterStatus(opb.GetClusterStatusRequest())
        assert status.coordinator_id == "follower" and not status.is_leader and status.leader_id == "leader"
        plan = await stub.DrainAgent(opb.DrainAgentRequest(agent_id="agent-0"))
        assert {m.resource_id for m in plan.moves} == agents[0].held and not plan.applied
        done = await stub.DrainAgent(opb.DrainAgentRequest(agent_id="agent-0", apply=True))
        assert done.applied
        await wait_for(lambda: agents[1].held == set(config.resources()), timeout=5, message="drained via follower")
        rebalance = await stub.Rebalance(opb.RebalanceRequest())
        assert not rebalance.applied
    finally:
        await channel.close()
        for agent in agents:
            await agent.stop()
        await follower.shutdown()
        await leader.shutdown()


async def test_health_goes_not_serving_before_the_server_stops():
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    coordinator = await start_coordinator(make_config(databases=1), "stopping")
    seen = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{coordinator.grpc_port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))

        async def follow():
            try:
                async for reply in watch:
                    seen.append(reply.status)
            except grpc.aio.AioRpcError:
                pass

        follower = asyncio.create_task(follow())
        await wait_for(lambda: seen, message="first health status")
        await coordinator.shutdown()
        await asyncio.wait_for(follower, 10)
    assert seen[0] == health_pb2.HealthCheckResponse.SERVING
    assert health_pb2.HealthCheckResponse.NOT_SERVING in seen
