"""The two HTTP endpoints both roles serve: Prometheus metrics (:8889/metrics) and health (:13133).

Metrics are served from a thread, from a registry passed in (never the global one), so a slow scrape
cannot stall the event loop. Health is served *on* the event loop on purpose:
`/` answering proves the loop is alive; `/ready` asks the role whether it is ready for traffic.

Both bound what a slow or hostile client can hold (HttpLimits, issue 12): the request head must arrive
whole within 5 s and 16 KiB (else 408 / 431 and the connection is closed), at most 32 connections are
served at once (the next gets 503 and is closed at once, holding no thread), and writing a reply
must finish within the write timeout. One scrape or probe needs one connection for well under a
second, so these never touch honest traffic; a flood of trickling connections costs at most 32
threads (metrics) or 32 coroutines (health), not one each.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .endpoints import parse_host_port

log = logging.getLogger(__name__)

Readiness = Callable[[], tuple[bool, str]]
# `GET /queries?...` -> (HTTP status, JSON body); the agent's query activity (dbintel top)
QueriesHandler = Callable[[Mapping[str, list[str]]], tuple[int, bytes]]


@dataclass(frozen=True)
class HttpLimits:
    """What one client may hold on an HTTP endpoint."""

    head_timeout_s: float = 5.0  # the request line and headers, whole, within this
    max_head_bytes: int = 16 * 1024  # ... and at most this long
    max_connections: int = 32  # served at once; the next is refused with 503
    write_timeout_s: float = 30.0  # writing one reply (a large /metrics body to a slow scraper)


HTTP_LIMITS = HttpLimits()


class HeadTooLarge(Exception):
    pass


def _reply(status: int, reason: str, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def _busy(limits: HttpLimits) -> bytes:
    return _reply(
        503,
        "Service Unavailable",
        f"busy: {limits.max_connections} connections open, the most served at once\n".encode(),
    )


def _head_complete(buffer: bytes | bytearray) -> bool:
    return b"\r\n\r\n" in buffer or b"\n\n" in buffer


def read_head(connection: socket.socket, limits: HttpLimits) -> bytes:
    """The request line and headers, read within limits.head_timeout_s in all (not per read, so a
    client trickling a byte at a time gains nothing). TimeoutError, HeadTooLarge or ConnectionError."""
    deadline = time.monotonic() + limits.head_timeout_s
    buffer = bytearray()
    while not _head_complete(buffer):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request head not received in time")
        connection.settimeout(remaining)
        chunk = connection.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the request head ended")
        buffer += chunk
        if len(buffer) > limits.max_head_bytes:
            raise HeadTooLarge()
    return bytes(buffer)


def _send_quietly(connection: socket.socket, data: bytes) -> None:
    """Best effort, never blocking: for refusals to clients that may not be reading."""
    try:
        connection.setblocking(False)
        connection.send(data)
    except OSError:
        pass


class _BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, but at most limits.max_connections of them; the rest get 503."""

    daemon_threads = True
    # The listen backlog (socketserver's default is 5): a flood is accepted and refused at once,
    # instead of waiting in SYN retries while honest scrapes queue behind it.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], limits: HttpLimits):
        self.limits = limits
        self._slots = threading.BoundedSemaphore(limits.max_connections)
        self._lock = threading.Lock()
        self.open_connections = 0
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            _send_quietly(request, _busy(self.limits))
            self.shutdown_request(request)
            return
        with self._lock:
            self.open_connections += 1
        try:
            super().process_request(request, client_address)
        except Exception:
            self._release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        with self._lock:
            self.open_connections -= 1
        self._slots.release()

    def handle_error(self, request, client_address) -> None:
        log.debug("metrics connection from %s failed", client_address[0])


def _bind_address(listen: str) -> tuple[str, int]:
    """(host, port) to bind: an empty host is every IPv4 address, port 0 any free port."""
    host, port = parse_host_port(listen, allow_empty_host=True, allow_port_zero=True)
    return host or "0.0.0.0", port


class MetricsEndpoint:
    """Serves `/metrics` from a background thread: `render(query parameters)` if given (a role that renders
    part of its exposition itself, like the agent), else the registry in the Prometheus text format.
    With `queries`, also `/queries` (JSON): the agent's query activity, for `dbintel top`."""

    def __init__(
        self,
        listen: str,
        registry: CollectorRegistry,
        render: Callable[[Mapping[str, list[str]]], bytes] | None = None,
        limits: HttpLimits = HTTP_LIMITS,
        queries: QueriesHandler | None = None,
    ):
        self._listen, self._registry, self._limits = listen, registry, limits
        self._queries = queries
        self._render = render or (lambda _query: generate_latest(registry))
        self._server: _BoundedHTTPServer | None = None
        self.port: int | None = None

    @property
    def open_connections(self) -> int:
        return self._server.open_connections if self._server is not None else 0

    @property
    def listen(self) -> str:
        return self._listen

    def start(self) -> None:
        render, limits, queries = self._render, self._limits, self._queries

        class Handler(BaseHTTPRequestHandler):
            def handle(self) -> None:
                """One request per connection; its head read within the limits, not line by line."""
                self.close_connection = True
                try:
                    head = read_head(self.connection, limits)
                except HeadTooLarge:
                    _send_quietly(self.connection, _reply(431, "Request Header Fields Too Large", b"head too large\n"))
                    return
                except TimeoutError:
                    _send_quietly(self.connection, _reply(408, "Request Timeout", b"request head too slow\n"))
                    return
                except OSError:  # ConnectionError included: the client went away
                    return
                self.rfile.close()
                self.rfile = io.BytesIO(head)
                self.connection.settimeout(limits.write_timeout_s)  # sendall's total, since Python 3.5
                try:
                    self.handle_one_request()
                except OSError:  # a reply not taken within the write timeout, or a reset
                    self.close_connection = True

            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                if path == "/queries" and queries is not None:
                    self._queries(query)
                    return
                if path not in ("/metrics", "/"):
                    self.send_error(404, "try /metrics")
                    return
                try:
                    body = render(urllib.parse.parse_qs(query))
                except Exception:  # a bug in rendering must answer 500, not hang the scrape
                    log.exception("rendering /metrics failed")
                    self.send_error(500, "rendering failed")
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _queries(self, query: str) -> None:
                assert queries is not None
                try:
                    status, body = queries(urllib.parse.parse_qs(query))
                except Exception:
                    log.exception("rendering /queries failed")
                    status, body = 500, b'{"error": "rendering failed"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # scrapes are not worth a log line each
                pass

        host, port = _bind_address(self._listen)
        self._server = _BoundedHTTPServer((host, port), Handler, limits)
        self.port = self._server.server_address[1]
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="metrics-http", daemon=True
        ).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class HealthEndpoint:
    """`GET /` (liveness) and `GET /ready` (readiness); JSON bodies, 200 or 503."""

    def __init__(self, listen: str, readiness: Readiness, limits: HttpLimits = HTTP_LIMITS):
        self._listen, self._readiness, self._limits = listen, readiness, limits
        self._server: asyncio.base_events.Server | None = None
        self.port: int | None = None
        self.open_connections = 0

    async def start(self) -> None:
        host, port = _bind_address(self._listen)
        # `limit` bounds one header line; _read_head bounds the whole head.
        self._server = await asyncio.start_server(self._handle, host, port, limit=self._limits.max_head_bytes)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _read_head(self, reader: asyncio.StreamReader) -> str:
        """The request line; the headers are read (not needed) up to the blank line, within max_head_bytes."""
        request_line = await reader.readline()
        size = len(request_line)
        line = request_line
        while line not in (b"\r\n", b"\n", b""):
            line = await reader.readline()
            size += len(line)
            if size > self._limits.max_head_bytes:
                raise HeadTooLarge()
        return request_line.decode("latin-1")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        limits = self._limits
        if self.open_connections >= limits.max_connections:
            writer.write(_busy(limits))
            writer.transport.abort() if writer.transport.get_write_buffer_size() else writer.close()
            return
        self.open_connections += 1
        try:
            try:
                request_line = await asyncio.wait_for(self._read_head(reader), limits.head_timeout_s)
            except TimeoutError:
                await self._send(writer, _reply(408, "Request Timeout", b"request head too slow\n"))
                return
            except (HeadTooLarge, ValueError):  # ValueError: one line over the reader's limit
                await self._send(writer, _reply(431, "Request Header Fields Too Large", b"head too large\n"))
                return
            parts = request_line.split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else "/"
            body: dict[str, object]
            if path in ("/", "/healthz", "/livez"):
                status, body = 200, {"status": "alive"}
            elif path in ("/ready", "/readyz"):
                ready, detail = self._readiness()
                status, body = (200 if ready else 503), {"status": "ready" if ready else "not ready", "detail": detail}
            else:
                status, body = 404, {"status": "not found", "paths": ["/", "/ready"]}
            reason = {200: "OK", 503: "Service Unavailable", 404: "Not Found"}[status]
            await self._send(writer, _reply(status, reason, json.dumps(body).encode(), "application/json"))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open_connections -= 1
            writer.close()

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        try:
            await asyncio.wait_for(writer.drain(), self._limits.write_timeout_s)
        except TimeoutError:
            writer.transport.abort()  # a client that does not read: drop it rather than keep its buffer
