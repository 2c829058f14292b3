"""An asyncio TCP proxy that injects network faults between a client and a real server.

    proxy = FaultProxy("127.0.0.1", redis_server.port)
    port = await proxy.start()          # point the client at 127.0.0.1:port
    proxy.add_latency(0.2)              # every chunk arrives 0.2 s late, in each direction
    proxy.limit_bandwidth(10_000)       # bytes per second, per connection and direction
    proxy.blackhole()                   # nothing is forwarded or answered; connections hang
    proxy.reset()                       # every connection gets an RST, and so does every new one
    proxy.cut_server_side()             # the server's side gets an RST, the client's is black-holed
    proxy.pass_through()                # back to a clean link
    await proxy.stop()

Faults switch at run time and apply to open connections too. Latency and bandwidth combine;
blackhole and reset stop all traffic until pass_through(), add_latency() or limit_bandwidth().
While black-holed the proxy keeps accepting and reading, so clients see their writes succeed,
and it opens no new upstream connection; what it read is held, not dropped, and delivered when
the hole closes (as TCP retransmission would across a healed partition). Tools such as
Toxiproxy or tc netem are not available here, hence this.

Synchronous tests (and fixtures that outlive one test's event loop) host their proxies on a
`ProxyLoop`, an event loop in a daemon thread: `ProxyLoop().proxy(host, port)` gives a `Proxy` whose
switches are plain calls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

from tests.servers import free_port

_READ_SIZE = 64 * 1024
_SHAPING_SLICES_PER_S = 20  # bandwidth is metered in slices this often, so throughput is smooth


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    """Close at once with a TCP RST (SO_LINGER 0) rather than an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = listen_host
        self.port: int | None = None
        self._server: asyncio.base_events.Server | None = None
        self._links: set[_Link] = set()
        self._latency = 0.0
        self._bytes_per_s: float | None = None
        self._refusing = False
        self._forwarding = asyncio.Event()
        self._forwarding.set()

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self, port: int = 0) -> int:
        """Listen on listen_host (a free port unless one is given); returns the port."""
        self._server = await asyncio.start_server(self._serve, self.host, port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
        await self._abort_links()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connections(self) -> int:
        """Client connections the proxy currently holds open."""
        return len(self._links)

    # --- faults -------------------------------------------------------------------------------
    def pass_through(self) -> None:
        """A clean link: no latency, no bandwidth limit, no blackhole, no resets."""
        self._latency = 0.0
        self._bytes_per_s = None
        self._refusing = False
        self._forwarding.set()

    def add_latency(self, seconds: float) -> None:
        """Deliver every chunk `seconds` after it arrived, in each direction (a round trip
        gets twice that). Sets the latency rather than adding to it; traffic flows again."""
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        self._latency = float(seconds)
        self._resume()

    def limit_bandwidth(self, bytes_per_s: float) -> None:
        """At most this many bytes per second per connection and direction; traffic flows again."""
        if bytes_per_s <= 0:
            raise ValueError("bandwidth must be > 0 bytes per second")
        self._bytes_per_s = float(bytes_per_s)
        self._resume()

    def blackhole(self) -> None:
        """Accept and read, never forward or answer; connections stay open and hang."""
        self._refusing = False
        self._forwarding.clear()

    def reset(self) -> None:
        """RST every open connection (both the client and the server side) and every new one."""
        self._refusing = True
        self._forwarding.set()
        for link in list(self._links):
            link.abort()

    def cut_server_side(self) -> None:
        """A connection broken at one end only: RST the server's side of every open connection and
        black-hole the client's (it stays open, its writes succeed, nothing answers), as when a
        middlebox drops its state and resets the one end that next sends. The server sees the end at
        once; the client only when its own keepalive or timeout gives up. New connections hang."""
        self._refusing = False
        self._forwarding.clear()
        for link in list(self._links):
            link.cut_upstream()

    def _resume(self) -> None:
        self._refusing = False
        self._forwarding.set()

    # --- plumbing -----------------------------------------------------------------------------
    async def _abort_links(self) -> None:
        links = list(self._links)
        for link in links:
            link.abort()
        await asyncio.gather(*(link.finished.wait() for link in links))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            _abort_with_rst(writer)
            return
        link = _Link(self, reader, writer)
        self._links.add(link)
        try:
            await link.run()
        finally:
            self._links.discard(link)
            link.finished.set()

    async def _deliver(self, queue: asyncio.Queue[tuple[float, bytes | None]], writer: asyncio.StreamWriter) -> None:
        """Copy queued chunks to `writer`, honouring blackhole, latency and bandwidth as they are
        when each chunk is due (so switching faults affects data already in flight)."""
        loop = asyncio.get_running_loop()
        while True:
            arrived, data = await queue.get()
            while True:
                await self._forwarding.wait()
                due_in = arrived + self._latency - loop.time()
                if due_in <= 0:
                    break
                await asyncio.sleep(due_in)
            if data is None:  # the source half-closed: pass the FIN on
                if writer.can_write_eof():
                    writer.write_eof()
                return
            await self._write_shaped(writer, data)

    async def _write_shaped(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        view = memoryview(data)
        while view:
            await self._forwarding.wait()
            rate = self._bytes_per_s
            if rate is None:
                writer.write(bytes(view))
                await writer.drain()
                return
            piece = view[: max(1, int(rate / _SHAPING_SLICES_PER_S))]
            view = view[len(piece) :]
            writer.write(bytes(piece))
            await writer.drain()
            await asyncio.sleep(len(piece) / rate)


class _Link:
    """One client connection and its upstream connection."""

    def __init__(
        self, proxy: FaultProxy, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        self.proxy = proxy
        self.client_reader = client_reader
        self.client_writer = client_writer
        self.upstream_writer: asyncio.StreamWriter | None = None
        self.finished = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._run_task: asyncio.Task[object] | None = None
        self._aborted = False
        self._upstream_cut = False  # cut_upstream(): the client's side lives on, black-holed

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._run_task = asyncio.current_task()
        to_upstream: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()
        to_client: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()
        # Read the client at once, even while black-holed: its writes succeed, nothing answers.
        self._tasks.append(loop.create_task(self._pump(self.client_reader, to_upstream)))
        try:
            await self.proxy._forwarding.wait()  # a black hole opens no upstream connection
            if self._aborted:
                return
            upstream_reader, self.upstream_writer = await asyncio.open_connection(
                self.proxy.target_host, self.proxy.target_port
            )
        except (OSError, asyncio.CancelledError):
            self.abort()
            await self._settle()
            return
        if self._aborted:  # reset() arrived while we were connecting
            _abort_with_rst(self.upstream_writer)
            await self._settle()
            return
        deliveries = [
            loop.create_task(self.proxy._deliver(to_upstream, self.upstream_writer)),
            loop.create_task(self.proxy._deliver(to_client, self.client_writer)),
        ]
        self._tasks += [loop.create_task(self._pump(upstream_reader, to_client)), *deliveries]
        try:
            # Done when both directions have delivered their FIN; any error aborts the pair.
            for finished in asyncio.as_completed(deliveries):
                await finished
        except (OSError, asyncio.CancelledError):
            self.abort()
        else:
            self.client_writer.close()
            self.upstream_writer.close()
        await self._settle()

    async def _pump(self, reader: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes | None]]) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(_READ_SIZE):
                queue.put_nowait((loop.time(), data))
        except OSError:
            if not self._upstream_cut:
                self.abort()  # a reset on one side resets the other
            return
        if not self._upstream_cut:
            queue.put_nowait((loop.time(), None))

    def cut_upstream(self) -> None:
        """RST the upstream (server) connection only; the client connection stays open."""
        self._upstream_cut = True
        if self.upstream_writer is not None:
            _abort_with_rst(self.upstream_writer)

    def abort(self) -> None:
        if self._aborted:
            return
        self._aborted = True
        _abort_with_rst(self.client_writer)
        if self.upstream_writer is not None:
            _abort_with_rst(self.upstream_writer)
        for task in self._tasks:
            task.cancel()
        # Wake run() if it waits on the blackhole gate, the upstream connect or the deliveries.
        if self._run_task is not None and self._run_task is not asyncio.current_task():
            self._run_task.cancel()

    async def _settle(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# --- on a background event loop --------------------------------------------------------------------


class ProxyLoop:
    """An event loop in a daemon thread that hosts FaultProxy instances for synchronous tests."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault proxies", daemon=True)
        self._thread.start()
        self._proxies: list[FaultProxy] = []

    def _call(self, coroutine) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    def proxy(self, host: str, port: int) -> Proxy:
        fault_proxy = FaultProxy(host, port)
        self._call(fault_proxy.start(free_port()))  # below the ephemeral range, like every server
        self._proxies.append(fault_proxy)
        return Proxy(self, fault_proxy)

    def run(self, function: Callable[[], Any]) -> Any:
        """Run a plain function on the loop's thread (FaultProxy's switches touch asyncio objects)."""

        async def call() -> Any:
            return function()

        return self._call(call())

    def close(self) -> None:
        for fault_proxy in self._proxies:
            try:
                self._call(fault_proxy.stop())
            except (concurrent.futures.TimeoutError, RuntimeError):
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> ProxyLoop:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Proxy:
    """A FaultProxy on a ProxyLoop, switched from any thread."""

    def __init__(self, loop: ProxyLoop, fault_proxy: FaultProxy) -> None:
        self._loop, self._proxy = loop, fault_proxy

    @property
    def address(self) -> str:
        return self._proxy.address

    @property
    def port(self) -> int:
        assert self._proxy.port is not None
        return self._proxy.port

    def blackhole(self) -> None:
        self._loop.run(self._proxy.blackhole)

    def reset(self) -> None:
        self._loop.run(self._proxy.reset)

    def cut_server_side(self) -> None:
        self._loop.run(self._proxy.cut_server_side)

    def add_latency(self, seconds: float) -> None:
        self._loop.run(lambda: self._proxy.add_latency(seconds))

    def pass_through(self) -> None:
        self._loop.run(self._proxy.pass_through)
