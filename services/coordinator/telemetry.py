"""The coordinator's own metrics (on a registry passed in) and the gRPC interceptor that counts RPCs."""

from __future__ import annotations

import time

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class CoordinatorMetrics:
    def __init__(self, registry: CollectorRegistry):
        # The four names users already know (gauges despite the _total suffix, as in the original brief).
        self.nodes = Gauge("dbintel_scaling_nodes_total", "Live agents (members not expired)", registry=registry)
        self.assignments = Gauge("dbintel_scaling_assignments_total", "Databases held by an agent", registry=registry)
        self.unacknowledged = Gauge(
            "dbintel_scaling_agents_unacknowledged",
            "Agents that left an assignment unacknowledged past the deadline (given no databases)",
            registry=registry,
        )
        self.leader = Gauge("dbintel_scaling_leader", "1 on the leader replica, 0 on followers", registry=registry)
        self.rebalances = Counter(
            "dbintel_scaling_rebalance", "Changes of the target placement made by this replica", registry=registry
        )
        self.leader_epoch = Gauge(
            "dbintel_scaling_leader_epoch", "Fencing epoch of the lease this replica last held", registry=registry
        )
        self.agents_by_state = Gauge(
            "dbintel_scaling_agents", "Known agents by membership state", ["state"], registry=registry
        )
        self.unassigned = Gauge(
            "dbintel_scaling_unassigned_resources", "Databases no agent can take", registry=registry
        )
        self.moves = Counter(
            "dbintel_scaling_moves", "Databases moved between agents by this replica", registry=registry
        )
        self.heartbeats = Counter(
            "dbintel_scaling_heartbeats", "Heartbeats received by this replica", registry=registry
        )
        self.disconnects = Counter(
            "dbintel_scaling_agent_disconnects",
            "Heartbeat streams that ended without a Leave, marking the agent suspect (expired after "
            "disconnect_grace unless it reconnects)",
            registry=registry,
        )
        self.expirations = Counter(
            "dbintel_scaling_agent_expirations",
            "Agents expired by this replica as leader, by why: silent for node_timeout, or disconnected "
            "for disconnect_grace",
            ["reason"],
            registry=registry,
        )
        self.connected_agents = Gauge(
            "dbintel_scaling_connected_agents", "Heartbeat streams open on this replica", registry=registry
        )
        self.store_errors = Counter(
            "dbintel_scaling_store_errors", "Store operations that failed", ["operation"], registry=registry
        )
        self.store_up = Gauge("dbintel_scaling_store_up", "1 when this replica reaches its store", registry=registry)
        self.rebalance_duration = Histogram(
            "dbintel_scaling_rebalance_duration_seconds", "Time to write one placement change", registry=registry
        )
        self.rpcs = Counter(
            "dbintel_grpc_server_handled",
            "RPCs completed, by method and status code",
            ["grpc_method", "grpc_code"],
            registry=registry,
        )
        self.rpc_seconds = Histogram(
            "dbintel_grpc_server_handling_seconds",
            "RPC duration (streams: their lifetime)",
            ["grpc_method"],
            registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 300, 3600),
        )


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every RPC by method and final code and times it; streams included."""

    def __init__(self, metrics: CoordinatorMetrics):
        self._metrics = metrics

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]
        metrics = self._metrics

        def finish(context, started, default_code):
            code = context.code() if context.code() is not None else default_code
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            metrics.rpcs.labels(method, name).inc()
            metrics.rpc_seconds.labels(method).observe(time.perf_counter() - started)

        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary_unary(request, context):
                started, code = time.perf_counter(), grpc.StatusCode.OK
                try:
                    return await inner(request, context)
                except Exception:
                    code = grpc.StatusCode.UNKNOWN
                    raise
                finally:
                    finish(context, started, code)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_stream:
            inner_stream = handler.stream_stream

            async def stream_stream(request_iterator, context):
                started, code = time.perf_counter(), grpc.StatusCode.OK
                try:
                    async for response in inner_stream(request_iterator, context):
                        yield response
                except Exception:
                    code = grpc.StatusCode.UNKNOWN
                    raise
                finally:
                    finish(context, started, code)

            return grpc.stream_stream_rpc_method_handler(
                stream_stream, handler.request_deserializer, handler.response_serializer
            )
        return handler
