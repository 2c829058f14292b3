"""The agent process: wires the coordinator link, the poll scheduler, the exposition, OTLP and health.

The agent polls nothing until the coordinator has given it an assignment (unless
`scaling.receiver_scaling.ignore_assignments` is true: then it polls every configured database and
never talks to a coordinator). An assignment is the whole set of databases at an epoch; only an epoch
newer than the one held is applied. Applying one stops the revoked databases (series gone at once,
connections closed), starts the granted ones on the previous owner's schedule, and acknowledges at
once with a heartbeat, because the coordinator waits for that acknowledgment to hand the revoked
databases to their next owner; its `released` list carries their final poll times, which the next
owner's grant carries on, so the series has neither a gap nor a double sample. Each released entry also
carries the database's top-query baseline (PollScheduler.query_baseline, read once its loops stopped),
and a grant's baseline goes to PollScheduler.add, so top-query deltas continue across the move.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry

from dbintel import __version__
from dbintel.common.config import Config, ConfigError, DatabaseConfig, load_config
from dbintel.common.endpoints import format_host_port, parse_host_port
from dbintel.common.http_endpoints import HealthEndpoint, MetricsEndpoint
from dbintel.common.message_limits import MAX_QUERY_BASELINE_BYTES, MAX_RELEASED_BASELINE_BYTES
from dbintel.common.secrets import SecretResolutionError, resolve_secret
from dbintel.v1 import agent_service_pb2 as pb
from dbintel.v1 import types_pb2

from .collectors import CollectorUnavailable, collector_class
from .collectors.base import DatabaseCollector
from .coordinator_link import CoordinatorLink
from .exposition import AgentExposition, AgentStatus
from .otlp import OTLPPush
from .queries.document import activity_document
from .query_events import QueryEventExporter
from .scheduler import ActivityListener, CollectorSetupError, PollScheduler, ResourceSnapshot

log = logging.getLogger(__name__)


def make_collector(resource_id: str, database: DatabaseConfig) -> DatabaseCollector:
    """A collector for one database: its class by type, its password resolved, its metric switches applied."""
    try:
        cls = collector_class(database.type)
    except CollectorUnavailable as exc:
        raise CollectorSetupError("config", str(exc)) from None
    except ImportError as exc:  # the collector's driver is not installed
        raise CollectorSetupError("config", f"the {database.type} collector cannot be loaded: {exc}") from None
    try:
        password = resolve_secret(database.password)
    except SecretResolutionError as exc:  # the message names the reference, never a value
        raise CollectorSetupError("secret", f"password {exc}") from None
    try:
        enabled = cls.table.enabled({name: toggle.enabled for name, toggle in database.metrics.items()})
    except ValueError as exc:
        raise CollectorSetupError("config", f"metrics: {exc}") from None
    return cls(database, password=password, enabled=enabled)


WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


def advertised_http_address(advertise: str, listen: str, bound_port: int) -> str:
    """Where others reach this agent's metrics endpoint: `agent.advertise_address` if set, else the
    listen address with its actually bound port, a wildcard host replaced by $POD_IP or the host name."""
    if advertise:
        return advertise
    host = parse_host_port(listen, allow_empty_host=True, allow_port_zero=True).host
    if host in WILDCARD_HOSTS:
        host = os.environ.get("POD_IP") or socket.gethostname()
    return format_host_port(host, bound_port)


def resource_status(snapshot: ResourceSnapshot) -> types_pb2.ResourceStatus:
    """One database's line of a heartbeat."""
    status = types_pb2.ResourceStatus(
        resource_id=snapshot.resource_id,
        polls_total=snapshot.polls_total,
        errors_total=snapshot.errors_total,
        up=snapshot.up,
    )
    # Until this agent polls, the previous owner's time stands, so a quick second move keeps the schedule.
    last = snapshot.last_poll_time if snapshot.last_poll_time is not None else snapshot.inherited_last_poll_time
    if last is not None:
        status.last_poll_time.FromNanoseconds(int(last * 1e9))
    if snapshot.last_poll_duration is not None:
        status.last_poll_duration.FromNanoseconds(int(snapshot.last_poll_duration * 1e9))
    return status


class _Released:
    """A database given up, reported in `released` on the next few heartbeats (the coordinator keeps
    the newest last poll time per database, so repeating it is harmless and survives a lost write).

    Its top-query baseline can be read only once its loops have stopped (`settled`); until then it is
    reported as still polled, for a release without the baseline would let the next owner start fresh."""

    REPORTS = 3

    def __init__(self, status: types_pb2.ResourceStatus):
        self.status = status
        self.reports_left = self.REPORTS
        self.settled = False
        self.baseline: bytes | None = None  # PollScheduler.query_baseline, once settled


def with_query_baselines(
    statuses: list[types_pb2.ResourceStatus],
    baseline_of: Callable[[str], bytes | None],
    budget_bytes: int = MAX_RELEASED_BASELINE_BYTES,
) -> list[types_pb2.ResourceStatus]:
    """`statuses` (released entries), each with its top-query baseline while they fit in `budget_bytes`
    over the request (message_limits); the rest go without one and their next owners start fresh."""
    out = []
    used = 0
    for status in statuses:
        baseline = baseline_of(status.resource_id)
        # Over the per-database bound the coordinator would refuse the whole request: send none.
        if baseline and len(baseline) <= MAX_QUERY_BASELINE_BYTES and used + len(baseline) <= budget_bytes:
            used += len(baseline)
            carried = types_pb2.ResourceStatus()
            carried.CopyFrom(status)
            carried.query_baseline = baseline
            status = carried
        out.append(status)
    return out


class Agent:
    """One agent process. See the module docstring; `dbintel agent` runs `run_until_signal()`."""

    def __init__(
        self,
        config: Config,
        *,
        agent_id: str,
        coordinator: str | None = None,
        metrics_listen: str | None = None,
        health_listen: str | None = None,
        config_path: str | None = None,
    ):
        self._config = config
        self.agent_id = agent_id
        self.coordinator = coordinator or config.agent.coordinator
        self._config_path = config_path
        self._ignore_assignments = config.scaling.receiver_scaling.ignore_assignments
        self.registry = CollectorRegistry()
        self._scheduler = PollScheduler(
            make_collector,
            max_concurrent_polls=config.agent.max_concurrent_polls,
            on_poll=self._on_poll,
            # the config in force when a database is granted (a reload may change the defaults)
            query_settings=lambda database: self._config.agent.query_settings(database),
            on_activity=self._activity_changed,
        )
        self._activity_listeners: list[ActivityListener] = []
        self._exposition = AgentExposition(
            self.registry,
            snapshots=self._exposed_snapshots,
            status=self._status,
            max_concurrent_polls=config.agent.max_concurrent_polls,
        )
        self._otlp: OTLPPush | None = None
        self._query_events: QueryEventExporter | None = None
        self._metrics_endpoint = MetricsEndpoint(
            metrics_listen or config.agent.metrics_listen,
            self.registry,
            render=self._exposition.render_query,
            queries=self._queries_reply,
        )
        self._health_endpoint = HealthEndpoint(health_listen or config.agent.health_listen, self._readiness)
        scaling = config.scaling
        registration = pb.AgentRegistration(
            pod_name=os.environ.get("POD_NAME") or socket.gethostname(),
            zone=config.agent.zone,
            version=__version__,
            capacity=config.agent.capacity,
        )  # the link adds the per-registration instance id and session secret
        self._link = CoordinatorLink(  # started by start(), unless ignore_assignments
            self.coordinator,
            self.agent_id,
            registration,
            self,
            heartbeat_interval=scaling.coordinator.heartbeat_interval.total_seconds(),
            check_interval=scaling.receiver_scaling.check_interval.total_seconds(),
            node_timeout=scaling.coordinator.node_timeout.total_seconds(),
            stop_on_loss=scaling.receiver_scaling.on_coordinator_loss == "stop",
            disconnect_grace=scaling.coordinator.disconnect_grace.total_seconds(),
            tls=config.agent.tls,
        )
        self._apply_lock = asyncio.Lock()
        self._assigned: frozenset[str] = frozenset()
        self._assignment_epoch = 0
        self._holds_assignment = False  # False before the first assignment and while stopped (coordinator lost)
        self._coordinator_degraded = False
        self._connected = False
        self._released: dict[str, _Released] = {}
        self._started = False
        self.http_address = ""  # where the coordinator sends `dbintel top` (set by start)
        self._closing = False
        self._polling_stopped = False  # set once the final poll times are in _released
        self._shutdown_task: asyncio.Task[None] | None = None

    # -- views (tests, `dbintel up`) -----------------------------------------------------------
    @property
    def metrics_port(self) -> int | None:
        return self._metrics_endpoint.port

    @property
    def health_port(self) -> int | None:
        return self._health_endpoint.port

    @property
    def assigned(self) -> frozenset[str]:
        """The resource ids of the assignment held (empty before the first and while stopped)."""
        return self._assigned

    @property
    def polling(self) -> frozenset[str]:
        """The resource ids actually polled (assigned and found in the config)."""
        return self._scheduler.held

    @property
    def assignment_epoch(self) -> int:
        return self._assignment_epoch

    @property
    def degraded(self) -> bool:
        """No coordinator link, or the coordinator cannot reach its store (never with ignore_assignments)."""
        if self._ignore_assignments:
            return False
        return self._coordinator_degraded or not self._connected

    @property
    def scheduler(self) -> PollScheduler:
        return self._scheduler

    def _status(self) -> AgentStatus:
        return AgentStatus(
            assigned_databases=len(self._assigned),
            assignment_epoch=self._assignment_epoch,
            coordinator_degraded=self.degraded,
            coordinator_connected=self._connected,
        )

    def _readiness(self) -> tuple[bool, str]:
        if self._closing:
            return False, "shutting down"
        if self._ignore_assignments:
            return True, f"ignore_assignments: polling all {len(self._assigned)} configured database(s)"
        if self._holds_assignment:
            return True, f"holding assignment epoch {self._assignment_epoch} ({len(self._assigned)} database(s))"
        last_error = self._link.last_error
        return False, f"waiting for an assignment from the coordinator at {self.coordinator}" + (
            f" (last attempt: {last_error})" if last_error else ""
        )

    def _exposed_snapshots(self) -> Mapping[str, ResourceSnapshot]:
        """What /metrics shows: nothing once shutdown has released the databases, whose next owners
        continue their series (the snapshots stay until then for the final OTLP export)."""
        return {} if self._polling_stopped else self._scheduler.snapshots()

    def _queries_reply(self, query: Mapping[str, list[str]]) -> tuple[int, bytes]:
        """`GET /queries?resource=ID` (from the metrics thread): the database's activity as JSON, from
        the scheduler's snapshot; 404 for a database this agent does not hold."""
        resource_id = (query.get("resource") or [""])[0]
        if not resource_id:
            return 400, json.dumps({"error": "missing ?resource=RESOURCE_ID"}).encode()
        snapshot = self._exposed_snapshots().get(resource_id)
        if snapshot is None:
            error = f"agent {self.agent_id} does not hold {resource_id}"
            return 404, json.dumps({"error": error, "agent_id": self.agent_id}).encode()
        return 200, json.dumps(activity_document(snapshot, self.agent_id)).encode()

    def add_activity_listener(self, listener: ActivityListener) -> None:
        """Call `listener(before, after)` on the event loop whenever a database's query activity changes
        (a new top-query interval or sample read); it must not block."""
        self._activity_listeners.append(listener)

    def _activity_changed(self, before: ResourceSnapshot | None, after: ResourceSnapshot) -> None:
        for listener in self._activity_listeners:
            try:
                listener(before, after)
            except Exception:  # one broken consumer must not stop the reads nor the others
                log.exception("an activity listener failed")

    def _on_poll(self, db_type: str, seconds: float) -> None:
        self._exposition.observe_poll(db_type, seconds)

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._metrics_endpoint.start()
        await self._health_endpoint.start()
        assert self.metrics_port is not None  # bound by start()
        self.http_address = advertised_http_address(
            self._config.agent.advertise_address,
            self._metrics_endpoint.listen,
            self.metrics_port,
        )
        self._link.advertise_http_address(self.http_address)
        otlp = self._config.agent.otlp
        if otlp.enabled:
            self._otlp = OTLPPush(otlp, snapshots=self._scheduler.snapshots, agent_id=self.agent_id)
            # The query events go to the same endpoint; they exist only where query intelligence is on.
            self._query_events = QueryEventExporter(otlp, agent_id=self.agent_id)
            self._query_events.start()
            self.add_activity_listener(self._query_events.publish)
        log.info("agent %s: metrics on :%s, health on :%s", self.agent_id, self.metrics_port, self.health_port)
        if self._ignore_assignments:
            log.info("ignore_assignments is set: polling every configured database, no coordinator")
            resources = self._config.resources()
            for resource_id, database in resources.items():
                self._grant(resource_id, database, None, None)
            self._assigned = frozenset(resources)
            return
        self._link.start()

    async def run_until_signal(self) -> None:
        """Run until SIGTERM or SIGINT, then shut down within agent.shutdown_grace."""
        loop = asyncio.get_running_loop()
        received: asyncio.Future[str] = loop.create_future()

        def on_signal(name: str) -> None:
            if not received.done():
                received.set_result(name)

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum.name)
        try:
            await self.start()
            reason = await received
            log.info("%s received: shutting down", reason)
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            await self.shutdown(received.result() if received.done() else "shutdown")

    async def shutdown(self, reason: str = "shutdown") -> None:
        """Stop polling, Leave, flush OTLP, close connections and endpoints; within agent.shutdown_grace.
        Idempotent (concurrent callers wait for the same shutdown) and safe without start()."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.get_running_loop().create_task(self._shutdown(reason), name="agent shutdown")
        await asyncio.shield(self._shutdown_task)

    async def _shutdown(self, reason: str) -> None:
        # The endpoints' stop (below, after the timeout) takes up to 0.5s: keep that inside the grace too.
        grace = max(0.1, self._config.agent.shutdown_grace.total_seconds() - 0.75)
        deadline = time.monotonic() + grace

        def remaining(share: float = 1.0) -> float:
            return max(0.05, (deadline - time.monotonic()) * share)

        self._closing = True  # refuses assignments, reports nothing current, turns readiness off
        try:
            async with asyncio.timeout(grace):
                async with self._apply_lock:
                    await self._scheduler.stop()
                    self._release(self._scheduler.held)
                    self._settle(self._scheduler.held)  # the loops have stopped: the baselines stand
                    # Until here heartbeats still report the databases as polled (they were): one that
                    # said "none" without their final poll times would let them move with stale times.
                    self._polling_stopped = True
                if not self._ignore_assignments:
                    # A last heartbeat releases everything with its final poll times (so the next owners
                    # continue the schedule exactly); then Leave hands the databases over at once. Leave
                    # carries the final poll times too, in case it overtakes that heartbeat after all.
                    finals = self._with_baselines(list(self._released.values()))
                    await self._link.final_report(timeout=remaining(0.4))
                    await self._link.leave(reason, timeout=min(2.0, remaining(0.25)), released=finals)
                    await self._link.close()
                if self._otlp is not None:  # before closing: closing drops the snapshots it exports
                    await asyncio.to_thread(self._otlp.shutdown, remaining(0.5))
                if self._query_events is not None:
                    await asyncio.to_thread(self._query_events.shutdown, remaining(0.5))
                await self._scheduler.close(timeout=remaining())
        except TimeoutError:
            log.warning("shutdown did not finish within shutdown_grace (%.1fs); exiting anyway", grace)
        finally:
            await self._link.close()
            # The metrics server's shutdown waits out its 0.5s poll loop: keep that off the event loop.
            await asyncio.gather(asyncio.to_thread(self._metrics_endpoint.stop), self._health_endpoint.stop())
            self._assigned = frozenset()
            log.info("agent %s stopped (%s)", self.agent_id, reason)

    # -- LinkHandler: what the coordinator link calls -------------------------------------------
    @property
    def instance_id(self) -> str:
        return self._link.instance_id

    def report(self) -> tuple[int, list[types_pb2.ResourceStatus], list[types_pb2.ResourceStatus]]:
        """(applied epoch, databases polled, databases given up recently) for one heartbeat."""
        # While stopped after a coordinator loss the agent reports epoch 0: it holds nothing, and the
        # coordinator resends the assignment (the epoch it resends may equal the one held before).
        epoch = self._assignment_epoch if self._holds_assignment else 0
        current = [] if self._polling_stopped else [resource_status(s) for s in self._scheduler.snapshots().values()]
        polled = {status.resource_id for status in current}
        released: list[_Released] = []
        for resource_id, entry in list(self._released.items()):
            if not entry.settled:  # its loops are stopping: still polled, as far as a next owner cares
                if not self._polling_stopped and resource_id not in polled:
                    current.append(entry.status)
                continue
            released.append(entry)
            entry.reports_left -= 1
            if entry.reports_left <= 0:
                del self._released[resource_id]
        return epoch, current, self._with_baselines(released)

    @staticmethod
    def _with_baselines(entries: list[_Released]) -> list[types_pb2.ResourceStatus]:
        baselines = {entry.status.resource_id: entry.baseline for entry in entries}
        return with_query_baselines([entry.status for entry in entries], baselines.get)

    def _release(self, resource_ids) -> None:
        """Remember the final statistics of databases being given up, for the next heartbeats; they are
        released there once `_settle` has their top-query baselines."""
        snapshots = self._scheduler.snapshots()
        for resource_id in resource_ids:
            snapshot = snapshots.get(resource_id)
            if snapshot is not None:
                self._released[resource_id] = _Released(resource_status(snapshot))

    def _settle(self, resource_ids) -> None:
        """After the loops of `resource_ids` stopped: take their top-query baselines for the release."""
        for resource_id in resource_ids:
            entry = self._released.get(resource_id)
            if entry is not None and not entry.settled:
                entry.baseline = self._scheduler.query_baseline(resource_id)
                entry.settled = True

    def on_link_state(self, *, connected: bool, degraded: bool) -> None:
        self._connected, self._coordinator_degraded = connected, degraded

    async def on_coordinator_lost(self) -> None:
        async with self._apply_lock:
            if self._closing or not self._holds_assignment:
                return
            log.warning("on_coordinator_loss: stop — no longer polling %d database(s)", len(self._scheduler.held))
            held = self._scheduler.held
            self._release(held)
            # Holding nothing from the moment polling stops (remove() stops it before it awaits the loops).
            self._holds_assignment = False
            self._assigned = frozenset()
            await self._scheduler.remove(held)
            self._settle(held)

    async def apply(self, assignment: types_pb2.Assignment) -> bool:
        """Apply `assignment` if newer than the one held (stale ones are ignored); True if applied."""
        async with self._apply_lock:
            epoch = assignment.assignment_epoch
            if self._closing:
                return False
            if assignment.agent_id and assignment.agent_id != self.agent_id:
                log.warning("ignoring an assignment addressed to %s", assignment.agent_id)
                return False
            # After a stop on coordinator loss the same epoch is welcome again: it means nothing moved.
            newer = epoch > self._assignment_epoch or (
                not self._holds_assignment and epoch == self._assignment_epoch and epoch > 0
            )
            if not newer:
                log.debug("ignoring stale assignment epoch %d (holding %d)", epoch, self._assignment_epoch)
                return False
            grants = {
                g.resource_id: (g.last_poll_time.ToNanoseconds() / 1e9 if g.HasField("last_poll_time") else None)
                for g in assignment.resources
            }
            baselines = {g.resource_id: g.query_baseline for g in assignment.resources if g.query_baseline}
            revoked = self._scheduler.held - grants.keys()
            self._release(revoked)
            await self._scheduler.remove(revoked)
            self._settle(revoked)
            for resource_id in grants:
                self._released.pop(resource_id, None)  # granted back: it is current again
            granted = [rid for rid in grants if rid not in self._scheduler.held]
            resources = self._resources_for(granted)
            for resource_id in granted:
                database = resources.get(resource_id)
                if database is None:
                    log.error(
                        "assignment epoch %d grants %s, which is not in the config: not polling it", epoch, resource_id
                    )
                    continue
                self._grant(resource_id, database, grants[resource_id], baselines.get(resource_id))
            self._assigned = frozenset(grants)
            self._assignment_epoch = epoch
            self._holds_assignment = True
            log.info(
                "applied assignment epoch %d: %d database(s), %d granted, %d revoked",
                epoch,
                len(grants),
                len(granted),
                len(revoked),
            )
            return True

    def _resources_for(self, resource_ids: list[str]) -> dict[str, DatabaseConfig]:
        """The config entries of `resource_ids`, re-reading the config file once if some are unknown."""
        resources = self._config.resources()
        if self._config_path and any(rid not in resources for rid in resource_ids):
            try:
                self._config = load_config(self._config_path)
                resources = self._config.resources()
                log.info("re-read %s for unknown resource ids", self._config_path)
            except ConfigError as exc:
                log.error("re-reading the config for unknown resource ids failed: %s", exc)
        return resources

    def _grant(
        self, resource_id: str, database: DatabaseConfig, last_poll_time: float | None, query_baseline: bytes | None
    ) -> None:
        self._scheduler.add(resource_id, database, last_poll_time=last_poll_time, query_baseline=query_baseline)
        if self._otlp is not None:
            try:
                self._otlp.add_table(database.type, collector_class(database.type).table)
            except (CollectorUnavailable, ImportError):
                pass  # the scheduler reports it as a config error on every poll
