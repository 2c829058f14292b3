"""FaultProxy against a small asyncio echo server on loopback."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from tests.faultproxy import FaultProxy


@dataclass
class EchoServer:
    port: int = 0
    accepted: int = 0
    received: bytearray = field(default_factory=bytearray)
    closed: int = 0  # connections that ended, by FIN or by RST

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            while data := await reader.read(65536):
                self.received += data
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.closed += 1
            writer.close()


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    state = EchoServer()
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    yield state
    server.close()
    await server.wait_closed()


@pytest.fixture
async def proxy(echo: EchoServer) -> AsyncIterator[FaultProxy]:
    proxy = FaultProxy("127.0.0.1", echo.port)
    await proxy.start()
    yield proxy
    await proxy.stop()


async def connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: bytes) -> bytes:
    writer.write(message)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(message)), timeout=10)


async def eventually(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_pass_through_relays_bytes_and_half_close(proxy: FaultProxy) -> None:
    payload = os.urandom(1024 * 1024)
    reader, writer = await connect(proxy)
    writer.write(payload)
    writer.write_eof()  # the echo server sees EOF, closes, and the proxy passes both FINs on
    echoed = await asyncio.wait_for(reader.read(-1), timeout=10)
    assert echoed == payload
    writer.close()
    await eventually(lambda: proxy.connections == 0)


async def test_latency_delays_each_direction_and_applies_to_open_connections(proxy: FaultProxy) -> None:
    reader, writer = await connect(proxy)
    assert await round_trip(reader, writer, b"warm") == b"warm"

    proxy.add_latency(0.15)
    started = time.monotonic()
    assert await round_trip(reader, writer, b"slow") == b"slow"
    assert time.monotonic() - started >= 0.3  # 0.15 s there and 0.15 s back

    proxy.pass_through()
    assert await round_trip(reader, writer, b"fast") == b"fast"
    writer.close()


async def test_blackhole_accepts_and_reads_but_never_answers_then_delivers_held_bytes(
    proxy: FaultProxy, echo: EchoServer
) -> None:
    open_reader, open_writer = await connect(proxy)
    assert await round_trip(open_reader, open_writer, b"before") == b"before"

    proxy.blackhole()
    open_writer.write(b"held-1")
    await open_writer.drain()
    new_reader, new_writer = await connect(proxy)  # the connect itself succeeds
    new_writer.write(b"held-2")
    await new_writer.drain()

    for reader in (open_reader, new_reader):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(100), timeout=0.3)
    assert bytes(echo.received) == b"before"  # nothing reached the server
    assert echo.accepted == 1  # and no upstream connection was opened for the new client
    assert proxy.connections == 2  # both clients are kept hanging, not closed

    proxy.pass_through()
    assert await asyncio.wait_for(open_reader.readexactly(6), timeout=10) == b"held-1"
    assert await asyncio.wait_for(new_reader.readexactly(6), timeout=10) == b"held-2"
    open_writer.close()
    new_writer.close()


async def test_blackhole_holds_replies_already_in_flight(proxy: FaultProxy, echo: EchoServer) -> None:
    reader, writer = await connect(proxy)
    assert await round_trip(reader, writer, b"x") == b"x"
    proxy.add_latency(0.2)  # the reply will still be in the proxy when the hole opens
    writer.write(b"reply")
    await writer.drain()
    await asyncio.sleep(0.25)  # the request has reached the server, the reply is delayed
    proxy.blackhole()
    await eventually(lambda: bytes(echo.received) == b"xreply")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(100), timeout=0.4)
    proxy.pass_through()
    assert await asyncio.wait_for(reader.readexactly(5), timeout=10) == b"reply"
    writer.close()


async def test_reset_sends_rst_to_open_and_new_connections(proxy: FaultProxy, echo: EchoServer) -> None:
    reader, writer = await connect(proxy)
    assert await round_trip(reader, writer, b"hello") == b"hello"

    proxy.reset()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(100), timeout=5)
    await eventually(lambda: echo.closed == 1)  # the server side was dropped as well
    writer.close()

    new_reader, new_writer = await connect(proxy)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(new_reader.read(100), timeout=5)
    new_writer.close()
    assert echo.accepted == 1
    assert proxy.connections == 0

    proxy.pass_through()
    again_reader, again_writer = await connect(proxy)
    assert await round_trip(again_reader, again_writer, b"back") == b"back"
    again_writer.close()


async def test_bandwidth_limit_slows_transfer_without_losing_bytes(proxy: FaultProxy) -> None:
    payload = os.urandom(25_000)
    reader, writer = await connect(proxy)
    proxy.limit_bandwidth(50_000)
    started = time.monotonic()
    assert await round_trip(reader, writer, payload) == payload
    assert time.monotonic() - started >= 0.45  # 25 kB at 50 kB/s takes at least 0.5 s (one slice of slack)
    writer.close()


async def test_latency_and_bandwidth_combine(proxy: FaultProxy) -> None:
    reader, writer = await connect(proxy)
    proxy.limit_bandwidth(100_000)
    proxy.add_latency(0.1)
    payload = os.urandom(20_000)
    started = time.monotonic()
    assert await round_trip(reader, writer, payload) == payload
    # 0.1 s each way, plus the 20 kB going up in 0.05 s slices at 100 kB/s: the last slice
    # leaves 0.15 s after the first, and its echo is held another 0.1 s.
    assert time.monotonic() - started >= 0.1 + 0.15 + 0.1 - 0.01
    writer.close()


async def test_unreachable_target_resets_the_client() -> None:
    proxy = FaultProxy("127.0.0.1", await _closed_port())
    await proxy.start()
    try:
        reader, writer = await connect(proxy)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(100), timeout=5)
        writer.close()
        assert proxy.connections == 0
    finally:
        await proxy.stop()


async def test_stop_drops_connections_and_refuses_new_ones(echo: EchoServer) -> None:
    proxy = FaultProxy("127.0.0.1", echo.port)
    port = await proxy.start()
    reader, writer = await connect(proxy)
    assert await round_trip(reader, writer, b"up") == b"up"
    await proxy.stop()
    assert proxy.connections == 0
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(1), timeout=5)
    writer.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


@pytest.mark.parametrize("bad_call", [lambda p: p.add_latency(-0.1), lambda p: p.limit_bandwidth(0)])
def test_rejects_nonsense_settings(bad_call) -> None:
    with pytest.raises(ValueError):
        bad_call(FaultProxy("127.0.0.1", 9))


async def _closed_port() -> int:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port
