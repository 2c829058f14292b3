"""The agent's link with several coordinator replicas in one target (`ipv4:a,b`, round-robin), each a
real gRPC AgentService scripted here: a replica that cannot reach its store is left for one that can
(else the leader would expire the agent while it polls on: two owners); when every replica says so
the agent keeps its assignment and tries another replica only now and then; and the final heartbeat of a shutdown is answered before Leave is sent (Leave
may reach another replica and must not overtake the final poll times)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from dbintel.agent.runtime import Agent
from dbintel.common.config import parse_config
from dbintel.v1 import agent_service_pb2 as pb
from dbintel.v1 import agent_service_pb2_grpc as pb_grpc
from dbintel.v1 import types_pb2
from tests.integration.test_agent_link import AGENT_ID, config_text, eventually, polls
from tests.servers import RedisServer, free_port

pytestmark = pytest.mark.integration


class Replica(pb_grpc.AgentServiceServicer):
    """One coordinator replica: answers each heartbeat in turn (after `release_delay` when it releases
    databases, like a replica whose store write is slow), with its own id and degraded flag."""

    def __init__(self, name: str, *, degraded: bool = False, release_delay: float = 0.0) -> None:
        self.name, self.degraded, self.release_delay = name, degraded, release_delay
        self.assignment = types_pb2.Assignment(agent_id=AGENT_ID, assignment_epoch=5, leader_epoch=1)
        self.assignment.resources.add(resource_id="db:redis/a")
        self.events: list[tuple[str, float]] = []  # ("heartbeat" | "answered-release" | "leave", monotonic)
        self.streams = 0
        self.port = free_port()
        self._server: grpc.aio.Server | None = None

    @property
    def heartbeats(self) -> int:
        return sum(1 for kind, _ in self.events if kind == "heartbeat")

    async def Heartbeat(self, request_iterator, context):
        self.streams += 1
        async for request in request_iterator:
            self.events.append(("heartbeat", time.monotonic()))
            if request.released:
                await asyncio.sleep(self.release_delay)
                self.events.append(("answered-release", time.monotonic()))
            response = pb.HeartbeatResponse(degraded=self.degraded, coordinator_id=self.name, leader_epoch=1)
            if not self.degraded and request.applied_assignment_epoch < self.assignment.assignment_epoch:
                response.assignment.CopyFrom(self.assignment)
            yield response

    async def GetAssignments(self, request, context):
        return pb.GetAssignmentsResponse(degraded=self.degraded, assignment=self.assignment)

    async def Leave(self, request, context):
        self.events.append(("leave", time.monotonic()))
        return pb.LeaveResponse(released_resources=1)

    async def start(self) -> None:
        self._server = grpc.aio.server()
        pb_grpc.add_AgentServiceServicer_to_server(self, self._server)
        self._server.add_insecure_port(f"127.0.0.1:{self.port}")
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)


@pytest.fixture
async def agents(redis_server: RedisServer, monkeypatch) -> AsyncIterator[list[Agent]]:
    monkeypatch.setenv("LINK_REDIS_PW", redis_server.password)
    started: list[Agent] = []
    yield started
    for agent in started:
        await agent.shutdown("test teardown")


async def start_agent(agents: list[Agent], redis: RedisServer, replicas: list[Replica], **options) -> Agent:
    config = parse_config(config_text(redis, names=("a",), **options))
    target = "ipv4:" + ",".join(f"127.0.0.1:{r.port}" for r in replicas)
    agent = Agent(
        config, agent_id=AGENT_ID, coordinator=target, metrics_listen="127.0.0.1:0", health_listen="127.0.0.1:0"
    )
    agents.append(agent)
    await agent.start()
    return agent


async def test_a_replica_that_cannot_reach_its_store_is_left_for_one_that_can(agents, redis_server):
    cut_off, healthy = Replica("cut-off", degraded=True), Replica("healthy")
    await cut_off.start()  # the healthy one is not up yet: the agent's stream lands on the cut-off one
    try:
        healthy.degraded = False
        agent = await start_agent(agents, redis_server, [cut_off, healthy], heartbeat="100ms", node_timeout="900ms")
        await eventually(lambda: cut_off.heartbeats >= 1, what="a stream on the cut-off replica")
        await healthy.start()
        # Degraded for response_timeout (0.31 s here), then the next stream goes to the other replica and stays there.
        await eventually(lambda: healthy.heartbeats >= 3, timeout=10, what="heartbeats reaching the healthy replica")
        await eventually(lambda: polls(agent, "a") >= 1, what="polling what the healthy replica assigned")
        settled = cut_off.heartbeats
        await asyncio.sleep(1.0)
        assert cut_off.heartbeats == settled  # nothing more sent where it would not be recorded
        assert healthy.heartbeats >= 10
    finally:
        await cut_off.stop()
        await healthy.stop()


async def test_when_every_replica_is_degraded_the_agent_keeps_its_assignment_and_moves_on_seldom(agents, redis_server):
    first, second = Replica("one"), Replica("two")
    await first.start()
    await second.start()
    try:
        agent = await start_agent(agents, redis_server, [first, second], heartbeat="100ms", node_timeout="900ms")
        await eventually(lambda: polls(agent, "a") >= 1, what="polling")
        first.degraded = second.degraded = True  # the store itself is down
        await eventually(lambda: agent.degraded, timeout=5, what="degraded reported")
        before = first.streams + second.streams
        polled = polls(agent, "a")
        await asyncio.sleep(1.5)
        # A new stream at most once per response_timeout (0.31 s): 4 in 1.5 s, and 1 racing the window.
        assert first.streams + second.streams - before <= 6
        assert polls(agent, "a") > polled  # kept polling throughout
        first.degraded = second.degraded = False
        await eventually(lambda: not agent.degraded, timeout=5, what="store back")
    finally:
        await first.stop()
        await second.stop()


async def test_the_final_heartbeat_is_answered_before_leave_is_sent(agents, redis_server):
    replica = Replica("slow-store", release_delay=0.3)
    await replica.start()
    try:
        agent = await start_agent(agents, redis_server, [replica])
        await eventually(lambda: polls(agent, "a") >= 1, what="polling")
        await agent.shutdown("test")
        kinds = [kind for kind, _ in replica.events]
        assert "answered-release" in kinds and "leave" in kinds
        assert kinds.index("answered-release") < kinds.index("leave")
    finally:
        await replica.stop()
