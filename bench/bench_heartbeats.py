"""Heartbeat throughput of ONE coordinator process, in `scaling.mode: memory` and `mode: redis`.

Run:  python bench/bench_heartbeats.py [--agents 200,500,1000] [--modes memory,redis] [--profile] [--no-write]

Each scenario starts a coordinator as a subprocess (`python -m dbintel.cli coordinator ...`) with
10 databases per simulated agent, and a separate load-generator process (multiprocessing, spawn)
that opens one Heartbeat stream per agent over a few gRPC channels (one TCP connection each). The
agents register, apply their assignments and acknowledge them like real agents; once the placement
is quiet (every database held exactly once, no message for a second) three phases are measured:

- idle:      streams open, nothing sent: the coordinator's background CPU (leader step, gauges);
- saturated: closed loop with a fixed number of heartbeats in flight (--in-flight, going round the
             agents): the most heartbeats/s the coordinator sustains with every one answered;
- paced:     open loop at half the saturated rate, random phases: latency with headroom.

Latency is "request written on the stream -> its reply read from the stream" in the generator.
CPU (user+system, all threads) and RSS of the coordinator, Redis and the generator come from psutil,
sampled by the generator at the exact edges of each measured window. Prints the table and rewrites
the "## Coordinator heartbeat throughput" section of docs/benchmarks.md (other sections are kept).
`--profile` adds one more run per mode at the largest agent count with py-spy sampling the
coordinator during the idle and the saturated phase (its figures are not used in the tables).
`--baseline DIR` runs every scenario twice, back to back: once with the `dbintel` package found in
DIR (e.g. a copy of services/ from before a change, as DIR/dbintel) and once with this tree, and adds
a before/after table. Raw figures go to docs/data/bench_heartbeats.json (top-level `series`, `unit`,
`command`) for bench/plots.py.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import multiprocessing
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
import yaml
from report import DOC, image_link, machine_line, write_section  # bench/report.py

from dbintel.v1 import agent_service_pb2 as apb
from dbintel.v1 import types_pb2

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # tests.servers (RedisServer, free_port) lives at the repository root
    sys.path.insert(0, str(REPO))

SECTION = "## Coordinator heartbeat throughput"
DATA = REPO / "docs" / "data" / "bench_heartbeats.json"
HEARTBEAT_METHOD = "/dbintel.v1.AgentService/Heartbeat"
DEFAULT_INTERVAL_S = 30.0  # scaling.coordinator.heartbeat_interval default
HEADROOM = 0.5  # plan to run a replica at half of what saturates it
DATABASES_PER_AGENT = 10
REDIS_PASSWORD_ENV = "DBINTEL_BENCH_REDIS_PASSWORD"


# =====================================================================================================
# Load generator (runs in its own process)
# =====================================================================================================
@dataclass
class PhaseStats:
    """Counters shared by every simulated agent of the generator during one phase."""

    window_start: float = float("inf")
    window_end: float = float("inf")
    sent: int = 0
    answered: int = 0
    answered_in_window: int = 0
    unsolicited: int = 0  # a response with no request outstanding (an assignment push)
    degraded: int = 0  # replies saying the coordinator could not reach its store
    assignment_responses: int = 0
    stream_ends: int = 0
    latencies: list[float] = field(default_factory=list)


class SimulatedAgent:
    """One Heartbeat stream that behaves like an agent: registers, applies and acks assignments."""

    def __init__(self, index: int, call, phase: PhaseStats):
        self.agent_id = f"bench-agent-{index:05d}"
        self.instance_id = uuid.uuid4().hex
        self.call, self.phase = call, phase
        self.epoch = 0
        self.held: frozenset[str] = frozenset()
        self.pending: collections.deque[float] = collections.deque()  # send times, answered in order
        self.answered = asyncio.Event()
        self.last_assignment_at = 0.0
        self.first_assignment_at = 0.0
        self.steady: bytes = b""
        self.degraded_replies = 0
        self.last_reply_degraded = False
        self.retrying = False
        self.reader: asyncio.Task | None = None

    @staticmethod
    def _status(resource_id: str, now_s: int) -> types_pb2.ResourceStatus:
        status = types_pb2.ResourceStatus(resource_id=resource_id, polls_total=120, errors_total=0, up=True)
        status.last_poll_time.FromSeconds(now_s)
        status.last_poll_duration.FromMilliseconds(7)
        return status

    def request(self, *, register: bool = False, released=()) -> bytes:
        now_s = int(time.time())
        message = apb.HeartbeatRequest(
            agent_id=self.agent_id,
            applied_assignment_epoch=self.epoch,
            current=[self._status(r, now_s) for r in sorted(self.held)],
            released=[self._status(r, now_s) for r in sorted(released)],
        )
        if register:
            message.registration.CopyFrom(
                apb.AgentRegistration(pod_name=self.agent_id, version="bench", instance_id=self.instance_id)
            )
        return message.SerializeToString()

    async def send(self, data: bytes) -> None:
        self.pending.append(time.perf_counter())
        self.phase.sent += 1
        await self.call.write(data)

    async def read_loop(self) -> None:
        while True:
            message = await self.call.read()
            if message is grpc.aio.EOF:
                self.phase.stream_ends += 1
                return
            now, phase = time.perf_counter(), self.phase
            if self.pending:
                sent = self.pending.popleft()
                phase.answered += 1
                if phase.window_start <= sent < phase.window_end:
                    phase.latencies.append(now - sent)
                if phase.window_start <= now < phase.window_end:
                    phase.answered_in_window += 1
            else:
                phase.unsolicited += 1
            # HeartbeatResponse fields are serialized in field order: assignment (1) first, tag 0x0a;
            # without it, degraded (2) = true comes first as 0x10 0x01.
            self.last_reply_degraded = message[:2] == b"\x10\x01"
            if self.last_reply_degraded:
                phase.degraded += 1
                self.degraded_replies += 1
            if message[:1] == b"\x0a":
                phase.assignment_responses += 1
                await self._apply(apb.HeartbeatResponse.FromString(message).assignment)
            self.answered.set()

    async def _apply(self, assignment) -> None:
        if assignment.assignment_epoch <= self.epoch:
            return
        self.epoch = assignment.assignment_epoch
        new = frozenset(g.resource_id for g in assignment.resources)
        released, self.held = self.held - new, new
        self.last_assignment_at = time.perf_counter()
        self.first_assignment_at = self.first_assignment_at or self.last_assignment_at
        await self.send(self.request(released=released))  # the acknowledgment

    async def retry(self, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await self.send(self.request(register=self.epoch == 0))
        finally:
            self.retrying = False

    async def heartbeat_and_wait(self) -> None:
        self.answered.clear()
        await self.send(self.steady)
        await self.answered.wait()

    async def paced(self, first_at: float, period: float, stop_at: float) -> None:
        due = first_at
        while due < stop_at:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.send(self.steady)
            due += period


def _machine_busy_seconds() -> float:
    """CPU seconds every process on the machine has used (all cores), to see who else was running."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def _cpu_seconds(process: psutil.Process | None) -> float:
    if process is None:
        return 0.0
    times = process.cpu_times()
    return times.user + times.system


async def _scrape_heartbeats(metrics_port: int) -> float:
    """dbintel_scaling_heartbeats_total as the coordinator counts it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", metrics_port)
    writer.write(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    body = (await reader.read()).decode()
    writer.close()
    for line in body.splitlines():
        if line.startswith("dbintel_scaling_heartbeats_total "):
            return float(line.split()[1])
    raise RuntimeError("dbintel_scaling_heartbeats_total missing from the coordinator's /metrics")


class Generator:
    def __init__(self, params: dict):
        self.p = params
        self.phase = PhaseStats()
        self.agents: list[SimulatedAgent] = []
        self.channels = []
        self.coordinator = psutil.Process(params["coordinator_pid"])
        self.redis = psutil.Process(params["redis_pid"]) if params.get("redis_pid") else None
        self.me = psutil.Process()

    async def setup(self) -> dict:
        started = time.perf_counter()
        count, address = self.p["agents"], self.p["address"]
        # A local subchannel pool per channel: otherwise equal channels share one TCP connection.
        self.channels = [
            grpc.aio.insecure_channel(
                address, options=[("grpc.use_local_subchannel_pool", 1), ("grpc.bench_channel", i)]
            )
            for i in range(self.p["channels"])
        ]
        await asyncio.gather(*(asyncio.wait_for(c.channel_ready(), 10) for c in self.channels))
        for i in range(count):
            method = self.channels[i % len(self.channels)].stream_stream(HEARTBEAT_METHOD)  # bytes in, bytes out
            agent = SimulatedAgent(i, method(), self.phase)
            agent.reader = asyncio.create_task(agent.read_loop())
            self.agents.append(agent)
        await asyncio.gather(*(a.send(a.request(register=True)) for a in self.agents))
        total = count * DATABASES_PER_AGENT
        deadline = started + self.p["setup_timeout"]
        retries: set[asyncio.Task] = set()
        while True:
            await asyncio.sleep(0.2)
            now = time.perf_counter()
            for agent in self.agents:
                # A heartbeat answered "degraded" was not recorded (a registration, or the ack of an
                # assignment): a real agent repeats it with its next heartbeat, 30 s later; here it is
                # repeated within a second, at a random moment so that retries do not storm again.
                if agent.last_reply_degraded and not agent.pending and not agent.retrying:
                    agent.retrying = True
                    task = asyncio.create_task(agent.retry(random.uniform(0.0, 1.0)))
                    retries.add(task)
                    task.add_done_callback(retries.discard)
            held = [r for a in self.agents for r in a.held]
            quiet = all(
                a.epoch > 0
                and not a.pending
                and not a.last_reply_degraded
                and not a.retrying
                and now - a.last_assignment_at >= 1.0
                for a in self.agents
            )
            if quiet and len(held) == total and len(set(held)) == total:
                break
            if now > deadline:
                raise RuntimeError(
                    f"placement not quiet after {self.p['setup_timeout']}s: {len(set(held))}/{total} "
                    f"databases held, {sum(1 for a in self.agents if a.epoch == 0)} agents without "
                    f"assignment, {sum(1 for a in self.agents if a.last_reply_degraded)} agents "
                    f"whose last reply was degraded, {self.phase.stream_ends} streams ended"
                )
        for agent in self.agents:
            agent.steady = agent.request()
        sizes = [len(a.held) for a in self.agents]
        return {
            "setup_s": time.perf_counter() - started,
            "first_assignment_s": min(a.first_assignment_at for a in self.agents) - started,
            "all_assigned_s": max(a.first_assignment_at for a in self.agents) - started,
            "held_min": min(sizes),
            "held_max": max(sizes),
            "request_bytes": statistics.mean(len(a.steady) for a in self.agents),
            "setup_messages": self.phase.sent,
            "setup_degraded": self.phase.degraded,
            "agents_degraded": sum(1 for a in self.agents if a.degraded_replies),
        }

    async def run_phase(self, kind: str, warmup: float, measure: float, rate: float = 0.0) -> dict:
        phase = self.phase = PhaseStats()
        for agent in self.agents:
            agent.phase = phase
        counted_before = await _scrape_heartbeats(self.p["metrics_port"])
        t0 = time.perf_counter()
        phase.window_start, phase.window_end = t0 + warmup, t0 + warmup + measure
        senders = []
        if kind == "saturated":
            in_flight = min(self.p["in_flight"], len(self.agents))
            senders = [
                asyncio.create_task(self._closed_loop(self.agents[i::in_flight], phase.window_end))
                for i in range(in_flight)
            ]
        elif kind == "paced":
            period = len(self.agents) / rate
            rng = random.Random(7)
            senders = [
                asyncio.create_task(a.paced(t0 + rng.uniform(0, period), period, phase.window_end)) for a in self.agents
            ]
        await asyncio.sleep(max(0.0, phase.window_start - time.perf_counter()))
        cpu0 = [_cpu_seconds(p) for p in (self.coordinator, self.redis, self.me)] + [_machine_busy_seconds()]
        wall0 = time.perf_counter()
        await asyncio.sleep(max(0.0, phase.window_end - time.perf_counter()))
        cpu1 = [_cpu_seconds(p) for p in (self.coordinator, self.redis, self.me)] + [_machine_busy_seconds()]
        wall = time.perf_counter() - wall0
        rss = self.coordinator.memory_info().rss
        redis_rss = self.redis.memory_info().rss if self.redis else 0
        await asyncio.gather(*senders)
        drain_deadline = time.perf_counter() + 10
        while any(a.pending for a in self.agents) and time.perf_counter() < drain_deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # let the coordinator's counter catch up with the last replies
        counted_after = await _scrape_heartbeats(self.p["metrics_port"])
        latencies = sorted(phase.latencies)

        def quantile(q: float) -> float:
            return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")

        return {
            "kind": kind,
            "wall_s": wall,
            "sent": phase.sent,
            "answered": phase.answered,
            "unanswered": sum(len(a.pending) for a in self.agents),
            "unsolicited": phase.unsolicited,
            "assignment_responses": phase.assignment_responses,
            "stream_ends": phase.stream_ends,
            "degraded": phase.degraded,
            "coordinator_counted": counted_after - counted_before,
            "throughput": phase.answered_in_window / wall,
            "p50_ms": quantile(0.50) * 1000,
            "p99_ms": quantile(0.99) * 1000,
            "max_ms": quantile(1.0) * 1000,
            "latency_samples": len(latencies),
            "coordinator_cpu_s": cpu1[0] - cpu0[0],
            "redis_cpu_s": cpu1[1] - cpu0[1],
            "generator_cpu_s": cpu1[2] - cpu0[2],
            "others_cpu_s": max(0.0, (cpu1[3] - cpu0[3]) - sum(cpu1[i] - cpu0[i] for i in range(3))),
            "coordinator_rss": rss,
            "redis_rss": redis_rss,
        }

    @staticmethod
    async def _closed_loop(agents: list[SimulatedAgent], stop_at: float) -> None:
        """One heartbeat in flight at a time, going round these agents: each agent's heartbeats stay in order."""
        while time.perf_counter() < stop_at:
            for agent in agents:
                await agent.heartbeat_and_wait()
                if time.perf_counter() >= stop_at:
                    return

    async def close(self) -> None:
        for agent in self.agents:
            agent.call.cancel()
        for agent in self.agents:
            if agent.reader is not None:
                agent.reader.cancel()
        await asyncio.gather(*(a.reader for a in self.agents if a.reader), return_exceptions=True)
        await asyncio.gather(*(c.close() for c in self.channels), return_exceptions=True)


def generator_main(conn, params: dict) -> None:
    """Entry point of the generator process: answers commands from the parent over a Pipe."""

    async def serve() -> None:
        generator = Generator(params)
        loop = asyncio.get_running_loop()
        try:
            conn.send(("ready", await generator.setup()))
            while True:
                command = await loop.run_in_executor(None, conn.recv)
                if command[0] == "stop":
                    break
                _, kind, warmup, measure, rate = command
                conn.send(("phase", await generator.run_phase(kind, warmup, measure, rate)))
        finally:
            await generator.close()

    try:
        asyncio.run(serve())
    except Exception as exc:  # report to the parent instead of dying silently
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


# =====================================================================================================
# Orchestration (parent process)
# =====================================================================================================
def write_config(path: Path, mode: str, agents: int, redis=None) -> None:
    doc: dict = {
        "scaling": {"enabled": True, "mode": mode},  # scaling.coordinator timings: the defaults (30s heartbeat)
        "databases": [
            {"name": f"db{i:05d}", "type": "redis", "endpoint": "127.0.0.1:6379", "database": "0"}
            for i in range(agents * DATABASES_PER_AGENT)
        ],
    }
    if redis is not None:
        doc["scaling"]["redis"] = {
            "address": redis.address,
            "password": f"${{env:{REDIS_PASSWORD_ENV}}}",
            "key_prefix": f"bench:{uuid.uuid4().hex[:8]}:",
        }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


@dataclass
class Scenario:
    mode: str
    agents: int
    code: str = "this tree"  # or "baseline": the --baseline package
    setup: dict = field(default_factory=dict)
    phases: dict[str, dict] = field(default_factory=dict)
    wall_s: float = 0.0
    profiles: dict[str, str] = field(default_factory=dict)  # phase -> py-spy raw output


class Runner:
    def __init__(self, args, workdir: Path, redis):
        self.args, self.workdir, self.redis = args, workdir, redis

    def run(self, mode: str, agents: int, profile_prefix: Path | None = None, baseline: str | None = None) -> Scenario:
        from tests.processes import wait_http_ok
        from tests.servers import free_port

        scenario = Scenario(mode, agents, "baseline" if baseline else "this tree")
        started = time.monotonic()
        if mode == "redis":
            client = self.redis.client()
            client.flushall()  # each scenario starts from an empty Redis, with fresh counters
            client.config_resetstat()
        config = self.workdir / f"{mode}-{agents}.yaml"
        write_config(config, mode, agents, self.redis if mode == "redis" else None)
        grpc_port, metrics_port, health_port = free_port(), free_port(), free_port()
        env = dict(os.environ)
        if baseline:  # the coordinator imports `dbintel` from there (PYTHONPATH precedes the editable install)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [baseline, env.get("PYTHONPATH")]))
        if mode == "redis":
            env[REDIS_PASSWORD_ENV] = self.redis.password
        log = open(self.workdir / f"coordinator-{mode}-{agents}{'-baseline' if baseline else ''}.log", "w")
        coordinator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dbintel.cli",
                "--log-level",
                "warning",
                "coordinator",
                "--config",
                str(config),
                "--grpc-listen",
                f"127.0.0.1:{grpc_port}",
                "--metrics-listen",
                f"127.0.0.1:{metrics_port}",
                "--health-listen",
                f"127.0.0.1:{health_port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe()
        generator = None
        try:
            wait_http_ok(f"http://127.0.0.1:{health_port}/ready", coordinator)
            generator = context.Process(
                target=generator_main,
                name="heartbeat-load",
                args=(
                    child_end,
                    {
                        "agents": agents,
                        "address": f"127.0.0.1:{grpc_port}",
                        "channels": self.args.channels,
                        "in_flight": self.args.in_flight,
                        "coordinator_pid": coordinator.pid,
                        "metrics_port": metrics_port,
                        "redis_pid": self.redis.pid if mode == "redis" else None,
                        "setup_timeout": self.args.setup_timeout,
                    },
                ),
            )
            generator.start()
            scenario.setup = self._receive(parent_end, generator, "ready")
            if mode == "redis":
                info = self.redis.client().info()
                scenario.setup["redis_connections_opened"] = info["total_connections_received"]
                scenario.setup["redis_clients_now"] = info["connected_clients"]
            print(
                f"{mode} {agents}: placement quiet after {scenario.setup['setup_s']:.1f}s "
                f"(coordinator started {time.monotonic() - started:.1f}s ago): {scenario.setup}",
                file=sys.stderr,
                flush=True,
            )
            for kind, warmup, measure in (("idle", 0.0, self.args.idle), ("saturated", 1.0, self.args.measure)):
                output = Path(f"{profile_prefix}-{kind}.txt") if profile_prefix else None
                profiler = self._start_profiler(coordinator.pid, output, warmup + measure) if output else None
                parent_end.send(("phase", kind, warmup, measure, 0.0))
                scenario.phases[kind] = self._receive(parent_end, generator, "phase")
                if profiler is not None:
                    profiler.wait(timeout=60)
                    scenario.profiles[kind] = str(output)
            rate = scenario.phases["saturated"]["throughput"] * HEADROOM
            parent_end.send(("phase", "paced", 1.0, self.args.measure, rate))
            scenario.phases["paced"] = self._receive(parent_end, generator, "phase")
            parent_end.send(("stop",))
            generator.join(timeout=30)
        finally:
            if generator is not None and generator.is_alive():
                generator.terminate()
                generator.join(timeout=10)
            coordinator.send_signal(signal.SIGTERM)
            try:
                coordinator.wait(timeout=30)
            except subprocess.TimeoutExpired:
                coordinator.kill()
                coordinator.wait()
            log.close()
        scenario.wall_s = time.monotonic() - started
        return scenario

    @staticmethod
    def _receive(conn, process, expected: str) -> dict:
        while not conn.poll(1.0):
            if not process.is_alive():
                raise RuntimeError(f"load generator exited with {process.exitcode}")
        kind, payload = conn.recv()
        if kind == "error":
            raise RuntimeError(f"load generator failed: {payload}")
        assert kind == expected, (kind, expected)
        return payload

    @staticmethod
    def _start_profiler(pid: int, output: Path, seconds: float) -> subprocess.Popen:
        py_spy = shutil.which("py-spy")
        if py_spy is None:
            raise SystemExit("--profile needs py-spy: pip install py-spy")
        return subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(round(seconds)),
                "--rate",
                "100",
                "--nonblocking",
                "--format",
                "raw",
                "--output",
                str(output),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


# -------------------------------------------------------------------------------------------------------
# Profile summary (py-spy raw = collapsed stacks: "frame;frame;...;frame count")
# -------------------------------------------------------------------------------------------------------
# What each sample was doing, by the first rule whose marker is in its stack. asyncio.gather runs the
# leader's store reads as tasks of their own, so their stacks start at the read, not at LeaderLoop.
ACTIVITIES = (
    ("heartbeat path: validate, record, read assignment, reply", ("AgentServicer.",)),
    ("leader step: plan (inventory from config, plan_step)", ("LeaderLoop.",)),
    (
        "leader step / gauges: read whole store (agents, target, assignments) and decode",
        (
            "ScalingStore.read_agents",
            "ScalingStore.read_target",
            "ScalingStore.read_assignments",
            "ScalingStore.read_meta",
            "ScalingStore.now_ms",
            "Coordinator._refresh_gauges",
        ),
    ),
    ("Redis client I/O not attributable to a caller", ("redis/",)),
    ("event loop and gRPC callbacks (C code, not sampled deeper)", ("base_events.py", "events.py")),
)


def summarize_profile(path: Path, top: int = 12) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    """(samples, share per activity, inclusive share of the hottest dbintel functions)."""
    activities, inclusive, total = collections.Counter(), collections.Counter(), 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        activity = next((name for name, markers in ACTIVITIES if any(m in stack for m in markers)), "other")
        activities[activity] += n
        own = {_short_frame(f) for f in stack.split(";") if "services/" in f and "services/cli.py" not in f}
        for frame in own:
            inclusive[frame] += n
    as_share = lambda pairs: [(name, 100.0 * n / max(1, total)) for name, n in pairs]  # noqa: E731
    order = [name for name, _ in ACTIVITIES] + ["other"]
    return (
        total,
        as_share(sorted(activities.items(), key=lambda kv: order.index(kv[0]))),
        as_share(inclusive.most_common(top)),
    )


def _short_frame(frame: str) -> str:
    """'AgentServicer._handle (services/coordinator/agent_service.py:149)'
    -> 'agent_service.py AgentServicer._handle'."""
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0]
    return f"{Path(file).name} {name}"


# -------------------------------------------------------------------------------------------------------
# Report
# -------------------------------------------------------------------------------------------------------
def background_fit(scenarios: list[Scenario]) -> tuple[float, float]:
    """Idle CPU (share of a core) = a + b × agents, least squares over one mode's runs."""
    points = [(s.agents, s.phases["idle"]["coordinator_cpu_s"] / s.phases["idle"]["wall_s"]) for s in scenarios]
    if len({n for n, _ in points}) < 2:
        n, y = points[-1]
        return 0.0, y / n
    mean_n = statistics.fmean(n for n, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    b = sum((n - mean_n) * (y - mean_y) for n, y in points) / sum((n - mean_n) ** 2 for n, _ in points)
    return max(0.0, mean_y - b * mean_n), max(b, 1e-9)


def derived(scenario: Scenario, fit: tuple[float, float]) -> dict:
    idle, sat, paced = (scenario.phases[k] for k in ("idle", "saturated", "paced"))
    idle_cpu_per_s = idle["coordinator_cpu_s"] / idle["wall_s"]
    hb_rate = sat["throughput"]
    per_1000 = sat["coordinator_cpu_s"] / max(1, hb_rate * sat["wall_s"]) * 1000
    paced_per_1000 = paced["coordinator_cpu_s"] / max(1, paced["throughput"] * paced["wall_s"]) * 1000
    # The heartbeat path alone: saturated CPU minus the background the idle phase showed.
    marginal = max(0.0, sat["coordinator_cpu_s"] - idle_cpu_per_s * sat["wall_s"]) / max(1, hb_rate * sat["wall_s"])
    a, b = fit
    agents_model = max(0.0, (HEADROOM - a) / (b + marginal / DEFAULT_INTERVAL_S))
    return {
        "idle_cpu_per_s": idle_cpu_per_s,
        "hb_rate": hb_rate,
        "per_1000": per_1000,
        "paced_per_1000": paced_per_1000,
        "marginal_ms": marginal * 1000,
        "agents_naive": hb_rate * DEFAULT_INTERVAL_S,
        "agents_headroom": hb_rate * DEFAULT_INTERVAL_S * HEADROOM,
        "agents_model": agents_model,
    }


def code_version() -> str:
    """The commit measured, marked when services/ had uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "services"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"`{head}`" + (" with uncommitted changes in services/" if dirty else "")


def mib(n: float) -> str:
    return f"{n / 2**20:.0f}"


def pct(seconds: float, wall: float) -> str:
    return f"{100 * seconds / wall:.0f}"


def command_line(args) -> str:
    return (
        "python bench/bench_heartbeats.py"
        + "".join(f" --{k.replace('_', '-')} {getattr(args, k)}" for k in DEFAULTS if getattr(args, k) != DEFAULTS[k])
        + (" --profile" if args.profile else "")
        + (f" --baseline DIR --baseline-label '{args.baseline_label}'" if args.baseline else "")
    )


def write_data(args, scenarios: list[Scenario], baselines: list[Scenario]) -> None:
    """Raw figures for bench/plots.py: one series per (code, mode), one point per agent count."""
    series = {}
    for s in baselines + scenarios:
        fit = background_fit([x for x in (baselines if s.code == "baseline" else scenarios) if x.mode == s.mode])
        d = derived(s, fit)
        label = f"{s.mode}, baseline" if s.code == "baseline" else s.mode
        series.setdefault(label, []).append(
            {
                "agents": s.agents,
                "heartbeats_per_s": d["hb_rate"],
                "paced_p50_ms": s.phases["paced"]["p50_ms"],
                "paced_p99_ms": s.phases["paced"]["p99_ms"],
                "saturated_p50_ms": s.phases["saturated"]["p50_ms"],
                "saturated_p99_ms": s.phases["saturated"]["p99_ms"],
                "idle_cpu_share": d["idle_cpu_per_s"],
                "cpu_ms_per_heartbeat": d["marginal_ms"],
                "agents_per_replica_model": d["agents_model"],
            }
        )
    DATA.parent.mkdir(parents=True, exist_ok=True)
    DATA.write_text(
        json.dumps(
            {
                "bench": "heartbeats",
                "command": command_line(args),
                "unit": {
                    "heartbeats_per_s": "1/s",
                    "paced_p50_ms": "ms",
                    "paced_p99_ms": "ms",
                    "saturated_p50_ms": "ms",
                    "saturated_p99_ms": "ms",
                    "idle_cpu_share": "share of one core",
                    "cpu_ms_per_heartbeat": "ms",
                    "agents_per_replica_model": "agents at the default 30 s heartbeat, 50% of a core",
                },
                "series": series,
                "baseline": args.baseline_label if baselines else None,
                "default_heartbeat_interval_s": DEFAULT_INTERVAL_S,
                "machine": machine_line(),
            },
            indent=1,
        )
    )


def render(args, scenarios: list[Scenario], profiles: list[Scenario], baselines: list[Scenario] = ()) -> str:
    command = command_line(args)
    fits = {mode: background_fit([s for s in scenarios if s.mode == mode]) for mode in {s.mode for s in scenarios}}
    lines = [
        SECTION,
        "",
        machine_line() + f" Coordinator code as of commit {code_version()}.",
        f"Command: `{command}`. One coordinator process (`python -m dbintel.cli coordinator`, its own "
        "process, measured alone with psutil, all its threads); the load generator is a second process "
        f"(multiprocessing, asyncio + grpc.aio) with {args.channels} gRPC channels (one TCP connection each), "
        f"all on 127.0.0.1. **The generator shares the machine's {os.cpu_count()} cores with the coordinator** "
        "(and, in redis mode, with redis-server 7); the coordinator runs one Python thread, so it can use about "
        "one core. *Others CPU %* is what the rest of the machine used meanwhile (other jobs on a shared "
        "machine): where it is high, the coordinator had less than a core. On this shared virtual machine "
        "repeated runs differed by up to about 30% in heartbeats/s and CPU per heartbeat on a quiet machine, "
        "and more while other jobs ran: read the figures with that margin.",
        "",
        f"Each simulated agent reports {DATABASES_PER_AGENT} databases as its current set, with poll statistics "
        f"(an inventory of {DATABASES_PER_AGENT} × agents databases, placed by the coordinator itself: the agents "
        "register, apply and ack their assignments like real agents; measuring starts once every database is "
        "held exactly once and nothing moved for a second). Scheduling timings are the defaults "
        "(heartbeat_interval 30s). Phases, per scenario: "
        f"*idle* {args.idle:g} s, streams open and nothing sent (background CPU: the leader's periodic step, "
        f"gauges every 5 s); *saturated*, a closed loop with {args.in_flight} heartbeats in flight at any time "
        "(each slot goes round its share of the agents, sending an agent's next heartbeat once its previous one "
        f"is answered), 1 s warm-up then {args.measure:g} s measured; *paced*, an open loop at half the "
        f"saturated rate with random phases, 1 s warm-up then {args.measure:g} s. Latency = request written on "
        "the stream → its reply read, in the generator. Under saturation latency is mostly queueing "
        "(≈ in-flight ÷ throughput): read the paced column for latency.",
        "",
        "| mode | agents | heartbeats/s (saturated) | p50 / p99 ms, saturated | p50 / p99 ms, at 50% | "
        "degraded replies (sat. / 50%) | coord. CPU s per 1,000 hb (sat. / 50%) | coord. CPU % (sat.) | "
        "coord. CPU % idle | coord. RSS MiB | generator CPU % | redis CPU % | others CPU % | answered / sent |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in scenarios:
        d, sat, paced = derived(s, fits[s.mode]), s.phases["saturated"], s.phases["paced"]
        answered = sum(s.phases[k]["answered"] for k in ("saturated", "paced"))
        sent = sum(s.phases[k]["sent"] for k in ("saturated", "paced"))
        lines.append(
            f"| {s.mode} | {s.agents:,} | {d['hb_rate']:,.0f} | {sat['p50_ms']:.0f} / {sat['p99_ms']:.0f} | "
            f"{paced['p50_ms']:.1f} / {paced['p99_ms']:.1f} | {sat['degraded']:,} / {paced['degraded']:,} | "
            f"{d['per_1000']:.3f} / {d['paced_per_1000']:.3f} | {pct(sat['coordinator_cpu_s'], sat['wall_s'])} | "
            f"{100 * d['idle_cpu_per_s']:.0f} | {mib(max(s.phases[k]['coordinator_rss'] for k in s.phases))} | "
            f"{pct(sat['generator_cpu_s'], sat['wall_s'])} | "
            f"{pct(sat['redis_cpu_s'], sat['wall_s']) if s.mode == 'redis' else '–'} | "
            f"{pct(sat['others_cpu_s'], sat['wall_s'])} | {answered:,} / {sent:,} |"
        )
    lines += [
        "",
        "Every heartbeat sent got its reply (answered / sent; the coordinator's own "
        "`dbintel_scaling_heartbeats_total` matched the generator's count; no assignment moved while measuring). "
        "A *degraded* reply is an answer saying the coordinator could not reach its store: that heartbeat was "
        "not recorded, so a rate with degraded replies is not sustainable.",
        "",
    ]
    if any(s.setup["setup_degraded"] or any(p["degraded"] for p in s.phases.values()) for s in scenarios):
        lines += [
            "**Degraded replies appeared** although Redis was up and idle: the coordinator's store calls "
            'failed under the burst (its log says "store unreachable"), so those heartbeats were not '
            "recorded and the replica reported itself not ready until its next successful store call. "
            "*Redis connections opened* in the storm table shows how many connections its pool used.",
            "",
        ]
    lines += [
        "### Registration storm (every agent opens its stream at once, as after a replica restart)",
        "",
        "| mode | agents | heartbeats until quiet (registrations + acks + repeats) | degraded replies | "
        "agents that got one | Redis connections opened | first assignment after s | quiet placement after s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in scenarios:
        u = s.setup
        lines.append(
            f"| {s.mode} | {s.agents:,} | {u['setup_messages']:,} | {u['setup_degraded']:,} | "
            f"{u['agents_degraded']:,} | {u.get('redis_connections_opened', '–')} | "
            f"{u['first_assignment_s']:.1f} | {u['setup_s']:.1f} |"
        )
    lines += [
        "",
        "Times are from the first registration sent; the leader places nothing until no agent has joined for "
        "2 s (`schedule.JOIN_SETTLE_S`). A degraded reply to a registration or to the "
        "ack of an assignment means the coordinator did not record it. The generator repeats such a heartbeat "
        "within a second (at a random moment); a real agent repeats it with its next heartbeat, 30 s later, so "
        "on a real fleet those agents get their databases — and hand-offs that wait for their acks complete — "
        "up to a heartbeat interval later.",
        "",
        "### Agents per replica at the default 30 s heartbeat interval",
        "",
        "| mode | agents in run | heartbeats/s × 30 (a core flat out) | × 0.5 headroom | "
        "per-heartbeat CPU ms (marginal) | idle CPU, % of a core | model: agents at 50% of a core |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in scenarios:
        d = derived(s, fits[s.mode])
        lines.append(
            f"| {s.mode} | {s.agents:,} | {d['agents_naive']:,.0f} | {d['agents_headroom']:,.0f} | "
            f"{d['marginal_ms']:.3f} | {100 * d['idle_cpu_per_s']:.1f} | {d['agents_model']:,.0f} |"
        )
    fit_text = "; ".join(
        f"{mode}: {100 * a:.1f}% + {100 * b * 1000:.1f}% per 1,000 agents" for mode, (a, b) in sorted(fits.items())
    )
    by_mode = {mode: sorted((s for s in scenarios if s.mode == mode), key=lambda s: s.agents) for mode in fits}
    try:
        from dbintel.coordinator.schedule import tick_seconds

        tick_text = (
            f"{tick_seconds(DEFAULT_INTERVAL_S):g} s at the default heartbeat interval (`schedule.tick_seconds`)"
        )
    except ImportError:  # a coordinator without it steps on a fixed tick
        tick_text = "tick of the leader loop"
    p99_text = "; ".join(
        f"{mode}: {rows[0].phases['paced']['p99_ms']:.0f} ms at {rows[0].agents:,} agents, "
        f"{rows[-1].phases['paced']['p99_ms']:.0f} ms at {rows[-1].agents:,}"
        for mode, rows in sorted(by_mode.items())
    )
    lines += [
        "",
        "*Heartbeats/s × 30* is how many agents one replica could serve if heartbeats were its only work and it "
        f"ran a core flat out; we plan at **{HEADROOM:.0%} of a core** (headroom for a reconnect storm, "
        "rebalances and latency). But a replica's work is not only heartbeats: the *idle* phase shows CPU "
        "that grows with the fleet with no heartbeat at all. Fitted over the runs (least squares), idle CPU ≈ "
        f"{fit_text} (share of a core). The *model* column solves idle(N) + N ÷ 30 s × per-heartbeat CPU = "
        "0.5 core for N: it, not heartbeats/s × 30, is the capacity to plan with. It extrapolates linearly "
        "beyond the largest run and ignores latency: a full leader step (after a membership event) still "
        "holds the event loop in proportion to the fleet (next paragraph), so treat it as an upper bound.",
        "",
        "**The leader step no longer grows with the fleet while nothing changes.** The leader wakes every "
        f"{tick_text}, and on membership events (coalesced). A full step re-reads the whole store (every agent's "
        "record with its current set and poll statistics, decoded from JSON in redis mode; the target; every "
        "assignment) and runs `plan_step` over the whole fleet, one long stretch on the event loop during which "
        "heartbeats wait. It now runs only when something may have changed: an event since the last step (an "
        "agent joined, left, acknowledged an assignment or reported a different set; the inventory was "
        "reloaded), a pending join or operator request, the periodic rebalance, or the store clock reaching the "
        "earliest moment any member could expire (`planning.expiry_deadline_ms`: heartbeats only push that "
        "later, so a skipped tick cannot miss an expiry). Otherwise a tick costs one read of the store's clock. "
        "With a steady fleet the full step therefore runs about once per node_timeout − heartbeat_interval "
        "instead of every tick. What is left of the idle CPU is mostly the 5 s gauge refresh "
        "(`Coordinator._refresh_gauges`), which still re-reads every agent's record; a follower replica pays "
        f"that and the heartbeat path. Paced p99 latency: {p99_text}.",
        "",
    ]
    if baselines:
        lines += render_comparison(args, scenarios, list(baselines))
    for s in profiles:
        idle_total, idle_activities, _ = summarize_profile(Path(s.profiles["idle"]))
        total, activities, hottest = summarize_profile(Path(s.profiles["saturated"]))
        idle_share, saturated_share = dict(idle_activities), dict(activities)
        lines += [
            f"### Profile: {s.mode} mode, {s.agents:,} agents",
            "",
            "`py-spy record --rate 100 --nonblocking --format raw` on the coordinator during the idle and the "
            f"saturated phase of a separate run (samples of its Python thread while it was busy: "
            f"{idle_total:,} idle, {total:,} saturated; this run did "
            f"{s.phases['saturated']['throughput']:,.0f} heartbeats/s saturated, its other figures are not in "
            "the tables above). Share of the busy samples, by what the thread was doing:",
            "",
            "| activity | idle phase | saturated phase |",
            "|---|---:|---:|",
        ]
        lines += [
            f"| {name} | {idle_share.get(name, 0.0):.0f}% | {saturated_share.get(name, 0.0):.0f}% |"
            for name in [n for n, _ in ACTIVITIES] + ["other"]
            if name in idle_share or name in saturated_share
        ]
        lines += [
            "",
            "Hottest dbintel functions, saturated (inclusive): "
            + "; ".join(f"`{name}` {share:.0f}%" for name, share in hottest)
            + ".",
            "",
        ]
        shares = dict(hottest)
        validating, serving = shares.get("validation.py heartbeat"), shares.get("agent_service.py AgentServicer._read")
        if validating and serving:
            lines += [
                f"Of the heartbeat path ({serving:.0f}% of the busy thread), validating the request "
                f"(`validation.heartbeat`) takes {validating:.0f}%: every heartbeat reads every field of each "
                "of the agent's database statuses from the protobuf message and builds one `PollStatus` per "
                "database (`validation._statuses`).",
                "",
            ]
    return "\n".join(lines)


def render_comparison(args, scenarios: list[Scenario], baselines: list[Scenario]) -> list[str]:
    lines = [
        f"### Before / after: {args.baseline_label}",
        "",
        f"Each scenario ran twice back to back, first with the coordinator code {args.baseline_label} "
        "(a copy of services/ with the previous leader.py, planning.py, agent_service.py and validation.py), "
        "then with this tree, so both saw the same machine. Idle CPU is the leader's and the gauges' "
        "background work with no heartbeat: the direct measure of the leader step. p99 at 50% is where a "
        "leader step stalls heartbeats, but any stall shows there, including other jobs taking the CPU "
        "(*others CPU %* in the first table): on a busy machine read that column as noise-bound.",
        "",
        "| mode | agents | idle CPU % of a core (before → after) | p99 ms at 50% (before → after) | "
        "heartbeats/s saturated (before → after) | CPU ms per heartbeat, marginal (before → after) | "
        "model: agents at 50% of a core (before → after) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    fits_before = {m: background_fit([s for s in baselines if s.mode == m]) for m in {s.mode for s in baselines}}
    fits_after = {m: background_fit([s for s in scenarios if s.mode == m]) for m in {s.mode for s in scenarios}}
    for before in baselines:
        after = next(s for s in scenarios if s.mode == before.mode and s.agents == before.agents)
        b, a = derived(before, fits_before[before.mode]), derived(after, fits_after[after.mode])
        lines.append(
            f"| {before.mode} | {before.agents:,} | {100 * b['idle_cpu_per_s']:.1f} → {100 * a['idle_cpu_per_s']:.1f} | "
            f"{before.phases['paced']['p99_ms']:.0f} → {after.phases['paced']['p99_ms']:.0f} | "
            f"{b['hb_rate']:,.0f} → {a['hb_rate']:,.0f} | {b['marginal_ms']:.3f} → {a['marginal_ms']:.3f} | "
            f"{b['agents_model']:,.0f} → {a['agents_model']:,.0f} |"
        )
    lines.append("")
    return lines


# Per scenario: idle 10 s (two leader ticks at the default interval) + 2 × (1 s warm-up + 4 s) = 20 s of load.
DEFAULTS = {
    "agents": "200,500,1000",
    "modes": "memory,redis",
    "channels": 8,
    "in_flight": 50,
    "measure": 4.0,
    "idle": 10.0,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", default=DEFAULTS["agents"], help="comma-separated agent counts")
    parser.add_argument("--modes", default=DEFAULTS["modes"], help="memory, redis or both")
    parser.add_argument("--channels", type=int, default=DEFAULTS["channels"], help="gRPC channels the streams share")
    parser.add_argument(
        "--in-flight",
        type=int,
        default=DEFAULTS["in_flight"],
        help="heartbeats in flight at once in the saturated phase (closed loop)",
    )
    parser.add_argument("--measure", type=float, default=DEFAULTS["measure"], help="seconds measured per loaded phase")
    parser.add_argument("--idle", type=float, default=DEFAULTS["idle"], help="seconds of the idle phase")
    parser.add_argument(
        "--setup-timeout",
        type=float,
        default=60.0,
        help="most seconds for the agents' registration and placement to settle",
    )
    parser.add_argument(
        "--profile", action="store_true", help="one extra py-spy-profiled run per mode at the largest agent count"
    )
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="also run each scenario with the dbintel package in DIR (DIR/dbintel), for before/after",
    )
    parser.add_argument(
        "--baseline-label", default="before", help="what the baseline is, for the before/after table (e.g. a commit)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = parser.parse_args()
    counts = [int(x) for x in args.agents.split(",")]
    modes = [m.strip() for m in args.modes.split(",")]

    from tests.servers import RedisServer

    workdir = Path(tempfile.mkdtemp(prefix="bench-heartbeats-"))
    redis = RedisServer().start() if "redis" in modes else None
    scenarios, profiles, baselines = [], [], []

    def check(scenario: Scenario) -> None:
        d, sat = derived(scenario, background_fit([scenario])), scenario.phases["saturated"]
        print(
            f"{scenario.mode:6} {scenario.agents:5} agents ({scenario.code}): {d['hb_rate']:8.0f} hb/s saturated, "
            f"p50/p99 {scenario.phases['paced']['p50_ms']:.1f}/{scenario.phases['paced']['p99_ms']:.1f} ms at 50%, "
            f"idle CPU {100 * d['idle_cpu_per_s']:.1f}%, coordinator CPU {100 * sat['coordinator_cpu_s'] / sat['wall_s']:.0f}%, "
            f"generator {100 * sat['generator_cpu_s'] / sat['wall_s']:.0f}%, {scenario.wall_s:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        where = f"{scenario.mode}/{scenario.agents}/{scenario.code}"
        for kind, phase in scenario.phases.items():
            if phase["unanswered"] or phase["stream_ends"] or phase["sent"] != phase["answered"]:
                raise RuntimeError(f"{where}/{kind}: not every heartbeat was answered: {phase}")
            if int(phase["coordinator_counted"]) != phase["sent"]:
                raise RuntimeError(
                    f"{where}/{kind}: the coordinator counted {phase['coordinator_counted']:.0f} "
                    f"heartbeats, the generator sent {phase['sent']}"
                )
            if phase["assignment_responses"] or phase["unsolicited"] or phase["degraded"]:
                print(
                    f"WARNING {where}/{kind}: {phase['degraded']} degraded replies, "
                    f"{phase['assignment_responses']} assignments while measuring",
                    file=sys.stderr,
                )

    try:
        runner = Runner(args, workdir, redis)
        for mode in modes:
            for count in counts:
                if args.baseline:  # back to back, so both see the same machine
                    baselines.append(runner.run(mode, count, baseline=args.baseline))
                    check(baselines[-1])
                scenario = runner.run(mode, count)
                scenarios.append(scenario)
                check(scenario)
        if args.profile:
            for mode in modes:
                profiles.append(runner.run(mode, max(counts), profile_prefix=workdir / f"profile-{mode}"))
    finally:
        if redis is not None:
            redis.close()
    text = render(args, scenarios, profiles, baselines)
    print(text)
    if not args.no_write:
        write_data(args, scenarios, baselines)
        write_section(
            SECTION,
            text + "\n\n" + image_link("coordinator_heartbeats", "Coordinator heartbeat throughput and latency"),
        )
        print(f"wrote the '{SECTION}' section of {DOC}", file=sys.stderr)
    if args.profile:
        print(f"py-spy raw profiles kept in {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
