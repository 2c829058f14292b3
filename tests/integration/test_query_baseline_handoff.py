"""Top-query baselines ride the revoke → ack → grant: a real coordinator (memory store and real Redis)
and agents speaking the real protocol. A clean hand-off carries the old owner's bytes exactly; a crash
carries nothing, not even an older baseline still stored; an oversized one is INVALID_ARGUMENT; and the
real agent puts its scheduler's baseline in `released` (only once its loops stopped) and hands a grant's
to `PollScheduler.add`."""

from __future__ import annotations

import asyncio
import os
import time

import grpc
import pytest
import yaml

from dbintel.agent.runtime import Agent, make_collector
from dbintel.agent.scheduler import PollScheduler
from dbintel.common.config import parse_config
from dbintel.common.message_limits import MAX_QUERY_BASELINE_BYTES, MAX_RELEASED_BASELINE_BYTES
from dbintel.coordinator.store.memory_store import MemoryScalingStore
from dbintel.v1 import agent_service_pb2 as apb
from dbintel.v1 import agent_service_pb2_grpc, types_pb2
from dbintel.v1 import operator_service_pb2 as opb
from tests.coordinator_harness import (
    FAST_TIMING,
    ScriptedAgent,
    exactly_once,
    make_config,
    operator_stub,
    start_coordinator,
    wait_for,
)
from tests.servers import free_port

pytestmark = pytest.mark.integration


class CountingStore(MemoryScalingStore):
    """The memory store, remembering the resource ids of every baseline read (one list per read)."""

    def __init__(self) -> None:
        super().__init__()
        self.baseline_reads: list[list[str]] = []

    async def read_query_baselines(self, resource_ids):
        self.baseline_reads.append(list(resource_ids))
        return await super().read_query_baselines(resource_ids)


async def drain(address: str, agent_id: str) -> None:
    channel, stub = operator_stub(address)
    try:
        assert (await stub.DrainAgent(opb.DrainAgentRequest(agent_id=agent_id, apply=True))).applied
    finally:
        await channel.close()


@pytest.mark.parametrize("mode", ["memory", "redis"])
async def test_a_drained_agents_baselines_reach_the_new_owner_exactly(mode, request):
    redis = request.getfixturevalue("redis_server") if mode == "redis" else None
    config = make_config(4, mode=mode, redis=redis)
    store = CountingStore() if mode == "memory" else None
    coordinator = await start_coordinator(config, "c1", store=store)
    address = f"127.0.0.1:{coordinator.grpc_port}"
    old, new = (ScriptedAgent(name, address, sequenced=True).start() for name in ("agent-old", "agent-new"))
    try:
        await wait_for(lambda: exactly_once([old, new], set(config.resources())), message="placement")
        moving = sorted(old.held)
        kept = sorted(new.held)
        assert len(moving) >= 2
        stamp = int(time.time() * 1000) - 4321
        old.poll_times_ms = dict.fromkeys(moving, stamp)
        # Binary (NULs, invalid UTF-8), distinct per database; the last one is released without any.
        old.baselines = {rid: os.urandom(3000) + b"\x00\xff" + rid.encode() for rid in moving[:-1]}
        await drain(address, "agent-old")
        await wait_for(lambda: new.held == set(config.resources()), timeout=5, message="the drain")
        assert {rid: new.grants[rid] for rid in moving} == dict.fromkeys(moving, stamp)
        assert {rid: new.granted_baselines[rid] for rid in moving} == {
            rid: old.baselines.get(rid, b"") for rid in moving
        }
        assert all(new.granted_baselines[rid] == b"" for rid in kept)  # granted before any release
        if store is not None:  # each assignment sent made one read of all its candidates, not one per grant
            reads = [ids for ids in store.baseline_reads if set(ids) & set(moving)]
            assert reads and all(set(moving) <= set(ids) for ids in reads), store.baseline_reads
    finally:
        for agent in (old, new):
            await agent.stop()
        await coordinator.shutdown()


async def test_a_crashed_owner_hands_on_no_baseline_not_even_an_older_one():
    config = make_config(3)
    coordinator = await start_coordinator(config, "c1")
    address = f"127.0.0.1:{coordinator.grpc_port}"
    first, second = (ScriptedAgent(name, address, sequenced=True).start() for name in ("agent-1", "agent-2"))
    third = None
    try:
        await wait_for(lambda: exactly_once([first, second], set(config.resources())), message="placement")
        moved = sorted(first.held)
        stamp = int(time.time() * 1000) - 4321
        first.poll_times_ms = dict.fromkeys(moved, stamp)
        first.baselines = {rid: b"first's last read of " + rid.encode() for rid in moved}
        await drain(address, "agent-1")
        await wait_for(lambda: second.held == set(config.resources()), timeout=5, message="the drain")
        assert {rid: second.granted_baselines[rid] for rid in moved} == first.baselines
        # agent-2 polls (a newer poll time), then crashes: its stream ends without a release.
        second.poll_times_ms = dict.fromkeys(config.resources(), stamp + 1000)

        async def recorded() -> bool:
            record = await coordinator.store.read_agent("agent-2")
            return record is not None and all(s.last_poll_ms == stamp + 1000 for s in record.current.values())

        await wait_for(recorded, message="agent-2's newer poll times")
        third = ScriptedAgent("agent-3", address, sequenced=True).start()
        await second.stop()
        await wait_for(lambda: third.held == set(config.resources()), timeout=10, message="the failover")
        assert {rid: third.grants[rid] for rid in moved} == dict.fromkeys(moved, stamp + 1000)
        assert third.granted_baselines == dict.fromkeys(config.resources(), b"")
        # The older hand-off's baselines are still stored: the poll times told them apart.
        assert set(await coordinator.store.read_query_baselines(moved)) == set(moved)
    finally:
        for agent in (first, second, third):
            if agent is not None:
                await agent.stop()
        await coordinator.shutdown()


def released(count: int, size: int) -> list[dict]:
    return [
        {"resource_id": f"db:redis/big{i}", "last_poll_time": {"seconds": 1_800_000_000}, "query_baseline": bytes(size)}
        for i in range(count)
    ]


async def test_an_oversized_baseline_is_invalid_argument_naming_the_field_and_the_database():
    coordinator = await start_coordinator(make_config(1), "c1")
    address = f"127.0.0.1:{coordinator.grpc_port}"
    registration = apb.AgentRegistration(pod_name="p", instance_id="i")
    too_many = MAX_RELEASED_BASELINE_BYTES // MAX_QUERY_BASELINE_BYTES + 1
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = agent_service_pb2_grpc.AgentServiceStub(channel)
            for entries, expected in (
                (released(1, MAX_QUERY_BASELINE_BYTES + 1), "released[0].query_baseline"),
                (released(too_many, MAX_QUERY_BASELINE_BYTES), f"released[{too_many - 1}].query_baseline"),
            ):
                heartbeat = apb.HeartbeatRequest(agent_id="big", registration=registration, released=entries)

                async def one(message=heartbeat):
                    yield message

                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    async for _ in stub.Heartbeat(one()):
                        pass
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert expected in refused.value.details() and "db:redis/big" in refused.value.details()
                with pytest.raises(grpc.aio.AioRpcError) as left:
                    await stub.Leave(apb.LeaveRequest(agent_id="big", released=entries), timeout=5)
                assert left.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert expected in left.value.details()
            # Exactly at the bounds: accepted (the stream answers).
            fits = apb.HeartbeatRequest(
                agent_id="big",
                registration=registration,
                released=released(too_many - 1, MAX_QUERY_BASELINE_BYTES),
                sequence=1,
            )

            async def once():
                yield fits

            answers = [r async for r in stub.Heartbeat(once())]
            assert answers and answers[0].answered_sequence == 1
        assert len(await coordinator.store.read_query_baselines([f"db:redis/big{i}" for i in range(too_many)])) == (
            too_many - 1
        )
    finally:
        await coordinator.shutdown()


class FixedBaselines(PollScheduler):
    """The agent's own scheduler, answering query_baseline with fixed bytes and recording add()'s."""

    def __init__(self, agent: Agent) -> None:
        super().__init__(make_collector, max_concurrent_polls=4, on_poll=None)
        self.name = agent.agent_id
        self.added: dict[str, bytes | None] = {}

    def query_baseline(self, resource_id: str) -> bytes | None:
        return b"\x00\xff baseline of " + resource_id.encode() + b" by " + self.name.encode()

    def add(self, resource_id, database, *, last_poll_time=None, query_baseline=None) -> None:
        self.added[resource_id] = query_baseline
        super().add(resource_id, database, last_poll_time=last_poll_time, query_baseline=query_baseline)


async def test_the_agent_releases_its_schedulers_baseline_and_adds_the_grants(redis_server, monkeypatch):
    monkeypatch.setenv("BASELINE_REDIS_PW", redis_server.password)
    grpc_port = free_port()
    doc = {
        "scaling": {"mode": "memory", "coordinator": FAST_TIMING},
        "coordinator": {
            "grpc_listen": f"127.0.0.1:{grpc_port}",
            "metrics_listen": "127.0.0.1:0",
            "health_listen": "127.0.0.1:0",
        },
        "agent": {"coordinator": f"127.0.0.1:{grpc_port}", "shutdown_grace": "3s"},
        "databases": [
            {
                "name": f"cache{i}",
                "type": "redis",
                "endpoint": redis_server.address,
                "password": "${env:BASELINE_REDIS_PW}",
                "interval": "1s",
            }
            for i in range(2)
        ],
    }
    config = parse_config(yaml.safe_dump(doc))
    coordinator = await start_coordinator(config, "c1")
    agents = {}
    try:
        for name in ("agent-a", "agent-b"):
            agent = Agent(config, agent_id=name, metrics_listen="127.0.0.1:0", health_listen="127.0.0.1:0")
            agent._scheduler = FixedBaselines(agent)  # before start(): the scheduler it runs from then on
            agents[name] = agent
        a, b = agents["agent-a"], agents["agent-b"]
        await a.start()
        rids = set(config.resources())
        await wait_for(
            lambda: a.polling == rids and all(s.last_poll_time for s in a.scheduler.snapshots().values()),
            timeout=10,
            message="agent-a's first polls",
        )
        assert a.scheduler.added == dict.fromkeys(rids)  # nobody had them: no baseline
        await b.start()
        await a.shutdown()  # final heartbeat and Leave release everything, with the baselines
        await wait_for(lambda: b.polling == rids, timeout=10, message="the move")
        assert b.scheduler.added == {rid: a.scheduler.query_baseline(rid) for rid in rids}
    finally:
        for agent in agents.values():
            await agent.shutdown()
        await coordinator.shutdown()


class SlowStop(FixedBaselines):
    """Its removals finish only when the test says: the loops of a revoked database are still stopping."""

    def __init__(self, agent: Agent) -> None:
        super().__init__(agent)
        self.stopping = asyncio.Event()
        self.finish = asyncio.Event()

    async def remove(self, resource_ids) -> None:
        await super().remove(resource_ids)
        if resource_ids:
            self.stopping.set()
            await self.finish.wait()


def grant(epoch: int, *rids: str) -> types_pb2.Assignment:
    return types_pb2.Assignment(
        agent_id="agent-a", assignment_epoch=epoch, resources=[types_pb2.ResourceGrant(resource_id=r) for r in rids]
    )


async def test_a_revoked_database_is_released_only_with_its_baseline():
    config = parse_config(
        yaml.safe_dump(
            {
                "scaling": {"mode": "memory"},
                "databases": [{"name": "cache", "type": "redis", "endpoint": "127.0.0.1:1", "interval": "1h"}],
            }
        )
    )
    agent = Agent(config, agent_id="agent-a", metrics_listen="127.0.0.1:0", health_listen="127.0.0.1:0")
    scheduler = agent._scheduler = SlowStop(agent)
    rid = "db:redis/cache"
    try:
        assert await agent.apply(grant(1, rid))
        revoking = asyncio.create_task(agent.apply(grant(2)))
        await scheduler.stopping.wait()
        _, current, released = agent.report()
        # Its loops are stopping, its baseline not read yet: reported as polled, so it cannot move yet.
        assert [s.resource_id for s in current] == [rid] and released == []
        scheduler.finish.set()
        assert await revoking
        _, current, released = agent.report()
        assert current == [] and [(s.resource_id, s.query_baseline) for s in released] == [
            (rid, scheduler.query_baseline(rid))
        ]
    finally:
        scheduler.finish.set()
        await scheduler.close()
