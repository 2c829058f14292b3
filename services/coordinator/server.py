"""The coordinator process: gRPC (agent + operator services, reflection, grpc.health.v1), metrics,
health, leadership, the leader loop and the inventory watcher, wired together.

`start()` returns once everything listens and runs the loops in the background; `shutdown()` is
idempotent and safe without `start()`: health goes NOT_SERVING first, the lease is released so a
successor takes over at once, then streams close.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from dbintel.common import message_limits
from dbintel.common.config import Config, ConfigError, load_config
from dbintel.common.endpoints import format_host_port, parse_host_port
from dbintel.common.grpc_security import OperatorTokenInterceptor, server_credentials
from dbintel.common.http_endpoints import HealthEndpoint, MetricsEndpoint
from dbintel.common.liveness import MIN_KEEPALIVE_TIME_S
from dbintel.common.secrets import resolve_secret
from dbintel.v1 import agent_service_pb2, agent_service_pb2_grpc, operator_service_pb2, operator_service_pb2_grpc

from .agent_service import AgentServicer
from .leader import LeaderLoop, Leadership
from .model import StoreUnavailable
from .operator_service import OperatorServicer
from .request_guard import GuardMetrics, RequestGuard
from .store.base import EventSubscription, ScalingStore
from .store.health import StoreHealth
from .store.memory_store import MemoryScalingStore
from .telemetry import CoordinatorMetrics, RpcMetricsInterceptor

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    operator_service_pb2.DESCRIPTOR.services_by_name["OperatorService"].full_name,
)


def build_store(config: Config) -> ScalingStore:
    if config.scaling.mode == "memory":
        return MemoryScalingStore()
    from .store.redis_store import RedisScalingStore

    return RedisScalingStore(config.scaling.redis)


def _fingerprint(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


class Coordinator:
    def __init__(
        self,
        config: Config,
        *,
        config_path: str | None = None,
        coordinator_id: str | None = None,
        grpc_listen: str | None = None,
        metrics_listen: str | None = None,
        health_listen: str | None = None,
        store: ScalingStore | None = None,
        registry: CollectorRegistry | None = None,
    ):
        self.config = config
        self._config_path = config_path
        self.id = coordinator_id or os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
        settings = config.coordinator
        self._grpc_listen = grpc_listen or settings.grpc_listen
        self._listen_host = parse_host_port(self._grpc_listen, allow_empty_host=True, allow_port_zero=True).host
        self.registry = registry or CollectorRegistry()
        self.metrics = CoordinatorMetrics(self.registry)
        self.store = store or build_store(config)
        self._metrics_endpoint = MetricsEndpoint(metrics_listen or settings.metrics_listen, self.registry)
        self._health_endpoint = HealthEndpoint(health_listen or settings.health_listen, self._readiness)
        self._store_health = StoreHealth(
            self.store, config.scaling.coordinator.heartbeat_interval.total_seconds(), self.metrics
        )
        self._server: grpc.aio.Server | None = None
        self._health_servicer = health.aio.HealthServicer()
        self._tasks: list[asyncio.Task] = []
        self._last_store_error: str | None = None
        self._started = self._stopped = False
        self.grpc_port: int | None = None
        # Built here, not in start(), so they are never missing; nothing of theirs runs before start().
        self.leadership = Leadership(
            self.store, self.id, config.scaling.redis.leader_ttl.total_seconds(), "", self.metrics
        )
        self.leader_loop = LeaderLoop(self.store, self.leadership, lambda: self.config, self.metrics)
        self.request_guard = RequestGuard(
            GuardMetrics(self.registry),
            heartbeat_interval_s=lambda: self.config.scaling.coordinator.heartbeat_interval.total_seconds(),
            max_heartbeat_streams=lambda: self.config.coordinator.max_heartbeat_streams,
        )
        self.agent_servicer = AgentServicer(
            self.store,
            coordinator_id=self.id,
            config_source=lambda: self.config,
            metrics=self.metrics,
            store_health=self._store_health,
            leader_epoch=lambda: self.leadership.highest_epoch_seen,
        )

    # -- readiness ------------------------------------------------------------------------------------
    def _readiness(self) -> tuple[bool, str]:
        if not self._started or self._stopped:
            return False, "starting" if not self._stopped else "stopping"
        if not self._store_health.healthy:
            return False, "store unreachable" + (f": {self._last_store_error}" if self._last_store_error else "")
        return True, "leader" if self.leadership.is_leader else "follower"

    @property
    def metrics_port(self) -> int | None:
        return self._metrics_endpoint.port

    @property
    def health_port(self) -> int | None:
        return self._health_endpoint.port

    def _advertise_address(self, port: int) -> str:
        """Where followers forward leader-only RPCs: the listen host, unless it is a wildcard."""
        host = self._listen_host
        if host in ("", "0.0.0.0", "::"):
            host = os.environ.get("POD_IP") or socket.gethostname()
        return format_host_port(host, port)

    # -- lifecycle -----------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        security = self.config.coordinator
        # Both before anything listens, so a missing file or secret stops start() with its name.
        credentials = server_credentials(security.tls)
        operator_token = resolve_secret(security.operator_token)
        await self.store.start()
        await self._probe_store()
        operator = OperatorServicer(
            self.store,
            coordinator_id=self.id,
            config_source=lambda: self.config,
            leadership=self.leadership,
            leader_loop=self.leader_loop,
            forward_tls=security.client_tls,
            operator_token=operator_token,
        )
        interceptors: list[grpc.aio.ServerInterceptor] = [RpcMetricsInterceptor(self.metrics)]
        if operator_token is not None:
            interceptors.append(OperatorTokenInterceptor(operator_token))
        # Last, so it wraps the servicers' own handlers and the metrics count the statuses it gives.
        interceptors.append(self.request_guard)
        age_ms = int(self.config.coordinator.max_connection_age.total_seconds() * 1000)
        grace_ms = int(self.config.coordinator.max_connection_age_grace.total_seconds() * 1000)
        self._server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_connection_age_ms", age_ms),
                ("grpc.max_connection_age_grace_ms", grace_ms),
                ("grpc.keepalive_time_ms", 20_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                # Agents ping as often as once a second (liveness.disconnect_timings) to notice a broken
                # connection in time: accept that without a GOAWAY "too_many_pings".
                ("grpc.http2.min_ping_interval_without_data_ms", int(MIN_KEEPALIVE_TIME_S * 500)),
                ("grpc.keepalive_permit_without_calls", 1),
                *message_limits.server_options(),
            ],
        )
        agent_service_pb2_grpc.add_AgentServiceServicer_to_server(self.agent_servicer, self._server)
        operator_service_pb2_grpc.add_OperatorServiceServicer_to_server(operator, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health_servicer, self._server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self._server,
        )
        port = (
            self._server.add_secure_port(self._grpc_listen, credentials)
            if credentials is not None
            else self._server.add_insecure_port(self._grpc_listen)
        )
        if not port:
            raise OSError(f"cannot listen on {self._grpc_listen}")
        self.grpc_port = port
        self.leadership.address = self._advertise_address(port)
        await self._server.start()
        self._metrics_endpoint.start()
        await self._health_endpoint.start()
        self.agent_servicer.start()
        leader_events = self.store.subscribe()
        self._tasks = [
            asyncio.create_task(self.leadership.run(), name="leadership"),
            asyncio.create_task(self.leader_loop.run(), name="leader-loop"),
            asyncio.create_task(self._wake_leader_on_events(leader_events), name="leader-events"),
            asyncio.create_task(self._watch_inventory(), name="inventory-watch"),
            asyncio.create_task(self._refresh_gauges(), name="gauges"),
        ]
        for service in ("", *SERVICE_NAMES):
            await self._health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        self.metrics.store_up.set(1)
        self._started = True
        transport = ("mutual TLS" if security.tls.require_client_cert else "TLS") if credentials else "plaintext"
        log.info(
            "coordinator %s serving gRPC (%s%s) on %s (store: %s), metrics :%s, health :%s",
            self.id,
            transport,
            ", operator token required" if operator_token else "",
            format_host_port(self._listen_host, port),
            self.store.mode,
            self.metrics_port,
            self.health_port,
        )

    async def _probe_store(self) -> None:
        """Say at once why the store cannot be used (wrong password, TLS, address). Not fatal: the
        replica serves agents as degraded until the store answers (Redis trouble is survivable)."""
        try:
            await self.store.now_ms()
        except StoreUnavailable as exc:
            self._last_store_error = str(exc)
            log.error("store: %s; serving agents as degraded until it answers", exc)

    async def _wake_leader_on_events(self, subscription: EventSubscription) -> None:
        try:
            async for event in subscription:
                if event.kind in ("membership", "resync"):
                    self.leader_loop.wake()
        finally:
            subscription.close()

    async def _watch_inventory(self) -> None:
        """Reload the config when the file changes (a mounted ConfigMap is rewritten in place).
        A broken edit is reported and ignored: the last good config stays in force."""
        seen = _fingerprint(self._config_path)
        while self._config_path:
            await asyncio.sleep(self.config.coordinator.config_reload_interval.total_seconds())
            fingerprint = _fingerprint(self._config_path)
            if fingerprint is None or fingerprint == seen:
                continue
            seen = fingerprint
            try:
                self.config = load_config(self._config_path)
            except ConfigError as exc:
                log.error("config change ignored, keeping the previous one: %s", exc)
                continue
            log.info("inventory reloaded: %d database(s)", len(self.config.databases))
            self.leader_loop.inventory_changed()

    async def _refresh_gauges(self) -> None:
        """Followers export the cluster gauges too, from the store, so any replica answers dashboards."""
        while True:
            try:
                agents = await self.store.read_agents()
                states = {"active": 0, "draining": 0, "left": 0, "expired": 0}
                for record in agents.values():
                    states[record.state] = states.get(record.state, 0) + 1
                for state, count in states.items():
                    self.metrics.agents_by_state.labels(state).set(count)
                if not self.leadership.is_leader:
                    self.metrics.nodes.set(states["active"] + states["draining"])
                    assignments = await self.store.read_assignments()
                    self.metrics.assignments.set(sum(len(r.grants) for r in assignments.values()))
                await self._store_health.succeeded()
                self._last_store_error = None
            except StoreUnavailable as exc:
                self._store_health.failed("refresh")
                if str(exc) != self._last_store_error:  # once per distinct reason, not every 5 s
                    self._last_store_error = str(exc)
                    log.warning("store: %s", exc)
            await asyncio.sleep(5)

    async def shutdown(self, grace_s: float = 5.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        if not self._started:
            with contextlib.suppress(Exception):
                await self.store.close()
            return
        with contextlib.suppress(Exception):
            await self._health_servicer.enter_graceful_shutdown()
        if self._tasks:  # stop campaigning before releasing, so the lease is not taken again
            self._tasks[0].cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._tasks[0]
        await self.leadership.release()
        await self.agent_servicer.stop()
        if self._server is not None:
            await self._server.stop(grace_s)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._health_endpoint.stop()
        self._metrics_endpoint.stop()
        await self.store.close()
        log.info("coordinator %s stopped", self.id)
