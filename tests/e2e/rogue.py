"""Misbehaving agents on the real AgentService, for the e2e scenarios: a client that heartbeats but
never applies nor acknowledges what it is granted, and one that registers and then says nothing.

Each runs its own asyncio loop in a daemon thread and records what the coordinator sent it."""

from __future__ import annotations

import asyncio
import secrets
import threading
import uuid

import grpc

from dbintel.v1 import agent_service_pb2 as pb
from dbintel.v1 import agent_service_pb2_grpc as pb_grpc


class RogueAgent:
    """`mode`: "never_acknowledges" (heartbeats every `interval` reporting epoch 0 and nothing polled)
    or "silent" (the registration, then nothing, the stream held open)."""

    def __init__(self, target: str, agent_id: str, mode: str, interval: float = 1.0) -> None:
        assert mode in ("never_acknowledges", "silent"), mode
        self.target, self.agent_id, self.mode, self.interval = target, agent_id, mode, interval
        self.granted: set[str] = set()  # every database any assignment sent to it listed
        self.assignments_received = 0
        self.answers = 0
        self.error: str | None = None
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),), daemon=True)

    def start(self) -> RogueAgent:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout=10)

    def snapshot(self) -> tuple[set[str], int, int]:
        with self._lock:
            return set(self.granted), self.assignments_received, self.answers

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        registration = pb.AgentRegistration(
            pod_name=f"rogue-{self.agent_id}",
            version="rogue",
            instance_id=uuid.uuid4().hex,
            session_secret=secrets.token_urlsafe(24),
        )
        async with grpc.aio.insecure_channel(self.target) as channel:
            call = pb_grpc.AgentServiceStub(channel).Heartbeat()
            reader = asyncio.create_task(self._read(call))
            try:
                sequence = 1
                await call.write(pb.HeartbeatRequest(agent_id=self.agent_id, registration=registration, sequence=1))
                while not self._stopping.is_set():
                    try:
                        await asyncio.wait_for(self._stopping.wait(), self.interval)
                    except TimeoutError:
                        pass
                    if self.mode == "never_acknowledges" and not self._stopping.is_set():
                        sequence += 1
                        await call.write(pb.HeartbeatRequest(agent_id=self.agent_id, sequence=sequence))
            except grpc.aio.AioRpcError as exc:
                self.error = f"{exc.code().name}: {exc.details()}"
            finally:
                call.cancel()
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)

    async def _read(self, call) -> None:
        try:
            async for response in call:
                with self._lock:
                    if response.answered_sequence:
                        self.answers += 1
                    if response.HasField("assignment"):
                        self.assignments_received += 1
                        self.granted |= {g.resource_id for g in response.assignment.resources}
        except grpc.aio.AioRpcError as exc:
            self.error = f"{exc.code().name}: {exc.details()}"
