"""The agent's side of `dbintel.v1.AgentService`: the Heartbeat stream, its fallback, and Leave.

One long-lived bidirectional Heartbeat stream carries the agent's reports up (registration first on
every new stream, then applied epoch + the databases it polls, every heartbeat interval and at once
after an assignment is applied) and assignment changes down. When the stream breaks the link
reconnects with exponential backoff and full jitter (100 ms doubling up to 5 s) and, until a stream
answers again, asks `GetAssignments` every `check_interval` so that assignments still arrive.

Every request carries a sequence number and the coordinator echoes it once the request is recorded
(unsolicited assignment pushes echo 0), so the link knows which heartbeat was answered and when it
was sent. The deadlines come from `dbintel.common.liveness`: a request unanswered for
`response_timeout` means the replica froze or the path died, and the link opens a fresh channel (a
frozen replica keeps its TCP connections, so the old channel would route there again); with
`on_coordinator_loss: stop` a watchdog stops polling once `stop_after` (80 % of node_timeout) has
passed since the send time of the last answered heartbeat. The coordinator expires an agent
node_timeout after it recorded its last heartbeat, so the agent is re-recorded elsewhere or stops
first, and neither a partition nor a paused replica makes two pollers.

A replica that sees this agent's stream end without a Leave marks it suspect, and the leader expires
it `disconnect_grace` later unless a heartbeat clears the mark: a crashed agent's databases move in
seconds. The link pings its replica every max(1 s, grace / 6) (HTTP/2 keepalive) so that a
connection broken on the replica's side only is noticed here too, and with `on_coordinator_loss:
stop` it stops polling `stop_after` (a third of the grace) after a stream broke, unless a heartbeat sent
since was answered; `dbintel.common.liveness` shows why that is inside the grace. A stream the
coordinator ends itself (it is shutting down) marks nobody and arms nothing.

The registration carries a random per-registration `session_secret`; Leave and GetAssignments
present it, so nobody else can end this agent's session. When the coordinator says the registration
has ended (FAILED_PRECONDITION: it left, or was taken for gone), the agent stops polling and
registers again as a new instance instead of idling as a zombie.

What to report and how to apply an assignment is the agent's business (`LinkHandler`); this module
only speaks the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Protocol

import grpc

from dbintel.common.config import TLSSettings
from dbintel.common.grpc_security import describe_rpc_error, open_channel
from dbintel.common.liveness import DisconnectTimings, LinkTimings, disconnect_timings, link_timings
from dbintel.v1 import agent_service_pb2 as pb
from dbintel.v1 import agent_service_pb2_grpc as pb_grpc
from dbintel.v1 import types_pb2

from .replicas import Replica, choose, resolve

log = logging.getLogger(__name__)

BACKOFF_INITIAL = 0.1
BACKOFF_CAP = 5.0

# Each channel dials one replica (see replicas.py).
CHANNEL_OPTIONS = (
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", int(BACKOFF_INITIAL * 1000)),
    ("grpc.min_reconnect_backoff_ms", int(BACKOFF_INITIAL * 1000)),
    ("grpc.max_reconnect_backoff_ms", int(BACKOFF_CAP * 1000)),
)
# Without a disconnect grace nothing needs a fast keepalive: ping no more often than a default gRPC
# server accepts (5 min without data; more often earns a GOAWAY "too_many_pings" on a quiet stream).
SLOW_KEEPALIVE = (("grpc.keepalive_time_ms", 300_000), ("grpc.keepalive_timeout_ms", 20_000))


def keepalive_options(disconnect: DisconnectTimings | None) -> tuple[tuple[str, int], ...]:
    """The channel's HTTP/2 keepalive for a replica's disconnect grace (None: the grace is off)."""
    if disconnect is None:
        return SLOW_KEEPALIVE
    timeout_ms = max(1, round(disconnect.keepalive_timeout * 1000))
    return (
        ("grpc.keepalive_time_ms", max(1, round(disconnect.keepalive_time * 1000))),
        ("grpc.keepalive_timeout_ms", timeout_ms),
        # gRPC core times an unanswered keepalive ping out by this one (default 1 min), not the above.
        ("grpc.http2.ping_timeout_ms", timeout_ms),
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
    """A request went unanswered for response_timeout. Unanswered, not merely quiet: the coordinator
    answers every request at once (even while its store is down), so this means the path or the
    replica is gone; gRPC keepalive would notice only minutes later."""


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
        disconnect_grace: float = 0.0,
        tls: TLSSettings | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ):
        self.target = target
        self._tls = tls
        self.agent_id = agent_id
        self._registration = pb.AgentRegistration()
        self._registration.CopyFrom(registration)
        self._new_session()
        self._handler = handler
        self._default_heartbeat_interval = heartbeat_interval
        self._heartbeat_interval = heartbeat_interval
        self._check_interval = check_interval
        self._node_timeout = node_timeout
        self._timings: LinkTimings = link_timings(heartbeat_interval, node_timeout)
        self._stop_on_loss = stop_on_loss
        self._disconnect: DisconnectTimings | None = None
        self._set_disconnect_grace(disconnect_grace)
        self._lost_at: float | None = None  # when a stream broke with no heartbeat sent since answered
        self._watch = asyncio.Event()  # the watchdog's deadlines changed
        self._monotonic = monotonic
        self._rng = rng or random.Random()
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.AgentServiceStub | None = None
        self.replica: Replica | None = None  # the one the channel dials
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # a heartbeat was requested or the interval changed
        self._send_requested = False
        self._sequence = 0  # of the last request built; never reset, so answers from any stream compare
        self._answered_sequence = 0  # the newest request the coordinator recorded
        self._unanswered: dict[int, float] = {}  # sequence -> when written, on the current stream
        self._last_ack = monotonic()  # when the last answered request was sent
        self._lost_reported = False
        self._degraded = False
        self.connected = False
        self._stream_responded = False
        self._stream_sent = False  # the current stream wrote a request (its replica may know it)
        self.streams_opened = 0  # for tests and logs
        self.channels_opened = 0
        self._answered = asyncio.Event()
        self._leaving = False  # Leave sent: no new stream, no new registration
        self.last_error: str | None = None  # why the last stream failed (readiness shows it), None once connected

    @property
    def instance_id(self) -> str:
        """This process's current registration (a new one after the coordinator ended the last)."""
        return self._registration.instance_id

    def advertise_http_address(self, address: str) -> None:
        """Where `dbintel top` reaches this agent; carried by every registration from now on."""
        self._registration.http_address = address

    @property
    def timings(self) -> LinkTimings:
        return self._timings

    @property
    def disconnect(self) -> DisconnectTimings | None:
        """The keepalive and stop deadline for the coordinator's disconnect grace; None when it is off."""
        return self._disconnect

    def _set_disconnect_grace(self, grace: float) -> None:
        self._disconnect_grace = grace
        self._disconnect = disconnect_timings(grace) if grace > 0 else None

    def _new_session(self) -> None:
        self._registration.instance_id = uuid.uuid4().hex
        self._registration.session_secret = secrets.token_urlsafe(24)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._last_ack = self._monotonic()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="coordinator link")

    async def _switch_replica(self) -> None:
        """A channel to another replica than the last one (it stalled, failed or ended the stream):
        a frozen replica keeps its TCP connections, so a channel to it would stall again."""
        replica = choose(await resolve(self.target), self.replica, self._rng)
        options: list[tuple[str, object]] = [*CHANNEL_OPTIONS, *keepalive_options(self._disconnect)]
        if replica.authority is not None:  # dialled by address: keep the name for :authority and TLS
            options.append(("grpc.default_authority", replica.authority))
            if self._tls is not None and self._tls.enabled and not self._tls.server_name:
                options.append(("grpc.ssl_target_name_override", replica.authority))
        old = self._channel
        self._channel = open_channel(replica.address, self._tls, section="agent.tls", options=options)
        self._stub = pb_grpc.AgentServiceStub(self._channel)
        self.replica = replica
        self.channels_opened += 1
        if old is not None:
            await old.close(grace=None)

    def send_now(self) -> None:
        """Heartbeat at once (the acknowledgment after an assignment is applied)."""
        self._send_requested = True
        self._wake.set()

    async def final_report(self, timeout: float) -> bool:
        """Send one more heartbeat (built from the handler's report from now on) and wait until the
        coordinator has recorded it, so that a Leave sent next cannot overtake it; False if no
        stream or no answer in time (Leave carries the final poll times too)."""
        if not self.connected:
            return False
        target = self._sequence + 1  # the next request built sees the report as it is now
        self.send_now()
        try:
            async with asyncio.timeout(timeout):
                while self._answered_sequence < target:
                    self._answered.clear()
                    await self._answered.wait()
            return True
        except TimeoutError:
            return False

    async def leave(self, reason: str, timeout: float, released: Sequence[types_pb2.ResourceStatus] = ()) -> None:
        """Tell the coordinator this agent is going (drains its databases at once), with the final
        poll statistics of what it gave up. Failure is ignored: the agent expires instead."""
        if self._stub is None:
            return
        self._leaving = True
        # The stream has said its last (final_report): stop the loop first, so that it cannot switch
        # replica, and so close the channel, under the Leave in flight.
        await self._stop_loop()
        request = pb.LeaveRequest(
            agent_id=self.agent_id,
            reason=reason,
            session_secret=self._registration.session_secret,
            released=list(released),
        )
        try:
            reply = await self._stub.Leave(request, timeout=timeout)
            log.info("left the cluster (%s); %d database(s) released", reason, reply.released_resources)
        except (TimeoutError, grpc.aio.AioRpcError) as exc:
            log.warning("Leave failed (%s); the coordinator will expire this agent instead", self._describe(exc))

    async def _stop_loop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def close(self) -> None:
        await self._stop_loop()
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
                self._stream_responded = self._stream_sent = False
                await self._switch_replica()
                broken = True  # the coordinator may mark this agent suspect: see _stream_broke
                try:
                    await self._stream_once(lambda: _cancel(fallback))  # noqa: B023 - the fallback running when the stream answers
                    broken = False  # it ended the stream itself, so it marks nobody
                    log.warning("Heartbeat stream to %s ended by the coordinator", self._replica_name())
                except _StreamStalled:
                    log.warning(
                        "Heartbeat stream to %s stalled (a request unanswered for %.2gs); switching replica",
                        self._replica_name(),
                        self._timings.response_timeout,
                    )
                except _ReplicaDegraded:
                    log.info("coordinator replica cannot reach its store; trying another")
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                        self._stream_failed(exc, attempt)
                    else:
                        # It left, or was taken for gone: its databases are someone else's now. Stop
                        # polling them and register as a new instance rather than idle as a zombie.
                        log.warning("the coordinator ended this registration (%s); registering anew", exc.details())
                        await asyncio.shield(self._handler.on_coordinator_lost())
                        self._new_session()
                        broken = False
                except Exception as exc:  # any other failure means: reconnect
                    self._stream_failed(exc, attempt)
                if broken and self._stream_sent:  # a stream the replica never heard of cannot mark
                    self._stream_broke()
                responded = self._stream_responded
                self._set_connected(False)
                if self._leaving:
                    return
                if fallback is None or fallback.done():
                    fallback = asyncio.create_task(self._fallback(), name="GetAssignments fallback")
                attempt = 0 if responded else attempt + 1
                await asyncio.sleep(backoff_delay(attempt, self._rng))
        finally:
            for task in (watchdog, fallback):
                if task is not None:
                    task.cancel()
            await asyncio.gather(*(t for t in (watchdog, fallback) if t is not None), return_exceptions=True)

    def _stream_broke(self) -> None:
        """A stream ended other than by the coordinator's word: its replica may have marked this agent
        suspect, to be expired disconnect_grace after it saw the end. Arm the stop deadline (stop mode)."""
        if self._lost_at is None:
            self._lost_at = self._monotonic()
            self._watch.set()

    def _replica_name(self) -> str:
        return self.replica.address if self.replica is not None else self.target

    def _stream_failed(self, exc: BaseException, attempt: int) -> None:
        # A working stream that ends (max connection age, a replica rolling) is routine; failing
        # to get a new one is worth a warning, once per outage.
        level = logging.INFO if attempt == 0 else logging.WARNING if attempt == 1 else logging.DEBUG
        reason = self._describe(exc)
        if reason != self.last_error and attempt > 1:  # a different failure is news again
            level = logging.WARNING
        self.last_error = reason
        log.log(level, "Heartbeat stream to %s failed: %s", self._replica_name(), reason)

    async def _stream_once(self, on_first_response: Callable[[], object]) -> None:
        assert self._stub is not None
        call = self._stub.Heartbeat()
        self.streams_opened += 1
        self._unanswered.clear()  # what went out on an older stream is answered there or never

        async def read() -> None:
            degraded_since: float | None = None  # since when this stream's replica says its store is unreachable
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    return
                answered = self._answer_of(response)
                if answered:
                    self._record_answer(answered)
                first_response = not self._stream_responded
                if first_response:
                    self._stream_responded = True
                    self.last_error = None
                    on_first_response()
                    log.info(
                        "connected to coordinator %s (replica %s)", self._replica_name(), response.coordinator_id or "?"
                    )
                if answered:
                    self._note_degraded(response.degraded)
                if not response.degraded:
                    degraded_since = None
                elif answered:
                    # A blip (a store restart) is sat out on this stream; a lasting one is taken to
                    # another replica within response_timeout, so the agent is recorded elsewhere well
                    # before node_timeout. If the store itself is down every replica says so, and
                    # degraded answers count as answered, so the assignment is kept meanwhile.
                    now = self._monotonic()
                    degraded_since = degraded_since if degraded_since is not None else now
                    if now - degraded_since >= self._timings.response_timeout:
                        raise _ReplicaDegraded()
                if response.HasField("disconnect_grace"):
                    grace = response.disconnect_grace.ToTimedelta().total_seconds()
                    if grace != self._disconnect_grace:  # the next channel's keepalive follows it
                        self._set_disconnect_grace(grace)
                        self._watch.set()
                if response.HasField("heartbeat_interval"):
                    seconds = response.heartbeat_interval.ToTimedelta().total_seconds()
                    interval = seconds if seconds > 0 else self._default_heartbeat_interval
                    if interval != self._heartbeat_interval:
                        self._heartbeat_interval = interval
                        self._timings = link_timings(interval, self._node_timeout)
                        self._wake.set()
                if response.HasField("assignment"):
                    await self._apply(response.assignment)
                if first_response:
                    # A second heartbeat at once proves the session: the coordinator grants databases
                    # only to an agent that heartbeats after registering.
                    self.send_now()

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

    def _answer_of(self, response: pb.HeartbeatResponse) -> int:
        """The sequence `response` answers; 0 for an unsolicited push."""
        if response.answered_sequence:
            return response.answered_sequence
        if not response.HasField("assignment") and self._unanswered:
            return next(iter(self._unanswered))  # a coordinator from before sequence numbers: in order
        return 0

    def _record_answer(self, sequence: int) -> None:
        sent_at = self._unanswered.get(sequence)
        for pending in [s for s in self._unanswered if s <= sequence]:
            del self._unanswered[pending]
        if sequence > self._answered_sequence:
            self._answered_sequence = sequence
        if sent_at is not None:
            # The coordinator recorded this request after it was sent: its expiry clock started
            # no earlier, so measuring from the send time keeps the agent on the safe side.
            self._last_ack = max(self._last_ack, sent_at)
            if self._lost_at is not None and sent_at >= self._lost_at:
                self._lost_at = None  # recorded after the break: any suspect mark is cleared
        self._lost_reported = False
        self._set_connected(True)
        self._answered.set()

    async def _write_loop(self, call: grpc.aio.StreamStreamCall) -> None:
        first = True
        while True:
            self._send_requested = False
            applied_epoch, current, released = self._handler.report()
            self._sequence += 1
            request = pb.HeartbeatRequest(
                agent_id=self.agent_id,
                applied_assignment_epoch=applied_epoch,
                current=current,
                released=released,
                sequence=self._sequence,
            )
            if first:  # every new stream starts with the registration
                request.registration.CopyFrom(self._registration)
            sequence = self._sequence
            await call.write(request)
            self._stream_sent = True
            first = False
            written_at = self._monotonic()
            self._unanswered[sequence] = written_at
            await self._until_next_heartbeat(written_at)
            oldest = self._oldest_unanswered()
            if oldest is not None and self._monotonic() - oldest >= self._timings.response_timeout:
                raise _StreamStalled()

    def _oldest_unanswered(self) -> float | None:
        return next(iter(self._unanswered.values()), None)

    async def _until_next_heartbeat(self, written_at: float) -> None:
        """Until a heartbeat is requested, one interval after the last write, or the oldest unanswered
        request's response timeout; the interval may change meanwhile (a response sets it), so the
        deadline is recomputed on every wake-up."""
        while True:
            self._wake.clear()
            deadline = written_at + self._heartbeat_interval
            oldest = self._oldest_unanswered()
            if oldest is not None:
                deadline = min(deadline, oldest + self._timings.response_timeout)
            remaining = deadline - self._monotonic()
            if self._send_requested or remaining <= 0:
                return
            try:
                async with asyncio.timeout(remaining):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _fallback(self) -> None:
        """While the stream is down: GetAssignments every check_interval. Its answers do not hold off
        the watchdog: they prove the coordinator is there, not that it records this agent as live."""
        while True:
            await asyncio.sleep(self._check_interval)
            assert self._stub is not None  # the channel may be reopened meanwhile: look it up each time
            request = pb.GetAssignmentsRequest(agent_id=self.agent_id, session_secret=self._registration.session_secret)
            try:
                reply = await self._stub.GetAssignments(request, timeout=max(0.5, min(self._check_interval, 5.0)))
            except (TimeoutError, grpc.aio.AioRpcError) as exc:
                log.debug("GetAssignments failed: %s", self._describe(exc))
                continue
            except asyncio.CancelledError:
                # grpc.aio raises CancelledError in a call whose channel closed (a replica switch):
                # that call is lost, this loop is not, unless this task itself is being cancelled.
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                continue
            self._note_degraded(reply.degraded)
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

    def _note_degraded(self, degraded: bool) -> None:
        if degraded == self._degraded:
            return
        (log.warning if degraded else log.info)(
            "coordinator reports its store %s", "unreachable: keeping the assignment" if degraded else "back"
        )
        self._degraded = degraded
        self._set_connected(self.connected)

    def _set_connected(self, connected: bool) -> None:
        self.connected = connected
        self._handler.on_link_state(connected=connected, degraded=self._degraded)

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, grpc.aio.AioRpcError):
            return describe_rpc_error(exc, self.target, self._tls)
        return type(exc).__name__

    async def _watchdog(self) -> None:
        """on_coordinator_loss: stop — stop polling once stop_after (inside node_timeout) has passed
        since the send time of the last heartbeat the coordinator answered, or the disconnect stop
        deadline since a stream broke without an answer to a heartbeat sent after."""
        period = max(0.02, min(1.0, self._node_timeout / 40))
        while True:
            self._watch.clear()
            now = self._monotonic()
            silence = now - self._last_ack
            since_break = None if self._lost_at is None else now - self._lost_at
            disconnect = self._disconnect
            broke = since_break is not None and disconnect is not None and since_break >= disconnect.stop_after
            if (silence > self._timings.stop_after or broke) and not self._lost_reported:
                self._lost_reported = True
                if broke:
                    log.warning(
                        "heartbeat stream broke %.1fs ago and no heartbeat since was answered: stopping all "
                        "polls until an assignment arrives (the coordinator expires this agent at disconnect_grace)",
                        since_break,
                    )
                else:
                    log.warning(
                        "no heartbeat answered by the coordinator for %.1fs (80 %% of node_timeout): "
                        "stopping all polls until an assignment arrives",
                        silence,
                    )
                await asyncio.shield(self._handler.on_coordinator_lost())
                continue
            wait = period
            if since_break is not None and disconnect is not None and not self._lost_reported:
                wait = min(wait, max(0.0, disconnect.stop_after - since_break))  # on time, not up to a period late
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._watch.wait()


def _cancel(task: asyncio.Task | None) -> None:
    if task is not None:
        task.cancel()
