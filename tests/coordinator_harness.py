"""Helpers for coordinator tests: in-process coordinators on free ports and a scripted agent that
speaks the real dbintel.v1 protocol over gRPC (it applies assignments and acks them like an agent,
without polling databases)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from typing import Any

import grpc

from dbintel.common.config import Config, parse_config
from dbintel.coordinator.server import Coordinator
from dbintel.v1 import agent_service_pb2 as apb
from dbintel.v1 import agent_service_pb2_grpc, operator_service_pb2_grpc

FAST_TIMING = {
    "heartbeat_interval": "300ms",
    "node_timeout": "1500ms",
    "rebalance_interval": "5m",
    "min_rebalance_interval": "1s",
}


def make_config(
    databases: int = 6,
    *,
    mode: str = "memory",
    redis=None,
    leader_ttl: str = "2s",
    timing: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Config:
    import yaml

    doc: dict[str, Any] = {
        "scaling": {"mode": mode, "coordinator": {**FAST_TIMING, **(timing or {})}},
        "coordinator": {"grpc_listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0", "health_listen": "127.0.0.1:0"},
        "databases": [
            {"name": f"db{i:03d}", "type": "redis", "endpoint": "127.0.0.1:6379", "database": str(i % 16)}
            for i in range(databases)
        ],
    }
    if redis is not None:
        os.environ["DBINTEL_TEST_REDIS_PASSWORD"] = redis.password  # resolved where the store connects
        doc["scaling"]["redis"] = {
            "address": redis.address,
            "password": "${env:DBINTEL_TEST_REDIS_PASSWORD}",
            "key_prefix": f"test:{uuid.uuid4().hex[:8]}:",
            "leader_ttl": leader_ttl,
        }
    for key, value in (extra or {}).items():
        doc[key] = value
    return parse_config(
        yaml.safe_dump(doc), environ={"DBINTEL_TEST_REDIS_PASSWORD": getattr(redis, "password", "") or ""}
    )


async def start_coordinator(config: Config, name: str, **kwargs) -> Coordinator:
    coordinator = Coordinator(config, coordinator_id=name, **kwargs)
    await coordinator.start()
    return coordinator


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)


class ScriptedAgent:
    """A protocol-faithful agent without collectors: holds what it is told, acks at once."""

    def __init__(
        self,
        agent_id: str,
        address: str,
        *,
        pod_name: str | None = None,
        zone: str = "",
        capacity: int = 0,
        heartbeat_s: float = 0.3,
        reconnect: bool = True,
        sequenced: bool = False,
    ):
        self.agent_id, self.address = agent_id, address
        self.pod_name = pod_name or agent_id
        self.zone, self.capacity, self.heartbeat_s = zone, capacity, heartbeat_s
        self.instance_id = uuid.uuid4().hex
        self.epoch = 0
        self.held: set[str] = set()
        self.history: list[tuple[float, int, frozenset[str]]] = []  # (monotonic, epoch, set)
        self.stale_ignored = 0
        self.degraded_seen = False
        self.error: grpc.aio.AioRpcError | None = None
        self.reconnect = reconnect
        self.sequenced = sequenced  # number requests as today's agents do (older ones send none)
        self.sequence = 0
        self._task: asyncio.Task | None = None
        self._outbox: asyncio.Queue | None = None
        self.silent = False  # stop heartbeating (simulates a hung agent) while the stream stays open
        self.responses = 0
        self.poll_times_ms: dict[str, int] = {}  # reported as last_poll_time
        self.grants: dict[str, int] = {}  # resource -> last_poll_time (ms) carried by its grant
        self.baselines: dict[str, bytes] = {}  # resource -> query_baseline sent when releasing it
        self.granted_baselines: dict[str, bytes] = {}  # resource -> query_baseline of its newest grant

    def _status(self, rid: str, released: bool = False) -> dict:
        status: dict[str, Any] = {"resource_id": rid, "polls_total": 1, "up": True}
        if rid in self.poll_times_ms:
            ms = self.poll_times_ms[rid]
            status["last_poll_time"] = {"seconds": ms // 1000, "nanos": (ms % 1000) * 1_000_000}
        if released and rid in self.baselines:
            status["query_baseline"] = self.baselines[rid]
        return status

    def request(self, with_registration: bool = False, released=()) -> apb.HeartbeatRequest:
        message = apb.HeartbeatRequest(
            agent_id=self.agent_id,
            applied_assignment_epoch=self.epoch,
            current=[self._status(r) for r in sorted(self.held)],
            released=[self._status(r, released=True) for r in sorted(released)],
        )
        if self.sequenced:
            self.sequence += 1
            message.sequence = self.sequence
        if with_registration:
            message.registration.CopyFrom(
                apb.AgentRegistration(
                    pod_name=self.pod_name,
                    zone=self.zone,
                    capacity=self.capacity,
                    version="test",
                    instance_id=self.instance_id,
                )
            )
        return message

    def start(self) -> ScriptedAgent:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            try:
                await self._stream()
            except grpc.aio.AioRpcError as exc:
                self.error = exc
                if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS):
                    return
            if not self.reconnect:
                return
            await asyncio.sleep(0.1)

    async def _stream(self) -> None:
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = agent_service_pb2_grpc.AgentServiceStub(channel)
            self._outbox = asyncio.Queue()
            self._outbox.put_nowait(self.request(with_registration=True))

            async def requests():
                while True:
                    item = await self._outbox.get()
                    if item is None:
                        return
                    yield item

            async def ticker():
                while True:
                    await asyncio.sleep(self.heartbeat_s)
                    if not self.silent:
                        self._outbox.put_nowait(self.request())

            tick = asyncio.create_task(ticker())
            try:
                async for response in stub.Heartbeat(requests()):
                    self.responses += 1
                    self.degraded_seen |= response.degraded
                    if response.HasField("assignment"):
                        self.apply(response.assignment)
            finally:
                tick.cancel()

    def apply(self, assignment) -> None:
        if assignment.assignment_epoch <= self.epoch:
            self.stale_ignored += 1
            return
        self.epoch = assignment.assignment_epoch
        released = self.held - {r.resource_id for r in assignment.resources}
        for grant in assignment.resources:
            if grant.resource_id not in self.held:
                self.granted_baselines[grant.resource_id] = grant.query_baseline
        self.held = {r.resource_id for r in assignment.resources}
        for grant in assignment.resources:
            if grant.HasField("last_poll_time"):
                self.grants[grant.resource_id] = grant.last_poll_time.ToMilliseconds()
        self.history.append((time.monotonic(), self.epoch, frozenset(self.held)))
        if self._outbox is not None:
            self._outbox.put_nowait(self.request(released=released))  # the acknowledgment

    async def leave(self, reason: str = "test") -> int:
        async with grpc.aio.insecure_channel(self.address) as channel:
            reply = await agent_service_pb2_grpc.AgentServiceStub(channel).Leave(
                apb.LeaveRequest(agent_id=self.agent_id, reason=reason), timeout=5
            )
        await self.stop()
        return reply.released_resources

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        self.held = set()


def operator_stub(address: str):
    channel = grpc.aio.insecure_channel(address)
    return channel, operator_service_pb2_grpc.OperatorServiceStub(channel)


def owners(agents: list[ScriptedAgent]) -> dict[str, list[str]]:
    """resource -> agents holding it right now."""
    out: dict[str, list[str]] = {}
    for agent in agents:
        for rid in agent.held:
            out.setdefault(rid, []).append(agent.agent_id)
    return out


def exactly_once(agents: list[ScriptedAgent], resources: set[str]) -> bool:
    held = owners(agents)
    return set(held) == resources and all(len(v) == 1 for v in held.values())


@contextlib.asynccontextmanager
async def scripted_cluster(config: Config, agents: int, *, name: str = "c1", **agent_options: Any):
    """A coordinator and `agents` scripted agents, placed (every database held exactly once)."""
    coordinator = await start_coordinator(config, name)
    address = f"127.0.0.1:{coordinator.grpc_port}"
    fleet = [ScriptedAgent(f"agent-{i}", address, **agent_options).start() for i in range(agents)]
    try:
        await wait_for(lambda: exactly_once(fleet, set(config.resources())), message="initial placement")
        yield coordinator, address, fleet
    finally:
        for agent in fleet:
            await agent.stop()
        await coordinator.shutdown()
