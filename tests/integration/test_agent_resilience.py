"""An agent under a real coordinator when things break: a black-holed database marks only itself
down while the others keep their schedule; losing the coordinator with `keep` and with `stop`."""

from __future__ import annotations

import asyncio
import itertools
import time

import yaml

from dbintel.agent.runtime import Agent
from dbintel.common.config import parse_config
from tests.coordinator_harness import start_coordinator, wait_for
from tests.faultproxy import FaultProxy
from tests.servers import free_port


def config_for(redis_endpoints: list[str], *, on_loss: str = "keep", grpc_port: int, pg=None):
    databases = [
        {
            "name": f"r{i}",
            "type": "redis",
            "endpoint": endpoint,
            "password": "${env:RES_REDIS_PW}",
            "database": str(i),
            "interval": "1s",
            "timeout": "400ms",
        }
        for i, endpoint in enumerate(redis_endpoints)
    ]
    if pg is not None:
        databases.append(
            {
                "name": "app",
                "type": "postgresql",
                "endpoint": pg.address,
                "username": pg.monitor_user,
                "password": "${env:RES_PG_PW}",
                "database": pg.app_database,
                "interval": "1s",
                "timeout": "800ms",
            }
        )
    doc = {
        "scaling": {
            "mode": "memory",
            "coordinator": {"heartbeat_interval": "300ms", "node_timeout": "2s", "min_rebalance_interval": "1s"},
            "receiver_scaling": {"check_interval": "300ms", "on_coordinator_loss": on_loss},
        },
        "coordinator": {
            "grpc_listen": f"127.0.0.1:{grpc_port}",
            "metrics_listen": "127.0.0.1:0",
            "health_listen": "127.0.0.1:0",
        },
        "agent": {"coordinator": f"127.0.0.1:{grpc_port}", "shutdown_grace": "3s"},
        "databases": databases,
    }
    return parse_config(yaml.safe_dump(doc))


async def start_agent(config) -> Agent:
    agent = Agent(config, agent_id="agent-1", metrics_listen="127.0.0.1:0", health_listen="127.0.0.1:0")
    await agent.start()
    return agent


async def test_black_holed_database_is_down_alone_and_others_keep_schedule(redis_server, postgres_server, monkeypatch):
    monkeypatch.setenv("RES_REDIS_PW", redis_server.password)
    monkeypatch.setenv("RES_PG_PW", postgres_server.monitor_password)
    proxy = FaultProxy(redis_server.host, redis_server.port)
    proxy_port = await proxy.start()
    grpc_port = free_port()
    config = config_for([f"127.0.0.1:{proxy_port}", redis_server.address], grpc_port=grpc_port, pg=postgres_server)
    coordinator = await start_coordinator(config, "coord")
    agent = await start_agent(config)
    try:
        everything = set(config.resources())
        await wait_for(lambda: agent.assigned == everything, timeout=10, message="assignment")
        snapshots = agent.scheduler.snapshots
        await wait_for(lambda: all(s.up for s in snapshots().values()), timeout=10, message="all up")
        proxy.blackhole()
        victim = "db:redis/r0"
        await wait_for(lambda: not snapshots()[victim].up, timeout=5, message="the black-holed one down")
        healthy = {rid for rid in everything if rid != victim}
        before = {rid: snapshots()[rid].polls_total for rid in healthy}
        starts: dict[str, list[float]] = {rid: [] for rid in healthy}
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            for rid in healthy:
                started = snapshots()[rid].last_poll_time
                if started is not None and (not starts[rid] or starts[rid][-1] != started):
                    starts[rid].append(started)
            await asyncio.sleep(0.05)
        for rid in healthy:
            assert snapshots()[rid].up, rid
            assert snapshots()[rid].polls_total - before[rid] >= 3, rid
            gaps = [b - a for a, b in zip(starts[rid], starts[rid][1:], strict=False)]
            assert gaps and max(gaps) < 1.5, (rid, gaps)  # 1 s interval kept, no stall behind the victim
        assert snapshots()[victim].error_counts.get("timeout", 0) >= 1
        proxy.pass_through()
        await wait_for(lambda: snapshots()[victim].up, timeout=10, message="recovery")
    finally:
        await agent.shutdown()
        await coordinator.shutdown()
        await proxy.stop()


async def test_keep_polls_on_without_a_coordinator(redis_server, monkeypatch):
    monkeypatch.setenv("RES_REDIS_PW", redis_server.password)
    grpc_port = free_port()
    config = config_for([redis_server.address] * 2, on_loss="keep", grpc_port=grpc_port)
    coordinator = await start_coordinator(config, "coord")
    agent = await start_agent(config)
    try:
        await wait_for(lambda: agent.assigned == set(config.resources()), timeout=10, message="assignment")
        await coordinator.shutdown()
        polls = {rid: s.polls_total for rid, s in agent.scheduler.snapshots().items()}
        await asyncio.sleep(3.5)  # well past node_timeout (2s)
        assert agent.assigned == set(config.resources())
        assert agent.degraded
        assert all(s.polls_total >= polls[rid] + 2 for rid, s in agent.scheduler.snapshots().items())
    finally:
        await agent.shutdown()
        await coordinator.shutdown()


async def test_stop_stops_polling_after_node_timeout_and_resumes_with_a_coordinator(redis_server, monkeypatch):
    monkeypatch.setenv("RES_REDIS_PW", redis_server.password)
    grpc_port = free_port()
    config = config_for([redis_server.address] * 2, on_loss="stop", grpc_port=grpc_port)
    coordinator = await start_coordinator(config, "coord")
    agent = await start_agent(config)
    replacement = None
    try:
        await wait_for(lambda: agent.assigned == set(config.resources()), timeout=10, message="assignment")
        await coordinator.shutdown()
        lost_at = time.monotonic()
        await wait_for(lambda: not agent.polling, timeout=6, message="polling stopped")
        stopped_after = time.monotonic() - lost_at
        assert stopped_after <= 2.0 + 1.0  # node_timeout, measured from the last acknowledged heartbeat
        assert agent.scheduler.snapshots() == {}
        replacement = await start_coordinator(config, "coord-2")
        await wait_for(lambda: agent.polling == set(config.resources()), timeout=15, message="resumed")
    finally:
        await agent.shutdown()
        if replacement is not None:
            await replacement.shutdown()


async def test_moved_database_continues_its_schedule_without_gap_or_double_sample(redis_server, monkeypatch):
    """Drain agent-1: its databases move to agent-2, whose first poll lands one interval after
    agent-1's last one (the grant carries that time). Every poll start is recorded at the source
    (the collector), so the whole timeline of each database is checked: consecutive polls, across
    the move, stay one interval apart — no gap, no double sample — and the owners never interleave."""
    import dbintel.agent.collectors.redis as redis_collectors
    from dbintel.v1 import operator_service_pb2 as opb
    from tests.coordinator_harness import operator_stub

    polls: list[tuple[str, float, int]] = []  # (resource id, start, collector instance)

    class RecordingCollector(redis_collectors.COLLECTOR):
        async def collect(self):
            polls.append((f"db:redis/{self.database.name}", time.time(), id(self)))
            return await super().collect()

    monkeypatch.setattr(redis_collectors, "COLLECTOR", RecordingCollector)
    monkeypatch.setenv("RES_REDIS_PW", redis_server.password)
    grpc_port = free_port()
    config = config_for([redis_server.address] * 4, grpc_port=grpc_port)
    coordinator = await start_coordinator(config, "coord")
    first = await start_agent(config)
    second = None
    channel, stub = operator_stub(f"127.0.0.1:{grpc_port}")
    try:
        await wait_for(lambda: first.assigned == set(config.resources()), timeout=10, message="first agent holds all")
        second = Agent(config, agent_id="agent-2", metrics_listen="127.0.0.1:0", health_listen="127.0.0.1:0")
        await second.start()
        await asyncio.sleep(2.5)  # a few polls; the join balances two databases over to agent-2
        await stub.DrainAgent(opb.DrainAgentRequest(agent_id="agent-1", apply=True))
        await wait_for(
            lambda: second.polling == set(config.resources()) and not first.polling,
            timeout=10,
            message="moved to agent-2",
        )
        await asyncio.sleep(2.5)
        interval, moved = 1.0, 0
        for rid in config.resources():
            timeline = sorted((start, instance) for r, start, instance in polls if r == rid)
            owners = [instance for _, instance in timeline]
            switches = sum(1 for a, b in itertools.pairwise(owners) if a != b)
            assert switches == 1, (rid, switches)  # one hand-over, owners never interleave
            moved += 1
            gaps = [b - a for (a, _), (b, _) in itertools.pairwise(timeline)]
            assert all(interval - 0.2 <= gap <= interval + 0.35 for gap in gaps), (rid, gaps)
        assert moved == 4
    finally:
        await channel.close()
        if second is not None:
            await second.shutdown()
        await first.shutdown()
        await coordinator.shutdown()
