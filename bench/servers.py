"""Shared by the bench/ scripts: a real `dbintel agent` process, reading a Prometheus exposition, and
the exact CPU time of another process.

The database servers come from tests/servers.py (the repo root is put on sys.path here); this module
adds only what the benchmarks need on top: the agent subprocess (configured with
`ignore_assignments: true`, so it polls every configured database and talks to no coordinator,
listening on free loopback ports, its passwords passed as `${env:...}` references), and a
PostgreSQL with a higher max_connections for the memory benchmark's 100 connections.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.servers import PostgresServer, free_port  # noqa: E402  (needs the repo root on sys.path)

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, all threads) of any process, to the nanosecond.

    psutil's cpu_times() counts in clock ticks (10 ms here), too coarse for one collection of a few
    milliseconds; the process's CPU-time clock (clock_getcpuclockid) is exact."""
    clock = ctypes.c_int()
    if _libc.clock_getcpuclockid(pid, ctypes.byref(clock)) == 0:
        try:
            return time.clock_gettime(clock.value)
        except OSError:
            pass
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def scrape(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return reply.read().decode()


def sample_lines(exposition: str) -> list[str]:
    """The sample lines of a text exposition (no comments, no blank lines)."""
    return [line for line in exposition.splitlines() if line and not line.startswith("#")]


def metric_total(exposition: str, name: str, label_filter: str = "") -> float:
    """Sum of the samples named exactly `name` whose label text contains `label_filter`."""
    total = 0.0
    for line in sample_lines(exposition):
        match = _SAMPLE.match(line)
        if match and match.group(1) == name and label_filter in (match.group(2) or ""):
            total += float(match.group(3))
    return total


def metric_by_resource(exposition: str, name: str) -> dict[str, float]:
    """The samples named exactly `name`, keyed by their dbintel_resource label."""
    values: dict[str, float] = {}
    for line in sample_lines(exposition):
        match = _SAMPLE.match(line)
        if match and match.group(1) == name:
            resource = re.search(r'dbintel_resource="([^"]*)"', match.group(2) or "")
            if resource:
                values[resource.group(1)] = float(match.group(3))
    return values


class WidePostgresServer(PostgresServer):
    """The test PostgreSQL with room for more connections than the suite's 100 (a command-line setting,
    which ALTER SYSTEM cannot override)."""

    def __init__(self, max_connections: int = 250):
        self.max_connections = max_connections
        super().__init__()

    def _command(self) -> list[str]:
        return [
            f"max_connections={self.max_connections}" if part.startswith("max_connections=") else part
            for part in super()._command()
        ]


class AgentProcess:
    """`python -m dbintel.cli agent` on a generated config; SIGSTOP/SIGCONT pause and resume it."""

    def __init__(
        self,
        databases: list[dict],
        secrets: dict[str, str],
        *,
        agent_id: str = "bench-agent",
        log_level: str = "warning",
    ):
        self.root = Path(tempfile.mkdtemp(prefix="dbintel-bench-agent-"))
        self.metrics_port, self.health_port = free_port(), free_port()
        self.agent_id, self.log_level = agent_id, log_level
        self.secrets = secrets  # env name -> password; the config holds only ${env:NAME}
        self.config_path = self.root / "config.yaml"
        self.config_path.write_text(
            yaml.safe_dump(
                {
                    "scaling": {"enabled": True, "mode": "memory", "receiver_scaling": {"ignore_assignments": True}},
                    "databases": databases,
                },
                sort_keys=False,
            )
        )
        self.log_path = self.root / "agent.log"
        self._popen: subprocess.Popen[bytes] | None = None
        self.process: psutil.Process | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, timeout: float = 60.0) -> AgentProcess:
        command = [
            sys.executable,
            "-m",
            "dbintel.cli",
            "--log-level",
            self.log_level,
            "agent",
            "--config",
            str(self.config_path),
            "--agent-id",
            self.agent_id,
            "--metrics-listen",
            f"127.0.0.1:{self.metrics_port}",
            "--health-listen",
            f"127.0.0.1:{self.health_port}",
        ]
        env = {**os.environ, **self.secrets}
        with open(self.log_path, "wb") as log:
            self._popen = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.process = psutil.Process(self._popen.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._popen.poll() is not None:
                raise RuntimeError(f"agent exited with {self._popen.returncode}:\n{self.log_tail()}")
            try:
                scrape(self.metrics_url, timeout=1.0)
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"agent not serving /metrics within {timeout}s:\n{self.log_tail()}")

    def scrape(self) -> str:
        return scrape(self.metrics_url)

    def polls(self, exposition: str | None = None) -> float:
        """Polls of all held databases so far (dbintel_agent_polls_total summed)."""
        return metric_total(exposition if exposition is not None else self.scrape(), "dbintel_agent_polls_total")

    def wait_for_polls(self, at_least: float, timeout: float, step: float = 0.05) -> float:
        deadline = time.monotonic() + timeout
        while True:
            polls = self.polls()
            if polls >= at_least or time.monotonic() > deadline:
                return polls
            time.sleep(step)

    def cpu_seconds(self) -> float:
        assert self.process is not None
        return process_cpu_seconds(self.process.pid)

    def pause(self) -> None:
        assert self._popen is not None
        self._popen.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._popen is not None
        self._popen.send_signal(signal.SIGCONT)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        for secret in self.secrets.values():
            text = text.replace(secret, "***")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self._popen is not None and self._popen.poll() is None:
            self._popen.send_signal(signal.SIGCONT)  # a paused agent cannot act on SIGTERM
            self._popen.send_signal(signal.SIGTERM)
            try:
                self._popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait(timeout=10)
        self._popen = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
