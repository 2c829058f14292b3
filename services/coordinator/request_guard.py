"""What the coordinator does with hostile or broken input before a servicer sees it.

One server interceptor, in front of every handler (both dbintel services, health, reflection):

- **Undecodable requests** (truncated, not protobuf, invalid UTF-8 in a text field) end with
  INVALID_ARGUMENT naming the method and the message type, never gRPC's default
  `UNKNOWN: Unexpected DecodeError`. The payload is never echoed.
- **A field sent with the wrong wire type** (say `apply` as bytes) is not dropped silently as protobuf
  would: the call ends with INVALID_ARGUMENT naming the field. Checked on the request and its singular
  sub-messages (repeated ones are not walked: a heartbeat lists up to 100,000 resources). Unknown
  field *numbers* are still accepted, so newer clients keep working against older replicas.
- **Heartbeat streams** must send their first message within a deadline (clamp(heartbeat_interval,
  2 s, 5 s); an agent sends its registration at once) or end with DEADLINE_EXCEEDED, and one replica
  holds at most `coordinator.max_heartbeat_streams` of them; the next gets RESOURCE_EXHAUSTED. The
  open count is the `dbintel_grpc_server_heartbeat_streams` gauge; refusals are counted in
  `dbintel_grpc_server_rejected_total` by reason.

It works by taking over each handler's request deserializer (the handler receives raw bytes and
this module decodes them), so decode errors become statuses the handler would have given.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import unknown_fields
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry, Counter, Gauge

log = logging.getLogger(__name__)

HEARTBEAT_METHOD = "/dbintel.v1.AgentService/Heartbeat"
FIRST_MESSAGE_MIN_S = 2.0
FIRST_MESSAGE_MAX_S = 5.0
_MAX_DEPTH = 8  # sub-message levels checked for wrong wire types

_TYPE_NAMES = {value: name[5:].lower() for name, value in vars(FieldDescriptor).items() if name.startswith("TYPE_")}
_WIRE_NAMES = {0: "varint", 1: "64-bit", 2: "length-delimited", 3: "group start", 4: "group end", 5: "32-bit"}


def first_message_timeout(heartbeat_interval_s: float) -> float:
    """How long a new Heartbeat stream may stay silent: clamp(heartbeat_interval, 2 s, 5 s)."""
    return min(max(heartbeat_interval_s, FIRST_MESSAGE_MIN_S), FIRST_MESSAGE_MAX_S)


def wrong_wire_types(message: Message, prefix: str = "", depth: int = 0) -> list[str]:
    """Declared fields of `message` (and its singular sub-messages) that arrived with a wire type their
    type cannot take, which protobuf keeps as unknown fields instead of failing (the parser accepts
    packed and unpacked repeated scalars alike, so a declared number among the unknowns is always a
    wrong wire type): `["apply: sent as length-delimited, which a bool field cannot take"]`."""
    problems: list[str] = []
    fields = message.DESCRIPTOR.fields_by_number
    unknowns = unknown_fields.UnknownFieldSet(message)
    for index in range(len(unknowns)):
        unknown = unknowns[index]
        field = fields.get(unknown.field_number)
        if field is not None:  # else a field this version does not know: accepted, as protobuf intends
            kind = _WIRE_NAMES.get(unknown.wire_type, f"wire type {unknown.wire_type}")
            type_name = _TYPE_NAMES.get(field.type, "such a")
            problems.append(f"{prefix}{field.name}: sent as {kind}, which a {type_name} field cannot take")
    if depth < _MAX_DEPTH:
        for field, value in message.ListFields():
            if field.type == FieldDescriptor.TYPE_MESSAGE and not _is_repeated(field) and isinstance(value, Message):
                problems += wrong_wire_types(value, f"{prefix}{field.name}.", depth + 1)
    return problems


def _is_repeated(field: FieldDescriptor) -> bool:
    repeated = getattr(field, "is_repeated", None)  # protobuf >= 5.29; `label` before
    if repeated is None:
        return bool(getattr(field, "label", None) == FieldDescriptor.LABEL_REPEATED)
    return bool(repeated)


class RequestRejected(Exception):
    """Raised to the handler reading a stream when a request could not be used; the guard ends the call."""

    def __init__(self, code: grpc.StatusCode, details: str, reason: str):
        super().__init__(details)
        self.code, self.details, self.reason = code, details, reason


def _decoder(method: str, deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def decode(raw: bytes) -> Any:
        try:
            request = deserializer(raw)
        except Exception:  # DecodeError, or a deserializer that is not protobuf's: same answer
            name = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
            what = f" as {name.full_name}" if name is not None else ""
            raise RequestRejected(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{method}: the request message ({len(raw)} bytes) could not be decoded{what}: truncated, "
                "not protobuf, or invalid UTF-8 in a text field",
                "undecodable",
            ) from None
        if isinstance(request, Message):
            problems = wrong_wire_types(request)
            if problems:
                raise RequestRejected(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{method}: {'; '.join(problems[:5])}; the request was not acted on",
                    "wrong_wire_type",
                )
        return request

    return decode


class GuardMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.heartbeat_streams = Gauge(
            "dbintel_grpc_server_heartbeat_streams",
            "Heartbeat streams open on this replica, registered or not (bounded by coordinator.max_heartbeat_streams)",
            registry=registry,
        )
        self.rejected = Counter(
            "dbintel_grpc_server_rejected",
            "Requests refused before a handler acted on them, by reason (undecodable, wrong_wire_type, "
            "first_message_timeout, too_many_streams)",
            ["reason"],
            registry=registry,
        )


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class RequestGuard(grpc.aio.ServerInterceptor):
    """See the module docstring. `heartbeat_interval_s` and `max_heartbeat_streams` are read per stream,
    so a reloaded config applies to the next one."""

    def __init__(
        self,
        metrics: GuardMetrics,
        *,
        heartbeat_interval_s: Callable[[], float],
        max_heartbeat_streams: Callable[[], int],
    ):
        self._metrics = metrics
        self._heartbeat_interval_s, self._max_streams = heartbeat_interval_s, max_heartbeat_streams
        self.heartbeat_streams = 0

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler  # unknown method, or one that takes raw bytes (a refusal) already
        method = handler_call_details.method
        decode = _decoder(method, handler.request_deserializer)
        serializer = handler.response_serializer
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(self._unary_unary(handler.unary_unary, decode), None, serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._unary_stream(handler.unary_stream, decode), None, serializer
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._stream_unary(handler.stream_unary, decode, method), None, serializer
            )
        if handler.stream_stream:
            if method == HEARTBEAT_METHOD:
                return grpc.stream_stream_rpc_method_handler(
                    self._heartbeat(handler.stream_stream, decode, method), None, serializer
                )
            return grpc.stream_stream_rpc_method_handler(
                self._stream_stream(handler.stream_stream, decode, method), None, serializer
            )
        return handler

    async def _reject(self, context, rejected: RequestRejected) -> None:
        self._metrics.rejected.labels(rejected.reason).inc()
        await context.abort(rejected.code, rejected.details)

    # -- unary requests: decoded before the handler runs --------------------------------------------------
    def _unary_unary(self, inner, decode):
        async def unary_unary(raw, context):
            try:
                request = decode(raw)
            except RequestRejected as rejected:
                await self._reject(context, rejected)
            return await _maybe_await(inner(request, context))

        return unary_unary

    def _unary_stream(self, inner, decode):
        async def unary_stream(raw, context):
            try:
                request = decode(raw)
            except RequestRejected as rejected:
                await self._reject(context, rejected)
            result = inner(request, context)
            if inspect.isasyncgen(result):
                async for response in result:
                    yield response
            else:
                await _maybe_await(result)  # a handler that writes with context.write()

        return unary_stream

    # -- streaming requests: decoded as the handler reads them ------------------------------------------
    @staticmethod
    async def _decoded(
        raw_requests: AsyncIterator[bytes],
        decode,
        first_timeout: float | None,
        method: str,
        seen: list[RequestRejected],
    ) -> AsyncIterator[Any]:
        iterator = raw_requests.__aiter__()
        timeout = first_timeout
        while True:
            try:
                raw = await (asyncio.wait_for(iterator.__anext__(), timeout) if timeout else iterator.__anext__())
            except StopAsyncIteration:
                return
            except TimeoutError:
                rejected = RequestRejected(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"{method}: no first message within {timeout:g} s of opening the stream "
                    "(an agent sends its registration at once); closing it",
                    "first_message_timeout",
                )
                seen.append(rejected)
                raise rejected from None
            timeout = None
            try:
                request = decode(raw)
            except RequestRejected as rejected:
                seen.append(rejected)
                raise
            yield request

    async def _finish(self, context, seen: list[RequestRejected], exc: BaseException | None) -> None:
        """After the handler ended: if a request was rejected, that is the call's status, however the
        handler reacted to the exception (some end the stream quietly)."""
        if seen:
            await self._reject(context, seen[0])
        if exc is not None:
            raise exc

    def _stream_unary(self, inner, decode, method: str):
        async def stream_unary(raw_requests, context):
            seen: list[RequestRejected] = []
            try:
                response = await _maybe_await(inner(self._decoded(raw_requests, decode, None, method, seen), context))
            except Exception as exc:
                await self._finish(context, seen, exc)
                raise
            await self._finish(context, seen, None)
            return response

        return stream_unary

    def _stream_stream(self, inner, decode, method: str, first_timeout: float | None = None):
        async def stream_stream(raw_requests, context):
            seen: list[RequestRejected] = []
            result = inner(self._decoded(raw_requests, decode, first_timeout, method, seen), context)
            try:
                if inspect.isasyncgen(result):
                    async for response in result:
                        yield response
                else:
                    await _maybe_await(result)
            except Exception as exc:
                if not seen:
                    raise
                await self._finish(context, seen, exc)
            await self._finish(context, seen, None)

        return stream_stream

    def _heartbeat(self, inner, decode, method: str):
        async def heartbeat(raw_requests, context):
            limit = self._max_streams()
            if self.heartbeat_streams >= limit:
                await self._reject(
                    context,
                    RequestRejected(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"{method}: this replica already holds {self.heartbeat_streams} Heartbeat streams "
                        f"(coordinator.max_heartbeat_streams = {limit}); retry later or on another replica",
                        "too_many_streams",
                    ),
                )
            self.heartbeat_streams += 1
            self._metrics.heartbeat_streams.set(self.heartbeat_streams)
            try:
                timeout = first_message_timeout(self._heartbeat_interval_s())
                async for response in self._stream_stream(inner, decode, method, timeout)(raw_requests, context):
                    yield response
            finally:
                self.heartbeat_streams -= 1
                self._metrics.heartbeat_streams.set(self.heartbeat_streams)

        return heartbeat
