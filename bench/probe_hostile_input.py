"""What hostile input costs a coordinator and an agent (issue 12), and what it is answered.

Run:  python bench/probe_hostile_input.py [--streams 3000] [--big 12] [--trickle 2000] [--baseline DIR] [--no-write]

Each probe starts real processes (`python -m dbintel.cli coordinator|agent`, memory mode, loopback):

- silent streams: `--streams` Heartbeat streams opened (100 per connection) that never send a message;
  counted still open 3 s after the first-message deadline (5 s at the default 30 s heartbeat interval),
  with the coordinator's RSS before and while they are held;
- big messages: `--big` concurrent 30 MiB requests (GetAssignments with a 30 MiB agent_id); the status
  they get and the coordinator's peak RSS growth (sampled every 50 ms);
- garbage: one truncated message to every unary RPC; the statuses given;
- wrong wire type: Rebalance whose field 1 (`dry_run` before issue 12, reserved after) is sent as
  bytes; whether the reply says applied;
- trickling HTTP: `--trickle` connections to the agent's metrics (:8889) and then health (:13133) port,
  each sending an unfinished request head and one more header line per second (so no single read
  waits long); counted still open 8 s and 15 s later (connections whose handshake the kernel
  completed late, because the flood overflowed the listen backlog, reach the server later and get
  their own 5 s), with the agent's threads and open fds at 2 s and 7 s.

`--baseline DIR` runs every probe twice: first with the `dbintel` package found in DIR (DIR/dbintel, e.g.
`git archive <commit> services | tar -x -C DIR && mv DIR/services DIR/dbintel`), then with this tree.
Prints the table and rewrites the "## Hostile input" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import psutil
import yaml
from report import machine_line, write_section  # bench/report.py

REPO = Path(__file__).resolve().parent.parent
SECTION = "## Hostile input"
HEARTBEAT = "/dbintel.v1.AgentService/Heartbeat"
UNARY = [
    "/dbintel.v1.AgentService/GetAssignments",
    "/dbintel.v1.AgentService/Leave",
    "/dbintel.v1.OperatorService/GetClusterStatus",
    "/dbintel.v1.OperatorService/ListAgents",
    "/dbintel.v1.OperatorService/ListAssignments",
    "/dbintel.v1.OperatorService/ListResources",
    "/dbintel.v1.OperatorService/Rebalance",
    "/dbintel.v1.OperatorService/DrainAgent",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def mib(n_bytes: float) -> float:
    return round(n_bytes / 2**20, 1)


class Process:
    """One `dbintel` role as a subprocess, importing `dbintel` from `baseline` when given."""

    def __init__(self, role: str, workdir: Path, baseline: str | None):
        self.ports = {"grpc": free_port(), "metrics": free_port(), "health": free_port()}
        config = {
            "scaling": {"mode": "memory"},
            "agent": {"coordinator": "127.0.0.1:1"},
            "databases": [{"name": f"db{i}", "type": "redis", "endpoint": "127.0.0.1:1"} for i in range(4)],
        }
        path = workdir / f"{role}.yaml"
        path.write_text(yaml.safe_dump(config))
        args = [sys.executable, "-m", "dbintel.cli", role, "--config", str(path)]
        args += ["--metrics-listen", f"127.0.0.1:{self.ports['metrics']}"]
        args += ["--health-listen", f"127.0.0.1:{self.ports['health']}"]
        args += (
            ["--grpc-listen", f"127.0.0.1:{self.ports['grpc']}"] if role == "coordinator" else ["--agent-id", "probe"]
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("DBINTEL_")}
        if baseline:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [baseline, env.get("PYTHONPATH")]))
        self.log = open(workdir / f"{role}{'-baseline' if baseline else ''}.log", "w")
        self.popen = subprocess.Popen(args, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.ps = psutil.Process(self.popen.pid)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['health']}/", timeout=1):
                    return
            except OSError:
                if self.popen.poll() is not None:
                    raise RuntimeError(f"{role} exited: see {self.log.name}") from None
                time.sleep(0.1)
        raise RuntimeError(f"{role} did not answer on its health port")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(15)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        self.log.close()


class PeakRss:
    def __init__(self, process: Process):
        self._process, self.peak, self._stop = process, process.rss(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.peak = max(self.peak, self._process.rss())
            except psutil.Error:
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


async def silent_streams(coordinator: Process, count: int) -> dict:
    rss_before = coordinator.rss()
    channels = [grpc.aio.insecure_channel(coordinator.address) for _ in range((count + 99) // 100)]
    calls = [channels[i // 100].stream_stream(HEARTBEAT)(timeout=120) for i in range(count)]
    opened = time.monotonic()
    await asyncio.sleep(2)
    rss_held = coordinator.rss()
    await asyncio.sleep(max(0.0, opened + 8 - time.monotonic()))  # 3 s past the 5 s first-message deadline
    still_open = sum(not call.done() for call in calls)
    codes: dict[str, int] = {}
    for call in calls:
        if call.done():
            code = (await call.code()).name
            codes[code] = codes.get(code, 0) + 1
        else:
            call.cancel()
    rss_after = coordinator.rss()
    for channel in channels:
        await channel.close()
    return {
        "streams opened": count,
        "still open after 8 s": still_open,
        "ended with": ", ".join(f"{k} {v}" for k, v in sorted(codes.items())) or "-",
        "coordinator RSS before / at 2 s / at 8 s (MiB)": f"{mib(rss_before)} / {mib(rss_held)} / {mib(rss_after)}",
    }


async def big_messages(coordinator: Process, count: int) -> dict:
    payload = b"\x0a" + _varint(30 * 2**20) + b"x" * (30 * 2**20)  # GetAssignmentsRequest.agent_id, 30 MiB
    rss_before = coordinator.rss()
    peak = PeakRss(coordinator)
    options = [("grpc.max_send_message_length", -1)]
    async with grpc.aio.insecure_channel(coordinator.address, options=options) as channel:
        method = channel.unary_unary("/dbintel.v1.AgentService/GetAssignments")

        async def one() -> str:
            try:
                await method(payload, timeout=60)
                return "OK"
            except grpc.aio.AioRpcError as exc:
                return exc.code().name

        codes = await asyncio.gather(*(one() for _ in range(count)))
    rss_peak = peak.stop()
    counted = {c: codes.count(c) for c in sorted(set(codes))}
    return {
        "30 MiB requests": count,
        "answered": ", ".join(f"{k} {v}" for k, v in counted.items()),
        "coordinator RSS before / peak (MiB)": f"{mib(rss_before)} / {mib(rss_peak)}",
        "peak RSS growth (MiB)": mib(rss_peak - rss_before),
    }


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


async def garbage(coordinator: Process) -> dict:
    codes: dict[str, int] = {}
    async with grpc.aio.insecure_channel(coordinator.address) as channel:
        for path in UNARY:
            try:
                await channel.unary_unary(path)(b"\x0a\x05ab", timeout=10)
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            codes[code] = codes.get(code, 0) + 1
        try:
            reply = await channel.unary_unary("/dbintel.v1.OperatorService/Rebalance")(b"\x0a\x01\x01", timeout=10)
            applied = "applied" if b"\x10\x01" in reply else "not applied (dry run)"
        except grpc.aio.AioRpcError as exc:
            applied = exc.code().name
    return {
        "truncated message to each of 8 unary RPCs": ", ".join(f"{k} {v}" for k, v in sorted(codes.items())),
        "Rebalance with field 1 sent as bytes": applied,
    }


def trickling(agent: Process, port: str, count: int) -> dict:
    threads_before, fds_before = agent.ps.num_threads(), agent.ps.num_fds()
    head = f"GET {'/metrics' if port == 'metrics' else '/ready'} HTTP/1.1\r\nHost: x\r\n".encode()
    # All connections at once (non-blocking connects), as a flood would: a server with a short listen
    # backlog accepts them as fast as it can, not one SYN retry at a time.
    pending: list[socket.socket] = []
    for _ in range(count):
        connection = socket.socket()
        connection.setblocking(False)
        connection.connect_ex(("127.0.0.1", agent.ports[port]))
        pending.append(connection)
    sockets: list[socket.socket] = []
    writable = selectors.DefaultSelector()
    for connection in pending:
        writable.register(connection, selectors.EVENT_WRITE)
    connect_deadline = time.monotonic() + 20
    while writable.get_map() and time.monotonic() < connect_deadline:
        for key, _ in writable.select(timeout=0.5):
            connection = key.fileobj
            assert isinstance(connection, socket.socket)
            writable.unregister(connection)
            if connection.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                try:
                    connection.send(head)
                    sockets.append(connection)
                    continue
                except OSError:
                    pass
            connection.close()
    for key in list(writable.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    writable.close()
    started = time.monotonic()
    closed: set[socket.socket] = set()
    selector = selectors.DefaultSelector()
    for connection in sockets:
        selector.register(connection, selectors.EVENT_READ)
    next_byte = started + 1
    held: dict[int, tuple[int, int]] = {}
    open_at_8 = None
    while time.monotonic() < started + 15:
        if open_at_8 is None and time.monotonic() >= started + 8:
            open_at_8 = len(sockets) - len(closed)
        for key, _ in selector.select(timeout=0.2):
            connection = key.fileobj
            assert isinstance(connection, socket.socket)
            try:
                data = connection.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                closed.add(connection)
                selector.unregister(connection)
        if time.monotonic() >= next_byte:  # one more header line each second, on every open connection
            next_byte += 1
            for connection in sockets:
                if connection not in closed:
                    try:
                        connection.send(b"X-Trickle: 1\r\n")
                    except OSError:
                        pass
        for mark in (2, 7):
            if time.monotonic() >= started + mark and mark not in held:
                held[mark] = (agent.ps.num_threads(), agent.ps.num_fds())
    still_open = len(sockets) - len(closed)
    for connection in sockets:
        connection.close()
    selector.close()
    return {
        "connections opened": len(sockets),
        "still open after 8 s / 15 s": f"{open_at_8} / {still_open}",
        "agent threads before / at 2 s / at 7 s": f"{threads_before} / {held[2][0]} / {held[7][0]}",
        "agent open fds before / at 2 s / at 7 s": f"{fds_before} / {held[2][1]} / {held[7][1]}",
    }


def run_all(args, baseline: str | None, workdir: Path) -> dict[str, dict]:
    results: dict[str, dict] = {}
    coordinator = Process("coordinator", workdir, baseline)
    try:
        results["silent Heartbeat streams"] = asyncio.run(silent_streams(coordinator, args.streams))
        results["garbage and wrong wire type"] = asyncio.run(garbage(coordinator))
        results["big messages"] = asyncio.run(big_messages(coordinator, args.big))
    finally:
        coordinator.stop()
    for port in ("metrics", "health"):
        agent = Process("agent", workdir, baseline)  # a fresh agent per port: nothing left from the last flood
        try:
            results[f"trickling HTTP on the agent's {port} port"] = trickling(agent, port, args.trickle)
        finally:
            agent.stop()
    return results


def render(args, runs: dict[str, dict[str, dict]], command: str) -> str:
    labels = list(runs)
    lines = [
        SECTION,
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, `{command}`. {machine_line()}",
        "",
        "Real processes on loopback, memory mode, default config (heartbeat interval 30 s, so a 5 s "
        "first-message deadline; max_heartbeat_streams 5000; HTTP limits 5 s / 16 KiB head, 32 connections). "
        "What each probe does is in the script's docstring.",
        "",
        "| probe | figure | " + " | ".join(labels) + " |",
        "|---|---|" + "---|" * len(labels),
    ]
    first = runs[labels[0]]
    for probe, figures in first.items():
        for figure in figures:
            cells = [str(runs[label].get(probe, {}).get(figure, "-")) for label in labels]
            lines.append(f"| {probe} | {figure} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=3000)
    parser.add_argument("--big", type=int, default=12)
    parser.add_argument("--trickle", type=int, default=2000)
    parser.add_argument("--baseline", help="a directory holding the `dbintel` package to compare against")
    parser.add_argument("--baseline-label", default="before")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the trickle probe holds 2,000+ sockets
    command = "python bench/probe_hostile_input.py" + (
        f" --baseline DIR --baseline-label '{args.baseline_label}'" if args.baseline else ""
    )
    if (args.streams, args.big, args.trickle) != (3000, 12, 2000):
        command += f" --streams {args.streams} --big {args.big} --trickle {args.trickle}"
    runs: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        if args.baseline:
            runs[args.baseline_label] = run_all(args, str(Path(args.baseline).resolve()), Path(tmp))
        runs["this tree" if args.baseline else "measured"] = run_all(args, None, Path(tmp))
    text = render(args, runs, command)
    print(text)
    if not args.no_write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
