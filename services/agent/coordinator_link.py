"""The agent's side of `dbintel.v1.AgentService`: the Heartbeat stream, its fallback, and Leave.

One long-lived bidirectional Heartbeat stream carries the agent's reports up (registration first on
every new stream, then applied epoch + the databases it polls, every heartbeat interval and at once
after an assignment is applied) and assignment changes down. When the stream breaks the link
reconnects with exponential backoff and full jitter (100 ms doubling up to 5 s) and, until a stream
answers again, asks `GetAssignments` every `check_interval` so that assignments still arrive.

With `on_coordinator_loss: stop` a watchdog tells the agent to stop polling once `node_timeout` has
passed (monotonic clock) since the last acknowledged exchange: a HeartbeatResponse or a successful
GetAssignments. The coordinator expires an agent after that same silence, so the agent stops before
its databases can be handed to another agent, and a partition never makes two pollers.

What to report and how to apply an assignment is the agent's business (`LinkHandler`); this module
only speaks the protocol.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Protocol

import grpc

from dbintel.common.config import TLSSettings
from dbintel.common.grpc_security import describe_rpc_error, open_channel
from dbintel.v1 import agent_service_pb2 as pb
from dbintel.v1 import agent_service_pb2_grpc as pb_grpc
from dbintel.v1 import types_pb2

log = logging.getLogger(__name__)

BACKOFF_INITIAL = 0.1
BACKOFF_CAP = 5.0

# A stream whose requests go unanswered this long is treated as dead and reopened. This, not gRPC
# keepalive, is what finds a dead path under an open stream quickly: the coordinator answers every
# request at once (even while its store is down), so silence means the path or the replica is gone.
RESPONSE_TIMEOUT = 10.0

# Keepalive pings no more often than a default gRPC server accepts (5 min without data; more often
# earns a GOAWAY "too_many_pings" on a quiet stream). round_robin spreads agents over the replicas
# when the name resolves to several (a headless Service).
CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", 300_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", int(BACKOFF_INITIAL * 1000)),
    ("grpc.min_reconnect_backoff_ms", int(BACKOFF_INITIAL * 1000)),
    ("grpc.max_reconnect_backoff_ms", int(BACKOFF_CAP * 1000)),
    ("grpc.lb_policy_name", "round_robin"),
)


def backoff_delay(
    attempt: int, rng: random.Random, *, initial: float = BACKOFF_INITIAL, cap: float = BACKOFF_CAP
) -> float:
    """Full jitter: uniform in [0, min(cap, initial * 2^attempt)] (attempt counts from 0)."""
    return rng.uniform(0.0, min(cap, initial * (2 ** min(attempt, 32))))


class LinkHandler(Protocol):
    """What the link needs from the agent."""

    def report(self) -> tuple[int, list[types_pb2.ResourceStatus], list[types_pb2.ResourceStatus]]:
        """(applied assignment epoch to report, the databases actually polled, the databases given up
        since recently, with their final poll statistics)."""

    async def apply(self, assignment: types_pb2.Assignment) -> bool:
        """Apply an assignment if it is newer than the one held; True if applied."""

    def on_link_state(self, *, connected: bool, degraded: bool) -> None:
        """The stream opened/closed, or the coordinator reported its store (un)reachable."""

    async def on_coordinator_lost(self) -> None:
        """node_timeout without an acknowledged exchange, with on_coordinator_loss: stop."""


class _StreamStalled(Exception):
    pass


class _ReplicaDegraded(Exception):
    """The replica answered that it cannot reach its store: it cannot record this agent's heartbeats,
    so the leader (on a replica that can) would expire the agent and hand its databases to another
    while this one keeps polling. Another replica may still reach the store: try it."""


class CoordinatorLink:
    """Keeps one agent connected to the coordinator. `start()`, then `leave()` and `close()`."""

    def __init__(
        self,
        target: str,
        agent_id: str,
        registration: pb.AgentRegistration,
        handler: LinkHandler,
        *,
        heartbeat_interval: float,
        check_interval: float,
        node_timeout: float,
        stop_on_loss: bool,
        tls: TLSSettings | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ):
        self.target = target
        self._tls = tls
        self.agent_id = agent_id
        self._registration = registration
        self._handler = handler
        self._default_heartbeat_interval = heartbeat_interval
        self._heartbeat_interval = heartbeat_interval
        self._check_interval = check_interval
        self._node_timeout = node_timeout
        self._stop_on_loss = stop_on_loss
        self._monotonic = monotonic
        self._rng = rng or random.Random()
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.AgentServiceStub | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # a heartbeat was requested or the interval changed
        self._send_requested = False
        self._write_count = 0
        self._writing = False
        self._write_waiters: list[asyncio.Future[None]] = []
        self._last_ack = monotonic()
        self._lost_reported = False
        self._degraded = False
        self.connected = False
        self._stream_responded = False
        self._unanswered_since: float | None = None  # the first write the coordinator has not answered yet
        self.streams_opened = 0  # for tests and logs
        # Heartbeats written / answered on the current stream: final_report waits for the answer.
        self._stream_writes = self._stream_responses = 0
        self._answered = asyncio.Event()
        self.last_error: str | None = None  # why the last stream failed (readiness shows it), None once connected

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._last_ack = self._monotonic()
        self._channel = open_channel(self.target, self._tls, section="agent.tls", options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.AgentServiceStub(self._channel)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="coordinator link")

    def send_now(self) -> None:
        """Heartbeat at once (the acknowledgment after an assignment is applied)."""
        self._send_requested = True
        self._wake.set()

    async def final_report(self, timeout: float) -> bool:
        """Send one more heartbeat on the open stream and wait until the coordinator has answered it
        (so it is recorded before a Leave sent next, which may reach another replica, can overtake it
        and discard its final poll times); False if no stream or no answer in time."""
        if not self.connected:
            return False
        waiter = asyncio.get_running_loop().create_future()
        self._write_waiters.append(waiter)
        target = self._write_count + (2 if self._writing else 1)  # a write in progress was built earlier
        self.send_now()
        try:
            async with asyncio.timeout(timeout):
                while self._write_count < target:
                    await asyncio.shield(waiter)
                    waiter = asyncio.get_running_loop().create_future()
                    self._write_waiters.append(waiter)
                    self.send_now()
                while self._stream_responses < self._stream_writes:
                    self._answered.clear()
                    await self._answered.wait()
            return True
        except TimeoutError:
            return False

    async def leave(self, reason: str, timeout: float) -> None:
        """Tell the coordinator this agent is going (drains its databases at once). Failure is ignored."""
        if self._stub is None:
            return
        try:
            reply = await self._stub.Leave(pb.LeaveRequest(agent_id=self.agent_id, reason=reason), timeout=timeout)
            log.info("left the cluster (%s); %d database(s) released", reason, reply.released_resources)
        except (TimeoutError, grpc.aio.AioRpcError) as exc:
            log.warning("Leave failed (%s); the coordinator will expire this agent instead", self._describe(exc))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._channel is not None:
            await self._channel.close(grace=None)
            self._channel = None
        self.connected = False

    # -- the main loop --------------------------------------------------------------------------
    async def _run(self) -> None:
        watchdog = asyncio.create_task(self._watchdog(), name="coordinator watchdog") if self._stop_on_loss else None
        fallback: asyncio.Task[None] | None = None
        attempt = 0
        try:
            while True:
                self._stream_responded = False
                try:
                    await self._stream_once(lambda: _cancel(fallback))  # noqa: B023 - the fallback running when the stream answers
                    log.warning("Heartbeat stream to %s ended by the coordinator", self.target)
                except _StreamStalled:
                    log.warning(
                        "Heartbeat stream to %s stalled (a request unanswered for %.1fs); reconnecting",
                        self.target,
                        self._response_timeout(),
                    )
                except _ReplicaDegraded:
                    log.info("coordinator replica cannot reach its store; trying another")
                except Exception as exc:  # AioRpcError mostly; any failure means: reconnect
                    # A working stream that ends (max connection age, a replica rolling) is routine; failing
                    # to get a new one is worth a warning, once per outage.
                    level = logging.INFO if attempt == 0 else logging.WARNING if attempt == 1 else logging.DEBUG
                    reason = self._describe(exc)
                    if reason != self.last_error and attempt > 1:  # a different failure is news again
                        level = logging.WARNING
                    self.last_error = reason
                    log.log(level, "Heartbeat stream to %s failed: %s", self.target, reason)
                responded = self._stream_responded
                self._set_connected(False)
                if fallback is None or fallback.done():
                    fallback = asyncio.create_task(self._fallback(), name="GetAssignments fallback")
                attempt = 0 if responded else attempt + 1
                await asyncio.sleep(backoff_delay(attempt, self._rng))
        finally:
            for task in (watchdog, fallback):
                if task is not None:
                    task.cancel()
            await asyncio.gather(*(t for t in (watchdog, fallback) if t is not None), return_exceptions=True)

    async def _stream_once(self, on_first_response: Callable[[], object]) -> None:
        assert self._stub is not None
        call = self._stub.Heartbeat()
        self.streams_opened += 1
        self._stream_writes = self._stream_responses = 0
        self._unanswered_since = None

        async def read() -> None:
            degraded_since: float | None = None  # since when this stream's replica says its store is unreachable
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    return
                self._unanswered_since = None
                self._stream_responses += 1
                self._answered.set()
                if not self._stream_responded:
                    self._stream_responded = True
                    self.last_error = None
                    on_first_response()
                    log.info("connected to coordinator %s (replica %s)", self.target, response.coordinator_id or "?")
                self._acknowledged(response.degraded, connected=True)
                if not response.degraded:
                    degraded_since = None
                else:
                    # A blip (a store restart) is sat out on this stream; a lasting one is taken to
                    # another replica, well before node_timeout would expire the agent. If the store
                    # itself is down every replica says so, and the agent moves on at most once per
                    # node_timeout / 3; degraded answers count as acknowledged, so the assignment is
                    # kept meanwhile.
                    now = self._monotonic()
                    degraded_since = degraded_since if degraded_since is not None else now
                    if now - degraded_since >= self._node_timeout / 3:
                        raise _ReplicaDegraded()
                if response.HasField("heartbeat_interval"):
                    seconds = response.heartbeat_interval.ToTimedelta().total_seconds()
                    interval = seconds if seconds > 0 else self._default_heartbeat_interval
                    if interval != self._heartbeat_interval:
                        self._heartbeat_interval = interval
                        self._wake.set()
                if response.HasField("assignment"):
                    await self._apply(response.assignment)

        reader = asyncio.create_task(read(), name="heartbeat reader")
        writer = asyncio.create_task(self._write_loop(call), name="heartbeat writer")
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # re-raise the failure that ended the stream
        finally:
            for task in (reader, writer):
                task.cancel()
            call.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)

    async def _write_loop(self, call: grpc.aio.StreamStreamCall) -> None:
        first = True
        while True:
            self._send_requested = False
            applied_epoch, current, released = self._handler.report()
            request = pb.HeartbeatRequest(
                agent_id=self.agent_id, applied_assignment_epoch=applied_epoch, current=current, released=released
            )
            if first:  # every new stream starts with the registration
                request.registration.CopyFrom(self._registration)
            self._writing = True
            try:
                await call.write(request)
            finally:
                self._writing = False
            first = False
            written_at = self._monotonic()
            if self._unanswered_since is None:
                self._unanswered_since = written_at
            self._write_count += 1
            self._stream_writes += 1
            waiters, self._write_waiters = self._write_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            await self._until_next_heartbeat(written_at)
            if (
                self._unanswered_since is not None
                and self._monotonic() - self._unanswered_since >= self._response_timeout()
            ):
                raise _StreamStalled()

    async def _until_next_heartbeat(self, written_at: float) -> None:
        """Until a heartbeat is requested or one interval after the last write; the interval may
        change meanwhile (a response sets it), so the deadline is recomputed on every wake-up."""
        while True:
            self._wake.clear()
            deadline = written_at + self._heartbeat_interval
            if self._unanswered_since is not None:
                deadline = min(deadline, self._unanswered_since + self._response_timeout())
            remaining = deadline - self._monotonic()
            if self._send_requested or remaining <= 0:
                return
            try:
                async with asyncio.timeout(remaining):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _response_timeout(self) -> float:
        return max(RESPONSE_TIMEOUT, self._heartbeat_interval)

    async def _fallback(self) -> None:
        """While the stream is down: GetAssignments every check_interval."""
        assert self._stub is not None
        while True:
            await asyncio.sleep(self._check_interval)
            try:
                reply = await self._stub.GetAssignments(
                    pb.GetAssignmentsRequest(agent_id=self.agent_id), timeout=max(0.5, min(self._check_interval, 5.0))
                )
            except (TimeoutError, grpc.aio.AioRpcError) as exc:
                log.debug("GetAssignments failed: %s", self._describe(exc))
                continue
            self._acknowledged(reply.degraded, connected=self.connected)
            if reply.HasField("assignment") and reply.assignment.assignment_epoch > 0:
                await self._apply(reply.assignment)

    async def _apply(self, assignment: types_pb2.Assignment) -> None:
        # Shielded: a half-applied assignment (polls stopped, grants not started) must never be left
        # behind because the stream broke or the fallback was cancelled meanwhile.
        try:
            applied = await asyncio.shield(self._handler.apply(assignment))
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug in applying must not tear the stream down
            log.exception("applying assignment epoch %d failed", assignment.assignment_epoch)
            return
        if applied:
            self.send_now()

    def _acknowledged(self, degraded: bool, *, connected: bool) -> None:
        self._last_ack = self._monotonic()
        self._lost_reported = False
        if degraded != self._degraded:
            (log.warning if degraded else log.info)(
                "coordinator reports its store %s", "unreachable: keeping the assignment" if degraded else "back"
            )
        self._degraded = degraded
        self._set_connected(connected)

    def _set_connected(self, connected: bool) -> None:
        self.connected = connected
        self._handler.on_link_state(connected=connected, degraded=self._degraded)

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, grpc.aio.AioRpcError):
            return describe_rpc_error(exc, self.target, self._tls)
        return type(exc).__name__

    async def _watchdog(self) -> None:
        """on_coordinator_loss: stop — stop polling after node_timeout without an acknowledged exchange."""
        period = max(0.02, min(1.0, self._node_timeout / 20))
        while True:
            await asyncio.sleep(period)
            silence = self._monotonic() - self._last_ack
            if silence > self._node_timeout and not self._lost_reported:
                self._lost_reported = True
                log.warning(
                    "no acknowledged exchange with the coordinator for %.1fs (node_timeout): "
                    "stopping all polls until an assignment arrives",
                    silence,
                )
                await asyncio.shield(self._handler.on_coordinator_lost())


def _cancel(task: asyncio.Task | None) -> None:
    if task is not None:
        task.cancel()
