"""The two HTTP endpoints both roles serve: Prometheus metrics (:8889/metrics) and health (:13133).

Metrics are served from a thread, from a registry passed in (never the global one), so a slow scrape
cannot stall the event loop. Health is served *on* the event loop on purpose:
`/` answering proves the loop is alive; `/ready` asks the role whether it is ready for traffic.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .endpoints import parse_host_port

log = logging.getLogger(__name__)

Readiness = Callable[[], tuple[bool, str]]


def _bind_address(listen: str) -> tuple[str, int]:
    """(host, port) to bind: an empty host is every IPv4 address, port 0 any free port."""
    host, port = parse_host_port(listen, allow_empty_host=True, allow_port_zero=True)
    return host or "0.0.0.0", port


class MetricsEndpoint:
    """Serves `/metrics` from a background thread: `render()` if given (a role that renders part of its
    exposition itself, like the agent), else the registry in the Prometheus text format."""

    def __init__(self, listen: str, registry: CollectorRegistry, render: Callable[[], bytes] | None = None):
        self._listen, self._registry = listen, registry
        self._render = render or (lambda: generate_latest(registry))
        self._server: ThreadingHTTPServer | None = None
        self.port: int | None = None

    def start(self) -> None:
        render = self._render

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404, "try /metrics")
                    return
                try:
                    body = render()
                except Exception:  # a bug in rendering must answer 500, not hang the scrape
                    log.exception("rendering /metrics failed")
                    self.send_error(500, "rendering failed")
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # scrapes are not worth a log line each
                pass

        host, port = _bind_address(self._listen)
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
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

    def __init__(self, listen: str, readiness: Readiness):
        self._listen, self._readiness = listen, readiness
        self._server: asyncio.base_events.Server | None = None
        self.port: int | None = None

    async def start(self) -> None:
        host, port = _bind_address(self._listen)
        self._server = await asyncio.start_server(self._handle, host, port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass  # headers are not needed
            parts = request_line.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else "/"
            body: dict[str, object]
            if path in ("/", "/healthz", "/livez"):
                status, body = 200, {"status": "alive"}
            elif path in ("/ready", "/readyz"):
                ready, detail = self._readiness()
                status, body = (200 if ready else 503), {"status": "ready" if ready else "not ready", "detail": detail}
            else:
                status, body = 404, {"status": "not found", "paths": ["/", "/ready"]}
            payload = json.dumps(body).encode()
            reason = {200: "OK", 503: "Service Unavailable", 404: "Not Found"}[status]
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()
