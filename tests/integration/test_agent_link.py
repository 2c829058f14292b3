"""The agent against a real gRPC AgentService (a scripted coordinator in this test, on 127.0.0.1:0)
and a real Redis: nothing is polled before an assignment; newer epochs are applied and stale ones
ignored; the acknowledgment is immediate; a revoke drops the series and the connection; the link
reconnects, falls back to GetAssignments, keeps or stops polling on coordinator loss; Leave on
shutdown."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from dbintel.agent.coordinator_link import BACKOFF_CAP, BACKOFF_INITIAL, backoff_delay
from dbintel.agent.runtime import Agent
from dbintel.common.config import load_config, parse_config
from dbintel.v1 import agent_service_pb2 as pb
from dbintel.v1 import agent_service_pb2_grpc as pb_grpc
from dbintel.v1 import types_pb2
from tests.servers import RedisServer

pytestmark = pytest.mark.integration

AGENT_ID = "agent-under-test"
# Each database gets its own Redis db number, so CLIENT LIST tells their connections apart.
DB_NUMBERS = {"a": 11, "b": 12, "c": 13}


class ScriptedCoordinator(pb_grpc.AgentServiceServicer):
    """An AgentService that answers like the coordinator and lets the test push assignments."""

    def __init__(self) -> None:
        self.assignment: types_pb2.Assignment | None = None
        self.degraded = False
        self.heartbeat_interval: float | None = None  # what responses tell the agent, if set
        self.refuse_streams = False
        self.mute = False  # read requests, answer nothing (a hung replica or a dead path)
        self.answer_delay = 0.0  # answer each heartbeat this much later (a replica busy recording it)
        self.answered: list[tuple[str, int]] = []  # ("answer", sequence) in the events' order, see events
        self.refuse_get_assignments = False
        self.events: list[tuple[str, object]] = []  # ("heartbeat" | "leave", request), in arrival order
        self.stream_firsts: list[pb.HeartbeatRequest] = []
        self.get_assignments_calls = 0
        self._outboxes: set[asyncio.Queue] = set()

    @property
    def heartbeats(self) -> list[pb.HeartbeatRequest]:
        return [r for kind, r in self.events if kind == "heartbeat"]

    @property
    def leaves(self) -> list[pb.LeaveRequest]:
        return [r for kind, r in self.events if kind == "leave"]

    def _response(self, applied_epoch: int, sequence: int = 0) -> pb.HeartbeatResponse:
        response = pb.HeartbeatResponse(
            degraded=self.degraded, coordinator_id="scripted", leader_epoch=1, answered_sequence=sequence
        )
        if self.heartbeat_interval is not None:
            response.heartbeat_interval.FromNanoseconds(int(self.heartbeat_interval * 1e9))
        if self.assignment is not None and self.assignment.assignment_epoch > applied_epoch:
            response.assignment.CopyFrom(self.assignment)
        return response

    def assign(self, epoch: int, resources: dict[str, float | None]) -> None:
        """Make this the agent's assignment and push it on every open stream."""
        self.assignment = assignment(epoch, resources)
        self.push(self.assignment)

    def push(self, pushed: types_pb2.Assignment) -> None:
        """Push an assignment as is (even a stale one), as a replica with old state might."""
        for outbox in self._outboxes:
            outbox.put_nowait(
                pb.HeartbeatResponse(
                    assignment=pushed, coordinator_id="scripted", leader_epoch=1, degraded=self.degraded
                )
            )

    async def Heartbeat(self, request_iterator, context):
        if self.refuse_streams:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "scripted: streams refused")
        outbox: asyncio.Queue = asyncio.Queue()
        self._outboxes.add(outbox)

        async def pump() -> None:
            first = True
            try:
                async for request in request_iterator:
                    if first:
                        self.stream_firsts.append(request)
                        first = False
                    self.events.append(("heartbeat", request))
                    if not self.mute:
                        response = self._response(request.applied_assignment_epoch, request.sequence)
                        if self.answer_delay:
                            asyncio.get_running_loop().call_later(self.answer_delay, self._answer, outbox, response)
                        else:
                            self._answer(outbox, response)
            finally:
                outbox.put_nowait(None)

        task = asyncio.create_task(pump())
        try:
            while (response := await outbox.get()) is not None:
                yield response
        finally:
            self._outboxes.discard(outbox)
            task.cancel()

    def _answer(self, outbox: asyncio.Queue, response: pb.HeartbeatResponse) -> None:
        self.events.append(("answer", response))
        outbox.put_nowait(response)

    async def GetAssignments(self, request, context):
        self.get_assignments_calls += 1
        if self.refuse_get_assignments:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "scripted: GetAssignments refused")
        reply = pb.GetAssignmentsResponse(degraded=self.degraded)
        if self.assignment is not None:
            reply.assignment.CopyFrom(self.assignment)
        return reply

    async def Leave(self, request, context):
        self.events.append(("leave", request))
        return pb.LeaveResponse(released_resources=len(self.assignment.resources) if self.assignment else 0)


def assignment(epoch: int, resources: dict[str, float | None]) -> types_pb2.Assignment:
    message = types_pb2.Assignment(agent_id=AGENT_ID, assignment_epoch=epoch, leader_epoch=1)
    for name, last_poll in resources.items():
        grant = message.resources.add(resource_id=f"db:redis/{name}")
        if last_poll is not None:
            grant.last_poll_time.FromNanoseconds(int(last_poll * 1e9))
    return message


class CoordinatorServer:
    """The scripted servicer on a real grpc.aio server; stop() and start() keep the port."""

    def __init__(self, servicer: ScriptedCoordinator) -> None:
        self.servicer = servicer
        self.port = 0
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        self._server = grpc.aio.server()
        pb_grpc.add_AgentServiceServicer_to_server(self.servicer, self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{self.port}")
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
async def coordinator() -> AsyncIterator[CoordinatorServer]:
    server = CoordinatorServer(ScriptedCoordinator())
    await server.start()
    yield server
    await server.stop()


def config_text(
    redis: RedisServer,
    *,
    heartbeat: str = "30s",
    node_timeout: str = "90s",
    on_loss: str = "keep",
    names: tuple[str, ...] = ("a", "b", "c"),
) -> str:
    databases = "\n".join(
        f"  - {{name: {n}, type: redis, endpoint: '{redis.address}', password: '${{env:LINK_REDIS_PW}}', "
        f"database: '{DB_NUMBERS[n]}', interval: 1s, labels: {{team: t{n}}}}}"
        for n in names
    )
    return f"""
scaling:
  coordinator: {{heartbeat_interval: {heartbeat}, node_timeout: {node_timeout}}}
  receiver_scaling: {{check_interval: 100ms, on_coordinator_loss: {on_loss}}}
agent: {{shutdown_grace: 5s, zone: zone-a, capacity: 7}}
databases:
{databases}
"""


@pytest.fixture
async def make_agent(redis_server: RedisServer, monkeypatch) -> AsyncIterator[Callable[..., Agent]]:
    monkeypatch.setenv("LINK_REDIS_PW", redis_server.password)
    agents: list[Agent] = []

    def make(coordinator: CoordinatorServer, config_path: str | None = None, **options) -> Agent:
        config = load_config(config_path) if config_path else parse_config(config_text(redis_server, **options))
        agent = Agent(
            config,
            agent_id=AGENT_ID,
            coordinator=coordinator.address,
            metrics_listen="127.0.0.1:0",
            health_listen="127.0.0.1:0",
            config_path=config_path,
        )
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        await agent.shutdown("test teardown")  # idempotent: fine after a test's own shutdown


@pytest.fixture
def running(make_agent):
    """Make an agent and start it."""

    async def run(coordinator: CoordinatorServer, **options) -> Agent:
        agent = make_agent(coordinator, **options)
        await agent.start()
        return agent

    return run


# -- helpers ---------------------------------------------------------------------------------------
async def eventually(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(0.02)


async def scrape(agent: Agent) -> str:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{agent.metrics_port}/metrics", timeout=5) as response:
            return response.read().decode()

    return await asyncio.to_thread(get)


async def ready_status(agent: Agent) -> int:
    def get() -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{agent.health_port}/ready", timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    return await asyncio.to_thread(get)  # the health endpoint is served on this very loop


def agent_connections(redis: RedisServer, name: str) -> list[dict]:
    """The agent's connections to one database (its Redis db number)."""
    with redis.client() as client:
        return [
            c for c in client.client_list() if c.get("name") == "dbintel-agent" and c.get("db") == str(DB_NUMBERS[name])
        ]


def series_resources(text: str, family: str) -> set[str]:
    found = set()
    for line in text.splitlines():
        if line.startswith(family + "{") and 'dbintel_resource="' in line:
            found.add(line.split('dbintel_resource="', 1)[1].split('"', 1)[0])
    return found


def polls(agent: Agent, name: str) -> int:
    snapshot = agent.scheduler.snapshots().get(f"db:redis/{name}")
    return snapshot.polls_total if snapshot is not None else 0


# -- tests ------------------------------------------------------------------------------------------
async def test_nothing_is_polled_before_an_assignment_and_the_ack_is_immediate(coordinator, running, redis_server):
    servicer = coordinator.servicer
    agent = await running(coordinator)
    # The registration, and at once a second heartbeat that proves the session.
    await eventually(lambda: len(servicer.heartbeats) == 2, what="registration and proof")
    first, proof = servicer.heartbeats
    assert first.agent_id == AGENT_ID and first.applied_assignment_epoch == 0 and list(first.current) == []
    registration = first.registration
    assert registration.zone == "zone-a" and registration.capacity == 7 and registration.version
    assert registration.pod_name and len(registration.instance_id) >= 16 and len(registration.session_secret) >= 24
    assert proof.sequence == first.sequence + 1 and not proof.HasField("registration")

    await asyncio.sleep(1.5)  # longer than every database's 1s interval
    assert agent.assigned == frozenset() and agent.scheduler.snapshots() == {}
    assert agent_connections(redis_server, "a") == [] and agent_connections(redis_server, "b") == []
    assert series_resources(await scrape(agent), "redis_uptime_seconds_total") == set()
    assert await ready_status(agent) == 503

    servicer.assign(5, {"a": None, "b": None})
    # The heartbeat interval is 30s: an acknowledgment within seconds can only be the immediate one.
    await eventually(
        lambda: any(r.applied_assignment_epoch == 5 for r in servicer.heartbeats), timeout=5, what="acknowledgment"
    )
    ack = next(r for r in servicer.heartbeats if r.applied_assignment_epoch == 5)
    assert {s.resource_id for s in ack.current} == {"db:redis/a", "db:redis/b"}
    assert len(servicer.heartbeats) == 3  # registration, proof, then the acknowledgment; nothing in between

    await eventually(lambda: polls(agent, "a") >= 1 and polls(agent, "b") >= 1, what="first polls")
    text = await scrape(agent)
    assert series_resources(text, "redis_uptime_seconds_total") == {"db:redis/a", "db:redis/b"}
    assert 'redis_uptime_seconds_total{dbintel_resource="db:redis/a",team="ta"}' in text
    assert "dbintel_agent_assignment_epoch 5.0" in text and "dbintel_agent_assigned_databases 2.0" in text
    assert agent.assigned == frozenset({"db:redis/a", "db:redis/b"}) and agent.assignment_epoch == 5
    assert len(agent_connections(redis_server, "a")) == 1 and agent_connections(redis_server, "c") == []
    assert await ready_status(agent) == 200


async def test_stale_epochs_are_ignored_and_a_revoke_drops_the_series_and_the_connection(
    coordinator, running, redis_server
):
    servicer = coordinator.servicer
    servicer.assign(5, {"a": None, "b": None})
    agent = await running(coordinator)
    await eventually(lambda: polls(agent, "a") >= 1 and polls(agent, "b") >= 1, what="first polls")
    b_connection = agent_connections(redis_server, "b")[0]["id"]
    a_last_poll = agent.scheduler.snapshots()["db:redis/a"].last_poll_time

    servicer.push(assignment(3, {"c": None}))  # stale: lower than the epoch held
    servicer.push(assignment(5, {"c": None}))  # stale: equal to the epoch held
    servicer.assign(6, {"b": None})  # revokes a
    await eventually(lambda: agent.assignment_epoch == 6, what="epoch 6 applied")
    # Pushes are handled in order, so the stale ones were seen (and ignored) before epoch 6.
    assert all(r.applied_assignment_epoch in (5, 6) for r in servicer.heartbeats[1:])
    assert not any(s.resource_id == "db:redis/c" for r in servicer.heartbeats for s in r.current)
    assert agent.assigned == frozenset({"db:redis/b"})

    # The revoked database is gone from the very next scrape, and its connection is closed.
    text = await scrape(agent)
    assert series_resources(text, "redis_uptime_seconds_total") == {"db:redis/b"}
    assert series_resources(text, "dbintel_database_up") == {"db:redis/b"}
    await eventually(lambda: agent_connections(redis_server, "a") == [], what="connection of a closed")
    await eventually(lambda: any(r.applied_assignment_epoch == 6 for r in servicer.heartbeats), what="ack 6")
    ack = next(r for r in servicer.heartbeats if r.applied_assignment_epoch == 6)
    assert [s.resource_id for s in ack.current] == ["db:redis/b"]
    # The acknowledgment gives a up with its final poll time, for the next owner's grant.
    assert [s.resource_id for s in ack.released] == ["db:redis/a"]
    assert ack.released[0].last_poll_time.ToNanoseconds() / 1e9 >= a_last_poll
    assert agent_connections(redis_server, "c") == []

    before = polls(agent, "b")
    await eventually(lambda: polls(agent, "b") >= before + 1, what="b keeps polling")
    assert [c["id"] for c in agent_connections(redis_server, "b")] == [b_connection]  # same pooled connection


async def test_the_link_reconnects_after_the_coordinator_restarts(coordinator, running):
    servicer = coordinator.servicer
    servicer.assign(5, {"a": None})
    agent = await running(coordinator, heartbeat="200ms", node_timeout="1s")
    await eventually(lambda: polls(agent, "a") >= 1 and not agent.degraded, what="connected and polling")
    assert len(servicer.stream_firsts) == 1

    await coordinator.stop()
    await eventually(lambda: agent.degraded, timeout=5, what="link loss noticed")
    assert "dbintel_agent_coordinator_degraded 1.0" in await scrape(agent)
    polled_at_loss = polls(agent, "a")
    await asyncio.sleep(1.5)  # past node_timeout: with `keep` the agent goes on polling
    assert polls(agent, "a") > polled_at_loss and agent.assigned == frozenset({"db:redis/a"})

    await coordinator.start()  # same port, same state
    await eventually(lambda: len(servicer.stream_firsts) == 2, timeout=10, what="a new stream")
    again = servicer.stream_firsts[1]
    assert again.registration.instance_id == servicer.stream_firsts[0].registration.instance_id
    assert again.applied_assignment_epoch == 5 and [s.resource_id for s in again.current] == ["db:redis/a"]
    await eventually(lambda: not agent.degraded, what="link restored")
    assert "dbintel_agent_coordinator_degraded 0.0" in await scrape(agent)


async def test_get_assignments_is_the_fallback_while_the_stream_is_down(coordinator, running):
    servicer = coordinator.servicer
    servicer.refuse_streams = True
    servicer.assign(4, {"a": None})
    agent = await running(coordinator, heartbeat="200ms", node_timeout="1s")
    await eventually(lambda: polls(agent, "a") >= 1, what="assignment through GetAssignments")
    assert agent.assignment_epoch == 4 and servicer.heartbeats == [] and servicer.get_assignments_calls >= 1
    assert agent.degraded

    servicer.refuse_streams = False
    await eventually(lambda: len(servicer.stream_firsts) == 1, timeout=10, what="stream opened")
    assert servicer.stream_firsts[0].applied_assignment_epoch == 4
    await eventually(lambda: not agent.degraded, what="connected")
    calls = servicer.get_assignments_calls
    await asyncio.sleep(0.6)  # six check intervals
    assert servicer.get_assignments_calls == calls  # the fallback stops once the stream answers


async def test_on_coordinator_loss_stop_stops_polling_after_node_timeout_and_resumes(
    coordinator, running, redis_server
):
    servicer = coordinator.servicer
    servicer.assign(5, {"a": None})
    agent = await running(coordinator, heartbeat="200ms", node_timeout="1s", on_loss="stop")
    await eventually(lambda: polls(agent, "a") >= 1 and not agent.degraded, what="polling")
    await eventually(lambda: len(agent_connections(redis_server, "a")) == 1, what="connection")

    lost_at = time.monotonic()
    await coordinator.stop()
    await eventually(lambda: agent.polling == frozenset(), timeout=5, what="polling stopped")
    # Not before 80 % of node_timeout (0.8s) since the send time of the last answered heartbeat,
    # which went out at most one 200ms heartbeat before the coordinator stopped.
    assert time.monotonic() - lost_at >= 0.55
    assert agent.assigned == frozenset() and agent.scheduler.snapshots() == {}
    await eventually(lambda: agent_connections(redis_server, "a") == [], what="connection closed")
    assert await ready_status(agent) == 503
    assert "dbintel_agent_coordinator_degraded 1.0" in await scrape(agent)

    servicer.refuse_get_assignments = True  # so the assignment can only come back on the stream
    await coordinator.start()  # the coordinator still has epoch 5 for this agent
    await eventually(lambda: polls(agent, "a") >= 1, timeout=10, what="polling resumed")
    # It reported that it held nothing, so the coordinator resent the (unchanged) assignment.
    resumed = servicer.stream_firsts[1]
    assert resumed.applied_assignment_epoch == 0 and list(resumed.current) == []
    assert [s.resource_id for s in resumed.released] == ["db:redis/a"]  # with its final poll time
    assert agent.assignment_epoch == 5 and agent.assigned == frozenset({"db:redis/a"})
    assert await ready_status(agent) == 200


async def test_on_coordinator_loss_keep_goes_on_polling(coordinator, running):
    coordinator.servicer.assign(5, {"a": None})
    agent = await running(coordinator, heartbeat="200ms", node_timeout="1s", on_loss="keep")
    await eventually(lambda: polls(agent, "a") >= 1 and not agent.degraded, what="polling")
    await coordinator.stop()
    await asyncio.sleep(2.5)  # more than twice node_timeout
    assert agent.polling == frozenset({"db:redis/a"}) and agent.degraded
    before = polls(agent, "a")
    await eventually(lambda: polls(agent, "a") > before, what="still polling")
    assert await ready_status(agent) == 200


async def test_a_degraded_coordinator_leaves_the_assignment_in_place(coordinator, running):
    servicer = coordinator.servicer
    servicer.assign(5, {"a": None})
    agent = await running(coordinator, heartbeat="200ms", node_timeout="1s")
    await eventually(lambda: polls(agent, "a") >= 1 and not agent.degraded, what="polling")
    servicer.degraded = True
    await eventually(lambda: agent.degraded, timeout=5, what="degraded reported")
    assert "dbintel_agent_coordinator_degraded 1.0" in await scrape(agent)
    before = polls(agent, "a")
    await eventually(lambda: polls(agent, "a") > before, what="still polling")
    assert agent.assigned == frozenset({"db:redis/a"}) and agent.assignment_epoch == 5
    servicer.degraded = False
    await eventually(lambda: not agent.degraded, timeout=5, what="degraded cleared")


async def test_shutdown_reports_last_poll_times_then_leaves_and_closes_everything(
    coordinator, make_agent, redis_server
):
    servicer = coordinator.servicer
    servicer.assign(5, {"a": None, "b": None})
    agent = make_agent(coordinator)
    await agent.start()
    await eventually(lambda: polls(agent, "a") >= 1 and polls(agent, "b") >= 1, what="polling")
    await asyncio.sleep(1.5)  # a few polls more than the 30s-interval heartbeats have reported
    reported = {s.resource_id: s.last_poll_time.ToNanoseconds() / 1e9 for s in servicer.heartbeats[-1].current}

    stopping_at = time.time()
    await agent.shutdown("test-shutdown")
    kinds = [kind for kind, _ in servicer.events if kind != "answer"]
    assert kinds[-1] == "leave" and kinds[-2] == "heartbeat"
    leave = servicer.leaves[0]
    assert leave.agent_id == AGENT_ID and leave.reason == "test-shutdown"
    final = servicer.heartbeats[-1]
    assert list(final.current) == []  # everything given up, with its final poll time
    released = {s.resource_id: s.last_poll_time.ToNanoseconds() / 1e9 for s in final.released}
    assert released.keys() == {"db:redis/a", "db:redis/b"}
    for resource_id, last_poll in released.items():
        # The final poll (interval 1s), newer than what the periodic heartbeats had reported.
        assert reported[resource_id] < last_poll <= stopping_at and last_poll > stopping_at - 1.5
    assert agent_connections(redis_server, "a") == [] and agent_connections(redis_server, "b") == []
    with pytest.raises(OSError):
        await scrape(agent)
    await agent.shutdown("again")  # idempotent
    assert len(servicer.leaves) == 1


async def test_leave_waits_for_the_final_heartbeat_to_be_recorded_even_after_pushes(coordinator, make_agent):
    """Pushes are responses too: counting responses, the final report would not wait, and a Leave to
    another replica could overtake the heartbeat with the final poll times (issue 12)."""
    servicer = coordinator.servicer
    servicer.assign(5, {"a": None, "b": None})
    agent = make_agent(coordinator)
    await agent.start()
    await eventually(lambda: polls(agent, "a") >= 1 and polls(agent, "b") >= 1, what="polling")
    for _ in range(3):  # unsolicited (stale) pushes: more responses than requests on this stream
        servicer.push(assignment(1, {"c": None}))
    sent = len(servicer.heartbeats)
    agent._link.send_now()  # its answer comes after the pushes on the stream: once it is in, they are too
    await eventually(
        lambda: len(servicer.heartbeats) > sent and agent._link._answered_sequence >= servicer.heartbeats[-1].sequence,
        what="the pushes read",
    )
    servicer.answer_delay = 0.5
    await agent.shutdown("test-shutdown")
    kinds = [kind for kind, _ in servicer.events]
    final_at = max(i for i, (kind, r) in enumerate(servicer.events) if kind == "heartbeat" and r.released)
    final = servicer.events[final_at][1]
    answer_at = next(
        i for i, (kind, r) in enumerate(servicer.events) if kind == "answer" and r.answered_sequence == final.sequence
    )
    assert answer_at < kinds.index("leave"), kinds  # answered (recorded) before the Leave was sent
    leave = servicer.leaves[0]
    # The Leave carries the same final poll times, and the session secret of the registration.
    assert {s.resource_id: s.last_poll_time for s in leave.released} == {
        s.resource_id: s.last_poll_time for s in final.released
    }
    assert {s.resource_id for s in leave.released} == {"db:redis/a", "db:redis/b"}
    assert leave.session_secret == servicer.stream_firsts[0].registration.session_secret != ""


async def test_shutdown_without_start_is_safe(coordinator, make_agent):
    agent = make_agent(coordinator)
    await agent.shutdown()
    assert coordinator.servicer.events == []


async def test_an_unknown_resource_id_rereads_the_config_file(coordinator, running, redis_server, tmp_path: Path):
    config_file = tmp_path / "dbintel.yaml"
    config_file.write_text(config_text(redis_server, names=("a",)))
    servicer = coordinator.servicer
    agent = await running(coordinator, config_path=str(config_file))
    await eventually(lambda: len(servicer.heartbeats) >= 1, what="registration")
    config_file.write_text(config_text(redis_server, names=("a", "c")))  # the ConfigMap was updated

    servicer.assign(3, {"a": None, "c": None, "zzz": None})
    await eventually(lambda: polls(agent, "a") >= 1 and polls(agent, "c") >= 1, what="polling a and c")
    assert agent.assigned == frozenset({"db:redis/a", "db:redis/c", "db:redis/zzz"})
    assert agent.polling == frozenset({"db:redis/a", "db:redis/c"})  # zzz is in no config: not polled
    ack = next(r for r in servicer.heartbeats if r.applied_assignment_epoch == 3)
    assert {s.resource_id for s in ack.current} == {"db:redis/a", "db:redis/c"}


async def test_the_heartbeat_interval_comes_from_the_coordinator_when_it_sets_one(coordinator, running):
    servicer = coordinator.servicer
    servicer.heartbeat_interval = 0.1
    await running(coordinator)  # the config says 30s
    await eventually(lambda: len(servicer.heartbeats) >= 6, timeout=5, what="heartbeats every 100ms")


async def test_sigterm_drains_the_agent_with_leave(coordinator, make_agent):
    servicer = coordinator.servicer
    servicer.assign(2, {"a": None})
    agent = make_agent(coordinator)
    running = asyncio.create_task(agent.run_until_signal())
    await eventually(lambda: polls(agent, "a") >= 1, what="polling")  # the handlers are installed by now
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(running, timeout=10)
    assert [(leave.agent_id, leave.reason) for leave in servicer.leaves] == [(AGENT_ID, "SIGTERM")]
    assert agent.scheduler.snapshots() == {}


def test_reconnect_backoff_is_exponential_with_full_jitter():
    rng = random.Random(7)
    for attempt in range(12):
        ceiling = min(BACKOFF_CAP, BACKOFF_INITIAL * 2**attempt)
        delays = [backoff_delay(attempt, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > 0.8 * ceiling and min(delays) < 0.2 * ceiling  # spread over the whole range
    assert backoff_delay(10_000, rng) <= BACKOFF_CAP


async def test_a_stream_whose_requests_go_unanswered_is_reopened(coordinator, running, monkeypatch):
    servicer = coordinator.servicer
    servicer.assign(2, {"a": None})
    # response_timeout = (0.8 * 2s - 200ms) / 2 = 0.7s (dbintel.common.liveness)
    agent = await running(coordinator, heartbeat="200ms", node_timeout="2s")
    await eventually(lambda: agent.assignment_epoch == 2 and not agent.degraded, what="connected")
    channels = agent._link.channels_opened
    servicer.mute = True
    await eventually(lambda: len(servicer.stream_firsts) >= 2, timeout=5, what="a new stream")
    assert agent._link.channels_opened == channels + 1  # on a fresh channel: the old one may route to a frozen replica
    servicer.mute = False
    await eventually(lambda: not agent.degraded, what="answered again")
    assert agent.assigned == frozenset({"db:redis/a"})
